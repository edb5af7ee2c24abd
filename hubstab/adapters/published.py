"""Published ImageNet-1k top-1 of timm models, from timm's ``results-imagenet.csv`` (shipped once, in hubstab/leaderboard/data).

Used to record the published error next to the probe-set error of a run (``results.published``) and to
rank timm's pretrained zoo (``hubstab eval --models 'timm:PATTERN' --top K``).
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any

from hubstab.results.io import strip_model_prefix

SOURCE = (
    "timm results-imagenet.csv (huggingface/pytorch-image-models results/, August 2026; "
    "ImageNet-1k validation, 50,000 images)"
)
_CSV = Path(__file__).resolve().parents[1] / "leaderboard" / "data" / "results-imagenet.csv"


@functools.lru_cache(maxsize=1)
def published_table() -> dict[str, list[tuple[int, float]]]:
    """``{timm model name with tag: [(img_size, top-1 error in percent), ...]}`` in the CSV's order."""
    table: dict[str, list[tuple[int, float]]] = {}
    with _CSV.open(newline="") as f:
        for row in csv.DictReader(f):
            table.setdefault(row["model"], []).append((int(row["img_size"]), float(row["top1_err"])))
    return table


def _default_tag(arch: str) -> str | None:
    try:
        import timm.models

        return timm.models.get_pretrained_cfg(arch).tag or None
    except Exception:  # unknown architecture: no published value
        return None


def published_top1(model: str, img_size: int | None = None) -> dict[str, Any] | None:
    """The published ImageNet top-1 error of a timm model, or None when timm's results do not list it.

    Args:
        model: a timm name (``resnet50.a1_in1k``, ``resnet50``: timm's default tag) or hub id ``timm/...``.
        img_size: the evaluated input size; the row at that size is preferred, else the closest.

    Returns:
        ``{"top1_error": fraction in [0, 1], "top1_error_percent", "img_size", "model", "source"}``.
    """
    name = strip_model_prefix(model)
    if "/" in name:
        return None
    table = published_table()
    if name not in table and "." not in name:
        tag = _default_tag(name)
        name = f"{name}.{tag}" if tag else name
    rows = table.get(name)
    if not rows:
        return None
    size, err = rows[0] if img_size is None else min(rows, key=lambda r: abs(r[0] - img_size))
    return {
        "top1_error": round(err / 100.0, 6),
        "top1_error_percent": err,
        "img_size": size,
        "model": name,
        "source": SOURCE,
    }


def rank_by_published(names: list[str]) -> list[str]:
    """``names`` ordered by published top-1 (best first); names without a published value last, in order."""
    table = published_table()

    def best(name: str) -> float:
        rows = table.get(strip_model_prefix(name))
        return min(err for _, err in rows) if rows else float("inf")

    return sorted(names, key=best)


def published_results(
    adapter: str | None, name: str, pretrained: bool, img_size: int | None
) -> dict[str, Any]:
    """``{"published": ...}`` for the results of a pretrained timm model that timm's results list, else ``{}``."""
    if adapter != "timm" or not pretrained:
        return {}
    found = published_top1(name, img_size)
    return {"published": found} if found else {}
