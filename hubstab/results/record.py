"""Results records: the versioned JSON document a run leaves behind and the leaderboard reads.

Layout (schema version 1), in the convention of hub leaderboards::

    {
      "schema_version": 1,
      "run_id": "<sha256 of the config: same settings -> same id>",
      "config": {
        "model_name", "model_revision", "model_sha", "adapter", "model_dtype", "num_parameters", "pretrained",
        "label_space", "dataset", "dataset_config", "split", "dataset_revision", "image_column",
        "label_column", "num_images", "indices_sha256", "selection_seed", "protocol_id",
        "protocol": {temperature, delta, cut, interp, estimator, seed, repeats, image_size, effective_side,
                     num_images, bootstrap, confidence, batchnorm, amp_dtype, noise, perturbation_space,
                     field_scaling, random_numbers, denominator, hubstab_version, temperatures, num_error_images}
      },
      "results": {
        "relative_stability", "relative_stability_ci": [low, high], "diffeo_stability", "noise_stability",
        "test_error" (fraction or null), "num_error_images",
        "sweep": [{temperature, delta, relative_stability, diffeo_stability, noise_stability,
                   relative_stability_ci}],
        "layers": {name: {temperatures, relative_stability, diffeo_stability, noise_stability,
                          relative_stability_ci}},
        optional further metrics: "equivariance", "class_manifold"
      },
      "higher_is_better": {metric: bool},
      "notes": [str],
      "environment": {hubstab, python, torch, torchvision, timm, transformers, accelerate, datasets, numpy,
                      platform, device, cpu (model), gpu (model, null without CUDA), num_threads,
                      num_processes},
      "wall_time_s": float,
      "created_at": "ISO 8601, UTC"
    }

Numbers are JSON numbers (never strings); a value that could not be measured is null. The contract, with
every type and bound, is :class:`hubstab.results.schema.Record` (also ``results.schema.json``); keys added
later go beside these (e.g. ``config.protocol.name``/``version``, ``results.published``), never renamed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from importlib import metadata
from typing import Any

from hubstab.metrics.result import HIGHER_IS_BETTER, StabilityResult

SCHEMA_VERSION = 1

CONFIG_KEYS: tuple[str, ...] = (
    "model_name",
    "model_revision",
    "model_sha",
    "adapter",
    "model_dtype",
    "num_parameters",
    "pretrained",
    "label_space",
    "dataset",
    "dataset_config",
    "split",
    "dataset_revision",
    "image_column",
    "label_column",
    "num_images",
    "indices_sha256",
    "selection_seed",
)

_IDENTITY_EXCLUDED = {"hubstab_version", "num_error_images"}


def protocol_id(protocol: dict[str, Any]) -> str:
    """Short name of a measurement protocol, e.g. ``delta=1px cut=3 linear mean``.

    Settings away from their defaults are appended (``noise=normalized``, ``pairs=all-pairs``,
    ``bn=batch``), so runs that differ in them are never grouped as one protocol.
    """
    name = f"delta={protocol['delta']:g}px cut={protocol['cut']} {protocol['interp']} {protocol['estimator']}"
    defaults = {
        "noise_space": ("noise", "pixel"),
        "denominator_pairs": ("pairs", "distinct"),
        "batchnorm": ("bn", "eval"),
    }
    for key, (label, default) in defaults.items():
        value = protocol.get(key, default)
        if value not in (None, default):
            name += f" {label}={value}"
    return name


def indices_digest(indices: list[int]) -> str:
    """SHA-256 of the sorted probe-image indices (identifies the selection)."""
    return hashlib.sha256(json.dumps(sorted(int(i) for i in indices)).encode()).hexdigest()


def run_identity(config: dict[str, Any]) -> str:
    """A hash of everything that determines a result: equal settings give the same id.

    A local model's or dataset's absolute path (``config["model_path"]``, ``config["dataset_path"]``) is part
    of the id, so two folders of the same name are never taken for one another, but it is never written into
    a results file.
    """
    protocol = {k: v for k, v in config.get("protocol", {}).items() if k not in _IDENTITY_EXCLUDED}
    core = {k: config.get(k) for k in CONFIG_KEYS}
    for key in ("model_path", "dataset_path"):
        if config.get(key):
            core[key] = str(config[key])
    return hashlib.sha256(
        json.dumps({**core, "protocol": protocol}, sort_keys=True, default=str).encode()
    ).hexdigest()


def environment(device: str | None = None, num_processes: int = 1) -> dict[str, Any]:
    """Versions and machine of the run."""

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    from hubstab import __version__

    gpu = None
    threads = None
    try:
        import torch

        threads = int(torch.get_num_threads())
        if torch.cuda.is_available():
            index = torch.device(device).index if device and str(device).startswith("cuda") else None
            gpu = torch.cuda.get_device_name(index or 0)
    except Exception:  # no torch or no driver: leave unknown
        pass
    return {
        "hubstab": __version__,
        "python": platform.python_version(),
        "torch": version("torch"),
        "torchvision": version("torchvision"),
        "timm": version("timm"),
        "transformers": version("transformers"),
        "accelerate": version("accelerate"),
        "datasets": version("datasets"),
        "numpy": version("numpy"),
        "platform": platform.platform(),
        "device": device,
        "cpu": cpu_model(),
        "gpu": gpu,
        "num_threads": threads,
        "num_processes": int(num_processes),
    }


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`), None if unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()[:200] or None
    except OSError:
        pass
    return platform.processor()[:200] or None


def build_record(
    result: StabilityResult,
    config: dict[str, Any],
    *,
    env: dict[str, Any] | None = None,
    wall_time_s: float | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """The results document of one run: ``config`` holds the model/dataset keys of :data:`CONFIG_KEYS`.

    ``run_id`` defaults to :func:`run_identity` of the config; a runner passes the id it computed from the
    requested settings before measuring, so that a re-run is recognised.
    """
    data = result.to_dict()
    cfg = {k: config.get(k) for k in CONFIG_KEYS}
    cfg["protocol"] = data["settings"]
    cfg["protocol_id"] = protocol_id(data["settings"])
    results: dict[str, Any] = {
        "relative_stability": data["relative_stability"],
        "relative_stability_ci": data["relative_stability_ci"],
        "diffeo_stability": data["diffeo_stability"],
        "noise_stability": data["noise_stability"],
        "test_error": data["test_error"],
        "num_error_images": data["settings"].get("num_error_images", 0),
        "sweep": data["sweep"],
        "layers": data["layers"],
    }
    for key, value in data["extra"].items():
        results[key] = value
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id or run_identity(cfg),
        "config": cfg,
        "results": results,
        "higher_is_better": dict(HIGHER_IS_BETTER),
        "notes": list(data["notes"]),
        "environment": env if env is not None else environment(),
        "wall_time_s": wall_time_s,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
