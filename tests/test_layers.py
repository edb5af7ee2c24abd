"""Layer-wise D_k, G_k, R_k (Tomasini et al. 2022) through forward hooks."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import SmallCNN, load_fashion_mnist
from torch import nn

from hubstab.errors import HubstabError
from hubstab.metrics.layers import layer_forward, resolve_layers
from hubstab.metrics.stability import relative_stability

CONV_BLOCKS = ["features.2", "features.5", "features.8"]


@pytest.fixture(scope="module")
def probes() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_fashion_mnist("t10k", 160)
    return x, y


def test_last_layer_equals_output(trained_fmnist_cnn, probes):
    x, y = probes
    result = relative_stability(
        trained_fmnist_cnn, x, y, layers=[*CONV_BLOCKS, "head"], temperatures=[1e-4, 1e-2], bootstrap=100
    )
    assert list(result.layers) == [*CONV_BLOCKS, "head"]
    head = result.layers["head"]
    for i, point in enumerate(result.sweep):
        assert head["temperatures"][i] == point.temperature
        assert head["relative_stability"][i] == pytest.approx(point.relative_stability, rel=1e-12)
        assert head["diffeo_stability"][i] == pytest.approx(point.diffeo_stability, rel=1e-12)
        assert head["noise_stability"][i] == pytest.approx(point.noise_stability, rel=1e-12)
        assert head["relative_stability_ci"][i] == pytest.approx(list(point.relative_stability_ci), rel=1e-12)
    # inner layers have their own values, all finite and positive
    for name in CONV_BLOCKS:
        values = result.layers[name]
        assert all(v > 0 and math.isfinite(v) for v in values["relative_stability"])
        assert values["diffeo_stability"][0] != pytest.approx(result.sweep[0].diffeo_stability, rel=1e-3)


def test_layer_uses_its_own_denominator(trained_fmnist_cnn, probes):
    """A hooked layer gives exactly what the truncated network gives as its output."""
    x, _ = probes
    full = relative_stability(trained_fmnist_cnn, x, layers=["features.5"], bootstrap=0)
    truncated = trained_fmnist_cnn.features[:6]
    direct = relative_stability(truncated, x, bootstrap=0)
    layer = full.layers["features.5"]
    assert layer["diffeo_stability"][0] == pytest.approx(direct.diffeo_stability, rel=1e-9)
    assert layer["noise_stability"][0] == pytest.approx(direct.noise_stability, rel=1e-9)
    assert layer["relative_stability"][0] == pytest.approx(direct.relative_stability, rel=1e-9)
    # the layer's denominator is not the output's: D_k differs from D_f
    assert layer["diffeo_stability"][0] != pytest.approx(full.diffeo_stability, rel=1e-2)


def test_trained_cnn_stability_builds_up_with_depth(trained_fmnist_cnn, probes):
    """After training, D_k falls block after block and R_k of the last block is below that of the first."""
    x, y = probes
    result = relative_stability(trained_fmnist_cnn, x, y, layers=CONV_BLOCKS, bootstrap=500)
    d = [result.layers[n]["diffeo_stability"][0] for n in CONV_BLOCKS]
    assert d[0] > d[1] > d[2], d
    first, last = result.layers[CONV_BLOCKS[0]], result.layers[CONV_BLOCKS[-1]]
    assert last["relative_stability_ci"][0][1] < first["relative_stability_ci"][0][0]


def test_hooks_are_removed_and_errors_are_clear():
    model = SmallCNN().eval()
    x = torch.rand(4, 1, 28, 28)
    with layer_forward(model, ["features.2", "head"]) as forward:
        reps = forward(x)
        assert model.head._forward_hooks
    assert set(reps) == {"output", "features.2", "head"}
    assert reps["features.2"].shape == (4, 16, 14, 14)
    assert torch.equal(reps["head"], reps["output"])
    assert not model.head._forward_hooks and not model.features[2]._forward_hooks
    with pytest.raises(RuntimeError), layer_forward(model, ["head"]) as forward:
        raise RuntimeError("boom")
    assert not model.head._forward_hooks
    with pytest.raises(HubstabError, match=r"Did you mean features\.2"):
        resolve_layers(model, ["feature.2"])
    with pytest.raises(HubstabError, match="name the modules"):
        resolve_layers(nn.Sequential(nn.Linear(3, 3)), "blocks")


def test_layer_selection():
    model = SmallCNN()
    assert resolve_layers(model, "blocks") == [f"features.{i}" for i in range(9)]
    assert resolve_layers(model, "all") == [*(f"features.{i}" for i in range(9)), "head"]
    assert resolve_layers(model, "features.2, head") == ["features.2", "head"]
    assert resolve_layers(model, ["Blocks"]) == resolve_layers(model, "blocks")  # as the CLI passes it


def test_timm_blocks_and_feature_info():
    import timm

    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=28,
        patch_size=7,
        in_chans=1,
        depth=3,
        num_classes=10,
    )
    assert resolve_layers(vit, "blocks") == ["blocks.0", "blocks.1", "blocks.2"]
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=10)
    assert resolve_layers(resnet, "blocks") == ["act1", "layer1", "layer2", "layer3", "layer4"]
    x, _ = load_fashion_mnist("t10k", 12)
    result = relative_stability(vit.eval(), x, layers="blocks", bootstrap=0)
    assert list(result.layers) == ["blocks.0", "blocks.1", "blocks.2"]
    assert all(math.isfinite(v["relative_stability"][0]) for v in result.layers.values())


def test_transformers_encoder_layers():
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=28,
        patch_size=7,
        num_channels=1,
        num_labels=10,
    )
    torch.manual_seed(0)
    model = ViTForImageClassification(config).eval()
    names = resolve_layers(model, "blocks")
    assert len(names) == 2 and names[0].endswith(".0")
    x, _ = load_fashion_mnist("t10k", 12)
    result = relative_stability(model, x, layers="blocks", bootstrap=0)
    assert list(result.layers) == names
    assert all(math.isfinite(v["relative_stability"][0]) for v in result.layers.values())
