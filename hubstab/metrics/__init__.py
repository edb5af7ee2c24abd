"""Metrics: relative stability R_f = D_f / G_f and its parts."""

from hubstab.metrics.result import HIGHER_IS_BETTER, StabilityPoint, StabilityResult
from hubstab.metrics.stability import (
    StabilityStats,
    batch_stats,
    build_result,
    mean_pair_distance,
    median_pair_distance,
    reduce_stats,
    relative_stability,
)

__all__ = [
    "HIGHER_IS_BETTER",
    "StabilityPoint",
    "StabilityResult",
    "StabilityStats",
    "batch_stats",
    "build_result",
    "mean_pair_distance",
    "median_pair_distance",
    "reduce_stats",
    "relative_stability",
]
