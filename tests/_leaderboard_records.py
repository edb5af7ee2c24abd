"""Results records from real (small, fast) measurements, for the leaderboard and validation tests.

Every R_f here is measured with :func:`hubstab.relative_stability` on real Fashion-MNIST test images; nothing
is typed in by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from conftest import SmallCNN, load_fashion_mnist
from torch import nn

from hubstab import relative_stability
from hubstab.results.record import build_record

LEADERBOARD_DIR = Path(__file__).resolve().parents[1] / "leaderboard"
DATASET = "fashion_mnist"


def leaderboard_on_path() -> None:
    """Make the leaderboard's modules (reading, fitting, plots, app) importable, as on a Space."""
    if str(LEADERBOARD_DIR) not in sys.path:
        sys.path.insert(0, str(LEADERBOARD_DIR))


class LayerTap(nn.Module):
    """SmallCNN exposing its intermediate representations (the hook for per-layer measurement)."""

    def __init__(self, model: SmallCNN):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.model.features
        b1 = f[0:3](x)
        b2 = f[3:6](b1)
        b3 = f[6:9](b2)
        return {"block1": b1, "block2": b2, "block3": b3, "output": self.model.head(b3.flatten(1))}


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


def quick_linear(seed: int = 0, steps: int = 60) -> nn.Module:
    """A linear classifier trained for about a second on 4,000 Fashion-MNIST training images."""
    x, y = load_fashion_mnist("train", 4000)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def random_cnn(seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN().eval()


def measure(
    model: nn.Module,
    name: str,
    *,
    pretrained: bool,
    num_images: int = 64,
    sweep: bool = False,
    layers: bool = False,
    bootstrap: int = 200,
    adapter: str = "torch",
) -> dict[str, Any]:
    """A results record of ``model`` on the first Fashion-MNIST test images (delta = 1 px, cut 3)."""
    images, labels = load_fashion_mnist("t10k", num_images)
    target = LayerTap(model) if layers else model
    temperatures = [1e-4, 4e-4, 3e-3] if sweep else None
    result = relative_stability(target, images, labels, temperatures=temperatures, bootstrap=bootstrap)
    config = {
        "model_name": name,
        "adapter": adapter,
        "model_dtype": "float32",
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "pretrained": pretrained,
        "dataset": DATASET,
        "split": "test",
        "num_images": num_images,
    }
    return build_record(result, config, wall_time_s=0.1)


def fmnist_records(trained: nn.Module) -> list[dict[str, Any]]:
    """The trained CNN (with sweep and layers), two random-init CNNs and a random-init MLP."""
    return [
        measure(trained, "fmnist/smallcnn-trained", pretrained=True, sweep=True, layers=True),
        measure(random_cnn(1), "fmnist/smallcnn-init-seed1", pretrained=False, layers=True),
        measure(random_cnn(2), "fmnist/smallcnn-init-seed2", pretrained=False),
        measure(mlp(3), "fmnist/mlp-init-seed3", pretrained=False),
    ]


def write_records(folder: Path, records: list[dict[str, Any]]) -> list[Path]:
    """Write records as ``hubstab eval`` lays them out (``hubstab.results.io.write_record``)."""
    from hubstab.results.io import write_record

    return [write_record(record, folder) for record in records]
