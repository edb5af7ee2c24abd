"""The scale-detection task of Tomasini et al. (2022) as a dataset generator."""

from __future__ import annotations

import pytest
import torch

from hubstab.errors import HubstabError
from hubstab.tasks import ScaleDetection, pixel_distance


@pytest.mark.parametrize("norm", ["L2", "L1", "Linf"])
def test_images_follow_the_rule(norm):
    data = ScaleDetection(401, norm=norm, seed=3)
    assert data.images.shape == (401, 1, 28, 28)
    assert len(data) == 401
    # exactly two active pixels, at the recorded positions
    active = (data.images > 0).flatten(1)
    assert torch.equal(active.sum(1), torch.full((401,), 2))
    rows, cols = data.positions[..., 0], data.positions[..., 1]
    assert torch.all(data.images[torch.arange(401)[:, None], 0, rows, cols] == 1.0)
    # labels from the distance: far (0) at >= xi + gap/2 = 15, close (1) below xi - gap/2 = 13
    dist = pixel_distance(data.positions[:, 0], data.positions[:, 1], norm)
    assert torch.equal(dist, data.distances)
    assert torch.all(dist[data.labels == 0] >= 15)
    assert torch.all((dist[data.labels == 1] < 13) & (dist[data.labels == 1] > 0))
    # balanced
    assert abs(int((data.labels == 0).sum()) - int((data.labels == 1).sum())) <= 1
    image, label = data[5]
    assert image.shape == (1, 28, 28) and label == int(data.labels[5])


def test_distances_by_hand():
    a, b = torch.tensor([0, 0]), torch.tensor([3, 4])
    assert pixel_distance(a, b, "L2") == 5
    assert pixel_distance(a, b, "L1") == 7
    assert pixel_distance(a, b, "Linf") == 4


def test_seeded_and_parameters():
    a, b = ScaleDetection(64, seed=1), ScaleDetection(64, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    c = ScaleDetection(64, seed=2)
    assert not torch.equal(a.images, c.images)
    small = ScaleDetection(100, d=16, xi=6, gap=4, seed=0)
    assert small.images.shape == (100, 1, 16, 16)
    assert torch.all(small.distances[small.labels == 0] >= 8)
    assert torch.all(small.distances[small.labels == 1] < 4)
    # positions spread over the whole grid, not a corner
    assert small.positions.min() == 0 and small.positions.max() == 15


def test_impossible_settings_are_refused():
    with pytest.raises(HubstabError, match="largest"):
        ScaleDetection(10, d=8, xi=14)
    with pytest.raises(HubstabError, match="no close pairs"):
        ScaleDetection(10, xi=1.5, gap=2)
    with pytest.raises(HubstabError, match="norm"):
        ScaleDetection(10, norm="L3")
