"""The scale-detection task of Tomasini, Petrini, Cagnetta and Wyart (2022).

A d x d image is black except for two active pixels. The label says whether they are far apart or close:
label 0 when their distance is at least ``xi + gap / 2``, label 1 when it is below ``xi - gap / 2``; distances
in the gap do not occur. The label depends only on a scale, not on where the pixels are, so a good network must
be stable toward small deformations while staying sensitive to the distance itself.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch.utils.data import Dataset

from hubstab.errors import HubstabError

Norm = Literal["L1", "L2", "Linf"]
NORMS: tuple[str, ...] = ("L1", "L2", "Linf")
FAR, CLOSE = 0, 1
"""Labels: 0 for pixels at least ``xi + gap / 2`` apart, 1 for pixels closer than ``xi - gap / 2``."""


def pixel_distance(a: torch.Tensor, b: torch.Tensor, norm: str = "L2") -> torch.Tensor:
    """Distance in pixels between (..., 2) integer (row, column) positions in the given norm."""
    diff = (a - b).double().abs()
    if norm == "L2":
        return diff.pow(2).sum(-1).sqrt()
    if norm == "L1":
        return diff.sum(-1)
    if norm == "Linf":
        return diff.amax(-1)
    raise HubstabError(f"norm must be one of {NORMS}, got {norm!r}")


class ScaleDetection(Dataset):
    """A seeded, balanced set of scale-detection images.

    Attributes:
        images: (N, 1, d, d) float32 images, 0 everywhere except ``value`` at the two active pixels.
        labels: (N,) int64, 0 (far: distance >= xi + gap/2) or 1 (close: distance < xi - gap/2); half each
            (the extra image of an odd N gets a random label).
        positions: (N, 2, 2) int64 (row, column) of the two active pixels.
        distances: (N,) float64 distance between them in pixels, in ``norm``.

    Args:
        num_images: N.
        d: image side in pixels.
        xi: the scale separating the classes, in pixels.
        gap: width of the excluded band of distances around ``xi``, in pixels.
        norm: ``"L2"`` (default), ``"L1"`` or ``"Linf"``.
        seed: the same seed and settings give the same images.
        value: intensity of the active pixels.

    Raises:
        HubstabError: settings for which a class cannot occur on a d x d grid.
    """

    def __init__(
        self,
        num_images: int,
        *,
        d: int = 28,
        xi: float = 14.0,
        gap: float = 2.0,
        norm: Norm = "L2",
        seed: int = 0,
        value: float = 1.0,
    ) -> None:
        if num_images < 1:
            raise HubstabError(f"num_images must be >= 1, got {num_images}")
        if norm not in NORMS:
            raise HubstabError(f"norm must be one of {NORMS}, got {norm!r}")
        if d < 2 or gap < 0:
            raise HubstabError(f"need d >= 2 and gap >= 0, got d={d}, gap={gap}")
        self.d, self.xi, self.gap, self.norm, self.seed = int(d), float(xi), float(gap), norm, int(seed)
        self.close_below = self.xi - self.gap / 2
        self.far_from = self.xi + self.gap / 2
        largest = {"L2": (d - 1) * math.sqrt(2), "L1": 2.0 * (d - 1), "Linf": float(d - 1)}[norm]
        if self.close_below <= 1:
            raise HubstabError(
                f"xi - gap/2 = {self.close_below} leaves no close pairs: it must exceed 1 pixel"
            )
        if self.far_from > largest:
            raise HubstabError(
                f"xi + gap/2 = {self.far_from} exceeds the largest {norm} distance on a {d} x {d} grid "
                f"({largest:.3g} px): lower xi or raise d"
            )
        gen = torch.Generator().manual_seed(self.seed)
        labels = torch.arange(num_images) % 2
        if num_images % 2:
            labels[-1] = int(torch.randint(2, (1,), generator=gen))
        labels = labels[torch.randperm(num_images, generator=gen)]
        positions = torch.empty(num_images, 2, 2, dtype=torch.int64)
        for label in (FAR, CLOSE):
            slots = (labels == label).nonzero().flatten()
            positions[slots] = self._sample_pairs(slots.numel(), label, gen)
        self.labels = labels
        self.positions = positions
        self.distances = pixel_distance(positions[:, 0], positions[:, 1], norm)
        self.images = torch.zeros(num_images, 1, d, d)
        rows = torch.arange(num_images).repeat_interleave(2)
        flat = positions.reshape(-1, 2)
        self.images[rows, 0, flat[:, 0], flat[:, 1]] = float(value)

    def _sample_pairs(self, count: int, label: int, gen: torch.Generator) -> torch.Tensor:
        """``count`` pairs of distinct pixels whose distance fits ``label`` (rejection sampling)."""
        found: list[torch.Tensor] = []
        have = 0
        for _ in range(1000):
            if have >= count:
                break
            batch = max(64, 4 * (count - have))
            pairs = torch.randint(self.d, (batch, 2, 2), generator=gen)
            dist = pixel_distance(pairs[:, 0], pairs[:, 1], self.norm)
            ok = (dist >= self.far_from) if label == FAR else (dist > 0) & (dist < self.close_below)
            found.append(pairs[ok])
            have += int(ok.sum())
        if have < count:
            raise HubstabError("could not draw enough pixel pairs for these settings: widen the classes")
        return torch.cat(found)[:count]

    def __len__(self) -> int:
        return int(self.labels.numel())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        return (
            f"ScaleDetection(num_images={len(self)}, d={self.d}, xi={self.xi:g}, gap={self.gap:g}, "
            f"norm={self.norm!r}, seed={self.seed})"
        )
