"""The result of a stability measurement: headline numbers, the settings that produced them, and extras."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

HIGHER_IS_BETTER: dict[str, bool] = {
    "relative_stability": False,
    "diffeo_stability": False,
    "noise_stability": False,
    "test_error": False,
}
"""Direction of every headline metric (lower R_f, D_f, G_f: more stable; lower error: better)."""


@dataclass
class StabilityPoint:
    """D_f, G_f and R_f at one temperature.

    Attributes:
        temperature: T of the diffeomorphisms.
        delta: typical displacement of that T in pixels (closed form, on the effective side of the image).
        relative_stability: R_f = D_f / G_f (dimensionless; < 1 means more stable to diffeos than to noise).
        diffeo_stability: D_f, output change under diffeos over the mean change between distinct images.
        noise_stability: G_f, output change under noise of the same norm, same denominator.
        relative_stability_ci: bootstrap interval of R_f over probe images, (low, high).
    """

    temperature: float
    delta: float
    relative_stability: float
    diffeo_stability: float
    noise_stability: float
    relative_stability_ci: tuple[float, float]


@dataclass
class StabilityResult:
    """Relative stability of a model toward diffeomorphisms, with everything needed to reproduce it.

    The headline fields are measured at the protocol temperature (``settings["temperature"]``); ``sweep`` holds
    every temperature measured in the same call (the headline one included), sorted by T.

    Attributes:
        relative_stability: R_f = D_f / G_f.
        diffeo_stability: D_f.
        noise_stability: G_f.
        relative_stability_ci: bootstrap confidence interval of R_f (level ``settings["confidence"]``).
        test_error: top-1 error on the probe images (fraction in [0, 1]); None without usable labels.
        num_images: number of probe images P.
        settings: the perturbation and estimation settings (T, cut, delta, image size, estimator, seed, ...).
        sweep: one :class:`StabilityPoint` per temperature.
        layers: per-representation results (layer name -> D, G, R) when layers were measured.
        extra: other metrics and metadata added by adapters and runners (model, dataset, environment, ...).
        notes: human-readable remarks about the measurement (e.g. why there is no test error).
        per_sample: optional per-image values (index, d, g, correct) for files beside the aggregate.
    """

    relative_stability: float
    diffeo_stability: float
    noise_stability: float
    relative_stability_ci: tuple[float, float]
    test_error: float | None
    num_images: int
    settings: dict[str, Any]
    sweep: list[StabilityPoint] = field(default_factory=list)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    per_sample: dict[str, list] | None = field(default=None, repr=False)

    higher_is_better = HIGHER_IS_BETTER

    def to_dict(self, *, include_per_sample: bool = False) -> dict[str, Any]:
        """A JSON-serialisable dict (non-finite floats become None)."""
        out = asdict(self)
        if not include_per_sample:
            out.pop("per_sample", None)
        out["higher_is_better"] = dict(HIGHER_IS_BETTER)
        return _finite(out)

    def summary(self) -> str:
        """A few readable lines: R_f with its interval, D_f, G_f, test error, images."""
        lo, hi = self.relative_stability_ci
        level = self.settings.get("confidence", 0.95)
        err = "n/a" if self.test_error is None else f"{100 * self.test_error:.2f}%"
        return (
            f"R_f = {self.relative_stability:.4g}  [{100 * level:.0f}% CI {lo:.4g} - {hi:.4g}]\n"
            f"D_f = {self.diffeo_stability:.4g}   G_f = {self.noise_stability:.4g}\n"
            f"test error = {err}   images = {self.num_images}   "
            f"delta = {self.settings.get('delta', float('nan')):.3g} px   T = {self.settings.get('temperature', float('nan')):.3g}"
        )


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
