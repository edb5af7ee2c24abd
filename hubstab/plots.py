"""Figures of stability results (matplotlib Agg canvas, no pyplot; every function returns a ``Figure``).

* :func:`plot_layers`: R_k, D_k, G_k against depth (Tomasini et al. 2022), the output last.
* :func:`plot_sweep`: R_f (and D_f, G_f) against the temperature T, with the bootstrap band of R_f.
* :func:`plot_error_vs_stability`: test error against R_f over many results (Petrini et al. 2021, fig. 1).

Each accepts :class:`~hubstab.metrics.result.StabilityResult` objects, results records (the JSON documents of
:mod:`hubstab.results.record`) or paths to results files; files are validated before use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubstab.errors import ResultsValidationError
from hubstab.metrics.result import StabilityResult
from hubstab.metrics.sweeps import layers_table, sweep_table

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

Source = StabilityResult | Mapping[str, Any] | str | Path
"""A result object, a results record (dict) or the path of a results file."""

METRICS: dict[str, str] = {
    "relative_stability": "R",
    "diffeo_stability": "D",
    "noise_stability": "G",
}


def _figure(**kwargs: Any) -> Figure:
    """A figure on an Agg canvas, made without pyplot: no window, no change to the global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def load_source(source: Source) -> StabilityResult | Mapping[str, Any]:
    """A result or record from a path (validated with :func:`hubstab.results.validate.load_record`)."""
    if isinstance(source, (str, Path)):
        from hubstab.results.validate import load_record

        try:
            return load_record(source)
        except ResultsValidationError as err:
            raise ResultsValidationError(f"{source}: {err}") from None
    return source


def label_of(source: StabilityResult | Mapping[str, Any], default: str = "result") -> str:
    """A short label: the model name of a record, else ``extra["model_name"]`` of a result, else ``default``."""
    if isinstance(source, StabilityResult):
        name = source.extra.get("model_name") or source.extra.get("model")
    else:
        name = (source.get("config") or {}).get("model_name")
    return str(name) if name else default


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def plot_layers(
    result: Source,
    *,
    temperature: float | None = None,
    metrics: Sequence[str] = ("relative_stability", "diffeo_stability", "noise_stability"),
    title: str | None = None,
) -> Figure:
    """R_k, D_k and G_k against depth: one point per measured layer, then the output.

    Args:
        result: a result or record with layer-wise values (measured with ``layers=...``).
        temperature: the temperature to show (default the headline one).
        metrics: which of ``relative_stability``, ``diffeo_stability``, ``noise_stability`` to draw.
        title: figure title (default: the model name).

    Raises:
        ResultsValidationError: the result has no layer-wise values.
    """
    source = load_source(result)
    rows = layers_table(source, temperature)
    if len(rows) < 2:
        raise ResultsValidationError("this result has no layer-wise values: measure with layers='blocks'")
    fig = _figure(figsize=(max(5.0, 0.45 * len(rows) + 2.5), 4.0), layout="constrained")
    ax = fig.add_subplot()
    depth = [r["depth"] for r in rows]
    for metric in metrics:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {tuple(METRICS)}, got {metric!r}")
        ax.plot(depth, [_num(r[metric]) for r in rows], marker="o", label=f"{METRICS[metric]}_k")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xticks(depth, [r["layer"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("layer (depth)")
    ax.set_ylabel("stability (own denominator per layer)")
    t = rows[-1]["temperature"]
    ax.set_title(
        title
        or label_of(source, "layer-wise stability") + (f"   T = {t:.3g}" if isinstance(t, float) else "")
    )
    ax.legend()
    return fig


def plot_sweep(
    results: Source | Sequence[Source],
    *,
    parts: bool = True,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """R_f against the temperature T (log-log) with its bootstrap band; D_f and G_f in a second panel.

    A result measured at one temperature is drawn as a single point with its interval as an error bar.

    Args:
        results: one or several results or records with a sweep (measured with ``temperatures=...``).
        parts: add the D_f / G_f panel.
        labels: legend labels, one per result (default: model names).
        title: figure title.
    """
    sources = _as_list(results)
    fig = _figure(figsize=(10.0 if parts else 5.5, 4.0), layout="constrained")
    axes = fig.subplots(1, 2 if parts else 1, squeeze=False)[0]
    for i, source in enumerate(sources):
        rows = [r for r in sweep_table(source) if _num(r["temperature"]) > 0]
        if not rows:
            raise ResultsValidationError("a result has no sweep points to plot")
        label = labels[i] if labels else label_of(source, f"result {i + 1}")
        t = [_num(r["temperature"]) for r in rows]
        (line,) = axes[0].plot(t, [_num(r["relative_stability"]) for r in rows], marker=".", label=label)
        low = [_num(r["ci_low"]) for r in rows]
        high = [_num(r["ci_high"]) for r in rows]
        if len(rows) == 1 and math.isfinite(low[0]) and math.isfinite(high[0]):
            # one temperature: the point with its interval as an error bar (a band needs two points)
            value = _num(rows[0]["relative_stability"])
            axes[0].errorbar(
                t, [value], yerr=[[value - low[0]], [high[0] - value]], color=line.get_color(), capsize=4
            )
        elif any(math.isfinite(v) for v in low):
            axes[0].fill_between(t, low, high, color=line.get_color(), alpha=0.2, lw=0)
        if parts:
            color = line.get_color()
            axes[1].plot(
                t, [_num(r["diffeo_stability"]) for r in rows], color=color, marker="o", label=f"D_f {label}"
            )
            axes[1].plot(
                t,
                [_num(r["noise_stability"]) for r in rows],
                color=color,
                ls="--",
                marker="s",
                label=f"G_f {label}",
            )
    axes[0].axhline(1.0, color="grey", lw=0.8, ls=":")
    axes[0].set_ylabel("R_f = D_f / G_f")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("temperature T")
        ax.legend(fontsize=8)
    if parts:
        axes[1].set_ylabel("D_f (solid), G_f (dashed)")
    if title:
        fig.suptitle(title)
    return fig


def plot_error_vs_stability(
    records: Sequence[Source],
    *,
    reference: bool = False,
    annotate: bool = True,
    title: str | None = None,
) -> Figure:
    """Test error against R_f, one point per result (those without a test error are skipped).

    Args:
        records: results, records or paths.
        reference: draw the CIFAR-10 fit of Petrini et al., eps_t = 0.2 sqrt(R_f) (other data sets differ).
        annotate: write the model name beside each point.
        title: figure title.

    Raises:
        ResultsValidationError: no result has both R_f and a test error.
    """
    points = []
    for i, source in enumerate(_as_list(records)):
        section = source.to_dict() if isinstance(source, StabilityResult) else source.get("results") or source
        r, err = _num(section.get("relative_stability")), _num(section.get("test_error"))
        if math.isfinite(r) and r > 0 and math.isfinite(err):
            points.append((r, err, label_of(source, f"result {i + 1}")))
    if not points:
        raise ResultsValidationError("none of the results has both R_f and a test error")
    fig = _figure(figsize=(6.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter([p[0] for p in points], [p[1] for p in points], zorder=3)
    if annotate:
        for r, err, name in points:
            ax.annotate(name, (r, err), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if reference:
        lo, hi = min(p[0] for p in points), max(p[0] for p in points)
        grid = [lo * (hi / lo) ** (k / 50) for k in range(51)] if hi > lo else [lo]
        ax.plot(grid, [0.2 * math.sqrt(g) for g in grid], "k--", lw=1, label="0.2 sqrt(R_f) (CIFAR-10 fit)")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    if max(p[0] for p in points) < 10 * min(p[0] for p in points):
        # within one decade matplotlib labels the minor ticks as 1.3 x 10^-1, ..., which overlap
        from matplotlib.ticker import FuncFormatter

        short = FuncFormatter(lambda v, _pos: f"{v:.3g}")
        ax.xaxis.set_major_formatter(short)
        ax.xaxis.set_minor_formatter(short)
    ax.set_xlabel("R_f")
    ax.set_ylabel("test error")
    ax.set_title(title or "test error against relative stability")
    return fig


def _as_list(value: Source | Sequence[Source]) -> list[StabilityResult | Mapping[str, Any]]:
    if isinstance(value, (StabilityResult, Mapping, str, Path)):
        value = [value]
    return [load_source(v) for v in value]
