"""Max-entropy diffeomorphisms of Petrini et al. (NeurIPS 2021), sampled and applied in batches.

A displacement field tau = (u, v) on the unit square has independent components

    u(x, y) = sum_{i, j >= 1, i^2 + j^2 < (c + 1/2)^2} C_ij sin(i pi x) sin(j pi y),   C_ij ~ N(0, T / (i^2 + j^2)).

On an H x W image (pixel centres at linspace(0, 1, W) across and linspace(0, 1, H) down) the horizontal
displacement is ``W * u`` pixels and the vertical one ``H * v`` pixels; a pixel takes the value of the source
image at ``(x - dx, y - dy)``, coordinates clamped to the image. Sampling parameters (:func:`sample_coefficients`)
is separate from applying them (:func:`apply_coefficients`), so a perturbation can be replayed exactly.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F

from hubstab.perturbations import rng

Interpolation = Literal["linear", "nearest", "gaussian"]
INTERPOLATIONS: tuple[str, ...] = ("linear", "nearest", "gaussian")
GAUSSIAN_SIGMA = 0.4715
"""Width in pixels of the Gaussian interpolation kernel of the reference implementation."""


def _check_cut(cut: int, *, closed_form: bool = False) -> int:
    if isinstance(cut, bool) or int(cut) != cut or cut < 1:
        raise ValueError(f"cut must be a positive integer (the paper uses 3, 5 or 15), got {cut!r}")
    if closed_form and cut < 2:
        raise ValueError("the closed forms involve log(cut): use cut >= 2")
    return int(cut)


def temperature_range(n: int, cut: int = 3) -> tuple[float, float]:
    """The admissible temperatures (T1, T2) for an n x n image and cut-off ``cut``.

    T1 = 1 / (pi n^2 log c) gives a typical displacement of half a pixel; T2 = 4 / (pi^3 c^2 log c) is the
    largest temperature without fold-overs (independent of n).
    """
    cut = _check_cut(cut, closed_form=True)
    log_c = math.log(cut)
    return 1.0 / (math.pi * n**2 * log_c), 4.0 / (math.pi**3 * cut**2 * log_c)


def typical_displacement(temperature: float, cut: int, n: int) -> float:
    """Typical displacement in pixels, delta = n sqrt(pi T log c) / 2 (a large-c approximation)."""
    cut = _check_cut(cut, closed_form=True)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    return n * math.sqrt(math.pi * temperature * math.log(cut)) / 2.0


def temperature_for_displacement(delta: float, cut: int, n: int) -> float:
    """Temperature giving a typical displacement of ``delta`` pixels: T = 4 delta^2 / (pi n^2 log c)."""
    cut = _check_cut(cut, closed_form=True)
    if delta < 0:
        raise ValueError(f"delta must be >= 0 pixels, got {delta}")
    return 4.0 * delta**2 / (math.pi * n**2 * math.log(cut))


def effective_side(height: int, width: int) -> float:
    """The side n used to convert delta <-> T for an H x W image: sqrt((H^2 + W^2) / 2).

    Horizontal displacements scale with W and vertical ones with H, so this side gives the same root-mean-square
    displacement as the closed form for a square image; it equals n when H = W = n.
    """
    return math.sqrt((height**2 + width**2) / 2.0)


def diffeo_modes(cut: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The kept modes (i, j), i, j >= 1 with i^2 + j^2 < (cut + 1/2)^2, as a (K, 2) int64 tensor."""
    return _cached_modes(_check_cut(cut), torch.device(device or "cpu")).clone()


@functools.lru_cache(maxsize=64)
def _cached_modes(cut: int, device: torch.device) -> torch.Tensor:
    # Cached per device: building it from a Python list is a host-to-device copy, which synchronises.
    bound = (cut + 0.5) ** 2
    modes = [(i, j) for i in range(1, cut + 1) for j in range(1, cut + 1) if i * i + j * j < bound]
    return torch.tensor(modes, dtype=torch.int64, device=device)


@functools.lru_cache(maxsize=64)
def _cached_squared_norms(cut: int, device: torch.device) -> torch.Tensor:
    """(K,) float32 i^2 + j^2 of the kept modes."""
    return (_cached_modes(cut, device) ** 2).sum(1).to(torch.float32)


@functools.lru_cache(maxsize=64)
def _cached_sines(
    cut: int, height: int, width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """sin(pi i x) (K, W) and sin(pi j y) (K, H) on the pixel centres."""
    modes = _cached_modes(cut, device)
    x = torch.linspace(0.0, 1.0, width, device=device)
    y = torch.linspace(0.0, 1.0, height, device=device)
    return torch.sin(torch.pi * modes[:, 0:1].float() * x), torch.sin(torch.pi * modes[:, 1:2].float() * y)


def sample_coefficients(
    temperature: float,
    cut: int = 3,
    *,
    batch_size: int | None = None,
    indices: torch.Tensor | None = None,
    seed: int = 0,
    stream: str = "diffeo",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw the coefficients C_ij of one field per image, shape (B, 2, K) (u and v, K modes).

    Two ways to draw:
      * ``indices`` (global image indices): the field of image ``i`` is a pure function of
        ``(seed, stream, i)``, independent of batching, workers, processes and device. The fields of one image
        at different temperatures share their standard normal draw and only scale with sqrt(T).
      * ``batch_size`` with an optional ``torch.Generator``: ordinary sequential sampling.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if (indices is None) == (batch_size is None):
        raise ValueError("give exactly one of batch_size or indices")
    if indices is not None:
        device = indices.device
    squared_norms = _cached_squared_norms(_check_cut(cut), torch.device(device or "cpu"))
    k = squared_norms.shape[0]
    if indices is not None:
        z = rng.normal(seed, stream, indices, 2 * k).view(-1, 2, k)
    else:
        z = torch.randn((batch_size, 2, k), generator=generator, device=device)
    scale = torch.sqrt(temperature / squared_norms)
    return z * scale


def _check_coefficients(coefficients: torch.Tensor, cut: int) -> None:
    k = _cached_modes(_check_cut(cut), coefficients.device).shape[0]
    if coefficients.ndim != 3 or coefficients.shape[1:] != (2, k):
        raise ValueError(
            f"coefficients must have shape (B, 2, {k}) for cut={cut}, got {tuple(coefficients.shape)}"
        )


def displacement_field(
    coefficients: torch.Tensor, cut: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel displacements (dx, dy), each (B, H, W), of the fields with the given coefficients."""
    _check_coefficients(coefficients, cut)
    coefficients = coefficients.float()
    sin_x, sin_y = _cached_sines(int(cut), height, width, coefficients.device)  # (K, W), (K, H)
    # (B, 2, K) x (K, H) x (K, W) -> (B, 2, H, W)
    field = torch.einsum("bck,kh,kw->bchw", coefficients, sin_y, sin_x)
    return field[:, 0] * width, field[:, 1] * height


def _source_coordinates(dx: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _, height, width = dx.shape
    ys = torch.arange(height, device=dx.device, dtype=dx.dtype).view(1, -1, 1)
    xs = torch.arange(width, device=dx.device, dtype=dx.dtype).view(1, 1, -1)
    return (xs - dx).clamp(0, width - 1), (ys - dy).clamp(0, height - 1)


def _gaussian_remap(
    images: torch.Tensor, src_x: torch.Tensor, src_y: torch.Tensor, radius: int = 3
) -> torch.Tensor:
    """Gaussian-kernel interpolation (sigma = 0.4715 px), truncated to a (2 radius + 1)^2 window.

    The weights are normalised over the source pixels that exist; beyond 3 px a weight is below 1e-8 of the
    centre's, so the truncation is invisible in float32.
    """
    b, c, height, width = images.shape
    base_x, base_y = src_x.round().long(), src_y.round().long()
    flat = images.reshape(b, c, height * width)
    out = torch.zeros_like(images, dtype=torch.float32)
    total = torch.zeros_like(src_x)
    for oy in range(-radius, radius + 1):
        for ox in range(-radius, radius + 1):
            px, py = base_x + ox, base_y + oy
            inside = (px >= 0) & (px < width) & (py >= 0) & (py < height)
            weight = torch.exp(-((src_x - px) ** 2 + (src_y - py) ** 2) / (2 * GAUSSIAN_SIGMA**2)) * inside
            index = (py.clamp(0, height - 1) * width + px.clamp(0, width - 1)).view(b, 1, -1).expand(b, c, -1)
            out += weight.unsqueeze(1) * flat.gather(2, index).view(b, c, height, width).float()
            total += weight
    return (out / total.unsqueeze(1)).to(images.dtype)


def apply_displacement(
    images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, interp: Interpolation = "linear"
) -> torch.Tensor:
    """Remap images: output pixel (x, y) takes the source value at (x - dx, y - dy), clamped to the image.

    ``linear`` and ``nearest`` use ``grid_sample`` with border padding and ``align_corners=True``, which is
    clamped bilinear (or nearest) remapping in pixel coordinates.
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    b, _, height, width = images.shape
    if height < 2 or width < 2:
        raise ValueError(f"images must be at least 2 x 2 pixels, got {height} x {width}")
    if dx.shape != (b, height, width) or dy.shape != (b, height, width):
        raise ValueError(
            f"dx and dy must have shape {(b, height, width)}, got {tuple(dx.shape)}, {tuple(dy.shape)}"
        )
    if interp not in INTERPOLATIONS:
        raise ValueError(f"interp must be one of {INTERPOLATIONS}, got {interp!r}")
    coord_dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    src_x, src_y = _source_coordinates(dx.to(coord_dtype), dy.to(coord_dtype))
    if interp == "gaussian":
        return _gaussian_remap(images, src_x, src_y)
    grid = torch.stack([src_x * (2.0 / (width - 1)) - 1.0, src_y * (2.0 / (height - 1)) - 1.0], dim=-1)
    mode = "bilinear" if interp == "linear" else "nearest"
    return F.grid_sample(images, grid.to(images.dtype), mode=mode, padding_mode="border", align_corners=True)


def apply_coefficients(
    images: torch.Tensor, coefficients: torch.Tensor, cut: int = 3, interp: Interpolation = "linear"
) -> torch.Tensor:
    """Deform ``images`` (B, C, H, W) with the fields of ``coefficients`` (B, 2, K) from :func:`sample_coefficients`."""
    if coefficients.shape[0] != images.shape[0]:
        raise ValueError(f"{coefficients.shape[0]} fields for {images.shape[0]} images")
    if interp in ("linear", "nearest") and images.ndim == 4 and images.dtype != torch.float64:
        height, width = images.shape[-2:]
        if height >= 2 and width >= 2:
            grid = _sampling_grid(coefficients.to(images.device), cut, height, width)
            mode = "bilinear" if interp == "linear" else "nearest"
            return F.grid_sample(
                images, grid.to(images.dtype), mode=mode, padding_mode="border", align_corners=True
            )
    dx, dy = displacement_field(coefficients.to(images.device), cut, images.shape[-2], images.shape[-1])
    return apply_displacement(images, dx, dy, interp)


def _sampling_grid(coefficients: torch.Tensor, cut: int, height: int, width: int) -> torch.Tensor:
    """The ``grid_sample`` grid (B, H, W, 2) of :func:`apply_displacement` for these fields.

    The same float32 operations as :func:`displacement_field` followed by :func:`apply_displacement`, done in
    place in the field's own memory: one (B, 2, H, W) buffer instead of about ten temporaries.
    """
    _check_coefficients(coefficients, cut)
    sin_x, sin_y = _cached_sines(int(cut), height, width, coefficients.device)
    field = torch.einsum("bck,kh,kw->bchw", coefficients.float(), sin_y, sin_x)
    for c, size in ((0, width), (1, height)):
        comp = field[:, c]
        coords = torch.arange(size, device=field.device, dtype=field.dtype)
        coords = coords.view(1, 1, -1) if c == 0 else coords.view(1, -1, 1)
        comp.mul_(size)  # displacement in pixels
        torch.sub(coords, comp, out=comp)  # source coordinate
        comp.clamp_(0, size - 1).mul_(2.0 / (size - 1)).sub_(1.0)
    return field.permute(0, 2, 3, 1)


def reference_images(images: torch.Tensor, interp: Interpolation = "linear") -> torch.Tensor:
    """The clean images a deformation is compared with: the images themselves, or smoothed for ``gaussian``.

    Gaussian interpolation blurs even at zero displacement, so (as in the authors' code) the clean reference
    is the image remapped with the same kernel at zero displacement: then T = 0 gives tau x = x exactly and
    only the deformation is measured. ``linear`` and ``nearest`` return ``images`` itself (no copy).
    """
    if interp not in INTERPOLATIONS:
        raise ValueError(f"interp must be one of {INTERPOLATIONS}, got {interp!r}")
    if interp != "gaussian":
        return images
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    b, _, height, width = images.shape
    coord_dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    zero = torch.zeros((b, height, width), dtype=coord_dtype, device=images.device)
    return apply_displacement(images, zero, zero, "gaussian")


def deform(
    images: torch.Tensor,
    temperature: float,
    cut: int = 3,
    *,
    generator: torch.Generator | None = None,
    indices: torch.Tensor | None = None,
    seed: int = 0,
    interp: Interpolation = "linear",
) -> torch.Tensor:
    """Apply a different random max-entropy diffeomorphism to every image of a batch.

    Args:
        images: float tensor (B, C, H, W) on any device; H != W is allowed.
        temperature: T, the variance scale of the coefficients (see :func:`temperature_for_displacement`).
        cut: high-frequency cut-off c.
        generator: optional ``torch.Generator`` for ordinary sequential sampling.
        indices: global indices of the images (B,). When given, image ``i``'s field depends only on
            ``(seed, i)`` and the result is independent of batching and of the number of processes.
        seed: run seed used with ``indices``.
        interp: ``"linear"`` (default), ``"nearest"`` or ``"gaussian"`` (sigma = 0.4715 px).

    Returns:
        The deformed images, same shape, dtype and device.
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    if indices is not None:
        if generator is not None:
            raise ValueError("give either generator or indices, not both")
        indices = torch.as_tensor(indices, device=images.device)
        if indices.shape != (images.shape[0],):
            raise ValueError(f"indices must have shape ({images.shape[0]},), got {tuple(indices.shape)}")
        coefficients = sample_coefficients(temperature, cut, indices=indices, seed=seed)
    else:
        gen_device = generator.device if generator is not None else images.device
        coefficients = sample_coefficients(
            temperature, cut, batch_size=images.shape[0], generator=generator, device=gen_device
        )
    return apply_coefficients(images, coefficients, cut, interp)


def sweep_temperatures(n: float, cut: int = 3, num: int = 30) -> list[float]:
    """The paper's sweep: ``num`` temperatures log-spaced in [T1 / 15, 2 T2] for side n and cut-off c."""
    t1, t2 = temperature_range(n, cut)  # type: ignore[arg-type]
    lo, hi = math.log(t1 / 15.0), math.log(2.0 * t2)
    if num < 2:
        raise ValueError("a sweep needs at least 2 temperatures")
    return [math.exp(lo + (hi - lo) * k / (num - 1)) for k in range(num)]
