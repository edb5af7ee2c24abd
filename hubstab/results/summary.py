"""A results record as readable text (``hubstab show``), from the record alone: no torch, no model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SETTING_KEYS: tuple[str, ...] = (
    "temperature",
    "delta",
    "cut",
    "interp",
    "estimator",
    "seed",
    "repeats",
    "image_size",
    "num_images",
    "bootstrap",
    "batchnorm",
)
ENVIRONMENT_KEYS: tuple[str, ...] = (
    "hubstab",
    "python",
    "torch",
    "timm",
    "transformers",
    "numpy",
    "device",
    "cpu",
    "gpu",
    "num_threads",
    "num_processes",
)


def _g(value: Any, spec: str = ".4g") -> str:
    return "n/a" if value is None else format(value, spec)


def metric_lines(results: dict[str, Any]) -> list[str]:
    """Lines of the other metrics (``--metric``): equivariance deviation and class-manifold dimension."""
    lines = []
    eq = results.get("equivariance")
    if eq:
        lines.append(f"{eq['mode']:8} {eq['transform']} ({eq['metric']}): {_g(eq['output'])}")
    cm = results.get("class_manifold")
    if cm:
        lines.append(
            f"class manifold (class {cm['target_class']}): d* = {_g(cm['d_star'], '.3g')}, "
            f"effective dimension = {_g(cm['effective_dimension'], '.4g')}"
        )
    return lines


def format_record(record: dict[str, Any], path: str | Path | None = None) -> str:
    """The summary of a validated record: model, data, R_f with its interval, D_f, G_f, error, sweep, layers.

    Args:
        record: a record that passed :func:`hubstab.results.validate.validate_record`.
        path: the file it was read from, printed last.
    """
    cfg, res = record["config"], record["results"]
    proto = cfg["protocol"]
    env = record.get("environment") or {}
    lo, hi = res["relative_stability_ci"]
    err = res.get("test_error")
    revision = f", revision {cfg['model_revision']}" if cfg.get("model_revision") else ""
    pretrained = {True: "", False: ", untrained"}.get(cfg.get("pretrained"), "")
    split = f" [{cfg['split']}]" if cfg.get("split") else ""
    lines = [
        f"model    {cfg['model_name']} ({cfg.get('adapter') or 'unknown'}{revision}{pretrained})",
        f"dataset  {cfg['dataset']}{split}, {proto['num_images']} probe images",
        f"R_f = {_g(res['relative_stability'])}  [{100 * proto['confidence']:.0f}% CI {_g(lo)} - {_g(hi)}]",
        f"D_f = {_g(res['diffeo_stability'])}   G_f = {_g(res['noise_stability'])}",
        f"test error = {'n/a' if err is None else f'{100 * err:.2f}%'}   images = {proto['num_images']}   "
        f"delta = {_g(proto.get('delta'), '.3g')} px   T = {_g(proto['temperature'], '.3g')}",
    ]
    published = res.get("published")
    if published:
        lines.append(f"published top-1 error = {100 * published['top1_error']:.2f}% ({published['source']})")
    name = proto.get("name")
    protocol = f"{name} v{proto.get('version')}, " if name else ""
    lines.append(f"protocol {protocol}{cfg['protocol_id']}")
    lines.append("settings " + ", ".join(f"{k}={proto.get(k)}" for k in SETTING_KEYS))
    sweep = res.get("sweep") or []
    if len(sweep) > 1:
        lines.append("sweep    T          delta px   R_f        D_f        G_f")
        for p in sweep:
            lines.append(
                f"         {p['temperature']:<10.3g} {_g(p.get('delta'), '<10.3g')} "
                f"{_g(p['relative_stability'], '<10.4g')} {_g(p['diffeo_stability'], '<10.4g')} "
                f"{_g(p['noise_stability'], '.4g')}"
            )
    layers = res.get("layers") or {}
    if layers:
        lines.append(
            "layers   R_k: "
            + ", ".join(
                f"{k}={_g(v['relative_stability'][0] if v['relative_stability'] else None, '.3g')}"
                for k, v in layers.items()
            )
        )
    lines += metric_lines(res)
    lines += [f"note     {n}" for n in record.get("notes") or []]
    shown = ", ".join(f"{k}={env[k]}" for k in ENVIRONMENT_KEYS if env.get(k) is not None)
    if shown:
        lines.append(f"machine  {shown}")
    wall = record.get("wall_time_s")
    time = f"time {wall:.1f} s   " if wall is not None else ""
    lines.append(f"{time}run_id {record['run_id']}   created {record['created_at']}")
    if path is not None:
        lines.append(f"file     {path}")
    return "\n".join(lines)
