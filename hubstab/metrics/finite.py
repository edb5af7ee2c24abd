"""Non-finite model outputs (NaN, or Inf from overflow in low precision): detect, then refuse or exclude.

A probe image is non-finite when its clean output, or the change of any representation under the
diffeomorphism or the noise at any temperature, is NaN or infinite. Such an image would make D_f, G_f and
R_f NaN (or the test error an argmax of NaN), so the measurement either stops with a count
(``nonfinite="error"``, the default) or measures again without those images (``"exclude"``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hubstab.errors import HubstabError
from hubstab.metrics.stability import StabilityStats

NONFINITE_POLICIES: tuple[str, ...] = ("error", "exclude")


class NonFiniteError(HubstabError):
    """Some probe images gave NaN or infinite outputs."""

    def __init__(self, count: int, total: int, hint: str = ""):
        self.count, self.total = count, total
        super().__init__(
            f"{count} of {total} probe image(s) gave NaN or infinite outputs (overflow in low precision? "
            f"--dtype float32 may help){hint}"
        )


def nonfinite_mask(stats: StabilityStats) -> torch.Tensor:
    """(P,) bool: True for the probe images with any non-finite statistic."""
    bad = ~torch.isfinite(stats.outputs).all(1).cpu()
    for group in (stats.diffeo_sq, stats.noise_sq):
        for values in group.values():
            bad |= ~torch.isfinite(values).all(0).cpu()
    for values in stats.clean_sq.values():
        bad |= ~torch.isfinite(values).cpu()
    return bad


def measure_finite(
    measure: Callable[[torch.Tensor], StabilityStats],
    keep: torch.Tensor,
    policy: str,
) -> tuple[StabilityStats | None, list[int]]:
    """Measure a batch, and with ``policy="exclude"`` measure it again without its non-finite images.

    Args:
        measure: measures the images of the batch selected by a (B,) bool mask.
        keep: (B,) bool mask of the images to measure (all True for a full batch).
        policy: ``"error"`` (return the statistics as measured) or ``"exclude"``.

    Returns:
        The statistics (None when every image was excluded) and the global indices of the non-finite images.
    """
    if policy not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {policy!r}")
    stats = measure(keep)
    bad = nonfinite_mask(stats)
    excluded = stats.indices.cpu()[bad].tolist()
    if policy == "error" or not bad.any():
        return stats, excluded
    # Measure the others again rather than subtract: the batch sums of a NaN image cannot be undone. With
    # batch statistics (BatchNorm in train mode) removing images changes the others, hence the loop.
    positions = torch.nonzero(keep).flatten()
    while bad.any():
        keep = keep.clone()
        keep[positions[bad.to(positions.device)]] = False
        positions = torch.nonzero(keep).flatten()
        if positions.numel() == 0:
            return None, sorted(excluded)
        stats = measure(keep)
        bad = nonfinite_mask(stats)
        excluded += stats.indices.cpu()[bad].tolist()
    return stats, sorted(excluded)


def exclusion_note(count: int, total: int) -> str:
    """The note a result carries when non-finite images were excluded."""
    return (
        f"{count} of {total} probe image(s) excluded: their outputs were NaN or infinite "
        "(--dtype float32 may avoid this)"
    )


__all__ = ["NONFINITE_POLICIES", "NonFiniteError", "exclusion_note", "measure_finite", "nonfinite_mask"]
