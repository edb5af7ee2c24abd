"""Checks made before a model is loaded: settings, device and output folder (seconds, not minutes).

:func:`preflight` raises :class:`hubstab.errors.HubstabError` (exit 2 on the CLI, one line) for anything
that would make the run fail or produce a meaningless number later, and returns warnings for settings
that are legal but outside the paper's range.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hubstab.errors import HubstabError

if TYPE_CHECKING:
    from hubstab.runner.config import EvalConfig


class OutputError(HubstabError):
    """An output folder that cannot be created or written."""


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_device(device: str | None) -> None:
    """Raise when the requested device is unknown or absent (``cuda`` without a GPU is not silently the CPU)."""
    if device is None or device == "cpu":
        return
    kind, _, number = device.partition(":")
    if kind != "cuda" or (number and not number.isdigit()):
        raise HubstabError(f"--device {device!r}: use cpu, cuda or cuda:N")
    import torch

    if not torch.cuda.is_available():
        raise HubstabError(f"--device {device}: no CUDA device is available here (use --device cpu)")
    if number and int(number) >= torch.cuda.device_count():
        raise HubstabError(
            f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) (cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1})"
        )


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """Create ``output_dir`` and write and remove a probe file in it, or raise :class:`OutputError`."""
    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--output-dir {str(folder)!r} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".hubstab-write-test-")
        try:
            os.write(fd, b"hubstab")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OutputError(f"--output-dir {str(folder)!r} cannot be written: {reason}") from None
    return folder


def protocol_warnings(cfg: EvalConfig) -> list[str]:
    """Warnings for explicit temperatures past T2, the largest temperature without fold-overs."""
    from hubstab.perturbations.diffeo import temperature_range

    _, t2 = temperature_range(32, cfg.cut)  # T2 does not depend on the image side
    explicit = [cfg.temperature] if cfg.temperature is not None else []
    if not isinstance(cfg.temperatures, str):
        explicit += list(cfg.temperatures)
    high = [t for t in explicit if t > t2]
    if not high:
        return []
    return [
        f"temperature {max(high):.3g} is above T2 = {t2:.3g} for cut {cfg.cut}: the diffeomorphisms fold over "
        "(the paper's sweep stops at 2 T2)"
    ]


def delta_warning(delta: float, cut: int, side: float) -> str | None:
    """A warning when ``delta`` pixels on an image of effective side ``side`` means a temperature past T2."""
    from hubstab.perturbations.diffeo import temperature_for_displacement, temperature_range

    _, t2 = temperature_range(32, cut)
    if temperature_for_displacement(delta, cut, side) <= t2:
        return None
    return (
        f"--delta {delta:g} px on {side:.0f} px images is above T2 for cut {cut} "
        f"(at most {side / (math.pi * cut):.2f} px without fold-overs)"
    )


def value_problems(cfg: EvalConfig) -> list[str]:
    """What is wrong with the numbers of ``cfg``: every protocol and running value finite and in range."""
    problems = []
    for name, value, low in (
        ("--delta", cfg.delta, 0.0),
        ("--temperature", cfg.temperature, 0.0),
    ):
        if value is not None and (not _finite_number(value) or value <= low):
            problems.append(f"{name} must be a finite number > 0, got {value!r}")
    if not isinstance(cfg.temperatures, str):
        bad = [t for t in cfg.temperatures if not _finite_number(t) or t <= 0]
        if bad:
            problems.append(f"--temperatures must be finite numbers > 0, got {bad[0]!r}")
        if len(cfg.temperatures) > 1000:
            problems.append("--temperatures: at most 1000 temperatures")
    if not _finite_number(cfg.confidence) or not 0 < cfg.confidence < 1:
        problems.append(f"--confidence must be in (0, 1), got {cfg.confidence!r}")
    ints = (
        ("--num-images", cfg.num_images, 2),
        ("--num-error-images", cfg.num_error_images, 1),
        ("--cut", cfg.cut, 2),
        ("--repeats", cfg.repeats, 1),
        ("--bootstrap", cfg.bootstrap, 0),
        ("--seed", cfg.seed, 0),
        ("--num-workers", cfg.num_workers, 0),
        ("--metric-images", cfg.metric_images, 1),
    )
    for name, value, low in ints:
        if value is None and name in ("--num-images", "--num-error-images"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            problems.append(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(cfg.cut, int) and cfg.cut > 64:
        problems.append(f"--cut must be at most 64 (the paper uses 3, 5 and 15), got {cfg.cut}")
    if isinstance(cfg.repeats, int) and cfg.repeats > 1000:
        problems.append(f"--repeats must be at most 1000, got {cfg.repeats}")
    if isinstance(cfg.seed, int) and cfg.seed >= 2**63:
        problems.append("--seed must be below 2**63")
    if not _finite_number(cfg.checkpoint_every_s) or cfg.checkpoint_every_s < 0:
        problems.append("checkpoint_every_s must be a finite number >= 0")
    every = getattr(cfg, "checkpoint_every_batches", 1)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        problems.append(f"--checkpoint-every must be an integer >= 1, got {every!r}")
    if getattr(cfg, "nonfinite", "error") not in ("error", "exclude"):
        problems.append("nonfinite must be 'error' or 'exclude'")
    return problems


def preflight(cfg: EvalConfig, *, check_output: bool = True) -> list[str]:
    """Check ``cfg`` before anything heavy is loaded; returns warnings, raises for impossible settings.

    Order: :meth:`EvalConfig.validate` (value ranges, then names and combinations), the device, and last
    the output folder (created, with a probe file written and removed).
    """
    cfg.validate()
    check_device(cfg.device)
    if check_output and cfg.output_dir:
        check_output_dir(cfg.output_dir)
    return protocol_warnings(cfg)


__all__ = [
    "OutputError",
    "check_device",
    "check_output_dir",
    "delta_warning",
    "preflight",
    "value_problems",
]
