"""Effective dimension of class manifolds by cutting planes (Fort, Cubuk, Ganguli, Schoenholz, 2022).

From a starting image X0 not of the target class, take a random d-dimensional affine subspace X0 + theta M
(M: d x D Gaussian, rows normalised to unit norm, D = C H W) and optimise theta with Adam to maximise the
probability of the target class; record the best probability reached. Sweeping d and fitting a sigmoid in
log d to (d, probability) gives d*, the subspace dimension at which ``threshold`` is reached. By Gordon's escape
theorem a random subspace of dimension d meets a set of dimension n about when d + n > D, so the class
manifold's effective dimension is D - d* (higher: a larger high-confidence region).

All subspaces of a chunk of (image, d, repeat) jobs are optimised together in one batch (one model forward per
step; the subspace step is a batched matrix product per distinct d). The directions of job (image i, d, r)
are a pure function of (seed, d, r, global index i), so results do not depend on chunking or device.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from hubstab.errors import ArgumentError
from hubstab.metrics.equivariance import _finite
from hubstab.metrics.stability import _as_normalize, as_logits, evaluation_mode
from hubstab.perturbations import rng


@dataclass
class ClassManifoldResult:
    """Cutting-plane probe of a class manifold (higher effective dimension: larger confident region).

    Attributes:
        target_class: the class whose probability was maximised.
        dims: subspace dimensions d probed, increasing.
        probabilities: best target probability reached per d, averaged over starting images and repeats.
        d_star: d at which the fitted sigmoid in log d reaches ``threshold`` (a bound, see ``status``).
        effective_dimension: input_dim - d_star.
        input_dim: D = C H W.
        threshold: the probability defining d*.
        steps, lr, repeats, seed: optimisation settings (Adam, steps per subspace, random subspaces per d).
        num_images: starting images used.
        status: ``"fit"`` (the curve crosses the threshold), ``"above_at_all_dims"`` (already reached at the
            smallest d: d_star is that d, an upper bound) or ``"below_at_all_dims"`` (never reached: d_star is
            the largest d, a lower bound).
        d_star_interpolated: linear interpolation in log d at the first crossing (None without one).
        probabilities_std: standard deviation of the best probabilities over images and repeats, per d.
        start_probability: mean target probability of the starting images.
        fit: the sigmoid p = 1 / (1 + exp(-slope (log d - center))) fitted by least squares.
        settings: everything else (clamping, early stop, normalisation, how starting images were chosen).
    """

    target_class: int
    dims: list[int]
    probabilities: list[float]
    d_star: float
    effective_dimension: float
    input_dim: int
    threshold: float
    steps: int
    lr: float
    repeats: int
    seed: int
    num_images: int
    status: str = "fit"
    d_star_interpolated: float | None = None
    probabilities_std: list[float] = field(default_factory=list)
    start_probability: float = math.nan
    fit: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    higher_is_better = True

    def to_dict(self) -> dict[str, Any]:
        """The results-file record (non-finite floats become None)."""
        return _finite(asdict(self))

    def summary(self) -> str:
        """A few lines for humans."""
        bound = {"above_at_all_dims": " (upper bound)", "below_at_all_dims": " (lower bound)"}.get(
            self.status, ""
        )
        curve = ", ".join(f"{d}: {p:.3f}" for d, p in zip(self.dims, self.probabilities, strict=True))
        return (
            f"class {self.target_class}: d* = {self.d_star:.4g}{bound}, effective dimension "
            f"{self.effective_dimension:.6g} of D = {self.input_dim} ({self.num_images} images)\n  p(d): {curve}"
        )


def default_dims(input_dim: int, limit: int = 4096) -> list[int]:
    """Powers of two below D (up to ``limit``), and D itself when D <= ``limit``."""
    dims = [1 << k for k in range(64) if (1 << k) < min(input_dim, limit + 1)]
    if input_dim <= limit:
        dims.append(input_dim)
    return dims


def fit_threshold_dimension(
    dims: Sequence[int], probabilities: Sequence[float], threshold: float = 0.5
) -> dict[str, Any]:
    """Fit p(d) = 1 / (1 + exp(-slope (log d - center))) and read the d where it equals ``threshold``.

    The least-squares fit is a grid search (center over the log-d range widened by 2, slope in [0.1, 30]),
    deterministic and free of starting points. Without a crossing the fit is not extrapolated: d* is the
    smallest d (an upper bound) when every probability is at least ``threshold``, and the largest d
    (a lower bound) when none is.

    Returns:
        ``{"d_star", "status", "d_star_interpolated", "center", "slope"}``.
    """
    d = torch.tensor([float(v) for v in dims], dtype=torch.float64)
    p = torch.tensor([float(v) for v in probabilities], dtype=torch.float64)
    if d.numel() < 1 or d.shape != p.shape:
        raise ArgumentError("give one probability per dimension")
    if not 0 < threshold < 1:
        raise ArgumentError(f"threshold must be in (0, 1), got {threshold!r}")
    logd = d.log()
    centers = torch.linspace(float(logd.min()) - 2.0, float(logd.max()) + 2.0, 1201, dtype=torch.float64)
    slopes = torch.logspace(-1.0, math.log10(30.0), 161, dtype=torch.float64)
    pred = torch.sigmoid(slopes.view(1, -1, 1) * (logd.view(1, 1, -1) - centers.view(-1, 1, 1)))
    sse = (pred - p).pow(2).sum(-1)
    best = int(sse.argmin())
    center, slope = float(centers[best // slopes.numel()]), float(slopes[best % slopes.numel()])

    interpolated = None
    above = (p >= threshold).tolist()
    for j in range(1, len(above)):
        if above[j] and not above[j - 1]:
            t = (threshold - float(p[j - 1])) / (float(p[j]) - float(p[j - 1]))
            interpolated = math.exp(float(logd[j - 1]) + t * float(logd[j] - logd[j - 1]))
            break
    if all(above):
        status, d_star = "above_at_all_dims", float(d.min())
    elif not any(above):
        status, d_star = "below_at_all_dims", float(d.max())
    else:
        status = "fit"
        d_star = math.exp(center + math.log(threshold / (1.0 - threshold)) / slope)
        d_star = min(max(d_star, float(d.min())), float(d.max()))
    return {
        "d_star": d_star,
        "status": status,
        "d_star_interpolated": interpolated,
        "center": center,
        "slope": slope,
    }


def _directions(seed: int, index: int, d: int, r: int, dim: int, device: torch.device) -> torch.Tensor:
    """(d, D) Gaussian directions with unit-norm rows for job (image index, d, repeat r)."""
    z = rng.normal(seed, f"manifold/{d}/{r}", torch.tensor([index], device=device), d * dim).view(d, dim)
    return z / z.norm(dim=1, keepdim=True)


def class_manifold_dimension(
    model: nn.Module | Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    target_class: int,
    *,
    dims: Sequence[int] | None = None,
    repeats: int = 3,
    steps: int = 300,
    lr: float = 5e-2,
    threshold: float = 0.5,
    seed: int = 0,
    labels: torch.Tensor | Sequence[int] | None = None,
    clamp: bool = False,
    early_stop: float = 0.99,
    patience: int = 50,
    mean: Sequence[float] | torch.Tensor | None = None,
    std: Sequence[float] | torch.Tensor | None = None,
    batch_size: int = 256,
    max_elements: int = 1 << 26,
    batchnorm: str = "eval",
    device: torch.device | str | None = None,
    indices: torch.Tensor | Sequence[int] | None = None,
) -> ClassManifoldResult:
    """Effective dimension D - d* of the high-confidence region of ``target_class``, by cutting planes.

    Args:
        model: maps images in [0, 1] (B, C, H, W) to logits; ``mean``/``std`` normalise after the subspace step.
        images: (N, C, H, W) starting images X0. Those of the target class are left out: by ``labels`` when
            given, otherwise those the model already classifies as ``target_class``.
        target_class: index of the class whose probability is maximised.
        dims: subspace dimensions d (default: powers of two below D and D itself, up to
            min(4096, max_elements / D)).
        repeats: random subspaces per starting image and d.
        steps: Adam steps per subspace (at most; see ``early_stop`` and ``patience``).
        lr: Adam learning rate on theta.
        threshold: the probability p defining d*(p).
        seed: seed of the random subspaces.
        labels: optional (N,) labels of the starting images.
        clamp: clamp X0 + theta M to [0, 1] before the model (default False: the subspace lives in R^D, as in
            Gordon's theorem; recorded in the settings).
        early_stop: stop a chunk once every subspace has reached this probability.
        patience: also stop once no subspace improved its best probability by 1e-4 for this many steps.
        mean, std: per-channel normalisation applied to X0 + theta M.
        batch_size: most subspaces optimised together.
        max_elements: most direction entries (sum of d times D) held at once; chunks are split to fit.
        batchnorm: ``"eval"`` (running statistics) or ``"batch"``.
        device: where to compute (default: the model's device, else the images').
        indices: global indices of the starting images (default 0..N-1); they key the random subspaces.

    Returns:
        A :class:`ClassManifoldResult`.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ArgumentError(
            f"images must be a float tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    n, channels, height, width = images.shape
    input_dim = channels * height * width
    dims = (
        default_dims(input_dim, min(4096, max_elements // input_dim))
        if dims is None
        else sorted({int(d) for d in dims})
    )
    if not dims or dims[0] < 1 or dims[-1] > input_dim:
        raise ArgumentError(f"dims must be integers in [1, D = {input_dim}], got {dims}")
    if repeats < 1 or steps < 0 or lr <= 0 or patience < 1:
        raise ArgumentError("repeats and patience must be >= 1, steps >= 0 and lr > 0")
    if not 0 < threshold < 1 or not 0 < early_stop <= 1:
        raise ArgumentError("threshold must be in (0, 1) and early_stop in (0, 1]")
    if max(dims) * input_dim > max_elements:
        raise ArgumentError(
            f"a {max(dims)}-dimensional subspace of R^{input_dim} needs {max(dims) * input_dim} direction entries, "
            f"more than max_elements = {max_elements}: lower dims or raise max_elements"
        )
    if device is None:
        param = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
        device = param.device if param is not None else images.device
    device = torch.device(device)
    indices = torch.arange(n) if indices is None else torch.as_tensor(indices, dtype=torch.int64)
    if indices.shape != (n,):
        raise ArgumentError(f"indices must have shape ({n},), got {tuple(indices.shape)}")
    normalize = _as_normalize(mean, std, device, channels)
    run_mode = evaluation_mode(model, batchnorm) if isinstance(model, nn.Module) else contextlib.nullcontext()

    def log_probs(x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, channels, height, width)
        if clamp:
            x = x.clamp(0.0, 1.0)
        if normalize is not None:
            x = (x - normalize[0]) / normalize[1]
        return torch.log_softmax(as_logits(model(x)).float(), dim=-1)

    with run_mode:
        with torch.no_grad():
            start_lp = torch.cat(
                [log_probs(images[i : i + batch_size].to(device)) for i in range(0, n, batch_size)]
            )
        if not 0 <= int(target_class) < start_lp.shape[1]:
            raise ArgumentError(f"target_class must be in [0, {start_lp.shape[1]}), got {target_class!r}")
        target = int(target_class)
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.int64)
            if labels.shape != (n,):
                raise ArgumentError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
            keep = (labels != target).nonzero().flatten().tolist()
            selection = "labels"
        else:
            keep = (start_lp.argmax(1).cpu() != target).nonzero().flatten().tolist()
            selection = "prediction"
        if not keep:
            raise ArgumentError(f"every starting image is of class {target}: give images of other classes")

        jobs = [(i, j, r) for i in keep for j in range(len(dims)) for r in range(repeats)]
        best = torch.zeros(len(jobs), dtype=torch.float64)
        steps_run = 0
        chunk: list[int] = []
        load = 0
        for job_id, (_, j, _) in enumerate([*jobs, (None, None, None)]):
            d = dims[j] if j is not None else 0
            if chunk and (j is None or len(chunk) >= batch_size or load + d * input_dim > max_elements):
                values, used = _optimise(
                    [jobs[k] for k in chunk], dims, images, indices, log_probs, target, input_dim,
                    steps=steps, lr=lr, seed=seed, early_stop=early_stop, patience=patience, device=device,
                )  # fmt: skip
                best[chunk] = values.double().cpu()
                steps_run = max(steps_run, used)
                chunk, load = [], 0
            if j is not None:
                chunk.append(job_id)
                load += d * input_dim

    table = best.view(len(keep), len(dims), repeats).permute(1, 0, 2).reshape(len(dims), -1)
    probs = table.mean(1)
    fit = fit_threshold_dimension(dims, probs.tolist(), threshold)
    stds = table.std(1) if table.shape[1] > 1 else torch.full((len(dims),), math.nan, dtype=torch.float64)
    return ClassManifoldResult(
        target_class=target,
        dims=list(dims),
        probabilities=[float(v) for v in probs],
        d_star=float(fit["d_star"]),
        effective_dimension=float(input_dim - fit["d_star"]),
        input_dim=int(input_dim),
        threshold=float(threshold),
        steps=int(steps),
        lr=float(lr),
        repeats=int(repeats),
        seed=int(seed),
        num_images=len(keep),
        status=fit["status"],
        d_star_interpolated=fit["d_star_interpolated"],
        probabilities_std=[float(v) for v in stds],
        start_probability=float(start_lp[keep, target].exp().mean()),
        fit={"center": fit["center"], "slope": fit["slope"]},
        settings={
            "clamp": bool(clamp),
            "early_stop": float(early_stop),
            "patience": int(patience),
            "steps_run": int(steps_run),
            "start_selection": selection,
            "excluded_images": int(n - len(keep)),
            "image_size": [height, width],
            "normalize": None
            if normalize is None
            else {"mean": normalize[0].flatten().tolist(), "std": normalize[1].flatten().tolist()},
            "batchnorm": batchnorm,
            "optimizer": "adam",
            "directions": "Gaussian, unit-norm rows, independent per (image, d, repeat)",
            "fit": "least-squares sigmoid in log d (grid search)",
        },
    )


def _optimise(
    jobs: list[tuple[int, int, int]],
    dims: Sequence[int],
    images: torch.Tensor,
    indices: torch.Tensor,
    log_probs: Callable[[torch.Tensor], torch.Tensor],
    target: int,
    input_dim: int,
    *,
    steps: int,
    lr: float,
    seed: int,
    early_stop: float,
    patience: int,
    device: torch.device,
) -> tuple[torch.Tensor, int]:
    """Optimise the subspaces of a chunk of jobs together; (best probability per job, Adam steps taken).

    Jobs of the same d share one (n_d, d) theta and one (n_d, d, D) block of directions, so the subspace step
    is a batched matrix product per distinct d.
    """
    s = len(jobs)
    x0 = torch.stack([images[i].to(device).reshape(-1).float() for i, _, _ in jobs])
    groups: dict[int, list[int]] = {}
    for k, (_, j, _) in enumerate(jobs):
        groups.setdefault(dims[j], []).append(k)
    order = torch.tensor([k for members in groups.values() for k in members], device=device)
    position = torch.empty_like(order)
    position[order] = torch.arange(s, device=device)
    blocks = [
        torch.stack(
            [_directions(seed, int(indices[jobs[k][0]]), d, jobs[k][2], input_dim, device) for k in members]
        )
        for d, members in groups.items()
    ]
    thetas = [
        torch.zeros((len(members), d), device=device, requires_grad=True) for d, members in groups.items()
    ]
    optimizer = torch.optim.Adam(thetas, lr=lr)
    best = torch.zeros(s, device=device)
    last_gain = 0
    step = 0
    for step in range(steps + 1):
        delta = torch.cat(
            [torch.bmm(t.unsqueeze(1), m).squeeze(1) for t, m in zip(thetas, blocks, strict=True)]
        )
        x = x0 + delta.index_select(0, position)
        logp = log_probs(x)[:, target]
        prob = logp.detach().exp()
        if step == 0 or bool((prob > best + 1e-4).any()):
            last_gain = step
        best = torch.maximum(best, prob)
        if step == steps or bool((best >= early_stop).all()) or step - last_gain >= patience:
            break
        grads = torch.autograd.grad(-logp.sum(), thetas)
        for t, g in zip(thetas, grads, strict=True):
            t.grad = g
        optimizer.step()
    return best, step
