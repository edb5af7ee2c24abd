"""Class-manifold effective dimension by cutting planes (Fort et al.) against known answers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import load_fashion_mnist
from torch import nn

from hubstab import class_manifold_dimension
from hubstab.metrics.manifold import default_dims, fit_threshold_dimension

REQUIRED_KEYS = {
    "target_class", "dims", "probabilities", "d_star", "effective_dimension", "input_dim", "threshold",
    "steps", "lr", "repeats", "seed", "num_images",
}  # fmt: skip


class BallClassifier(nn.Module):
    """Class 0 is confident inside a ball of radius r around ``center``; 9 other classes with logit 0.

    A random d-dimensional subspace through X0 passes at squared distance about (1 - d / D) ||X0 - center||^2
    from the centre, so the target probability crosses 1/2 at d* = D (1 - r^2 / ||X0 - center||^2).
    """

    def __init__(self, center: torch.Tensor, radius: float, sharpness: float = 20.0):
        super().__init__()
        self.center, self.radius, self.sharpness = center, radius, sharpness

    def forward(self, x):
        d2 = (x.flatten(1) - self.center).pow(2).sum(1)
        logit = self.sharpness * (1.0 - d2 / self.radius**2) + math.log(9.0)
        return torch.cat([logit[:, None], x.new_zeros(x.shape[0], 9)], dim=1)


def test_sigmoid_fit_reads_the_threshold_crossing():
    dims = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    true_center, true_slope = math.log(20.0), 2.5
    probs = [1 / (1 + math.exp(-true_slope * (math.log(d) - true_center))) for d in dims]
    fit = fit_threshold_dimension(dims, probs, 0.5)
    assert fit["status"] == "fit"
    assert fit["d_star"] == pytest.approx(20.0, rel=0.02)
    assert fit["slope"] == pytest.approx(true_slope, rel=0.05)
    high = fit_threshold_dimension(dims, probs, 0.9)["d_star"]
    assert high == pytest.approx(20.0 * math.exp(math.log(9.0) / true_slope), rel=0.03)
    assert 16 < fit["d_star_interpolated"] < 32
    above = fit_threshold_dimension(dims, [0.7] * len(dims), 0.5)
    assert above["status"] == "above_at_all_dims" and above["d_star"] == 1
    below = fit_threshold_dimension(dims, [0.2] * len(dims), 0.5)
    assert below["status"] == "below_at_all_dims" and below["d_star"] == 256
    assert default_dims(784) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 784]
    assert default_dims(3 * 224 * 224)[-1] == 4096
    assert default_dims(3 * 224 * 224, (1 << 26) // (3 * 224 * 224))[-1] == 256


def test_ball_class_has_the_dimension_gordon_predicts():
    torch.manual_seed(0)
    dim = 196
    center = torch.rand(dim)
    x0 = torch.rand(4, 1, 14, 14)
    dist2 = float((x0.flatten(1) - center).pow(2).sum(1).mean())
    model = BallClassifier(center, radius=math.sqrt(0.5 * dist2))
    res = class_manifold_dimension(model, x0, 0, dims=[1, 16, 64, 96, 128, 196], repeats=2)
    expected = dim * 0.5
    assert res.status == "fit"
    assert res.d_star == pytest.approx(expected, rel=0.1)
    assert res.effective_dimension == pytest.approx(dim - res.d_star)
    assert res.probabilities[0] < 0.01 and res.probabilities[-1] > 0.99
    # batching: the same subspaces optimised in small chunks give the same numbers
    chunked = class_manifold_dimension(
        model, x0[:2], 0, dims=[16, 96], repeats=2, steps=15, max_elements=112 * dim, batch_size=3
    )
    whole = class_manifold_dimension(model, x0[:2], 0, dims=[16, 96], repeats=2, steps=15)
    assert chunked.probabilities == pytest.approx(whole.probabilities, rel=1e-4, abs=1e-6)


@pytest.mark.slow  # trains on Fashion-MNIST and probes 196 dimensions (about 25 s on 2 busy cores)
def test_linear_softmax_classifier_has_nearly_full_dimension():
    x, y = load_fashion_mnist("train", 1000)
    x = nn.functional.avg_pool2d(x, 2)  # 14 x 14: D = 196
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(196, 10))
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt = load_fashion_mnist("t10k", 500)
    xt = nn.functional.avg_pool2d(xt, 2)
    with torch.no_grad():
        assert float((model(xt).argmax(1) == yt).float().mean()) > 0.7
    xt, yt = xt[:4], yt[:4]
    # half-spaces: a random plane of a few dimensions already reaches the class (d* << D)
    res = class_manifold_dimension(model, xt, 0, labels=yt, dims=[1, 2, 4, 8, 196], repeats=2, steps=150)
    assert res.input_dim == 196 and res.num_images == int((yt != 0).sum())
    assert res.settings["start_selection"] == "labels"
    assert res.start_probability < 0.5
    assert res.d_star < 10
    assert res.effective_dimension > 0.95 * 196
    assert res.probabilities[-1] > 0.99


def test_trained_cnn_end_to_end(trained_fmnist_cnn):
    x, y = load_fashion_mnist("t10k", 4)
    res = class_manifold_dimension(
        trained_fmnist_cnn, x, 3, labels=y, dims=[1, 16, 784], repeats=1, steps=30, clamp=True
    )
    record = res.to_dict()
    assert set(record) >= REQUIRED_KEYS
    json.dumps(record)
    assert record["settings"]["clamp"] is True and record["input_dim"] == 784
    assert len(record["probabilities"]) == 3 and all(0 <= p <= 1 for p in record["probabilities"])
    assert res.probabilities[-1] > res.probabilities[0]
    assert 1 <= res.d_star <= 784 and res.effective_dimension == pytest.approx(784 - res.d_star)
    assert res.status in ("fit", "above_at_all_dims", "below_at_all_dims")


def test_clamp_keeps_inputs_in_range_and_errors_are_clear():
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(16, 3)

        def forward(self, x):
            seen.append((float(x.detach().min()), float(x.detach().max())))
            return self.linear(x.flatten(1))

    torch.manual_seed(0)
    model, x0 = Spy(), torch.rand(2, 1, 4, 4)
    class_manifold_dimension(model, x0, 1, labels=[0, 2], dims=[4, 16], repeats=1, steps=20, clamp=True)
    assert min(lo for lo, _ in seen) >= 0.0 and max(hi for _, hi in seen) <= 1.0
    with pytest.raises(ValueError, match="target_class"):
        class_manifold_dimension(model, x0, 5, dims=[1])
    with pytest.raises(ValueError, match="dims"):
        class_manifold_dimension(model, x0, 1, dims=[17])
    with pytest.raises(ValueError, match="every starting image"):
        class_manifold_dimension(model, x0, 1, labels=[1, 1], dims=[1])
    with pytest.raises(ValueError, match="max_elements"):
        class_manifold_dimension(model, x0, 1, labels=[0, 2], dims=[16], max_elements=100)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    center, x0 = torch.rand(64), torch.rand(2, 1, 8, 8)
    cpu = class_manifold_dimension(BallClassifier(center, 2.0), x0, 0, dims=[8, 32, 64], repeats=2, steps=50)
    gpu = class_manifold_dimension(
        BallClassifier(center.cuda(), 2.0), x0.cuda(), 0, dims=[8, 32, 64], repeats=2, steps=50, device="cuda"
    )
    assert gpu.probabilities == pytest.approx(cpu.probabilities, abs=1e-3)
