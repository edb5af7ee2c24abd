"""R_f against its definition: analytic linear models, batch invariance, estimators, and real weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hubstab
from hubstab.metrics.stability import mean_pair_distance, median_pair_distance
from hubstab.perturbations import deform, matched_noise


def _smooth_images(n, size=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=gen)
    return nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)


def test_pair_distance_closed_form_matches_brute_force():
    h = torch.randn(30, 7, dtype=torch.float64)
    brute = torch.cdist(h, h).pow(2)
    mean_brute = float(brute.sum() / (30 * 29))
    assert mean_pair_distance(h.pow(2).sum(1), h.sum(0)) == pytest.approx(mean_brute, rel=1e-10)
    i, j = torch.triu_indices(30, 30, 1)
    assert median_pair_distance(h) == pytest.approx(float(brute[i, j].median()), rel=1e-10)


def test_linear_model_matches_definition():
    """f(x) = W x with orthonormal rows: D_f is exact, G_f matches its expectation k/D ||eta||^2."""
    torch.manual_seed(0)
    p, size, k = 300, 16, 12
    x = _smooth_images(p, size)
    d_in = 3 * size * size
    w = torch.linalg.qr(torch.randn(d_in, k)).Q.T  # (k, D), W W^T = I
    model = nn.Sequential(nn.Flatten(), nn.Linear(d_in, k, bias=False))
    model[1].weight.data.copy_(w)
    res = hubstab.relative_stability(model, x, delta=1.0, seed=3, batch_size=50, bootstrap=200)
    # the same perturbations, rebuilt from (seed, index)
    t = res.settings["temperature"]
    idx = torch.arange(p)
    tx = deform(x, t, 3, indices=idx, seed=3)
    eta = matched_noise(x, tx, indices=idx, seed=3)
    fx = x.flatten(1) @ w.T
    denom = mean_pair_distance(fx.pow(2).sum(1), fx.sum(0))
    d_exact = float(((tx.flatten(1) @ w.T - fx) ** 2).sum(1).mean()) / denom
    assert res.diffeo_stability == pytest.approx(d_exact, rel=1e-4)
    g_exact = float(((eta.flatten(1) @ w.T) ** 2).sum(1).mean()) / denom
    assert res.noise_stability == pytest.approx(g_exact, rel=1e-4)
    g_expected = float(((tx - x).flatten(1).pow(2).sum(1)).mean()) * k / d_in / denom
    assert res.noise_stability == pytest.approx(g_expected, rel=0.15)
    assert res.relative_stability == pytest.approx(res.diffeo_stability / res.noise_stability)


def test_smoothing_linear_model_is_stable_to_noise_not_to_diffeos():
    """A low-pass linear map keeps the smooth diffeo displacement but averages noise away: R_f >> 1."""
    p, size = 100, 16
    x = _smooth_images(p, size, seed=1)
    model = nn.Sequential(nn.AvgPool2d(4), nn.Flatten())
    res = hubstab.relative_stability(model, x, bootstrap=100)
    assert res.relative_stability > 5
    lo, hi = res.relative_stability_ci
    assert lo < res.relative_stability < hi


def test_result_does_not_depend_on_batch_size_or_order():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)
    )
    x = torch.rand(40, 3, 20, 24)
    a = hubstab.relative_stability(model, x, batch_size=120, bootstrap=50)
    b = hubstab.relative_stability(model, x, batch_size=7, bootstrap=50)
    for key in ("relative_stability", "diffeo_stability", "noise_stability"):
        assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-5)
    assert a.relative_stability_ci == pytest.approx(b.relative_stability_ci, rel=1e-5)
    # the perturbation of an image is keyed by its index, not its position: permuting gives the same result
    perm = torch.randperm(40)
    c = hubstab.relative_stability(model, x[perm], indices=perm, batch_size=21, bootstrap=50)
    assert c.relative_stability == pytest.approx(a.relative_stability, rel=1e-5)
    d = hubstab.relative_stability(model, x, seed=1, bootstrap=50)
    assert d.relative_stability != pytest.approx(a.relative_stability, rel=1e-6)


def test_sweep_shares_the_protocol_point():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    x = torch.rand(20, 3, 12, 12)
    single = hubstab.relative_stability(model, x, bootstrap=0)
    sweep = hubstab.relative_stability(model, x, temperatures=[1e-4, 1e-2], bootstrap=0)
    assert [p.temperature for p in sweep.sweep] == sorted(p.temperature for p in sweep.sweep)
    assert len(sweep.sweep) == 3
    assert sweep.relative_stability == pytest.approx(single.relative_stability, rel=1e-6)
    # diffeos grow with T
    assert sweep.sweep[0].diffeo_stability < sweep.sweep[-1].diffeo_stability


def test_median_estimator_and_settings_are_recorded():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 6))
    x = torch.rand(30, 3, 12, 12)
    labels = torch.randint(0, 6, (30,))
    res = hubstab.relative_stability(
        model, x, labels, estimator="median", bootstrap=50, seed=4, cut=5, delta=0.5
    )
    assert res.relative_stability > 0 and res.diffeo_stability > 0
    s = res.settings
    assert (s["estimator"], s["seed"], s["cut"], s["delta"], s["image_size"]) == (
        "median",
        4,
        5,
        0.5,
        [12, 12],
    )
    assert s["temperature"] == pytest.approx(hubstab.temperature_for_displacement(0.5, 5, 12))
    for key in (
        "interp",
        "num_images",
        "repeats",
        "bootstrap",
        "confidence",
        "noise",
        "perturbation_space",
        "hubstab_version",
    ):
        assert key in s
    expected_error = float((model(x).argmax(1) != labels).float().mean())
    assert res.test_error == pytest.approx(expected_error)
    d = res.to_dict()
    assert d["higher_is_better"]["relative_stability"] is False and d["settings"]["estimator"] == "median"


def test_bad_input_raises_clear_errors():
    model = nn.Flatten()
    with pytest.raises(ValueError, match="at least 2"):
        hubstab.relative_stability(model, torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="estimator"):
        hubstab.relative_stability(model, torch.rand(4, 1, 8, 8), estimator="mode")
    with pytest.raises(ValueError, match="labels"):
        hubstab.relative_stability(model, torch.rand(4, 1, 8, 8), labels=[1, 2])
    with pytest.raises(TypeError, match="float"):
        hubstab.relative_stability(model, torch.zeros(4, 1, 8, 8, dtype=torch.uint8))


def test_batch_statistics_mode_leaves_the_model_unchanged():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    model(torch.rand(2, 3, 10, 10))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hubstab.relative_stability(model, torch.rand(12, 3, 10, 10), batchnorm="batch", bootstrap=0)
    assert model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


@pytest.mark.slow
def test_pretrained_efficientnet_is_more_stable_than_random_init(efficientnet_lite0, imagenet_photos):
    """Real ImageNet weights on 20 real ImageNet photos: R_f far below the random initialisation's."""
    import timm

    images, labels, _ = imagenet_photos
    kw = dict(mean=0.5, std=0.5, delta=1.0, repeats=2, bootstrap=500, batch_size=60)
    trained = hubstab.relative_stability(efficientnet_lite0, images, labels, **kw)
    torch.manual_seed(0)
    random_init = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    untrained = hubstab.relative_stability(random_init, images, labels, **kw)
    print(f"\nEfficientNet-Lite0 pretrained: {trained.summary()}\nrandom init: {untrained.summary()}")
    assert trained.test_error < 0.3
    assert trained.relative_stability < 0.5 * untrained.relative_stability
    assert trained.relative_stability_ci[1] < untrained.relative_stability_ci[0]
