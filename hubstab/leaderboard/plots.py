"""Charts of the leaderboard (Vega-Lite through Altair, shown by ``gr.Plot`` with hover tooltips).

All text in the charts (model names included) is drawn by Vega as text, never as HTML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from hubstab.leaderboard import columns as C
from hubstab.leaderboard import reading
from hubstab.leaderboard.fitting import RankCorrelation, SqrtLawFit, fit_sqrt_law, spearman

HUBSTAB_ERROR = "hubstab test error (probe images)"
TIMM_REFERENCE_ERROR = "ImageNet top-1 error (timm, published)"
ERROR_SOURCES: dict[str, str] = {HUBSTAB_ERROR: reading.ERROR, TIMM_REFERENCE_ERROR: reading.TIMM_ERROR}

WIDTH, HEIGHT = 620, 420


@dataclass
class LawPlot:
    """The error-vs-stability chart with the numbers it shows.

    Attributes:
        chart: the Altair chart (None when no model has both R_f and an error).
        fit: fit of eps = a sqrt(R_f) over the plotted models of the chosen group.
        correlation: Spearman's rho of R_f and the error over those models.
        dataset, protocol: the group plotted (one point per model within it).
        note: what was plotted, or why nothing was.
        group_fits: with ``all_groups``, the fit of every ``dataset | protocol`` group.
    """

    chart: alt.Chart | alt.LayerChart | None
    fit: SqrtLawFit
    correlation: RankCorrelation
    dataset: str | None
    protocol: str | None
    note: str
    group_fits: dict[str, SqrtLawFit] = field(default_factory=dict)


TRAINED = "trained"
AT_INIT = "at initialisation"


def _points(rows: pd.DataFrame, error_column: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": rows[C.MODEL].astype(str),
            "family": rows[C.FAMILY].astype(str),
            "group": rows[reading.GROUP].astype(str),
            "R_f": rows[C.R_F].astype(float),
            "ci_low": rows[reading.CI_LOW].astype(float),
            "ci_high": rows[reading.CI_HIGH].astype(float),
            "D_f": rows[C.D_F].astype(float),
            "G_f": rows[C.G_F].astype(float),
            "error": rows[error_column].astype(float),
            "images": rows[C.IMAGES],
            "state": [AT_INIT if u else TRAINED for u in rows[reading.UNTRAINED]],
        }
    )


def _fit_of(data: pd.DataFrame, include_untrained: bool) -> tuple[SqrtLawFit, RankCorrelation, int]:
    fitted = data if include_untrained else data[data["state"] == TRAINED]
    return fit_sqrt_law(fitted["R_f"], fitted["error"]), spearman(fitted["R_f"], fitted["error"]), len(fitted)


def _law_line(fit: SqrtLawFit, low: float, high: float, group: str) -> pd.DataFrame:
    grid = np.geomspace(low, high, 60)
    se = fit.a_se if math.isfinite(fit.a_se) else 0.0
    return pd.DataFrame(
        {
            "R_f": grid,
            "error": fit.predict(grid),
            "low": np.maximum(fit.a - se, 1e-12) * np.sqrt(grid),
            "high": (fit.a + se) * np.sqrt(grid),
            "group": group,
            "se": se,
        }
    )


def law_plot(
    frame: pd.DataFrame,
    error_source: str = HUBSTAB_ERROR,
    include_untrained: bool = True,
    *,
    group: str | None = None,
    all_groups: bool = False,
) -> LawPlot:
    """Test error against R_f, log-log, one point per model, with the fitted law eps = a sqrt(R_f).

    Trained models are filled circles, runs at initialisation hollow diamonds.

    Args:
        frame: rows of :func:`reading.records_to_frame` (already filtered).
        error_source: :data:`HUBSTAB_ERROR` or :data:`TIMM_REFERENCE_ERROR`.
        include_untrained: fit models at initialisation too; when False they are plotted but left out of the
            fit and the rank correlation (the law is about trained networks).
        group: the ``dataset | protocol`` group to plot; None: the one with the most trained models.
        all_groups: plot every group (coloured by group), each with its own fitted line.
    """
    error_column = ERROR_SOURCES.get(error_source)
    if error_column is None:
        raise ValueError(f"error_source must be one of {list(ERROR_SOURCES)}, got {error_source!r}")
    known = [g for g, _ in reading.groups(frame)]
    defaulted = group not in known
    if defaulted:
        group = known[0] if known else None
    if group is None:
        empty_fit = fit_sqrt_law([], [])
        return LawPlot(None, empty_fit, spearman([], []), None, None, "no results match the filters")
    chosen = frame[frame[reading.GROUP] == group]
    dataset, protocol = str(chosen[C.DATASET].iloc[0]), str(chosen[C.PROTOCOL].iloc[0])
    data = _points(frame if all_groups else chosen, error_column)
    mine = data[data["group"] == group]
    fit, corr, n_fitted = _fit_of(mine, include_untrained)
    group_fits = {}
    if all_groups:
        for name, part in data.groupby("group", sort=True):
            group_fits[str(name)] = _fit_of(part, include_untrained)[0]
    note = f"{group}: {len(mine)} model(s)"
    if n_fitted < len(mine):
        note += f"; {len(mine) - n_fitted} untrained model(s) plotted, not fitted"
    if all_groups and len(known) > 1:
        note += f"; all {len(known)} dataset/protocol groups shown, each with its own fit"
    elif len(known) > 1:
        which = "the largest" if defaulted else "one"
        note += f" ({which} of {len(known)} dataset/protocol groups; choose another above the table)"
    plotted = data[(data["R_f"] > 0) & (data["error"] > 0)].dropna(subset=["R_f", "error"])
    if plotted.empty:
        return LawPlot(
            None, fit, corr, dataset, protocol, note + "; none has both R_f > 0 and an error > 0", group_fits
        )
    title = alt.TitleParams(
        f"{error_source} vs relative stability",
        subtitle=[f"{group}: {fit.describe()}", corr.describe()],
        anchor="start",
    )
    r_low = float(np.nanmin([plotted["R_f"].min(), plotted["ci_low"][plotted["ci_low"] > 0].min()]))
    r_high = float(np.nanmax([plotted["R_f"].max(), plotted["ci_high"].max()]))
    x_scale = alt.Scale(type="log", domain=[r_low / 1.5, r_high * 1.5], nice=False)
    y_scale = alt.Scale(type="log", domain=[float(plotted["error"].min()) / 1.5, 1.0], nice=False)
    x = alt.X("R_f:Q", scale=x_scale, title="relative stability R_f = D_f / G_f (log)")
    y = alt.Y("error:Q", scale=y_scale, title=f"{error_source} (log)", axis=alt.Axis(format="%"))
    color_field = "group" if all_groups else "family"
    color = alt.Color(f"{color_field}:N", title=color_field)
    tooltip = [
        alt.Tooltip("model:N", title="model"),
        alt.Tooltip("state:N", title="weights"),
        alt.Tooltip("family:N", title="family"),
        alt.Tooltip("group:N", title="dataset | protocol"),
        alt.Tooltip("R_f:Q", format=".3g"),
        alt.Tooltip("ci_low:Q", format=".3g", title="R_f interval low"),
        alt.Tooltip("ci_high:Q", format=".3g", title="R_f interval high"),
        alt.Tooltip("D_f:Q", format=".3g"),
        alt.Tooltip("G_f:Q", format=".3g"),
        alt.Tooltip("error:Q", format=".2%", title="error"),
        alt.Tooltip("images:Q", title="probe images"),
    ]
    layers: list[Any] = []
    intervals = plotted.dropna(subset=["ci_low", "ci_high"])
    intervals = intervals[intervals["ci_low"] > 0]
    if not intervals.empty:
        layers.append(
            alt.Chart(intervals)
            .mark_rule(opacity=0.5, clip=True)
            .encode(x=alt.X("ci_low:Q", scale=x_scale), x2="ci_high:Q", y=y, color=color)
        )
    fits = group_fits if all_groups else {group: fit}
    lines = [_law_line(f, r_low / 1.5, r_high * 1.5, name) for name, f in fits.items() if math.isfinite(f.a)]
    if lines:
        line = pd.concat(lines, ignore_index=True)
        law = alt.Chart(line)
        band = line[line["se"] > 0]
        if not band.empty and not all_groups:
            layers.append(
                alt.Chart(band)
                .mark_area(opacity=0.15, color="gray", clip=True)
                .encode(x=x, y=alt.Y("low:Q", scale=y_scale), y2="high:Q")
            )
        line_color = color if all_groups else alt.value("black")
        layers.append(
            law.mark_line(strokeDash=[6, 4], clip=True).encode(
                x=x, y=y, color=line_color, detail="group:N", tooltip=[alt.Tooltip("group:N", title="fit of")]
            )
        )
    trained = plotted[plotted["state"] == TRAINED]
    untrained = plotted[plotted["state"] == AT_INIT]
    if not trained.empty:
        layers.append(
            alt.Chart(trained)
            .mark_circle(size=90, opacity=0.9)
            .encode(x=x, y=y, color=color, tooltip=tooltip)
        )
    if not untrained.empty:
        layers.append(
            alt.Chart(untrained)
            .mark_point(shape="diamond", filled=False, size=110, strokeWidth=2, opacity=0.9)
            .encode(x=x, y=y, color=color, tooltip=tooltip)
        )
    chart = alt.layer(*layers).properties(width=WIDTH, height=HEIGHT, title=title)
    return LawPlot(chart, fit, corr, dataset, protocol, note, group_fits)


def sweep_chart(record: dict[str, Any]) -> alt.LayerChart | None:
    """R_f, D_f and G_f against the temperature T of the diffeos (log-log); None without a sweep."""
    sweep = record["results"].get("sweep") or []
    if len(sweep) < 2:
        return None
    rows = []
    for point in sweep:
        ci = point.get("relative_stability_ci") or [None, None]
        for quantity, key in (
            ("R_f", "relative_stability"),
            ("D_f", "diffeo_stability"),
            ("G_f", "noise_stability"),
        ):
            value = point[key]
            rows.append(
                {
                    "T": point["temperature"],
                    "delta (px)": point.get("delta"),
                    "quantity": quantity,
                    "value": value,
                    "low": ci[0] if quantity == "R_f" else None,
                    "high": ci[1] if quantity == "R_f" else None,
                }
            )
    data = pd.DataFrame(rows).dropna(subset=["value"])
    data = data[data["value"] > 0]
    if data.empty:
        return None
    x = alt.X("T:Q", scale=alt.Scale(type="log"), title="temperature T of the diffeomorphisms (log)")
    y = alt.Y("value:Q", scale=alt.Scale(type="log"), title="stability (log)")
    tooltip = [
        "quantity:N",
        alt.Tooltip("T:Q", format=".3g"),
        alt.Tooltip("delta (px):Q", format=".3g"),
        alt.Tooltip("value:Q", format=".3g"),
    ]
    lines = alt.Chart(data).mark_line(point=True).encode(x=x, y=y, color="quantity:N", tooltip=tooltip)
    band_data = data[(data["quantity"] == "R_f") & data["low"].notna() & (data["low"] > 0)]
    layers: list[Any] = []
    if not band_data.empty:
        layers.append(
            alt.Chart(band_data)
            .mark_area(opacity=0.2)
            .encode(x=x, y=alt.Y("low:Q", scale=alt.Scale(type="log")), y2="high:Q")
        )
    layers.append(lines)
    head = pd.DataFrame({"T": [record["config"]["protocol"]["temperature"]]})
    layers.append(alt.Chart(head).mark_rule(strokeDash=[4, 4], color="gray").encode(x="T:Q"))
    return alt.layer(*layers).properties(
        width=WIDTH,
        height=320,
        title=f"{record['config']['model_name']}: stabilities against T (dashed: protocol T)",
    )


def layers_chart(record: dict[str, Any]) -> alt.Chart | None:
    """D_k, G_k and R_k of each measured layer (in network order) at the protocol temperature."""
    layers = record["results"].get("layers") or {}
    if not layers:
        return None
    t0 = record["config"]["protocol"]["temperature"]
    rows = []
    for order, (name, layer) in enumerate(layers.items()):
        temps = layer["temperatures"]
        if not temps:
            continue
        i = min(range(len(temps)), key=lambda k: abs(math.log(temps[k]) - math.log(t0)))
        for quantity, key in (
            ("R", "relative_stability"),
            ("D", "diffeo_stability"),
            ("G", "noise_stability"),
        ):
            rows.append(
                {"layer": name, "order": order, "quantity": quantity, "value": layer[key][i], "T": temps[i]}
            )
    res = record["results"]
    for quantity, key in (("R", "relative_stability"), ("D", "diffeo_stability"), ("G", "noise_stability")):
        rows.append(
            {"layer": "output", "order": len(layers), "quantity": quantity, "value": res[key], "T": t0}
        )
    data = pd.DataFrame(rows).dropna(subset=["value"])
    data = data[data["value"] > 0]
    if data.empty:
        return None
    order = list(dict.fromkeys(data.sort_values("order")["layer"]))
    return (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:N", sort=order, title="layer (input to output)"),
            y=alt.Y(
                "value:Q", scale=alt.Scale(type="log"), title="stability of the layer's representation (log)"
            ),
            color=alt.Color("quantity:N", title="D, G or R"),
            tooltip=[
                "layer:N",
                "quantity:N",
                alt.Tooltip("value:Q", format=".3g"),
                alt.Tooltip("T:Q", format=".3g"),
            ],
        )
        .properties(width=WIDTH, height=320, title=f"{record['config']['model_name']}: per-layer stabilities")
    )
