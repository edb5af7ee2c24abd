"""One entry point for models: :func:`load_model` picks the adapter and returns a :class:`LoadedModel`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hubstab.adapters.config import DataConfig, build_transform
from hubstab.adapters.labels import IMAGENET_1K, detect_label_space, imagenet_labels
from hubstab.adapters.resolve import (
    ModelSpec,
    UnsupportedModelError,
    expand_shorthand,
    fetch_repo,
    hub_reachable,
    not_found,
    note,
    parse_model_spec,
    repo_exists,
)
from hubstab.errors import HubstabError, ModelNotFoundError

ADAPTERS: tuple[str, ...] = ("timm", "transformers", "module")


@dataclass
class LoadedModel:
    """A model ready for R_f: it takes normalised (B, C, H, W) input and returns logits.

    Attributes:
        model: the network, in eval mode; its output is a tensor or an object with ``.logits``.
        name: canonical id (e.g. ``timm/resnet18.a1_in1k``, ``facebook/deit-small-patch16-224``), or a local
            folder's name (never its absolute path, which results files would carry to the hub).
        adapter: ``"timm"``, ``"transformers"`` or ``"module"``.
        revision: the resolved commit sha of a hub repo, else the requested revision, else None.
        data_config: input size, resize/crop policy and mean/std (applied on the device after perturbing).
        labels: class names in logit order, when known.
        label_space: ``"imagenet-1k"`` when the labels are the 1000 ImageNet classes, else None.
        num_parameters: number of parameters.
        pretrained: whether trained weights were loaded; None for a module object whose caller did not say.
        notes: remarks for the user (e.g. a shorthand id that was expanded).
        local_path: a local folder's absolute path (identifies the run; not written into results files).
    """

    model: nn.Module
    name: str
    adapter: str
    revision: str | None
    data_config: DataConfig
    labels: list[str] | None
    label_space: str | None
    num_parameters: int
    pretrained: bool | None
    notes: list[str] = field(default_factory=list)
    transform: Callable[[Any], torch.Tensor] | None = field(default=None, repr=False)
    requested_revision: str | None = None
    local_path: str | None = None

    def preprocess(self, image: Any) -> torch.Tensor:
        """PIL image -> (C, H, W) float in [0, 1] at the input size: the model's own resize and crop, converted
        to RGB or grey as the model needs, without normalisation."""
        if self.transform is None:
            self.transform = build_transform(self.data_config)
        return self.transform(image)

    def info(self) -> dict[str, Any]:
        """JSON-ready description (for results files)."""
        return {
            "name": self.name,
            "adapter": self.adapter,
            "revision": self.revision,
            "requested_revision": self.requested_revision,
            "data_config": self.data_config.to_dict(),
            "label_space": self.label_space,
            "num_classes": len(self.labels) if self.labels is not None else None,
            "num_parameters": self.num_parameters,
            "pretrained": self.pretrained,
            "notes": list(self.notes),
        }


class _CallableModule(nn.Module):
    """Wraps a plain callable (images -> logits) as an nn.Module."""

    def __init__(self, fn: Callable[[torch.Tensor], Any]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> Any:
        return self.fn(x)


def _read_config(folder: Path, name: str) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise UnsupportedModelError(
            f"{name} has no config.json; hubstab loads timm repos (config.json with 'architecture') and "
            "transformers repos (config.json with 'model_type')"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UnsupportedModelError(f"{name}: config.json is not valid JSON ({exc})") from exc


def _choose_adapter(config: dict[str, Any], forced: str | None, name: str) -> str:
    from hubstab.adapters.timm_models import is_timm_config
    from hubstab.adapters.transformers_models import is_transformers_config

    if forced is not None:
        return forced
    if is_timm_config(config):
        return "timm"
    if is_transformers_config(config):
        return "transformers"
    raise UnsupportedModelError(
        f"cannot tell which library {name} is for: its config.json has neither 'architecture' (timm) nor "
        "'model_type' (transformers); force one with a 'timm:' or 'transformers:' prefix"
    )


def _fetch(spec: ModelSpec, original: str, notes: list[str]) -> tuple[ModelSpec, Path, str]:
    """Snapshot folder of a hub spec, expanding a shorthand id when the id itself does not exist."""
    try:
        folder, sha = fetch_repo(spec.target, spec.revision)
        return spec, folder, sha
    except ModelNotFoundError as exc:
        exists = repo_exists(spec.target, spec.revision)
        if exists is not False and hub_reachable():
            raise  # gated, private or bad revision: the id itself is right
        full = expand_shorthand(spec.target)
        if full is None:
            raise not_found(spec.target, str(exc)) from None
        message = f"{spec.target} is not a model id; using {full}"
        note(message)
        notes.append(message)
        spec = ModelSpec(spec.kind, full, spec.adapter, spec.revision)
        folder, sha = fetch_repo(full, spec.revision)
        return spec, folder, sha


def load_model(
    spec: str | nn.Module | Callable[[torch.Tensor], Any],
    *,
    revision: str | None = None,
    data_config: DataConfig | None = None,
    pretrained: bool | None = None,
    trust_remote_code: bool = False,
    labels: list[str] | None = None,
    model_name: str | None = None,
    image_processor: Any | None = None,
) -> LoadedModel:
    """Load a vision classifier by id, path or object, with its own preprocessing.

    Args:
        spec: a timm name (``resnet50.a1_in1k``), a hub id (``org/name``, ``hf-hub:org/name``, optionally
            ``@rev``), ``timm:``/``transformers:`` to force an adapter, a local directory (``local-dir:PATH``)
            in timm's or transformers' format, or an ``nn.Module``/callable taking normalised images.
        revision: hub revision (branch, tag or commit); the same as ``@rev`` in the id.
        data_config: the input size and normalisation, overriding the model's own. A module needs it only
            when it carries no data config of its own: a timm model has one (its ``pretrained_cfg``, read with
            ``resolve_model_data_config``), a transformers model has one when ``image_processor`` is given.
        pretrained: load trained weights (default True; False: the architecture at initialisation). For a
            module, whether its weights are trained as the caller says; None (default) records "unknown".
        trust_remote_code: allow transformers repos that ship their own code. Off unless asked.
        labels: class names in logit order, overriding what the model declares.
        model_name: the name results are recorded under (default: the id, or for a module what it says of
            itself: timm's ``architecture.tag``, a transformers ``name_or_path``, else its class).
        image_processor: a transformers image processor for a transformers model given as an object.

    Raises:
        ModelNotFoundError: unknown id (with a "did you mean" list), not cached while offline, gated or
            private repo, unknown revision.
        HubstabError: a model no adapter supports.
    """
    notes: list[str] = []
    if isinstance(spec, (str, Path)):
        parsed = parse_model_spec(str(spec), revision)
        loaded = _load_by_id(parsed, str(spec), pretrained is not False, trust_remote_code, notes)
        model, facts = loaded["model"], loaded["facts"]
        adapter, name = loaded["adapter"], loaded["name"]
        local_path = loaded.get("path")
        requested = parsed.revision
        resolved = loaded["revision"] or requested
        recorded_pretrained: bool | None = pretrained is not False
    elif isinstance(spec, nn.Module) or callable(spec):
        model = spec if isinstance(spec, nn.Module) else _CallableModule(spec)
        model.eval()
        facts = describe_module(spec, data_config, image_processor)
        adapter, name = facts["adapter"], facts["name"]
        local_path = None
        requested = resolved = revision
        recorded_pretrained = None if pretrained is None else bool(pretrained)
    else:
        raise HubstabError(
            f"cannot load a model from a {type(spec).__name__}; give an id, a path or a module"
        )
    if data_config is not None and facts["data_config"] is not data_config:
        facts["data_config"] = data_config
        facts["transform"] = None
    if model_name is not None:
        if not str(model_name).strip():
            raise HubstabError("model_name must be a non-empty name, e.g. 'my-org/resnet50-finetuned'")
        name = str(model_name).strip()
    model_labels = list(labels) if labels is not None else facts.get("labels")
    label_space = detect_label_space(model_labels)
    if model_labels is None and adapter == "timm" and facts.get("num_classes") == 1000:
        # timm's convention: 1000-class heads are ImageNet-1k in the standard order
        model_labels, label_space = list(imagenet_labels()[1]), IMAGENET_1K
    if model_labels is not None and facts.get("num_classes") not in (None, len(model_labels)):
        raise HubstabError(
            f"{name} has {facts['num_classes']} outputs but {len(model_labels)} class names were given"
        )
    return LoadedModel(
        model=model,
        name=name,
        adapter=adapter,
        revision=resolved,
        data_config=facts["data_config"],
        labels=model_labels,
        label_space=label_space,
        num_parameters=sum(p.numel() for p in model.parameters()),
        pretrained=recorded_pretrained,
        notes=notes,
        transform=facts.get("transform"),
        requested_revision=requested,
        local_path=local_path,
    )


def describe_module(
    module: Any, data_config: DataConfig | None = None, image_processor: Any | None = None
) -> dict[str, Any]:
    """What a model object says of itself: adapter, name, data config, class names, transform.

    A timm model (it has ``pretrained_cfg``) gives its data config through timm's
    ``resolve_model_data_config`` and is named ``architecture.tag``; a transformers model
    (it has a ``config`` with ``model_type``) gives its class names and, with ``image_processor``, its data
    config, and is named by ``config.name_or_path``; anything else is named by its class and needs
    ``data_config``. Whether the weights are trained is not known from the object (``pretrained`` None).

    Raises:
        HubstabError: no data config can be found and none was given.
    """
    facts: dict[str, Any] = {
        "data_config": data_config,
        "labels": None,
        "num_classes": None,
        "transform": None,
    }
    pcfg = getattr(module, "pretrained_cfg", None)
    hf_config = getattr(module, "config", None)
    if isinstance(module, nn.Module) and isinstance(pcfg, dict) and pcfg.get("architecture"):
        from hubstab.adapters.timm_models import timm_labels

        facts["adapter"] = "timm"
        arch, tag = str(pcfg["architecture"]), pcfg.get("tag")
        facts["name"] = f"{arch}.{tag}" if tag else arch  # not the hub id: these weights may be others
        facts["labels"] = timm_labels(pcfg)
        facts["num_classes"] = getattr(module, "num_classes", None)
        if data_config is None:
            from timm.data import resolve_model_data_config

            facts["data_config"] = DataConfig.from_timm(resolve_model_data_config(module))
    elif isinstance(module, nn.Module) and isinstance(getattr(hf_config, "model_type", None), str):
        facts["adapter"] = "transformers"
        facts["name"] = str(getattr(hf_config, "name_or_path", "") or type(module).__name__)
        id2label = getattr(hf_config, "id2label", None) or {}
        num = int(getattr(hf_config, "num_labels", len(id2label)) or len(id2label))
        names = [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(num)] if id2label else None
        if names and not all(n.startswith("LABEL_") for n in names):
            facts["labels"] = names
        facts["num_classes"] = num
        if data_config is None and image_processor is not None:
            from hubstab.adapters.transformers_models import processor_data_config

            channels = int(getattr(hf_config, "num_channels", 3) or 3)
            facts["data_config"], facts["transform"] = processor_data_config(image_processor, channels)
        elif data_config is None:
            raise HubstabError(
                f"a transformers model given as an object needs its image processor (image_processor="
                f"AutoImageProcessor.from_pretrained({facts['name']!r})) or data_config=DataConfig(...)"
            )
    else:
        facts["adapter"] = "module"
        facts["name"] = type(module).__name__ if isinstance(module, nn.Module) else "callable"
        if data_config is None:
            raise HubstabError(
                "a model given as an object needs data_config=DataConfig(input_size=(C, H, W), mean=..., "
                "std=...) unless it is a timm model (with pretrained_cfg) or a transformers model with its "
                "image_processor="
            )
    return facts


def _load_by_id(
    spec: ModelSpec, original: str, pretrained: bool, trust_remote_code: bool, notes: list[str]
) -> dict[str, Any]:
    from hubstab.adapters.timm_models import load_timm
    from hubstab.adapters.transformers_models import load_transformers

    folder: Path | None = None
    config: dict[str, Any] | None = None
    sha: str | None = None
    if spec.kind == "registry":
        if spec.adapter == "transformers":
            raise ModelNotFoundError(
                f"transformers models are hub ids (org/name) or folders, not {spec.target!r}"
            )
        model, facts = load_timm(spec, pretrained=pretrained, config=None, folder=None)
        return {
            "model": model,
            "facts": facts,
            "adapter": "timm",
            "name": facts["name"],
            "revision": facts["revision"],
        }
    if spec.kind == "hub":
        spec, folder, sha = _fetch(spec, original, notes)
        name = spec.target
    else:
        folder, name = Path(spec.target), spec.target
    config = _read_config(folder, name)
    adapter = _choose_adapter(config, spec.adapter, name)
    if adapter == "timm":
        model, facts = load_timm(spec, pretrained=pretrained, config=config, folder=folder)
    else:
        model, facts = load_transformers(
            folder, name=name, pretrained=pretrained, trust_remote_code=trust_remote_code, config=config
        )
    if spec.kind == "local":  # recorded by the folder's name; the path identifies the run only
        return {
            "model": model,
            "facts": facts,
            "adapter": adapter,
            "name": folder.name,
            "revision": sha,
            "path": str(folder),
        }
    return {"model": model, "facts": facts, "adapter": adapter, "name": name, "revision": sha}
