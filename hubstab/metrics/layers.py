"""Layer-wise stability (Tomasini, Petrini, Cagnetta, Wyart 2022): D_k, G_k, R_k after chosen layers.

:func:`layer_forward` registers forward hooks on the chosen modules and yields a forward function returning
``{"output": logits, "<layer>": activation, ...}``, the form :func:`hubstab.metrics.stability.batch_stats`
measures. Activations live only for the batch being measured: the statistics are reduced per batch (per-image
squared distances and a running sum of the clean representation), so memory stays bounded.

Layer selection (:func:`resolve_layers`):

* ``"blocks"``: the model's blocks. The shallowest container (``nn.ModuleList`` / ``nn.Sequential``) named
  ``blocks``, ``layers``, ``layer``, ``stages`` or ``features`` with at least two children (timm ``blocks`` /
  ``stages``, transformers ``encoder.layer(s)`` / ``encoder.stages``), else timm's ``feature_info`` modules.
* ``"all"``: every leaf module (no children), except dropout and identity layers.
* a list of module names as in ``model.named_modules()`` (e.g. ``["features.2", "head"]``); a list holding
  only ``"blocks"`` or ``"all"`` means the keyword (name a container's children to hook a module so named).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hubstab.errors import HubstabError
from hubstab.metrics.outputs import OUTPUT, as_logits

LayerSpec = str | Sequence[str]
"""``"blocks"``, ``"all"``, a comma-separated string of module names, or a sequence of module names."""

KEYWORDS: tuple[str, ...] = ("blocks", "all")
BLOCK_CONTAINERS: tuple[str, ...] = ("blocks", "layers", "layer", "stages", "features")
_SKIPPED_LEAVES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)


def activation_tensor(output: Any) -> torch.Tensor:
    """The representation in a module output: a tensor, ``last_hidden_state`` / first tensor of a ModelOutput,
    a mapping or a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    if isinstance(output, Mapping):
        for value in output.values():
            if isinstance(value, torch.Tensor):
                return value
    if isinstance(output, (tuple, list)):
        for value in output:
            if isinstance(value, torch.Tensor):
                return value
    raise TypeError(f"cannot find a tensor in a module output of type {type(output).__name__}")


def block_layers(model: nn.Module) -> list[str]:
    """Names of the model's blocks (see the module docstring); raises HubstabError when none are found."""
    best: tuple[int, list[str]] | None = None
    for name, module in model.named_modules():
        if not name or name.rsplit(".", 1)[-1] not in BLOCK_CONTAINERS:
            continue
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 2:
            continue
        depth = name.count(".")
        if best is None or depth < best[0]:
            best = (depth, [f"{name}.{child}" for child, _ in module.named_children()])
    if best is not None:
        return best[1]
    for prefix, module in model.named_modules():
        info = getattr(module, "feature_info", None)
        if isinstance(info, list) and info and all(isinstance(i, dict) and "module" in i for i in info):
            return [f"{prefix}.{i['module']}" if prefix else i["module"] for i in info]
    raise HubstabError(
        "cannot find the blocks of this model: name the modules to measure, "
        "e.g. layers=['features.2', 'head'] (names from model.named_modules())"
    )


def leaf_layers(model: nn.Module) -> list[str]:
    """Names of every leaf module (no children) in registration order, except dropout and identity."""
    return [
        name
        for name, module in model.named_modules()
        if name and not any(True for _ in module.children()) and not isinstance(module, _SKIPPED_LEAVES)
    ]


def resolve_layers(model: nn.Module, layers: LayerSpec) -> list[str]:
    """Module names to measure for a layer specification (``"blocks"``, ``"all"`` or names).

    Raises:
        HubstabError: a named module does not exist (with close matches), or no blocks are found.
    """
    if not isinstance(layers, str) and len(layers) == 1 and str(layers[0]).strip().lower() in KEYWORDS:
        layers = str(layers[0])  # ["blocks"] as the CLI passes it
    if isinstance(layers, str):
        key = layers.strip().lower()
        if key == "blocks":
            return block_layers(model)
        if key == "all":
            return leaf_layers(model)
        layers = [part.strip() for part in layers.split(",") if part.strip()]
    names = list(dict.fromkeys(str(n) for n in layers))
    if not names:
        raise HubstabError("no layers given: use 'blocks', 'all' or module names")
    if OUTPUT in names:
        raise HubstabError(f"{OUTPUT!r} is always measured; name the modules before it")
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules or not name:
            close = difflib.get_close_matches(name, [m for m in modules if m], n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise HubstabError(
                f"the model has no module named {name!r}.{hint} "
                "Module names are those of model.named_modules(); or use layers='blocks'."
            )
    return names


@contextlib.contextmanager
def layer_forward(
    model: nn.Module | Callable[[torch.Tensor], Any],
    layers: LayerSpec,
    *,
    hooked: nn.Module | None = None,
) -> Iterator[Callable[[torch.Tensor], dict[str, torch.Tensor]]]:
    """Forward hooks on the chosen layers, for as long as the ``with`` block lasts.

    Yields a function mapping a batch to ``{"output": logits, name: activation, ...}``; pass it as the
    ``forward`` of :func:`~hubstab.metrics.stability.batch_stats` or any loop of your own. Activations are
    kept only until the next call. The hooks are removed on exit, also after an error.

    Args:
        model: the network called on the batch (returns logits or an output with logits).
        layers: ``"blocks"``, ``"all"`` or module names of ``hooked`` (see :func:`resolve_layers`).
        hooked: the module whose submodules are hooked, when ``model`` is a wrapper function around it
            (default: ``model``).

    Raises:
        HubstabError: unknown layer names, or a layer that does not keep the batch as its first dimension.
    """
    root = hooked if hooked is not None else model
    if not isinstance(root, nn.Module):
        raise HubstabError("layer-wise measurement needs an nn.Module: pass it as `hooked`")
    names = resolve_layers(root, layers)
    modules = dict(root.named_modules())
    store: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            store[name] = activation_tensor(output)

        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in names]

    def forward(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        store.clear()
        logits = as_logits(model(batch))
        reps = {OUTPUT: logits}
        for name in names:
            if name not in store:
                raise HubstabError(f"layer {name!r} was not called in the forward pass: choose another")
            rep = store[name]
            if rep.shape[0] != batch.shape[0]:
                raise HubstabError(
                    f"layer {name!r} gives shape {tuple(rep.shape)} for a batch of {batch.shape[0]}: "
                    "only layers with the batch as first dimension can be measured"
                )
            reps[name] = rep
        store.clear()
        return reps

    try:
        yield forward
    finally:
        for handle in handles:
            handle.remove()
        store.clear()
