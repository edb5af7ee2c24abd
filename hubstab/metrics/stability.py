"""Functional core of D_f, G_f and R_f (Petrini et al., NeurIPS 2021).

Three layers, each usable alone:

* :func:`batch_stats` perturbs one batch of probe images and returns per-image statistics for every
  representation the forward function exposes (the output, and layers when asked).
* :class:`StabilityStats` holds those statistics; batches, processes and resumed runs merge with
  :meth:`StabilityStats.cat`.
* :func:`reduce_stats` turns merged statistics into D, G, R and a bootstrap interval per temperature.

:func:`relative_stability` runs the three on an in-memory tensor of images.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from hubstab.metrics import batchnorm as bn
from hubstab.metrics.outputs import OUTPUT, representations
from hubstab.metrics.outputs import as_logits as as_logits  # re-exported: hubstab.metrics.stability.as_logits
from hubstab.metrics.result import StabilityPoint, StabilityResult
from hubstab.perturbations import rng
from hubstab.perturbations.diffeo import (
    INTERPOLATIONS,
    apply_coefficients,
    effective_side,
    reference_images,
    sample_coefficients,
    temperature_for_displacement,
    typical_displacement,
)
from hubstab.perturbations.noise import direction_norms, match_norm

if TYPE_CHECKING:
    from hubstab.metrics.batchnorm import FullSetStatistics

Estimator = Literal["mean", "median"]
ESTIMATORS: tuple[str, ...] = ("mean", "median")
NOISE_SPACES: tuple[str, ...] = ("pixel", "normalized")
"""Where the noise is isotropic: the model's input in [0, 1] (default) or after mean/std normalisation."""
DENOMINATORS: tuple[str, ...] = ("distinct", "all-pairs")
"""Pairs of the denominator: distinct images (default) or the authors' P x P including the zero self-pairs."""
MEDIAN_PAIR_LIMIT = 3000
"""Above this many images the median denominator uses a seeded sample of 2,000,000 pairs instead of all."""

Forward = Callable[[torch.Tensor], "torch.Tensor | Mapping[str, torch.Tensor]"]


@dataclass
class StabilityStats:
    """Per-image statistics of a set of probe images, for every representation (output, layers).

    Attributes:
        temperatures: the temperatures measured, in order (index t below).
        indices: (P,) global indices of the probe images.
        diffeo_sq: name -> (T, P) ||h(tau x) - h(x)||^2, averaged over the draws of each image.
        noise_sq: name -> (T, P) ||h(x + eta) - h(x)||^2, averaged likewise.
        clean_sq: name -> (P,) ||h(x)||^2.
        clean_sum: name -> (D,) sum over images of h(x) (float64), with ``clean_sq`` gives the mean pair distance.
        outputs: (P, K) clean logits (float32).
        labels: (P,) labels (-1: unknown) or None.
        diffeo_components, noise_components: (T, P, K) per-logit squared changes, kept for the median estimator.
    """

    temperatures: list[float]
    indices: torch.Tensor
    diffeo_sq: dict[str, torch.Tensor]
    noise_sq: dict[str, torch.Tensor]
    clean_sq: dict[str, torch.Tensor]
    clean_sum: dict[str, torch.Tensor]
    outputs: torch.Tensor
    labels: torch.Tensor | None = None
    diffeo_components: torch.Tensor | None = None
    noise_components: torch.Tensor | None = None

    @property
    def num_images(self) -> int:
        return int(self.indices.numel())

    PER_SAMPLE_FIELDS = ("diffeo_sq", "noise_sq", "clean_sq")

    def to(self, device: torch.device | str) -> StabilityStats:
        def mv(v):
            if isinstance(v, dict):
                return {k: t.to(device) for k, t in v.items()}
            return v.to(device) if isinstance(v, torch.Tensor) else v

        return StabilityStats(**{k: mv(getattr(self, k)) for k in self.__dataclass_fields__})

    @staticmethod
    def cat(parts: Sequence[StabilityStats]) -> StabilityStats:
        """Merge statistics of disjoint sets of images (batches, processes, resumed runs), sorted by index."""
        parts = [p for p in parts if p.num_images > 0] or list(parts[:1])
        if not parts:
            raise ValueError("no statistics to merge")
        first = parts[0]
        for p in parts[1:]:
            if p.temperatures != first.temperatures or set(p.diffeo_sq) != set(first.diffeo_sq):
                raise ValueError("cannot merge statistics measured with different temperatures or layers")
        indices = torch.cat([p.indices for p in parts])
        order = torch.argsort(indices)
        if torch.unique(indices).numel() != indices.numel():
            raise ValueError("the same probe image appears twice in the statistics being merged")

        def per_sample(name: str, axis: int) -> dict[str, torch.Tensor]:
            return {
                k: torch.cat([getattr(p, name)[k] for p in parts], dim=axis).index_select(axis, order)
                for k in getattr(first, name)
            }

        def optional(name: str, axis: int) -> torch.Tensor | None:
            if getattr(first, name) is None:
                return None
            return torch.cat([getattr(p, name) for p in parts], dim=axis).index_select(axis, order)

        return StabilityStats(
            temperatures=list(first.temperatures),
            indices=indices[order],
            diffeo_sq=per_sample("diffeo_sq", 1),
            noise_sq=per_sample("noise_sq", 1),
            clean_sq=per_sample("clean_sq", 0),
            clean_sum={k: sum(p.clean_sum[k] for p in parts) for k in first.clean_sum},
            outputs=optional("outputs", 0),
            labels=optional("labels", 0),
            diffeo_components=optional("diffeo_components", 1),
            noise_components=optional("noise_components", 1),
        )

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat name -> tensor dict (for safetensors checkpoints); inverse of :meth:`from_tensors`."""
        out: dict[str, torch.Tensor] = {
            "temperatures": torch.tensor(self.temperatures, dtype=torch.float64),
            "indices": self.indices,
            "outputs": self.outputs,
        }
        for name in ("diffeo_sq", "noise_sq", "clean_sq", "clean_sum"):
            for k, v in getattr(self, name).items():
                out[f"{name}/{k}"] = v
        for name in ("labels", "diffeo_components", "noise_components"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> StabilityStats:
        groups: dict[str, dict[str, torch.Tensor]] = {
            n: {} for n in ("diffeo_sq", "noise_sq", "clean_sq", "clean_sum")
        }
        for key, v in tensors.items():
            head, _, rest = key.partition("/")
            if rest and head in groups:
                groups[head][rest] = v
        return cls(
            temperatures=[float(t) for t in tensors["temperatures"].tolist()],
            indices=tensors["indices"],
            outputs=tensors["outputs"],
            labels=tensors.get("labels"),
            diffeo_components=tensors.get("diffeo_components"),
            noise_components=tensors.get("noise_components"),
            **groups,
        )


def _stream(kind: str, draw: int) -> str:
    """Random stream of draw ``draw``: the first draw uses the default streams of ``deform``/``matched_noise``,
    so ``deform(x, T, cut, indices=i, seed=s)`` replays exactly the field a measurement used."""
    return kind if draw == 0 else f"{kind}/{draw}"


def _chunks(x: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, x.shape[0], size):
        yield x[start : start + size]


def _forward(
    forward: Forward,
    inputs: torch.Tensor,
    max_batch: int,
    normalize: tuple[torch.Tensor, torch.Tensor] | None,
    owned: bool = False,
) -> dict[str, torch.Tensor]:
    """Forward ``inputs`` in chunks of at most ``max_batch``; representations flattened to (N, D) float32.

    ``owned``: ``inputs`` is a scratch buffer of the caller, normalised in place instead of copied.
    """
    pieces: dict[str, list[torch.Tensor]] = {}
    if normalize is not None and owned:
        owned = all(torch.result_type(inputs, v) == inputs.dtype for v in normalize)
    for chunk in _chunks(inputs, max_batch):
        if normalize is not None:
            chunk = chunk.sub_(normalize[0]) if owned else chunk - normalize[0]
            chunk = chunk.div_(normalize[1])
        for name, rep in representations(forward(chunk)).items():
            pieces.setdefault(name, []).append(rep.reshape(rep.shape[0], -1).float())
    return {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in pieces.items()}


def _perturbations(
    images: torch.Tensor,
    reference: torch.Tensor,
    indices: torch.Tensor,
    temperatures: Sequence[float],
    *,
    cut: int,
    interp: str,
    seed: int,
    repeats: int,
    scale: torch.Tensor | None,
) -> Iterator[tuple[int, int, list[torch.Tensor]]]:
    """(draw, temperature index, [deformed images, eta]) for every draw and temperature, draws outer.

    A noise direction is drawn once per draw and rescaled for every temperature; on the last temperature it
    is rescaled in place, so consume each eta before asking for the next. The generator keeps no reference
    to the yielded tensors once the caller empties the list.
    """
    n_t = len(temperatures)
    for r in range(repeats):
        direction = rng.normal(seed, _stream("noise", r), indices, images[0].numel()).view_as(images)
        direction_norm = direction_norms(direction)
        for t, temperature in enumerate(temperatures):
            coefficients = sample_coefficients(
                float(temperature), cut, indices=indices, seed=seed, stream=_stream("diffeo", r)
            )
            deformed = apply_coefficients(images, coefficients, cut, interp)
            eta = match_norm(
                direction,
                reference,
                deformed,
                direction_norm=direction_norm,
                in_place=t == n_t - 1,
                scale=scale,
            )
            pair = [deformed, eta]
            del deformed, eta
            yield r, t, pair


def _noise_scale(
    noise_space: str, normalize: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor | None:
    if noise_space not in NOISE_SPACES:
        raise ValueError(f"noise_space must be one of {NOISE_SPACES}, got {noise_space!r}")
    return normalize[1] if noise_space == "normalized" and normalize is not None else None


def input_kind(kind: str, temperature: float | None = None, draw: int = 0) -> Hashable:
    """Key of one input kind for per-kind BatchNorm statistics: ``"clean"``, or (kind, T, draw)."""
    return "clean" if kind == "clean" else (kind, float(temperature), int(draw))


def perturbed_inputs(
    images: torch.Tensor,
    indices: torch.Tensor,
    temperatures: Sequence[float],
    *,
    cut: int = 3,
    interp: str = "linear",
    seed: int = 0,
    repeats: int = 1,
    noise_space: str = "pixel",
    normalize: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Iterator[tuple[Hashable, torch.Tensor]]:
    """The model inputs :func:`batch_stats` forwards, normalised, as (input kind, batch): the clean
    reference, then the deformed and the noisy images of every draw and temperature."""

    def norm(x: torch.Tensor) -> torch.Tensor:
        return x if normalize is None else (x - normalize[0]).div_(normalize[1])

    indices = torch.as_tensor(indices, device=images.device).to(torch.int64)
    reference = reference_images(images, interp)
    yield input_kind("clean"), norm(reference)
    scale = _noise_scale(noise_space, normalize)
    for r, t, pair in _perturbations(
        images,
        reference,
        indices,
        temperatures,
        cut=cut,
        interp=interp,
        seed=seed,
        repeats=repeats,
        scale=scale,
    ):
        deformed, eta = pair
        pair.clear()
        yield input_kind("deformed", temperatures[t], r), norm(deformed)
        del deformed
        yield input_kind("noisy", temperatures[t], r), norm(eta.add_(reference))


@torch.no_grad()
def batch_stats(
    forward: Forward,
    images: torch.Tensor,
    indices: torch.Tensor,
    temperatures: Sequence[float],
    *,
    labels: torch.Tensor | None = None,
    cut: int = 3,
    interp: str = "linear",
    seed: int = 0,
    repeats: int = 1,
    keep_components: bool = False,
    max_forward_batch: int | None = None,
    normalize: tuple[torch.Tensor, torch.Tensor] | None = None,
    fuse: bool = True,
    noise_space: str = "pixel",
    batchnorm_statistics: FullSetStatistics | None = None,
) -> StabilityStats:
    """Perturb a batch of probe images and measure how every representation moves.

    For each temperature and draw, every image gets its own diffeomorphism and its own Gaussian noise of the
    same L2 norm as ``tau x - x``, both pure functions of ``(seed, global index)``. Fields and noise
    directions are shared across temperatures (they scale with T), which makes sweeps smooth. With
    ``interp="gaussian"`` the clean reference x is the image smoothed with the same kernel
    (:func:`~hubstab.perturbations.diffeo.reference_images`), for D, G's norm matching and the denominator
    alike, so T = 0 gives tau x = x.

    Args:
        forward: maps a float batch (already normalised if ``normalize`` is given) to logits, a model output
            with logits, or a dict of representations with the logits under ``"output"``.
        images: (B, C, H, W) images in the space perturbations act in (model input in [0, 1]).
        indices: (B,) global indices of the images in the probe set.
        temperatures: temperatures to measure; the clean pass is shared by all of them.
        labels: optional (B,) labels, kept for the test error.
        cut, interp, seed, repeats: perturbation settings (``repeats`` draws per image and temperature).
        keep_components: keep per-logit squared changes (needed by the median estimator).
        max_forward_batch: largest batch given to ``forward`` (default: everything at once).
        normalize: optional (mean, std) tensors broadcastable to the images, applied after perturbing.
        fuse: forward clean, deformed and noisy inputs together where they fit in one batch.
        noise_space: ``"pixel"`` (noise isotropic in the images' space) or ``"normalized"`` (isotropic after
            dividing by ``normalize``'s std, its norm matched to ``||(tau x - x) / std||``).
        batchnorm_statistics: full-probe-set BatchNorm statistics per input kind
            (:func:`hubstab.metrics.batchnorm.full_set_batchnorm`), loaded before each kind's forward;
            implies ``fuse=False``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if interp not in INTERPOLATIONS:
        raise ValueError(f"interp must be one of {INTERPOLATIONS}, got {interp!r}")
    b = images.shape[0]
    indices = torch.as_tensor(indices, device=images.device).to(torch.int64)
    reference = reference_images(images, interp)
    scale = _noise_scale(noise_space, normalize)
    if batchnorm_statistics is not None:
        fuse = False
    max_batch = max_forward_batch or 3 * b
    clean: dict[str, torch.Tensor] | None = None
    names: list[str] = []
    diffeo_sq: dict[str, torch.Tensor] = {}
    noise_sq: dict[str, torch.Tensor] = {}
    comps_d = comps_n = None
    n_t = len(temperatures)

    def run(groups: list[torch.Tensor], kinds: list[Hashable]) -> list[dict[str, torch.Tensor]]:
        if fuse:
            # One buffer for clean, deformed and noisy inputs (the last group is eta, made noisy in place
            # there), normalised in place: the only copy of the inputs alive during the forward.
            fused = images.new_empty((len(groups) * b, *images.shape[1:]))
            for i, g in enumerate(groups[:-1]):
                fused[i * b : (i + 1) * b].copy_(g)
            torch.add(groups[-1], reference, out=fused[-b:])
            groups.clear()
            reps = _forward(forward, fused, max_batch, normalize, owned=True)
            return [{k: v[i * b : (i + 1) * b] for k, v in reps.items()} for i in range(len(fused) // b)]
        groups[-1] = groups[-1].add_(reference)  # eta -> noisy input
        out = []
        for g, kind in zip(groups, kinds, strict=True):
            if batchnorm_statistics is not None:
                batchnorm_statistics.use(kind)
            out.append(_forward(forward, g, max_batch, normalize))
        return out

    # Draws outer, temperatures inner: a noise direction is drawn once per draw and rescaled for every
    # temperature (what matched_noise would redraw each time); per-temperature sums still add draws in order.
    for r, t, pair in _perturbations(
        images,
        reference,
        indices,
        temperatures,
        cut=cut,
        interp=interp,
        seed=seed,
        repeats=repeats,
        scale=scale,
    ):
        kinds = [input_kind("deformed", temperatures[t], r), input_kind("noisy", temperatures[t], r)]
        groups = [reference, *pair] if clean is None else [*pair]
        pair.clear()  # run() releases deformed and eta once copied into the fused batch
        if clean is None:
            clean, out_d, out_n = run(groups, [input_kind("clean"), *kinds])
            names = list(clean)
            diffeo_sq = {k: images.new_zeros((n_t, b), dtype=torch.float64) for k in names}
            noise_sq = {k: images.new_zeros((n_t, b), dtype=torch.float64) for k in names}
            if keep_components:
                k_out = clean[OUTPUT].shape[1]
                comps_d = images.new_zeros((n_t, b, k_out), dtype=torch.float32)
                comps_n = images.new_zeros((n_t, b, k_out), dtype=torch.float32)
        else:
            out_d, out_n = run(groups, kinds)
        for k in names:
            diffeo_sq[k][t] += (out_d[k] - clean[k]).pow(2).sum(1).double() / repeats
            noise_sq[k][t] += (out_n[k] - clean[k]).pow(2).sum(1).double() / repeats
        if keep_components:
            comps_d[t] += (out_d[OUTPUT] - clean[OUTPUT]).pow(2) / repeats
            comps_n[t] += (out_n[OUTPUT] - clean[OUTPUT]).pow(2) / repeats
    if clean is None:
        raise ValueError("temperatures must not be empty")
    return StabilityStats(
        temperatures=[float(t) for t in temperatures],
        indices=indices,
        diffeo_sq=diffeo_sq,
        noise_sq=noise_sq,
        clean_sq={k: v.double().pow(2).sum(1) for k, v in clean.items()},
        clean_sum={k: v.double().sum(0) for k, v in clean.items()},
        outputs=clean[OUTPUT].float(),
        labels=None if labels is None else torch.as_tensor(labels, device=images.device).to(torch.int64),
        diffeo_components=comps_d,
        noise_components=comps_n,
    )


def _check_denominator(denominator: str) -> None:
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")


def mean_pair_distance(
    clean_sq: torch.Tensor, clean_sum: torch.Tensor, denominator: str = "distinct"
) -> float:
    """< ||h(x) - h(z)||^2 > over all ordered pairs of distinct images, from sum ||h||^2 and sum h.

    Equals 2 / (P - 1) * sum_i ||h_i - mean h||^2. ``denominator="all-pairs"``: the authors' mean over the
    P x P pairs including the P zero self-pairs, (P - 1) / P times the former.
    """
    _check_denominator(denominator)
    p = clean_sq.numel()
    if p < 2:
        return float("nan")
    total = clean_sq.double().sum() - clean_sum.double().pow(2).sum() / p
    return float(2.0 * total / (p if denominator == "all-pairs" else p - 1))


def median_pair_distance(outputs: torch.Tensor, seed: int = 0, denominator: str = "distinct") -> float:
    """Median of ||f(x) - f(z)||^2 over pairs of distinct images (a seeded sample of pairs above 3,000 images).

    ``denominator="all-pairs"``: the authors' median of the full P x P matrix, its zero diagonal included
    (every distinct pair counted in both orders; the lower median, as ``torch.median``).
    """
    _check_denominator(denominator)
    p = outputs.shape[0]
    if p < 2:
        return float("nan")
    out = outputs.double()
    self_pairs = denominator == "all-pairs"
    if p <= MEDIAN_PAIR_LIMIT:
        i, j = torch.triu_indices(p, p, offset=1, device=out.device)
    else:
        gen = torch.Generator().manual_seed(seed)
        i = torch.randint(p, (2_000_000,), generator=gen)
        # with self-pairs, j is uniform over all images (i itself with probability 1 / P)
        j = (
            torch.randint(p, (2_000_000,), generator=gen)
            if self_pairs
            else (i + torch.randint(1, p, (2_000_000,), generator=gen)) % p
        )
        i, j = i.to(out.device), j.to(out.device)
        self_pairs = False  # already in the sample
    dist = torch.cat(
        [(out[a] - out[c]).pow(2).sum(1) for a, c in zip(i.split(1 << 20), j.split(1 << 20), strict=True)]
    )
    if self_pairs:
        dist = torch.cat([dist, dist, dist.new_zeros(p)])
    return float(dist.median())


def _bootstrap_indices(p: int, n_boot: int, seed: int) -> Iterator[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    per_chunk = max(1, (1 << 22) // max(p, 1))
    done = 0
    while done < n_boot:
        n = min(per_chunk, n_boot - done)
        yield torch.randint(p, (n, p), generator=gen)
        done += n


def _interval(samples: torch.Tensor, confidence: float) -> tuple[float, float]:
    samples = samples[torch.isfinite(samples)]
    if samples.numel() == 0:
        return (float("nan"), float("nan"))
    alpha = (1.0 - confidence) / 2.0
    q = torch.quantile(samples.double(), torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64))
    return (float(q[0]), float(q[1]))


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def reduce_stats(
    stats: StabilityStats,
    *,
    estimator: Estimator = "mean",
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    representation: str = OUTPUT,
    denominator: str = "distinct",
) -> list[dict[str, float | tuple[float, float]]]:
    """D, G, R and the bootstrap interval of R for one representation, one dict per temperature.

    ``mean``: D = <||h(tau x) - h(x)||^2> / <||h(x) - h(z)||^2>, averages over images and over distinct pairs.
    ``median`` (paper's first code; output only): per-logit medians over images, summed, over the median of
    ||f(x) - f(z)||^2 over pairs. The interval resamples probe images with replacement ``bootstrap`` times.
    ``denominator``: pairs of distinct images (default) or ``"all-pairs"``, the authors' P x P including the
    zero self-pairs (mean: D and G larger by P / (P - 1); R unchanged).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    p = stats.num_images
    d_all = stats.diffeo_sq[representation].double().cpu()
    g_all = stats.noise_sq[representation].double().cpu()
    if estimator == "mean":
        pairs = mean_pair_distance(
            stats.clean_sq[representation].cpu(), stats.clean_sum[representation].cpu(), denominator
        )
    else:
        if representation != OUTPUT or stats.diffeo_components is None:
            raise ValueError(
                "the median estimator needs per-logit values: it is available on the output only"
            )
        pairs = median_pair_distance(stats.outputs.cpu(), seed=seed, denominator=denominator)
    points = []
    for t in range(len(stats.temperatures)):
        if estimator == "mean":
            d_num, g_num = float(d_all[t].mean()), float(g_all[t].mean())
            boot = []
            for idx in _bootstrap_indices(p, bootstrap, seed):
                boot.append(d_all[t][idx].sum(1) / g_all[t][idx].sum(1))
        else:
            comp_d = stats.diffeo_components[t].double().cpu()
            comp_n = stats.noise_components[t].double().cpu()
            d_num = float(comp_d.median(0).values.sum())
            g_num = float(comp_n.median(0).values.sum())
            boot = []
            for idx in _bootstrap_indices(p, bootstrap, seed):
                for row in idx.split(max(1, (1 << 24) // max(comp_d.numel(), 1))):
                    boot.append(comp_d[row].median(1).values.sum(1) / comp_n[row].median(1).values.sum(1))
        samples = torch.cat(boot) if boot else torch.empty(0)
        points.append(
            {
                "temperature": stats.temperatures[t],
                "diffeo_stability": _ratio(d_num, pairs),
                "noise_stability": _ratio(g_num, pairs),
                "relative_stability": _ratio(d_num, g_num),
                # a NaN R_f never gets a finite interval (the interval drops non-finite resamples)
                "relative_stability_ci": _interval(samples, confidence)
                if bootstrap > 0 and math.isfinite(_ratio(d_num, g_num))
                else (math.nan, math.nan),
            }
        )
    return points


def test_error(stats: StabilityStats) -> tuple[float | None, int]:
    """Top-1 error of the clean logits on the images with a known label (>= 0), and how many there were."""
    if stats.labels is None:
        return None, 0
    known = stats.labels >= 0
    n = int(known.sum())
    if n == 0:
        return None, 0
    wrong = stats.outputs[known].argmax(1).cpu() != stats.labels[known].cpu()
    return float(wrong.double().mean()), n


def protocol_temperature(
    height: int, width: int, cut: int, *, delta: float | None, temperature: float | None
) -> tuple[float, float]:
    """(T, delta) of the protocol: from ``temperature`` if given, else from ``delta`` pixels."""
    n = effective_side(height, width)
    if temperature is not None:
        if delta is not None and not math.isclose(temperature_for_displacement(delta, cut, n), temperature):
            raise ValueError("give either delta or temperature, not both")
        return float(temperature), typical_displacement(temperature, cut, n)
    if delta is None:
        raise ValueError("give delta (pixels) or temperature")
    return temperature_for_displacement(delta, cut, n), float(delta)


def settings_dict(
    *,
    temperature: float,
    delta: float,
    cut: int,
    interp: str,
    estimator: str,
    seed: int,
    repeats: int,
    image_size: tuple[int, int],
    num_images: int,
    bootstrap: int,
    confidence: float,
    batchnorm: str,
    amp_dtype: torch.dtype | None,
    noise_space: str = "pixel",
    denominator: str = "distinct",
) -> dict[str, Any]:
    """Every setting that produced a result, in the form results files record."""
    from hubstab._version import __version__

    height, width = image_size
    if noise_space not in NOISE_SPACES:
        raise ValueError(f"noise_space must be one of {NOISE_SPACES}, got {noise_space!r}")
    _check_denominator(denominator)
    pairs = {
        ("mean", "distinct"): "mean over distinct ordered pairs",
        ("median", "distinct"): "median over pairs",
        ("mean", "all-pairs"): "mean over all P x P ordered pairs, the P zero self-pairs included (authors' "
        "convention: D_f and G_f larger by P / (P - 1), R_f unchanged)",
        (
            "median",
            "all-pairs",
        ): "median of the P x P matrix, its zero diagonal included (authors' convention)",
    }[(estimator, denominator)]
    return {
        "temperature": float(temperature),
        "delta": float(delta),
        "cut": int(cut),
        "interp": interp,
        "estimator": estimator,
        "seed": int(seed),
        "repeats": int(repeats),
        "image_size": [int(height), int(width)],
        "effective_side": effective_side(height, width),
        "num_images": int(num_images),
        "bootstrap": int(bootstrap),
        "confidence": float(confidence),
        "batchnorm": batchnorm,
        "amp_dtype": None if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
        "noise": "gaussian, L2 norm matched to tau x - x per image, not clipped"
        + ("" if noise_space == "pixel" else "; isotropic after mean/std normalisation, norms taken there"),
        "noise_space": noise_space,
        "perturbation_space": "model input in [0, 1] after resize/crop, before mean/std normalisation",
        "clean_reference": "the image smoothed with the same Gaussian kernel (T = 0 gives tau x = x)"
        if interp == "gaussian"
        else "the image",
        "batchnorm_statistics": bn.DESCRIPTION if batchnorm == "batch" else bn.RUNNING_DESCRIPTION,
        "field_scaling": "dx = W * u, dy = H * v; delta <-> T on n = sqrt((H^2 + W^2) / 2)",
        "random_numbers": "counter-based, keyed by (seed, global image index); shared across temperatures",
        "denominator": pairs,
        "denominator_pairs": denominator,
        "hubstab_version": __version__,
    }


def build_result(
    stats: StabilityStats,
    settings: dict[str, Any],
    *,
    headline_temperature: float,
    include_per_sample: bool = False,
) -> StabilityResult:
    """Reduce merged statistics into a :class:`StabilityResult` (headline at ``headline_temperature``)."""
    kw = dict(
        estimator=settings["estimator"],
        bootstrap=settings["bootstrap"],
        confidence=settings["confidence"],
        seed=settings["seed"],
        denominator=settings.get("denominator_pairs", "distinct"),
    )
    points = reduce_stats(stats, **kw)
    side = settings["effective_side"]
    cut = settings["cut"]
    sweep = [
        StabilityPoint(
            temperature=pt["temperature"],
            delta=typical_displacement(pt["temperature"], cut, side) if cut >= 2 else math.nan,
            relative_stability=pt["relative_stability"],
            diffeo_stability=pt["diffeo_stability"],
            noise_stability=pt["noise_stability"],
            relative_stability_ci=tuple(pt["relative_stability_ci"]),
        )
        for pt in points
    ]
    head = min(range(len(sweep)), key=lambda i: abs(sweep[i].temperature - headline_temperature))
    error, n_err = test_error(stats)
    notes = []
    if stats.labels is not None and error is None:
        notes.append("no test error: none of the probe images has a label in the model's label space")
    layers = {}
    for name in stats.diffeo_sq:
        if name == OUTPUT:
            continue
        layer_points = reduce_stats(stats, **{**kw, "estimator": "mean"}, representation=name)
        layers[name] = {
            "temperatures": [pt["temperature"] for pt in layer_points],
            "diffeo_stability": [pt["diffeo_stability"] for pt in layer_points],
            "noise_stability": [pt["noise_stability"] for pt in layer_points],
            "relative_stability": [pt["relative_stability"] for pt in layer_points],
            "relative_stability_ci": [list(pt["relative_stability_ci"]) for pt in layer_points],
        }
    per_sample = None
    if include_per_sample:
        per_sample = {
            "index": stats.indices.tolist(),
            "diffeo_sq": stats.diffeo_sq[OUTPUT][head].tolist(),
            "noise_sq": stats.noise_sq[OUTPUT][head].tolist(),
        }
        if stats.labels is not None:
            per_sample["label"] = stats.labels.tolist()
            per_sample["prediction"] = stats.outputs.argmax(1).tolist()
    h = sweep[head]
    return StabilityResult(
        relative_stability=h.relative_stability,
        diffeo_stability=h.diffeo_stability,
        noise_stability=h.noise_stability,
        relative_stability_ci=h.relative_stability_ci,
        test_error=error,
        num_images=stats.num_images,
        settings={**settings, "num_error_images": n_err, "temperatures": [p.temperature for p in sweep]},
        sweep=sweep,
        layers=layers,
        notes=notes,
        per_sample=per_sample,
    )


@contextlib.contextmanager
def evaluation_mode(model: nn.Module, batchnorm: str = "eval") -> Iterator[None]:
    """Put ``model`` in eval mode for the measurement (restored afterwards).

    ``batchnorm="batch"`` keeps BatchNorm layers on batch statistics, as the paper did at initialisation;
    their running buffers are restored afterwards so the model is left unchanged.
    """
    if batchnorm not in ("eval", "batch"):
        raise ValueError(f"batchnorm must be 'eval' or 'batch', got {batchnorm!r}")
    was_training = {m: m.training for m in model.modules()}
    saved = {}
    model.eval()
    if batchnorm == "batch":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
                saved[m] = {k: v.clone() for k, v in m.named_buffers(recurse=False)}
    try:
        yield
    finally:
        for m, buffers in saved.items():
            for k, v in buffers.items():
                getattr(m, k).copy_(v)
        for m, flag in was_training.items():
            m.training = flag


def _as_normalize(mean, std, device, channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ValueError("give both mean and std, or neither")
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(-1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).reshape(-1)
    if m.numel() not in (1, channels) or s.numel() not in (1, channels):
        raise ValueError(f"mean and std need 1 or {channels} values")
    return m.view(1, -1, 1, 1), s.view(1, -1, 1, 1)


def relative_stability(
    model: nn.Module | Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int] | None = None,
    *,
    delta: float | None = 1.0,
    temperature: float | None = None,
    temperatures: Sequence[float] | None = None,
    cut: int = 3,
    estimator: Estimator = "mean",
    seed: int = 0,
    batch_size: int = 96,
    interp: str = "linear",
    repeats: int = 1,
    mean: Sequence[float] | torch.Tensor | None = None,
    std: Sequence[float] | torch.Tensor | None = None,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    batchnorm: str = "eval",
    amp_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    indices: torch.Tensor | Sequence[int] | None = None,
    per_sample: bool = False,
    layers: str | Sequence[str] | None = None,
    nonfinite: str = "error",
    noise_space: str = "pixel",
    denominator: str = "distinct",
) -> StabilityResult:
    """Relative stability R_f = D_f / G_f of a model on a tensor of probe images.

    Args:
        model: maps images in [0, 1] (B, C, H, W) to logits. A network trained on normalised inputs is given
            with ``mean``/``std`` (normalisation then happens after perturbing), or wrapped beforehand.
        images: (P, C, H, W) probe images in [0, 1] at the model's input size (P >= 2).
        labels: optional (P,) class indices for the test error (-1 marks an unknown label).
        delta: typical displacement in pixels of the protocol temperature (default 1 px).
        temperature: the protocol temperature T itself, instead of ``delta``.
        temperatures: further temperatures measured in the same call (a sweep sharing the clean pass);
            all appear in ``result.sweep``.
        cut: high-frequency cut-off c of the diffeomorphisms.
        estimator: ``"mean"`` (default) or the paper's ``"median"``.
        seed: seed of the per-image fields and noise (the same seed gives the same perturbations).
        batch_size: largest batch given to the model; clean, deformed and noisy inputs count separately.
        interp: interpolation of the deformation, ``"linear"``, ``"nearest"`` or ``"gaussian"``.
        repeats: diffeomorphism and noise draws per image.
        mean, std: per-channel normalisation applied after perturbing.
        bootstrap: number of bootstrap resamples of the probe images for the interval of R_f (0: none).
        confidence: level of that interval.
        batchnorm: ``"eval"`` (running statistics) or ``"batch"``: batch statistics as the paper used at
            initialisation, i.e. every BatchNorm layer normalises with the mean and variance over the whole
            probe set of each input kind (clean; deformed; noisy), independent of ``batch_size``
            (:mod:`hubstab.metrics.batchnorm`). Needs ``model`` to be an ``nn.Module``.
        amp_dtype: run the model under autocast with this dtype (e.g. ``torch.bfloat16``).
        device: where to compute (default: the model's device, else the images').
        indices: global indices of the images (default 0..P-1); they key the random perturbations.
        per_sample: keep per-image values in ``result.per_sample``.
        layers: also measure D_k, G_k, R_k after these modules of ``model`` (``"blocks"``, ``"all"`` or
            module names, see :func:`hubstab.metrics.layers.resolve_layers`), each with its own denominator;
            they appear in ``result.layers`` (mean estimator) in the order given.
        nonfinite: probe images whose outputs are NaN or infinite raise
            :class:`hubstab.metrics.finite.NonFiniteError` with their count (``"error"``, default), or are
            left out with a note (``"exclude"``).
        noise_space: ``"pixel"`` (default: noise isotropic in [0, 1] pixels) or ``"normalized"`` (isotropic
            after ``(x - mean) / std``, as the authors' CIFAR-10 and Fashion-MNIST experiments; differs only
            when the per-channel stds differ).
        denominator: ``"distinct"`` (default: pairs of distinct images) or ``"all-pairs"`` (the authors'
            P x P including the zero self-pairs; D_f, G_f larger by P / (P - 1) with the mean, R_f unchanged).

    Returns:
        A :class:`StabilityResult`; ``result.relative_stability`` is R_f.
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (P, C, H, W), got {tuple(images.shape)}")
    p, channels, height, width = images.shape
    if p < 2:
        raise ValueError("R_f needs at least 2 probe images (the denominator compares distinct images)")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    if not images.is_floating_point():
        raise TypeError("images must be a float tensor with values in [0, 1]")
    if noise_space not in NOISE_SPACES:
        raise ValueError(f"noise_space must be one of {NOISE_SPACES}, got {noise_space!r}")
    _check_denominator(denominator)
    if batchnorm == "batch" and not isinstance(model, nn.Module):
        raise ValueError(
            "batchnorm='batch' needs the model as an nn.Module (its BatchNorm layers are calibrated)"
        )
    if device is None:
        param = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
        device = param.device if param is not None else images.device
    device = torch.device(device)
    t0, delta0 = protocol_temperature(
        height, width, cut, delta=delta if temperature is None else None, temperature=temperature
    )
    temps = sorted({t0, *[float(t) for t in (temperatures or [])]})
    if indices is None:
        indices = torch.arange(p)
    indices = torch.as_tensor(indices, dtype=torch.int64)
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.shape != (p,):
            raise ValueError(f"labels must have shape ({p},), got {tuple(labels.shape)}")
    normalize = _as_normalize(mean, std, device, channels)
    probe = max(1, batch_size // 3)
    amp = (
        torch.autocast(device_type=device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    parts = []
    full_set = batchnorm == "batch" and bool(bn.batchnorm_layers(model))
    if batchnorm not in ("eval", "batch"):
        raise ValueError(f"batchnorm must be 'eval' or 'batch', got {batchnorm!r}")
    mode = (
        evaluation_mode(model, "eval" if full_set else batchnorm)
        if isinstance(model, nn.Module)
        else contextlib.nullcontext()
    )
    if layers is not None:
        from hubstab.metrics.layers import layer_forward

        hooks = layer_forward(model, layers)
    else:
        hooks = contextlib.nullcontext(model)
    from hubstab.metrics.finite import NonFiniteError, exclusion_note, measure_finite

    excluded: list[int] = []
    calibration: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if full_set:

        def batches() -> Iterator[Iterator[tuple[Hashable, torch.Tensor]]]:
            for start in range(0, p, batch_size):
                yield perturbed_inputs(
                    images[start : start + batch_size].to(device),
                    indices[start : start + batch_size].to(device),
                    temps,
                    cut=cut,
                    interp=interp,
                    seed=seed,
                    repeats=repeats,
                    noise_space=noise_space,
                    normalize=normalize,
                )

        example = images[:1].to(device)
        if normalize is not None:
            example = (example - normalize[0]) / normalize[1]
        # calibrated on this process's images only: relative_stability is a single-process function
        calibration = bn.full_set_batchnorm(model, model, batches, example, distributed=False)
    with mode, amp, hooks as forward, calibration as statistics:
        for start in range(0, p, probe):
            sl = slice(start, start + probe)

            def measure(keep: torch.Tensor, sl: slice = sl) -> StabilityStats:
                return batch_stats(
                    forward,
                    images[sl][keep].to(device),
                    indices[sl][keep].to(device),
                    temps,
                    labels=None if labels is None else labels[sl][keep].to(device),
                    cut=cut,
                    interp=interp,
                    seed=seed,
                    repeats=repeats,
                    keep_components=estimator == "median",
                    max_forward_batch=batch_size,
                    normalize=normalize,
                    fuse=batchnorm == "eval",
                    noise_space=noise_space,
                    batchnorm_statistics=statistics,
                )

            block, bad = measure_finite(
                measure, torch.ones(indices[sl].shape[0], dtype=torch.bool), nonfinite
            )
            excluded += bad
            if block is not None:
                parts.append(block)
    if excluded and nonfinite == "error":
        raise NonFiniteError(len(excluded), p, "; nonfinite='exclude' leaves them out")
    if sum(part.num_images for part in parts) < 2:
        raise NonFiniteError(len(excluded), p, "; fewer than 2 finite images are left")
    # statistics stay on the device until the end: no host-device synchronisation per batch
    stats = StabilityStats.cat(parts).to("cpu")
    settings = settings_dict(
        temperature=t0,
        delta=delta0,
        cut=cut,
        interp=interp,
        estimator=estimator,
        seed=seed,
        repeats=repeats,
        image_size=(height, width),
        num_images=p,
        bootstrap=bootstrap,
        confidence=confidence,
        batchnorm=batchnorm,
        amp_dtype=amp_dtype,
        noise_space=noise_space,
        denominator=denominator,
    )
    result = build_result(stats, settings, headline_temperature=t0, include_per_sample=per_sample)
    if excluded:
        result.notes.append(exclusion_note(len(excluded), p))
        result.settings["num_nonfinite_excluded"] = len(excluded)
        result.settings["num_images_requested"] = p
    return result
