"""BatchNorm with the statistics of the whole probe set, independent of batching and of processes.

The paper measured untrained networks with BatchNorm in train mode, feeding the whole probe set (500 images)
in ONE forward per input kind: clean images, deformed images, noisy images (at each temperature and draw).
Every BatchNorm layer therefore normalised with the mean and biased variance of its input over the whole
probe set of that kind, and layer k's input already depended on layers < k normalised that way.

A chunked (or multi-process) run reproduces this exactly by calibrating layer by layer
(:func:`full_set_batchnorm`):

1. find the BatchNorm layers in the order the forward calls them (one forward of an example input);
2. for layer k = 1..L: run every chunk of every input kind through the network with layers < k frozen at
   that kind's full-set statistics, accumulate the float64 per-channel sum, sum of squares and count of
   layer k's input, and stop the forward right there (an exception from a pre-hook, so layers > k cost
   nothing); all-reduce the sums over processes (``torch.distributed`` when initialised); set layer k's
   statistics to the full-set mean and biased variance;
3. evaluate with the frozen statistics of each input kind (:meth:`FullSetStatistics.use`): the layers run in
   eval mode, which normalises ``(x - mean) / sqrt(var + eps)`` exactly as train mode does with these values.

Why this design: a single pass cannot give layer k its full-set statistics, because they depend on the
full-set statistics of every earlier layer; keeping layer inputs for the whole set instead would cost memory
proportional to the probe set. The price is about L / 2 network passes per input kind (partial forwards);
the result is the same, up to float round-off, for any batch size and any number of processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from hubstab.errors import HubstabError

DESCRIPTION = (
    "whole probe set per input kind (clean; deformed and noisy per temperature and draw), as one train-mode "
    "forward of all probe images would give: calibrated layer by layer in float64, summed over processes, "
    "biased variance"
)
"""What ``config.protocol.batchnorm_statistics`` records for ``batchnorm="batch"``."""
RUNNING_DESCRIPTION = "running statistics of the model (eval mode)"
"""What ``config.protocol.batchnorm_statistics`` records for ``batchnorm="eval"``."""

Batches = Callable[[], Iterable[Iterable[tuple[Hashable, torch.Tensor]]]]
"""Returns, on every call, the same chunks in the same order; each chunk yields (input kind, model input)."""


class _Stop(Exception):
    """Raised by the pre-hook of the layer being calibrated: nothing after it needs to run."""


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm module of ``model`` (``nn.BatchNorm1d/2d/3d``, SyncBatchNorm, subclasses such as timm's)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class FullSetStatistics:
    """Per-layer full-set statistics for every input kind; :meth:`use` loads one kind into the layers.

    Attributes:
        layers: the BatchNorm layers in the order the forward calls them.
        statistics: input kind -> list (one per layer) of (mean, biased variance), float32 on the device.
        world_size: number of processes the sums were reduced over.
    """

    def __init__(self, layers: list[nn.Module]):
        self.layers = layers
        self.statistics: dict[Hashable, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.world_size = 1

    def use(self, kind: Hashable, upto: int | None = None) -> None:
        """Load the statistics of ``kind`` into the first ``upto`` layers (all by default)."""
        stats = self.statistics.get(kind)
        if stats is None:
            raise KeyError(f"no BatchNorm statistics were calibrated for input kind {kind!r}")
        for layer, (mean, var) in zip(
            self.layers[: len(stats) if upto is None else upto], stats, strict=False
        ):
            _load(layer, mean, var)


def _load(layer: nn.Module, mean: torch.Tensor, var: torch.Tensor) -> None:
    if layer.running_mean is None or layer.running_var is None:
        layer.running_mean, layer.running_var = mean.clone(), var.clone()  # restored to None on exit
    else:
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(var)


def _all_reduce(t: torch.Tensor) -> int:
    """Sum ``t`` in place over the processes of ``torch.distributed`` (when initialised); the world size."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 1
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dist.get_world_size()


def _call_order(forward: Callable[[torch.Tensor], Any], layers: list[nn.Module], example: torch.Tensor):
    calls: list[nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda mod, _args: calls.append(mod)) for m in layers]
    try:
        forward(example)
    finally:
        for h in handles:
            h.remove()
    seen = set()
    for m in calls:
        if id(m) in seen:
            raise HubstabError(
                "a BatchNorm layer is called twice in one forward: full-set batch statistics cannot be "
                "calibrated for this model; use --batchnorm eval"
            )
        seen.add(id(m))
    return calls


@contextlib.contextmanager
def full_set_batchnorm(
    model: nn.Module,
    forward: Callable[[torch.Tensor], Any],
    batches: Batches,
    example: torch.Tensor,
    *,
    distributed: bool = True,
) -> Iterator[FullSetStatistics]:
    """Calibrate every BatchNorm layer of ``model`` on the whole probe set, per input kind (see module docs).

    Inside the ``with`` block the layers are in eval mode and :meth:`FullSetStatistics.use` selects the
    statistics of an input kind; on exit the model's buffers and train/eval flags are restored.

    Args:
        model: the network holding the BatchNorm layers.
        forward: calls the network on a model input (already normalised), e.g. the model itself.
        batches: returns the chunks of this process's probe images, each an iterable of (kind, input);
            every process must produce the same kinds.
        example: one model input (e.g. ``images[:1]``) used to find the order of the layers; the same on
            every process in shape.
        distributed: sum the statistics over ``torch.distributed`` processes when it is initialised.

    Raises:
        HubstabError: a BatchNorm layer is used twice in one forward.
    """
    layers = batchnorm_layers(model)
    saved = [(m, m.training, m.running_mean, m.running_var) for m in layers]
    buffers = {
        id(m): (m.running_mean.clone(), m.running_var.clone()) for m in layers if m.running_mean is not None
    }
    try:
        for m in layers:
            m.eval()
        with torch.no_grad():
            order = _call_order(forward, layers, example)
            result = FullSetStatistics(order)
            current: list[Hashable] = [None]  # the input kind being forwarded
            for k, layer in enumerate(order):
                sums: dict[Hashable, torch.Tensor] = {}

                def accumulate(_mod, args, sums=sums):
                    x = args[0]
                    dims = [d for d in range(x.ndim) if d != 1]
                    x = x.detach().double()
                    count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
                    part = torch.cat([x.sum(dims), x.pow(2).sum(dims), count])
                    if current[0] in sums:
                        sums[current[0]] += part
                    else:
                        sums[current[0]] = part
                    raise _Stop

                handle = layer.register_forward_pre_hook(accumulate)
                try:
                    for chunk in batches():
                        for kind, inputs in chunk:
                            if k > 0:
                                result.use(kind, upto=k)
                            current[0] = kind
                            try:
                                forward(inputs)
                            except _Stop:
                                pass
                            else:
                                raise HubstabError("a BatchNorm layer was not reached in the forward")
                finally:
                    handle.remove()
                kinds = list(result.statistics) if k > 0 else sorted(sums, key=repr)
                if k == 0 and distributed:
                    kinds = _agreed_kinds(kinds, sums)
                channels = layer.num_features
                stacked = torch.stack(
                    [
                        sums.get(
                            kind, torch.zeros(2 * channels + 1, dtype=torch.float64, device=example.device)
                        )
                        for kind in kinds
                    ]
                )
                if distributed:
                    result.world_size = _all_reduce(stacked)
                for kind, row in zip(kinds, stacked, strict=True):
                    n = row[-1].clamp_min(1.0)
                    mean = row[:channels] / n
                    var = (row[channels : 2 * channels] / n - mean.pow(2)).clamp_min(0.0)
                    result.statistics.setdefault(kind, []).append((mean.float(), var.float()))
        yield result
    finally:
        for m, training, mean, var in saved:
            m.training = training
            if id(m) in buffers:
                mean.copy_(buffers[id(m)][0])
                var.copy_(buffers[id(m)][1])
            m.running_mean, m.running_var = mean, var


def _agreed_kinds(kinds: list[Hashable], sums: dict) -> list[Hashable]:
    """The input kinds in one order on every process (a process may hold no images)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return kinds
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, kinds)
    merged = {repr(k): k for part in gathered for k in part}
    return [merged[r] for r in sorted(merged)]
