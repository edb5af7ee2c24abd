"""Perturbations: max-entropy diffeomorphisms and noise of matched norm."""

from hubstab.perturbations.diffeo import (
    INTERPOLATIONS,
    apply_coefficients,
    apply_displacement,
    deform,
    diffeo_modes,
    displacement_field,
    effective_side,
    sample_coefficients,
    sweep_temperatures,
    temperature_for_displacement,
    temperature_range,
    typical_displacement,
)
from hubstab.perturbations.noise import matched_noise

__all__ = [
    "INTERPOLATIONS",
    "apply_coefficients",
    "apply_displacement",
    "deform",
    "diffeo_modes",
    "displacement_field",
    "effective_side",
    "matched_noise",
    "sample_coefficients",
    "sweep_temperatures",
    "temperature_for_displacement",
    "temperature_range",
    "typical_displacement",
]
