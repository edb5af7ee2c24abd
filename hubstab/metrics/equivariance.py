"""Empirical invariance and equivariance deviation per layer and on the output (Kvinge et al., NeurIPS 2022).

For a group of transformations g acting on input images and a representation f_i (a layer's activations or
the logits), averaged over images x and elements g:

    invariance:    m( f_i(g x), mean_{g'} f_i(g' x) )     (distance to the centroid of the orbit)
    equivariance:  m( f_i(g x), g . f_i(x) )               (g acting on the representation)

m is ``"cosine"`` (1 - cosine similarity, in [0, 2]), ``"euclidean"`` (L2 distance, in the representation's
units) or, on the output only, ``"kl"``: KL(softmax f(g x) || reference distribution) in nats, the reference
being the mean class probabilities over the orbit (the average is then the generalised Jensen-Shannon
divergence of the orbit) or the probabilities of f(x). 0 means exactly invariant (equivariant).

In equivariance mode g acts on spatial maps (B, C, h, w) as :mod:`hubstab.perturbations.groups` defines it and
trivially on vectors (B, D) such as the logits; layers where it has no action are skipped and listed with the
reason in ``result.skipped``.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from hubstab.errors import ArgumentError
from hubstab.metrics.layers import activation_tensor, resolve_layers
from hubstab.metrics.stability import OUTPUT, _as_normalize, as_logits, evaluation_mode
from hubstab.perturbations.groups import Transform, get_transform

Mode = Literal["invariance", "equivariance"]
MODES: tuple[str, ...] = ("invariance", "equivariance")
METRICS: tuple[str, ...] = ("cosine", "euclidean", "kl")
DEFAULT_SAMPLES = 32
"""Elements drawn when num_samples is None from a sampled family (continuous rotations, diffeomorphisms) or a
finite group of larger order (translations); smaller finite groups are enumerated."""


@dataclass
class EquivarianceResult:
    """Invariance or equivariance deviation of a model toward a transformation group (lower: more invariant).

    Attributes:
        transform: name of the transformation (its parameters are in ``settings["transform"]``).
        mode: ``"invariance"`` (distance to the orbit centroid) or ``"equivariance"`` (distance to g . f(x)).
        metric: ``"cosine"`` (1 - cosine similarity), ``"euclidean"`` (L2) or ``"kl"`` (nats, output only).
        num_samples: number of group elements averaged over (the group's order when it was enumerated).
        output: mean deviation of the logits over images and elements.
        layers: layer name -> mean deviation of its activations.
        seed: seed of the sampled elements.
        num_images: number of images.
        output_std: standard deviation over images of the per-image deviation of the logits.
        layers_std: the same per layer.
        skipped: layer name -> why it was not measured (equivariance mode: no action of the group on it).
        actions: representation name -> the action used: ``"orbit centroid"``, ``"spatial"`` or ``"trivial"``.
        settings: everything else that produced the numbers (transform parameters, normalisation, ...).
        per_sample: optional per-image deviations (``"indices"`` and one list per representation).
    """

    transform: str
    mode: str
    metric: str
    num_samples: int
    output: float
    layers: dict[str, float]
    seed: int
    num_images: int
    output_std: float = math.nan
    layers_std: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    actions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    per_sample: dict[str, list] | None = field(default=None, repr=False)

    higher_is_better = False

    def to_dict(self, *, include_per_sample: bool = False) -> dict[str, Any]:
        """The results-file record (non-finite floats become None)."""
        out = asdict(self)
        if not include_per_sample:
            out.pop("per_sample", None)
        return _finite(out)

    def summary(self) -> str:
        """One line per representation, for humans."""
        lines = [
            f"{self.mode} deviation ({self.metric}) toward {self.transform}, "
            f"{self.num_samples} elements x {self.num_images} images: output {self.output:.4g}"
        ]
        lines += [f"  {name}: {value:.4g}" for name, value in self.layers.items()]
        lines += [f"  {name}: skipped ({why})" for name, why in self.skipped.items()]
        return "\n".join(lines)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@contextlib.contextmanager
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks storing the output of the named modules of the last forward in the yielded dict."""
    store: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = []

    def hook(name):
        def fn(_module, _inputs, output):
            store[name] = activation_tensor(output)

        return fn

    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(hook(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


def _distance(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    """Per-row deviation m(a, reference b) of (..., D) float tensors."""
    if metric == "cosine":
        return (1.0 - torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)).clamp_min(0.0)
    if metric == "euclidean":
        return (a - b).norm(dim=-1)
    # kl: a are logits, b reference probabilities
    log_p = torch.log_softmax(a, dim=-1)
    log_q = torch.log(b.clamp_min(1e-30))
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)


def equivariance_deviation(
    model: nn.Module | Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    transform: str | Transform,
    *,
    layers: str | Sequence[str] | None = None,
    mode: Mode = "invariance",
    metric: str = "cosine",
    num_samples: int | None = None,
    seed: int = 0,
    mean: Sequence[float] | torch.Tensor | None = None,
    std: Sequence[float] | torch.Tensor | None = None,
    batch_size: int = 128,
    batchnorm: str = "eval",
    device: torch.device | str | None = None,
    indices: torch.Tensor | Sequence[int] | None = None,
    per_sample: bool = False,
) -> EquivarianceResult:
    """Empirical invariance or equivariance deviation of a model's output and layers toward a transformation.

    Args:
        model: maps images in [0, 1] (B, C, H, W) to logits; ``mean``/``std`` normalise after transforming.
        images: (P, C, H, W) float images in [0, 1].
        transform: a registry name (``"rotation90"``, ``"rotation"``, ``"translation"``, ``"flip"``,
            ``"diffeo"``, optionally with parameters such as ``"translation:step=4"``) or a Transform.
        layers: module names to measure besides the output, ``"blocks"`` or ``"all"`` (leaf modules) as
            :func:`hubstab.metrics.layers.resolve_layers` selects them, None for the output only.
        mode: ``"invariance"`` (orbit centroid) or ``"equivariance"`` (g acting on the representation).
        metric: ``"cosine"`` (1 - cosine similarity), ``"euclidean"`` or ``"kl"`` (output only, nats).
        num_samples: group elements per image; None enumerates a finite group of order <= 32 and draws 32
            elements otherwise. Finite groups are sampled without replacement below their order.
        seed: seed of the sampled elements (per image for diffeomorphisms).
        mean, std: per-channel normalisation applied after transforming.
        batch_size: largest batch given to the model.
        batchnorm: ``"eval"`` (running statistics) or ``"batch"``.
        device: where to compute (default: the model's device, else the images').
        indices: global indices of the images (default 0..P-1); they key the per-image diffeomorphisms.
        per_sample: keep per-image deviations in ``result.per_sample``.

    Returns:
        An :class:`EquivarianceResult`; ``result.output`` and ``result.layers`` are the mean deviations.
    """
    if mode not in MODES:
        raise ArgumentError(f"mode must be one of {MODES}, got {mode!r}")
    if metric not in METRICS:
        close = difflib.get_close_matches(str(metric), METRICS, n=1)
        raise ArgumentError(
            f"metric must be one of {METRICS}, got {metric!r}."
            + (f" Did you mean {close[0]!r}?" if close else "")
        )
    if images.ndim != 4:
        raise ArgumentError(f"images must have shape (P, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError("images must be a float tensor with values in [0, 1]")
    transform = get_transform(transform)
    if layers is not None and not isinstance(model, nn.Module):
        raise ArgumentError("layers can only be captured from a torch.nn.Module")
    names = [] if layers is None else resolve_layers(model, layers)
    if metric == "kl" and names:
        raise ArgumentError(
            "metric='kl' compares class probabilities: it applies to the output only (layers=None)"
        )
    p, channels, height, width = images.shape
    if p < 1:
        raise ArgumentError("no images")
    if batch_size < 1:
        raise ArgumentError("batch_size must be >= 1")
    if device is None:
        param = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
        device = param.device if param is not None else images.device
    device = torch.device(device)
    indices = torch.arange(p) if indices is None else torch.as_tensor(indices, dtype=torch.int64)
    if indices.shape != (p,):
        raise ArgumentError(f"indices must have shape ({p},), got {tuple(indices.shape)}")
    size = (height, width)
    order = transform.order(size)
    count = num_samples
    if count is None and (order is None or order > DEFAULT_SAMPLES):
        count = DEFAULT_SAMPLES
    elements = transform.elements(size, count, seed=seed, indices=indices)
    g_count = elements.shape[0]
    normalize = _as_normalize(mean, std, device, channels)
    with_clean = mode == "equivariance"
    chunk = max(1, batch_size // (g_count + with_clean))

    per_image: dict[str, list[torch.Tensor]] = {}
    skipped: dict[str, str] = {}
    actions: dict[str, str] = {}

    def forward(x: torch.Tensor, store: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pieces: dict[str, list[torch.Tensor]] = {}
        for start in range(0, x.shape[0], batch_size):
            part = x[start : start + batch_size]
            if normalize is not None:
                part = (part - normalize[0]) / normalize[1]
            store.clear()
            logits = as_logits(model(part))
            reps = {OUTPUT: logits, **{n: store[n] for n in names if n in store}}
            missing = [n for n in names if n not in store]
            if missing:
                raise ArgumentError(f"modules {missing} did not run in the forward pass")
            for name, rep in reps.items():
                pieces.setdefault(name, []).append(rep.detach().float())
        return {k: torch.cat(v) for k, v in pieces.items()}

    hooks = capture(model, names) if names else contextlib.nullcontext({})
    run_mode = evaluation_mode(model, batchnorm) if isinstance(model, nn.Module) else contextlib.nullcontext()
    with torch.no_grad(), run_mode, hooks as store:
        for start in range(0, p, chunk):
            x = images[start : start + chunk].to(device)
            b = x.shape[0]
            elems = elements[:, start : start + b] if transform.per_image else elements
            inputs = [transform.apply(x, elems[g]) for g in range(g_count)]
            if with_clean:
                inputs.append(x)
            reps = forward(torch.cat(inputs), store)
            for name, rep in reps.items():
                rep = rep.reshape(len(inputs), b, *rep.shape[1:])
                value = _deviation(name, rep, transform, elems, mode, metric, size, skipped, actions)
                if value is not None:
                    per_image.setdefault(name, []).append(value.cpu())

    values = {k: torch.cat(v).double() for k, v in per_image.items()}
    layer_names = [n for n in names if n in values]
    out = values[OUTPUT]

    def std_of(v: torch.Tensor) -> float:
        return float(v.std()) if v.numel() > 1 else math.nan

    settings = {
        "transform": transform.settings(),
        "order": order,
        "enumerated": order is not None and g_count == order,
        "image_size": [height, width],
        "normalize": None if normalize is None else {"mean": _as_list(mean), "std": _as_list(std)},
        "batchnorm": batchnorm,
        "kl_reference": None
        if metric != "kl"
        else ("mean probabilities over the orbit" if mode == "invariance" else "probabilities of f(x)"),
    }
    return EquivarianceResult(
        transform=transform.name,
        mode=mode,
        metric=metric,
        num_samples=int(g_count),
        output=float(out.mean()),
        layers={n: float(values[n].mean()) for n in layer_names},
        seed=int(seed),
        num_images=int(p),
        output_std=std_of(out),
        layers_std={n: std_of(values[n]) for n in layer_names},
        skipped=skipped,
        actions=actions,
        settings=settings,
        per_sample={"indices": indices.tolist(), **{k: v.tolist() for k, v in values.items()}}
        if per_sample
        else None,
    )


def _as_list(value: Any) -> list[float]:
    return [float(v) for v in torch.as_tensor(value).reshape(-1).tolist()]


def _deviation(
    name: str,
    rep: torch.Tensor,
    transform: Transform,
    elems: torch.Tensor,
    mode: str,
    metric: str,
    size: tuple[int, int],
    skipped: dict[str, str],
    actions: dict[str, str],
) -> torch.Tensor | None:
    """Per-image deviation (B,) of one representation, rep (G [+ 1 clean], B, ...); None when skipped."""
    g_count, b = elems.shape[0], rep.shape[1]
    flat = rep.reshape(rep.shape[0], b, -1)
    if mode == "invariance":
        actions[name] = "orbit centroid"
        transformed = flat[:g_count]
        if metric == "kl":
            reference = torch.softmax(transformed, dim=-1).mean(0, keepdim=True)
        else:
            reference = transformed.mean(0, keepdim=True)
        return _distance(transformed, reference.expand_as(transformed), metric).mean(0)
    if name in skipped:
        return None
    clean = rep[g_count]
    if clean.ndim == 2:
        actions[name] = "trivial"
        reference = flat[g_count].unsqueeze(0).expand(g_count, -1, -1)
    elif clean.ndim == 4:
        error = transform.action_error(elems, size, tuple(clean.shape))
        if error is not None:
            skipped[name] = error
            actions.pop(name, None)
            return None
        actions[name] = "spatial"
        reference = torch.stack([transform.act(clean, elems[g], size).reshape(b, -1) for g in range(g_count)])
    else:
        skipped[name] = (
            f"{transform.name} has no known action on a representation of shape {tuple(clean.shape[1:])}"
        )
        return None
    if metric == "kl":
        reference = torch.softmax(reference, dim=-1)
    return _distance(flat[:g_count], reference, metric).mean(0)
