"""Sweeps of R_f, D_f, G_f over the temperature T and the cut-off c, and results as tables.

A temperature sweep is one call of :func:`~hubstab.metrics.stability.relative_stability` with many
temperatures: the clean pass is shared, and the fields and noise of an image are the same at every T (they
scale with T), so the sweep's value at the protocol temperature equals the single measurement exactly.
Each cut-off needs its own fields, so :func:`cut_sweep` measures one cut after the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hubstab.metrics.result import StabilityResult
from hubstab.metrics.stability import relative_stability
from hubstab.perturbations.diffeo import effective_side, sweep_temperatures

PAPER_CUTS: tuple[int, ...] = (3, 5, 15)
"""Cut-offs of Petrini et al. (2021)."""


def paper_temperatures(height: int, width: int | None = None, cut: int = 3, num: int = 30) -> list[float]:
    """The paper's sweep for an H x W image: ``num`` temperatures log-spaced in [T1 / 15, 2 T2].

    T1 (typical displacement of half a pixel) is taken on the effective side sqrt((H^2 + W^2) / 2).
    """
    return sweep_temperatures(effective_side(height, width or height), cut, num)


def temperature_sweep(
    model: nn.Module | Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int] | None = None,
    *,
    temperatures: Sequence[float] | None = None,
    num: int = 30,
    cut: int = 3,
    **kwargs: Any,
) -> StabilityResult:
    """R_f, D_f, G_f against T in one call sharing the clean pass.

    Args:
        model, images, labels: as for :func:`~hubstab.metrics.stability.relative_stability`.
        temperatures: the temperatures to measure (default: :func:`paper_temperatures` with ``num`` points).
        num: number of temperatures of the default sweep.
        cut: cut-off c.
        **kwargs: further arguments of ``relative_stability`` (``delta``/``temperature`` set the headline T,
            which is always part of the sweep; ``layers`` adds layer-wise values at every T).

    Returns:
        A :class:`StabilityResult` whose ``sweep`` holds one point per temperature, sorted by T.
    """
    if temperatures is None:
        temperatures = paper_temperatures(images.shape[-2], images.shape[-1], cut, num)
    return relative_stability(model, images, labels, temperatures=temperatures, cut=cut, **kwargs)


def cut_sweep(
    model: nn.Module | Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int] | None = None,
    *,
    cuts: Sequence[int] = PAPER_CUTS,
    temperatures: str | Sequence[float] | None = None,
    num: int = 30,
    **kwargs: Any,
) -> dict[int, StabilityResult]:
    """R_f for several cut-offs c, each at the protocol displacement (``delta``, default 1 px).

    Args:
        model, images, labels: as for :func:`~hubstab.metrics.stability.relative_stability`.
        cuts: the cut-offs (the paper's 3, 5, 15 by default).
        temperatures: ``None`` (only the protocol T of each cut), ``"paper"`` (each cut's own paper sweep
            of ``num`` temperatures) or explicit temperatures used for every cut.
        num: points of the paper sweep.
        **kwargs: further arguments of ``relative_stability``.

    Returns:
        cut -> result; the temperature that gives ``delta`` pixels differs between cuts.
    """
    if "cut" in kwargs:
        raise TypeError("cut_sweep takes `cuts`, not `cut`")
    out: dict[int, StabilityResult] = {}
    for cut in cuts:
        if temperatures == "paper":
            temps: Sequence[float] | None = paper_temperatures(images.shape[-2], images.shape[-1], cut, num)
        elif isinstance(temperatures, str):
            raise ValueError(f"temperatures must be None, 'paper' or a list of floats, got {temperatures!r}")
        else:
            temps = temperatures
        out[int(cut)] = relative_stability(model, images, labels, cut=int(cut), temperatures=temps, **kwargs)
    return out


def _results_section(obj: StabilityResult | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(obj, StabilityResult):
        return obj.to_dict()
    if isinstance(obj, Mapping) and isinstance(obj.get("results"), Mapping):
        return obj["results"]
    return obj


def sweep_table(result: StabilityResult | Mapping[str, Any]) -> list[dict[str, float | None]]:
    """One row per temperature: temperature, delta (px), R_f, its interval, D_f, G_f.

    Accepts a :class:`StabilityResult`, a results record (``{"results": {"sweep": ...}}``) or its results.
    """
    rows = []
    for point in _results_section(result).get("sweep") or []:
        ci = point.get("relative_stability_ci") or (None, None)
        rows.append(
            {
                "temperature": point.get("temperature"),
                "delta": point.get("delta"),
                "relative_stability": point.get("relative_stability"),
                "ci_low": ci[0],
                "ci_high": ci[1],
                "diffeo_stability": point.get("diffeo_stability"),
                "noise_stability": point.get("noise_stability"),
            }
        )
    return rows


def layers_table(
    result: StabilityResult | Mapping[str, Any], temperature: float | None = None
) -> list[dict[str, Any]]:
    """One row per layer in depth order, the output last: depth, layer, R_k, D_k, G_k at one temperature.

    Args:
        result: a :class:`StabilityResult`, a results record or its ``results`` section.
        temperature: the temperature to read (default: the headline one; the nearest measured is used).
    """
    section = _results_section(result)
    settings = section.get("settings") or {}
    if temperature is None:
        temperature = settings.get("temperature")
        if temperature is None and isinstance(result, Mapping):
            temperature = ((result.get("config") or {}).get("protocol") or {}).get("temperature")
    rows = []
    for name, values in (section.get("layers") or {}).items():
        temps = list(values.get("temperatures") or [])
        t = _nearest(temps, temperature)
        rows.append(
            {
                "layer": name,
                "temperature": temps[t] if temps else None,
                "relative_stability": values["relative_stability"][t],
                "diffeo_stability": values["diffeo_stability"][t],
                "noise_stability": values["noise_stability"][t],
            }
        )
    sweep = section.get("sweep") or []
    if sweep:
        t = _nearest([p.get("temperature") for p in sweep], temperature)
        point = sweep[t]
        rows.append(
            {
                "layer": "output",
                "temperature": point.get("temperature"),
                "relative_stability": point.get("relative_stability"),
                "diffeo_stability": point.get("diffeo_stability"),
                "noise_stability": point.get("noise_stability"),
            }
        )
    else:
        rows.append(
            {
                "layer": "output",
                "temperature": temperature,
                "relative_stability": section.get("relative_stability"),
                "diffeo_stability": section.get("diffeo_stability"),
                "noise_stability": section.get("noise_stability"),
            }
        )
    for depth, row in enumerate(rows, start=1):
        row["depth"] = depth
    return rows


def _nearest(temperatures: Sequence[float | None], target: float | None) -> int:
    if not temperatures:
        return 0
    if target is None:
        return 0

    def distance(i: int) -> float:
        t = temperatures[i]
        if t is None or t <= 0 or target <= 0:
            return math.inf
        return abs(math.log(t) - math.log(target))

    return min(range(len(temperatures)), key=distance)
