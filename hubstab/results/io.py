"""Reading and writing results files: atomic writes, a folder layout, and recognising re-runs."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hubstab.metrics.result import StabilityResult


DEFAULT_RESULTS_DIR = "hubstab-results"


def model_folder(model_name: str) -> str:
    """Folder name of a model inside a results directory (``org/name`` -> ``org__name``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "__", model_name.removeprefix("hf-hub:")).strip("_") or "model"


def results_path(output_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Where a record is stored: ``<output_dir>/<model folder>/<run_id[:16]>.json``."""
    return Path(output_dir) / model_folder(record["config"]["model_name"]) / f"{record['run_id'][:16]}.json"


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON to ``path`` through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_record(
    record: dict[str, Any], output_dir: str | os.PathLike, per_sample: dict | None = None
) -> Path:
    """Write a results record (and optionally its per-sample values beside it, ``*.samples.json``)."""
    path = results_path(output_dir, record)
    if per_sample is not None:
        write_json_atomic(path.with_suffix(".samples.json"), {"run_id": record["run_id"], **per_sample})
    return write_json_atomic(path, record)


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate one results file (untrusted input: see :mod:`hubstab.results.validate`)."""
    from hubstab.results.validate import load_record

    return load_record(path)


def iter_result_files(folder: str | os.PathLike) -> Iterator[Path]:
    """Every results file below ``folder`` (per-sample files and temporary files excluded)."""
    for path in sorted(Path(folder).rglob("*.json")):
        if path.name.startswith(".") or path.name.endswith(".samples.json"):
            continue
        yield path


def find_existing(output_dir: str | os.PathLike, record_config: dict[str, Any], run_id: str) -> Path | None:
    """The results file of an earlier run with the same settings, if there is one."""
    path = Path(output_dir) / model_folder(record_config["model_name"]) / f"{run_id[:16]}.json"
    if path.exists():
        try:
            if json.loads(path.read_text()).get("run_id") == run_id:
                return path
        except (OSError, ValueError):
            return None
    return None


def result_from_record(record: dict[str, Any]) -> StabilityResult:
    """Rebuild a :class:`StabilityResult` from a results record."""
    from hubstab.metrics.result import StabilityPoint, StabilityResult

    res = record["results"]
    protocol = dict(record["config"]["protocol"])

    def ci(v):
        return (
            (float("nan"), float("nan")) if v is None else tuple(float("nan") if x is None else x for x in v)
        )

    def num(v):
        return float("nan") if v is None else float(v)

    sweep = [
        StabilityPoint(
            temperature=p["temperature"],
            delta=num(p["delta"]),
            relative_stability=num(p["relative_stability"]),
            diffeo_stability=num(p["diffeo_stability"]),
            noise_stability=num(p["noise_stability"]),
            relative_stability_ci=ci(p["relative_stability_ci"]),
        )
        for p in res.get("sweep", [])
    ]
    known = {
        "relative_stability",
        "relative_stability_ci",
        "diffeo_stability",
        "noise_stability",
        "test_error",
    }
    known |= {"num_error_images", "sweep", "layers"}
    extra = {k: v for k, v in res.items() if k not in known}
    extra.update(
        {"config": record["config"], "environment": record.get("environment"), "run_id": record["run_id"]}
    )
    return StabilityResult(
        relative_stability=num(res["relative_stability"]),
        diffeo_stability=num(res["diffeo_stability"]),
        noise_stability=num(res["noise_stability"]),
        relative_stability_ci=ci(res.get("relative_stability_ci")),
        test_error=res.get("test_error"),
        num_images=int(protocol.get("num_images", record["config"].get("num_images") or 0)),
        settings=protocol,
        sweep=sweep,
        layers=res.get("layers") or {},
        extra=extra,
        notes=list(record.get("notes", [])),
    )
