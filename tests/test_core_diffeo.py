"""Diffeomorphisms and matched noise against the closed forms of science.md and a direct implementation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hubstab.perturbations import (
    apply_displacement,
    deform,
    displacement_field,
    matched_noise,
    sample_coefficients,
    sweep_temperatures,
    temperature_for_displacement,
    temperature_range,
    typical_displacement,
)
from hubstab.perturbations.diffeo import diffeo_modes


def test_closed_forms_match_reference_values():
    t1, t2 = temperature_range(32, 3)
    assert t1 == pytest.approx(2.83e-4, rel=2e-3)
    assert t2 == pytest.approx(1.305e-2, rel=2e-3)
    assert temperature_for_displacement(1.0, 3, 32) == pytest.approx(1.13e-3, rel=3e-3)
    assert temperature_range(224, 3)[0] == pytest.approx(5.77e-6, rel=2e-3)
    assert temperature_for_displacement(1.0, 3, 224) == pytest.approx(2.31e-5, rel=3e-3)
    for delta in (0.5, 1.0, 3.0):
        assert typical_displacement(temperature_for_displacement(delta, 5, 64), 5, 64) == pytest.approx(delta)
    assert typical_displacement(t1, 3, 32) == pytest.approx(0.5)


def test_sweep_is_the_papers_range():
    temps = sweep_temperatures(32, 3)
    t1, t2 = temperature_range(32, 3)
    assert len(temps) == 30
    assert temps[0] == pytest.approx(t1 / 15) and temps[-1] == pytest.approx(2 * t2)
    ratios = [b / a for a, b in itertools.pairwise(temps)]
    assert max(ratios) == pytest.approx(min(ratios))


def test_modes_follow_the_cutoff():
    modes = diffeo_modes(3).tolist()
    assert sorted(map(tuple, modes)) == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (3, 1)]
    assert all(i * i + j * j < 15.5**2 for i, j in diffeo_modes(15).tolist())
    assert (15, 1) in map(tuple, diffeo_modes(15).tolist()) and (11, 11) not in map(
        tuple, diffeo_modes(15).tolist()
    )


@pytest.mark.parametrize("interp", ["linear", "nearest"])
def test_zero_temperature_is_identity(interp):
    x = torch.rand(3, 3, 20, 27, dtype=torch.float64)
    out = deform(x, 0.0, 3, indices=torch.arange(3), interp=interp)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-12)
    # float32: identity up to the rounding of grid coordinates
    out32 = deform(x.float(), 0.0, 3, indices=torch.arange(3), interp=interp)
    torch.testing.assert_close(out32, x.float(), rtol=0, atol=1e-5)


def test_border_stays_in_place():
    coeffs = sample_coefficients(1e-2, 5, batch_size=4, generator=torch.Generator().manual_seed(0))
    dx, dy = displacement_field(coeffs, 5, 16, 24)
    for d in (dx, dy):
        assert d[:, 0, :].abs().max() < 1e-5 and d[:, -1, :].abs().max() < 1e-5
        assert d[:, :, 0].abs().max() < 1e-5 and d[:, :, -1].abs().max() < 1e-5


def _mean_square_displacement(temperature, cut, h, w, n_fields=4000):
    coeffs = sample_coefficients(temperature, cut, indices=torch.arange(n_fields), seed=1)
    dx, dy = displacement_field(coeffs, cut, h, w)
    return float((dx.double() ** 2 + dy.double() ** 2).mean())


def test_mean_square_displacement_scaling():
    # Linear in T and quadratic in the image side, as the closed form says.
    base = _mean_square_displacement(1e-3, 3, 32, 32)
    assert _mean_square_displacement(4e-3, 3, 32, 32) / base == pytest.approx(4.0, rel=1e-6)
    assert _mean_square_displacement(1e-3, 3, 64, 64) / base == pytest.approx(4.0, rel=0.04)
    # exact expectation on the pixel grid: n^2 sum_ij T/(i^2+j^2) <sin^2(i pi x)>_x <sin^2(j pi y)>_y per axis
    for h, w in [(32, 32), (24, 40)]:
        modes = diffeo_modes(3).double()
        sx = torch.sin(torch.pi * modes[:, :1] * torch.linspace(0, 1, w, dtype=torch.float64)).pow(2).mean(1)
        sy = torch.sin(torch.pi * modes[:, 1:] * torch.linspace(0, 1, h, dtype=torch.float64)).pow(2).mean(1)
        per_axis = float((1e-3 / modes.pow(2).sum(1) * sx * sy).sum())
        expected = (w**2 + h**2) * per_axis
        assert _mean_square_displacement(1e-3, 3, h, w, 20000) == pytest.approx(expected, rel=0.03)
    # At delta = 1 px the root-mean-square displacement over the image is 0.8-0.9 px (science.md).
    for n, fields in ((32, 4000), (224, 300)):
        t = temperature_for_displacement(1.0, 3, n)
        rms = math.sqrt(_mean_square_displacement(t, 3, n, n, fields))
        assert 0.75 < rms < 0.95, rms


def _direct_clamped_bilinear(image, dx, dy):
    """One image, pixel by pixel: value at (x - dx, y - dy), clamped, bilinear."""
    _c, h, w = image.shape
    out = torch.empty_like(image)
    for y in range(h):
        for x in range(w):
            sx = min(max(x - float(dx[y, x]), 0.0), w - 1.0)
            sy = min(max(y - float(dy[y, x]), 0.0), h - 1.0)
            x0, y0 = math.floor(sx), math.floor(sy)
            x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
            fx, fy = sx - x0, sy - y0
            out[:, y, x] = (
                (1 - fy) * (1 - fx) * image[:, y0, x0]
                + (1 - fy) * fx * image[:, y0, x1]
                + fy * (1 - fx) * image[:, y1, x0]
                + fy * fx * image[:, y1, x1]
            )
    return out


@pytest.mark.parametrize("h,w", [(12, 12), (10, 15)])
def test_batched_remap_matches_direct_clamped_bilinear(h, w):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(3, 2, h, w, generator=gen, dtype=torch.float64)
    # large displacements so that clamping at the border is exercised
    dx = 4 * torch.randn(3, h, w, generator=gen, dtype=torch.float64)
    dy = 4 * torch.randn(3, h, w, generator=gen, dtype=torch.float64)
    batched = apply_displacement(x, dx, dy, "linear")
    for b in range(3):
        torch.testing.assert_close(
            batched[b], _direct_clamped_bilinear(x[b], dx[b], dy[b]), atol=1e-5, rtol=0
        )


def test_gaussian_interpolation_is_normalised_and_smooth():
    x = torch.ones(2, 3, 16, 16)
    out = deform(x, 1e-3, 3, indices=torch.arange(2), interp="gaussian")
    torch.testing.assert_close(out, x)  # weights sum to one, also at the border
    img = torch.rand(1, 1, 16, 16)
    smooth = deform(img, 0.0, 3, indices=torch.arange(1), interp="gaussian")
    assert smooth.std() < img.std()  # sigma = 0.47 px blurs


def test_fields_are_per_image_independent_and_reproducible():
    idx = torch.tensor([5, 9, 11, 40])
    a = sample_coefficients(1e-3, 3, indices=idx, seed=7)
    b = sample_coefficients(1e-3, 3, indices=idx, seed=7)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # any batch split gives the same fields
    parts = torch.cat([sample_coefficients(1e-3, 3, indices=idx[i : i + 1], seed=7) for i in range(4)])
    torch.testing.assert_close(parts, a, rtol=0, atol=0)
    # every image of a batch has its own field, and another seed gives other fields
    assert torch.unique(a.reshape(4, -1), dim=0).shape[0] == 4
    assert not torch.allclose(a, sample_coefficients(1e-3, 3, indices=idx, seed=8))
    # same draw at another temperature, scaled by sqrt(T)
    torch.testing.assert_close(sample_coefficients(4e-3, 3, indices=idx, seed=7), 2 * a)


def test_coefficients_have_the_max_entropy_variance():
    t = 2e-3
    coeffs = sample_coefficients(t, 5, indices=torch.arange(20000), seed=0)
    modes = diffeo_modes(5)
    expected = t / (modes**2).sum(1).float()
    measured = coeffs.var(dim=0)  # (2, K)
    torch.testing.assert_close(measured, expected.expand_as(measured), rtol=0.05, atol=0)
    # u and v, and distinct images, are uncorrelated
    corr = torch.corrcoef(torch.stack([coeffs[:, 0, 0], coeffs[:, 1, 0], coeffs[:, 0, 1]]))
    assert corr.fill_diagonal_(0).abs().max() < 0.03


def test_matched_noise_has_the_perturbation_norm():
    x = torch.rand(5, 3, 16, 16)
    tx = deform(x, 1e-3, 3, indices=torch.arange(5))
    eta = matched_noise(x, tx, indices=torch.arange(5), seed=0)
    torch.testing.assert_close(
        eta.flatten(1).norm(dim=1), (tx - x).flatten(1).norm(dim=1), rtol=1e-5, atol=1e-7
    )
    assert abs(float(eta.mean())) < 0.05 * float(eta.std())
    eta2 = matched_noise(x[2:4], tx[2:4], indices=torch.arange(2, 4), seed=0)
    torch.testing.assert_close(eta2, eta[2:4])


def test_deform_errors_are_clear():
    with pytest.raises(ValueError, match="B, C, H, W"):
        deform(torch.rand(3, 8, 8), 1e-3)
    with pytest.raises(ValueError, match="cut"):
        deform(torch.rand(1, 1, 8, 8), 1e-3, cut=0)
    with pytest.raises(ValueError, match="temperature"):
        deform(torch.rand(1, 1, 8, 8), -1.0)
    with pytest.raises(ValueError, match="interp"):
        deform(torch.rand(1, 1, 8, 8), 1e-3, interp="cubic")
