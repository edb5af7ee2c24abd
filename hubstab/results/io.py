"""Reading and writing results files: atomic writes, a folder layout, safe folder reading, re-runs.

Results folders are untrusted (a downloaded hub repo, a submitter's upload): :func:`scan_results` (used by
``hubstab ls``, ``show``, ``push`` and the leaderboard) reads only regular files, never follows a symlink out
of the folder, never opens a FIFO or a device, checks sizes before parsing, and lists each bad file with its
reason instead of failing.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hubstab.metrics.result import StabilityResult


DEFAULT_RESULTS_DIR = "hubstab-results"
SAMPLES_SUFFIX = ".samples.json"
"""Per-sample files that ``hubstab eval --per-sample`` writes beside a record (not records themselves)."""
MAX_FILES = 20_000
"""Most results files read from one folder."""
_RUN_ID_PREFIX = re.compile(r"[0-9a-f]{6,64}")


MODEL_PREFIXES = ("timm:", "hf-hub:", "hf_hub:", "hf:", "timm/")
"""Source prefixes a recorded model id may carry in front of its name."""


def strip_model_prefix(name: str) -> str:
    """A model id without its source prefixes (``timm:``, ``hf-hub:``, ``timm/``, ...) and revision (``@...``)."""
    name = name.strip()
    changed = True
    while changed:
        changed = False
        for prefix in MODEL_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name.split("@", 1)[0]


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
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; results are meant to be shared
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


def current_umask() -> int:
    """The process's umask (read from /proc where possible, so that no thread sees it changed)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_record(
    record: dict[str, Any], output_dir: str | os.PathLike, per_sample: dict | None = None
) -> Path:
    """Write a results record (and optionally its per-sample values beside it, ``*.samples.json``).

    The record is validated first (:mod:`hubstab.results.schema`), so hubstab never writes a file that it,
    or the leaderboard, would refuse. Files are written atomically with mode 0644 less the umask.

    Raises:
        ResultsValidationError: the record breaks the schema (nothing is written).
    """
    from hubstab.results.validate import validate_record

    validate_record(record)
    path = results_path(output_dir, record)
    if per_sample is not None:
        write_json_atomic(path.with_suffix(".samples.json"), {"run_id": record["run_id"], **per_sample})
    return write_json_atomic(path, record)


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate one results file (untrusted input: see :mod:`hubstab.results.validate`)."""
    from hubstab.results.validate import load_record

    return load_record(path)


@dataclass(frozen=True)
class SkippedFile:
    """A file of a results folder that was not used, and why (one line, for people)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class ResultsScan:
    """The valid records of a folder (with their files) and the files that were skipped."""

    records: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


def _hub_repo_root(folder: Path) -> Path | None:
    """``<cache>/datasets--org--name`` when ``folder`` is a hub cache snapshot (its files link to ``blobs/``)."""
    if folder.parent.name == "snapshots" and (folder.parent.parent / "blobs").is_dir():
        return folder.parent.parent
    return None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def iter_result_files(
    folder: str | os.PathLike, *, skipped: list[SkippedFile] | None = None
) -> Iterator[Path]:
    """Every results file below ``folder``, in sorted order, that is safe to open.

    Hidden files and folders and per-sample files are left out. Only regular files are yielded; symlinked
    folders are not entered, and a symlinked file is used only when it resolves inside the folder (or, for a
    hub cache snapshot, inside its repo's ``blobs/``). What is left out for a reason (FIFOs, devices,
    symlinks leading elsewhere) is appended to ``skipped`` when given.
    """
    root = Path(folder)
    real_root = Path(os.path.realpath(root))
    hub_root = _hub_repo_root(real_root)
    allowed = Path(os.path.realpath(hub_root)) if hub_root is not None else real_root

    def skip(path: Path, reason: str) -> None:
        if skipped is not None:
            skipped.append(SkippedFile(path, reason))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.endswith(".json") or name.endswith(SAMPLES_SUFFIX):
                continue
            path = Path(dirpath) / name
            try:
                mode = path.lstat().st_mode
                if stat.S_ISLNK(mode):
                    target = Path(os.path.realpath(path))
                    if not _inside(target, allowed):
                        skip(path, "a symbolic link leading out of the results folder (not followed)")
                        continue
                    mode = target.stat().st_mode
            except OSError as err:
                skip(path, f"cannot be read: {err.strerror or err}")
                continue
            if not stat.S_ISREG(mode):
                kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "not a regular file"
                skip(path, f"{kind}; not opened")
                continue
            yield path


def scan_results(
    folder: str | os.PathLike, *, max_bytes: int | None = None, max_files: int = MAX_FILES
) -> ResultsScan:
    """Read and validate every results file below ``folder`` (see :func:`iter_result_files`).

    Args:
        folder: a results folder, or a hub cache snapshot of a results dataset repo.
        max_bytes: largest file read (default :data:`hubstab.results.validate.MAX_RECORD_BYTES`).
        max_files: most files read; the rest are reported as skipped.

    Returns:
        The valid records with their paths, and the skipped files with the reason (never raises for a file).
    """
    from hubstab.errors import ResultsValidationError
    from hubstab.results.validate import MAX_RECORD_BYTES, load_record

    limit = MAX_RECORD_BYTES if max_bytes is None else max_bytes
    scan = ResultsScan()
    for i, path in enumerate(iter_result_files(folder, skipped=scan.skipped)):
        if i >= max_files:
            scan.skipped.append(SkippedFile(path, f"more than {max_files} files; the rest were not read"))
            break
        try:
            scan.records.append((path, load_record(path, max_bytes=limit)))
        except ResultsValidationError as err:
            scan.skipped.append(SkippedFile(path, str(err)))
    return scan


def find_run(folder: str | os.PathLike, run_id: str) -> Path:
    """The results file below ``folder`` whose run id starts with ``run_id`` (at least 6 hex digits).

    Raises:
        HubstabError: not a run id, no such run, or several runs start with it.
    """
    from hubstab.errors import HubstabError

    prefix = run_id.strip().lower()
    if not _RUN_ID_PREFIX.fullmatch(prefix):
        raise HubstabError(f"{run_id!r} is neither a results file nor a run id (6 to 64 hex digits)")
    if not Path(folder).is_dir():
        raise HubstabError(f"no results folder {folder} to look up run {run_id} in (name it with --results)")
    found = [p for p, rec in scan_results(folder).records if rec["run_id"].startswith(prefix)]
    if not found:
        raise HubstabError(f"no results file of run {run_id} in {folder} (`hubstab ls {folder}` lists them)")
    if len(found) > 1:
        shown = ", ".join(str(p) for p in found[:5])
        raise HubstabError(f"run id {run_id} is ambiguous in {folder}: {shown}; give more digits")
    return found[0]


def find_existing(output_dir: str | os.PathLike, record_config: dict[str, Any], run_id: str) -> Path | None:
    """The results file of an earlier run with the same settings, if there is one."""
    path = Path(output_dir) / model_folder(record_config["model_name"]) / f"{run_id[:16]}.json"
    if path.is_file():  # a regular file (never a FIFO left in its place)
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
