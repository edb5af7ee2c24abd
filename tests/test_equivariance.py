"""Transformation groups and the invariance / equivariance deviation (Kvinge et al.) with known answers."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import load_fashion_mnist
from torch import nn

from hubstab import equivariance_deviation, get_transform
from hubstab.errors import HubstabError
from hubstab.perturbations.groups import Diffeo, Flip, Rotation, Rotation90, Translation

REQUIRED_KEYS = {"transform", "mode", "metric", "num_samples", "output", "layers", "seed", "num_images"}


@pytest.fixture(scope="module")
def fmnist() -> torch.Tensor:
    return load_fashion_mnist("t10k", 16)[0]


def cyclic_net() -> nn.Module:
    """Circular convolutions and global average pooling: exactly invariant to cyclic translations."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, padding_mode="circular"), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, padding_mode="circular"), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


def fc_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


# --- groups -----------------------------------------------------------------------------------------------


def test_registry_builds_transforms_and_suggests_names():
    assert isinstance(get_transform("rotation90"), Rotation90)
    assert isinstance(get_transform("flip", axis="both"), Flip)
    t = get_transform("translation:step=4,axes=horizontal")
    assert isinstance(t, Translation) and t.step == 4 and t.axes == "horizontal"
    assert get_transform("translation(step=4, axes=horizontal)").settings() == t.settings()
    d = get_transform("diffeo:delta=2,cut=5")
    assert isinstance(d, Diffeo) and d.delta == 2.0 and d.cut == 5
    assert get_transform(t) is t
    with pytest.raises(ValueError, match="Did you mean 'rotation'"):
        get_transform("rotaton")
    with pytest.raises(ValueError, match="Did you mean 'translation'"):
        get_transform("tranlsation")
    with pytest.raises(ValueError, match="bad parameters"):
        get_transform("flip", angle=3)
    with pytest.raises(ValueError, match="axis"):
        get_transform("flip:axis=diagonal")


def test_rotations_agree_with_exact_pixel_rotations():
    x = torch.rand(3, 2, 12, 12)
    c4 = Rotation90()
    elements = c4.elements((12, 12))
    assert elements.flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    y = x
    for _ in range(4):
        y = c4.apply(y, torch.tensor([1.0]))
    torch.testing.assert_close(y, x)
    # continuous rotation by 90 degrees is counter-clockwise, like torch.rot90(k=1)
    torch.testing.assert_close(
        Rotation().apply(x, torch.tensor([90.0])), torch.rot90(x, 1, (-2, -1)), atol=1e-5, rtol=0
    )
    rect = torch.rand(2, 1, 8, 14)
    torch.testing.assert_close(
        Rotation().apply(rect, torch.tensor([180.0])), torch.rot90(rect, 2, (-2, -1)), atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match="n=2"):
        c4.apply(rect, torch.tensor([1.0]))
    # C8 through interpolation: 8 angles, the identity first
    assert Rotation(n=8).elements((12, 12)).flatten().tolist() == [45.0 * k for k in range(8)]


def test_per_image_elements_and_seeded_sampling():
    x = torch.rand(4, 1, 6, 6)
    params = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    out = Flip("both").apply(x, params)
    torch.testing.assert_close(out[0], x[0])
    torch.testing.assert_close(out[1], x[1].flip(-1))
    torch.testing.assert_close(out[2], x[2].flip(-2))
    torch.testing.assert_close(out[3], x[3].flip(-2, -1))

    rot = Rotation(max_angle=30)
    a, b = rot.elements((6, 6), 5, seed=1), rot.elements((6, 6), 5, seed=1)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, rot.elements((6, 6), 5, seed=2))
    assert float(a.abs().max()) <= 30.0
    shifts = Translation().elements((6, 6), 20, seed=0)
    assert shifts.shape == (20, 2) and torch.unique(shifts, dim=0).shape[0] == 20
    assert Translation().elements((6, 6), 100).shape == (36, 2)  # at least the order: the whole group
    with pytest.raises(ValueError, match="num_samples"):
        Rotation().elements((6, 6))

    # a diffeomorphism per image, keyed by the image's global index: independent of batching
    diffeo = Diffeo(delta=1.0)
    full = diffeo.elements((6, 6), 3, seed=0, indices=torch.arange(4))
    part = diffeo.elements((6, 6), 3, seed=0, indices=torch.tensor([2, 3]))
    assert full.shape == (3, 4, diffeo.param_dim)
    torch.testing.assert_close(full[:, 2:], part)
    assert not torch.equal(full[0, 0], full[1, 0]) and not torch.equal(full[0, 0], full[0, 1])


def test_translation_acts_on_strided_maps_by_scaled_shifts():
    x = torch.rand(2, 3, 8, 8)
    pool = nn.AvgPool2d(2)
    t = Translation()
    for shift in ([2.0, 4.0], [6.0, 0.0]):
        e = torch.tensor(shift)
        assert t.action_error(e, (8, 8), (2, 3, 4, 4)) is None
        torch.testing.assert_close(pool(t.apply(x, e)), t.act(pool(x), e, (8, 8)))
    odd = torch.tensor([1.0, 0.0])
    assert "step=2" in t.action_error(odd, (8, 8), (2, 3, 4, 4))
    assert "does not divide" in t.action_error(odd, (8, 8), (2, 3, 3, 3))
    # global pooling (1 x 1 maps): every shift acts trivially
    gap = x.mean((-2, -1), keepdim=True)
    torch.testing.assert_close(t.act(gap, odd, (8, 8)), gap)
    with pytest.raises(ValueError, match="not a spatial map"):
        t.act(x.flatten(1), odd, (8, 8))


# --- deviations -------------------------------------------------------------------------------------------


def test_cyclic_architecture_is_invariant_and_fully_connected_is_not(fmnist):
    circ, fc = cyclic_net(), fc_net()
    for metric in ("cosine", "euclidean", "kl"):
        res = equivariance_deviation(circ, fmnist, "translation", num_samples=16, metric=metric)
        assert res.output < 1e-5, (metric, res.output)
        assert equivariance_deviation(fc, fmnist, "translation", num_samples=16, metric=metric).output > 1e-3
    fc_cos = equivariance_deviation(fc, fmnist, "translation", num_samples=16).output
    assert fc_cos > 0.02

    layers = ["0", "2", "4"]
    inv = equivariance_deviation(circ, fmnist, "translation", num_samples=16, layers=layers)
    assert inv.layers["0"] > 0.1 and inv.layers["2"] > 0.02  # convolution maps move with the image...
    assert inv.layers["4"] < 1e-5  # ...global pooling does not
    eq = equivariance_deviation(
        circ, fmnist, "translation", num_samples=16, layers=layers, mode="equivariance"
    )
    assert (
        max(eq.layers.values()) < 1e-5 and eq.output < 1e-5
    )  # circular convolutions are exactly equivariant
    assert eq.actions == {"output": "trivial", "0": "spatial", "2": "spatial", "4": "spatial"}
    default = equivariance_deviation(circ, fmnist[:2], "translation")
    assert default.num_samples == 32 and not default.settings["enumerated"]  # 784 shifts: sampled
    assert equivariance_deviation(circ, fmnist[:2], "flip").settings["enumerated"]
    # the measurement is not degenerate: the same network is not invariant to rotations
    shifted = equivariance_deviation(circ, fmnist, "translation", num_samples=16, metric="euclidean").output
    rotated = equivariance_deviation(circ, fmnist, "rotation90", metric="euclidean").output
    assert rotated > 1e3 * max(shifted, 1e-9)


def test_result_record_and_batching(fmnist):
    net = cyclic_net()
    res = equivariance_deviation(
        net, fmnist, "diffeo", num_samples=3, layers=["0", "4"], mode="equivariance", per_sample=True
    )
    record = res.to_dict()
    assert set(record) >= REQUIRED_KEYS
    assert record["transform"] == "diffeo" and record["num_samples"] == 3 and record["num_images"] == 16
    assert record["settings"]["transform"]["delta"] == 1.0
    json.dumps(record)
    assert len(res.per_sample["output"]) == 16
    small = equivariance_deviation(
        net, fmnist, "diffeo", num_samples=3, layers=["0", "4"], mode="equivariance", batch_size=5
    )
    assert small.output == pytest.approx(res.output, rel=1e-5, abs=1e-9)
    assert small.layers == pytest.approx(res.layers, rel=1e-5)
    # normalisation after transforming: a model that expects normalised inputs
    normed = equivariance_deviation(net, fmnist, "flip", mean=[0.5], std=[0.25])
    assert normed.settings["normalize"] == {"mean": [0.5], "std": [0.25]}


def test_user_errors_are_clear(fmnist):
    net = cyclic_net()
    with pytest.raises(HubstabError, match="output only"):  # the CLI prints these as messages
        equivariance_deviation(net, fmnist, "flip", layers=["0"], metric="kl")
    with pytest.raises(ValueError, match="Did you mean 'cosine'"):
        equivariance_deviation(net, fmnist, "flip", metric="cosin")
    with pytest.raises(HubstabError, match=r"no module named '0\.weight'"):
        equivariance_deviation(net, fmnist, "flip", layers=["0.weight"])
    with pytest.raises(ValueError, match="mode"):
        equivariance_deviation(net, fmnist, "flip", mode="covariance")


def test_trained_cnn_end_to_end(trained_fmnist_cnn):
    x, _ = load_fashion_mnist("t10k", 32)
    model = trained_fmnist_cnn
    eq = equivariance_deviation(
        model, x, "translation:step=2", num_samples=8, layers="all", mode="equivariance"
    )
    inv = equivariance_deviation(model, x, "translation:step=2", num_samples=8, layers="all")
    # zero-padded convolutions on images with black borders are nearly equivariant to small shifts,
    # far from invariant
    assert eq.layers["features.0"] < 0.2 * inv.layers["features.0"]
    # 7 x 7 maps (stride 4) have no action of shifts by 2 pixels: skipped, with the fix in the message
    assert "features.5" in eq.skipped and "step=4" in eq.skipped["features.5"]
    assert "features.5" in inv.layers
    # a trained CNN's output barely moves under 1-pixel diffeomorphisms, much more under 90-degree rotations
    small = equivariance_deviation(model, x, "diffeo", num_samples=4)
    large = equivariance_deviation(model, x, "rotation90")
    assert small.output < 0.2 * large.output, (small.output, large.output)
    kl = equivariance_deviation(model, x, "rotation90", metric="kl")
    assert kl.output > 0.05
