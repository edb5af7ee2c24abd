"""hubstab: relative stability of vision models toward diffeomorphisms, R_f = D_f / G_f.

Public names are imported lazily, so ``import hubstab`` stays cheap (no timm, transformers or datasets
until they are used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hubstab._version import __version__

_EXPORTS: dict[str, str] = {
    # perturbations
    "deform": "hubstab.perturbations.diffeo",
    "sample_coefficients": "hubstab.perturbations.diffeo",
    "apply_coefficients": "hubstab.perturbations.diffeo",
    "displacement_field": "hubstab.perturbations.diffeo",
    "temperature_range": "hubstab.perturbations.diffeo",
    "typical_displacement": "hubstab.perturbations.diffeo",
    "temperature_for_displacement": "hubstab.perturbations.diffeo",
    "sweep_temperatures": "hubstab.perturbations.diffeo",
    "matched_noise": "hubstab.perturbations.noise",
    # metrics
    "relative_stability": "hubstab.metrics.stability",
    "StabilityResult": "hubstab.metrics.result",
    "StabilityPoint": "hubstab.metrics.result",
    # adapters
    "load_model": "hubstab.adapters.models",
    "LoadedModel": "hubstab.adapters.models",
    "DataConfig": "hubstab.adapters.config",
    "load_probe_set": "hubstab.adapters.data",
    "match_labels": "hubstab.adapters.labels",
    # runner
    "evaluate": "hubstab.runner.engine",
    "EvalConfig": "hubstab.runner.config",
    # layers, sweeps, plots, tasks, training
    "layer_forward": "hubstab.metrics.layers",
    "resolve_layers": "hubstab.metrics.layers",
    "temperature_sweep": "hubstab.metrics.sweeps",
    "cut_sweep": "hubstab.metrics.sweeps",
    "paper_temperatures": "hubstab.metrics.sweeps",
    "plot_layers": "hubstab.plots",
    "plot_sweep": "hubstab.plots",
    "plot_error_vs_stability": "hubstab.plots",
    "ScaleDetection": "hubstab.tasks.scale_detection",
    "StabilityMonitor": "hubstab.training",
    "StabilityCallback": "hubstab.training",
    # invariance / equivariance (Kvinge et al.), class-manifold dimension (Fort et al.)
    "equivariance_deviation": "hubstab.metrics.equivariance",
    "EquivarianceResult": "hubstab.metrics.equivariance",
    "class_manifold_dimension": "hubstab.metrics.manifold",
    "ClassManifoldResult": "hubstab.metrics.manifold",
    "get_transform": "hubstab.perturbations.groups",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hubstab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from hubstab.metrics.result import StabilityPoint, StabilityResult
    from hubstab.metrics.stability import relative_stability
    from hubstab.perturbations.diffeo import (
        apply_coefficients,
        deform,
        displacement_field,
        sample_coefficients,
        sweep_temperatures,
        temperature_for_displacement,
        temperature_range,
        typical_displacement,
    )
    from hubstab.perturbations.noise import matched_noise
