"""Reading results for the leaderboard: find the files, validate them, build and filter the table.

Results come from a local folder or a hub dataset repo (downloaded with ``snapshot_download``). Every
``*.json`` below the folder is read and validated with :func:`hubstab.results.validate.load_record`; files
that fail are skipped and reported, never fatal. Of several runs of the same (model, dataset, protocol) the
newest by ``created_at`` is kept (file names are never parsed).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import columns as C
import pandas as pd

from hubstab.errors import HubstabError, ResultsValidationError
from hubstab.results.validate import MAX_RECORD_BYTES, load_record, parse_created_at

DATA_DIR = Path(__file__).resolve().parent / "data"
TIMM_RESULTS_CSV = DATA_DIR / "results-imagenet.csv"
"""Published ImageNet-1k validation results of timm models (see data/SOURCE.md)."""
RESULTS_ENV = "HUBSTAB_RESULTS"
"""Environment variable naming the default results source (folder or hub dataset repo)."""
DEFAULT_RESULTS = "results"
SAMPLES_SUFFIX = ".samples.json"
"""Per-sample files that ``hubstab eval`` writes beside a record (not records themselves)."""
MAX_FILES = 20_000
"""Most results files read from one source."""

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_PREFIXES = ("hf-hub:", "hf_hub:", "timm/")
_FAMILY_PREFIXES = ("tf_", "tv_", "gluon_", "legacy_", "timm_")
_FAMILY_ALIASES = {"wide": "resnet"}

# Internal columns (not shown): the index of the record behind a row and the errors as fractions.
RECORD = "_record"
ERROR = "_error"
TIMM_ERROR = "_timm_error"
CI_LOW = "_ci_low"
CI_HIGH = "_ci_high"


@dataclass(frozen=True)
class Problem:
    """A results file that was skipped, and why."""

    path: str
    message: str


@dataclass
class LoadedResults:
    """Valid records of a source, the files that were skipped, and where they came from."""

    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    source: str = ""

    def summary(self) -> str:
        """One line: how many records were read from where, how many files were skipped."""
        text = f"{len(self.records)} valid results file(s) from {self.source}"
        if self.problems:
            text += f"; {len(self.problems)} file(s) skipped (see 'Skipped files')"
        return text


def resolve_source(source: str | os.PathLike[str] | None, *, local: bool = True) -> tuple[Path, str]:
    """The local folder of a results source and a description of it.

    Args:
        source: a folder, or a hub dataset repo id ``org/name`` (downloaded with ``snapshot_download``;
            honours ``HF_HUB_OFFLINE`` and the local cache). None: ``$HUBSTAB_RESULTS`` or ``./results``.
        local: accept local folders (False: hub repo ids only).

    Raises:
        HubstabError: neither an existing folder nor a repo that can be fetched.
    """
    if source is None:
        source = os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS
    text = os.fspath(source)
    path = Path(text).expanduser()
    if local and path.is_dir():
        return path, str(path)
    if local and path.exists():
        raise HubstabError(f"results source {text!r} is a file; give the folder that holds the results files")
    if not _REPO_ID.fullmatch(text):
        raise HubstabError(
            f"results source {text!r} is neither an existing folder nor a hub dataset repo id (org/name)"
        )
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id=text, repo_type="dataset", allow_patterns=["*.json"])
    except Exception as err:  # network, auth, offline cache miss: all mean "cannot fetch"
        raise HubstabError(
            f"cannot fetch the results dataset {text!r} from the hub ({type(err).__name__}: {err}); "
            "check the repo id and your network, or pass a local folder"
        ) from None
    return Path(folder), f"hub dataset {text}"


def read_results_dir(
    folder: str | os.PathLike[str], *, max_bytes: int = MAX_RECORD_BYTES, max_files: int = MAX_FILES
) -> LoadedResults:
    """Read and validate every ``*.json`` below ``folder`` (hidden files and per-sample files skipped)."""
    root = Path(folder)
    loaded = LoadedResults(source=str(root))
    paths = sorted(
        p
        for p in root.rglob("*.json")
        if not p.name.endswith(SAMPLES_SUFFIX)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if len(paths) > max_files:
        loaded.problems.append(
            Problem(str(root), f"{len(paths)} files; only the first {max_files} were read")
        )
        paths = paths[:max_files]
    for path in paths:
        try:
            loaded.records.append(load_record(path, max_bytes=max_bytes))
        except ResultsValidationError as err:
            loaded.problems.append(Problem(str(path.relative_to(root)), str(err)))
    return loaded


def load_results(source: str | os.PathLike[str] | None = None) -> LoadedResults:
    """Records of a folder or hub dataset repo (see :func:`resolve_source`), invalid files reported."""
    folder, description = resolve_source(source)
    loaded = read_results_dir(folder)
    loaded.source = description
    return loaded


def load_hub_results(repo_id: str) -> LoadedResults:
    """Records of a hub dataset repo given by id only (never a local path: safe for users of a Space)."""
    repo_id = (repo_id or "").strip()
    if not _REPO_ID.fullmatch(repo_id) or repo_id.startswith("."):
        raise HubstabError(f"{repo_id!r} is not a hub dataset repo id; write it as org/name")
    folder, description = resolve_source(repo_id, local=False)
    loaded = read_results_dir(folder)
    loaded.source = description
    return loaded


def accept_submission(
    path: str | os.PathLike[str] | None, max_bytes: int = MAX_RECORD_BYTES
) -> dict[str, Any]:
    """Validate an uploaded results file and return its record.

    Raises:
        ResultsValidationError: no file, too large, not JSON or not following the schema (message says why).
    """
    if not path:
        raise ResultsValidationError("no file: choose a results file (.json) written by hubstab eval")
    return load_record(path, max_bytes=max_bytes)


def describe_record(record: dict[str, Any]) -> str:
    """One plain-text line naming a record and its R_f."""
    cfg, res = record["config"], record["results"]
    r = res["relative_stability"]
    value = "n/a" if r is None else f"{r:.3g}"
    return f"{cfg['model_name']} on {dataset_label(cfg)} ({cfg['protocol_id']}): R_f = {value}"


def strip_model_prefix(name: str) -> str:
    """A model id without its source prefix (``hf-hub:``, ``timm/``) and revision (``@...``)."""
    name = name.strip()
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name.split("@", 1)[0]


def model_family(name: str) -> str:
    """Architecture family from a model id: ``timm/resnet50.a1_in1k`` -> resnet, ``google/vit-base`` -> vit."""
    base = strip_model_prefix(name).rsplit("/", 1)[-1].split(".", 1)[0].lower()
    for prefix in _FAMILY_PREFIXES:
        base = base.removeprefix(prefix)
    match = re.match(r"[a-z]+", base)
    if not match:
        return "other"
    family = match.group(0)
    if family.endswith("v") and len(family) > 3 and base[len(family) : len(family) + 1].isdigit():
        family = family[:-1]  # mobilenetv3 -> mobilenet, efficientnetv2 -> efficientnet
    return _FAMILY_ALIASES.get(family, family)


class ReferenceErrors:
    """Published ImageNet top-1 error of timm models, keyed by (model, img_size)."""

    def __init__(self, table: pd.DataFrame):
        self._by_model: dict[str, list[tuple[int, float]]] = {}
        for model, size, err in zip(table["model"], table["img_size"], table["top1_err"], strict=True):
            self._by_model.setdefault(str(model), []).append((int(size), float(err)))

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str] = TIMM_RESULTS_CSV) -> ReferenceErrors:
        """Load timm's ``results-imagenet.csv`` (columns model, img_size, top1_err, ...)."""
        return cls(pd.read_csv(path, usecols=["model", "img_size", "top1_err"]))

    def __len__(self) -> int:
        return len(self._by_model)

    def _candidates(self, name: str) -> list[tuple[int, float]]:
        if name in self._by_model:
            return self._by_model[name]
        if "." in name:
            return []
        tagged = [m for m in self._by_model if m.startswith(name + ".")]
        if len(tagged) == 1:
            return self._by_model[tagged[0]]
        if tagged:
            tag = _default_timm_tag(name)
            if tag is not None and f"{name}.{tag}" in self._by_model:
                return self._by_model[f"{name}.{tag}"]
        return []

    def lookup(self, model_name: str, img_size: int | None = None) -> float | None:
        """Top-1 error in percent of a timm model (pretrained tag resolved like timm), None if unknown.

        Among the resolutions evaluated, the one equal to ``img_size`` is preferred, else the closest.
        """
        name = strip_model_prefix(model_name)
        if "/" in name:
            return None
        rows = self._candidates(name)
        if not rows:
            return None
        if img_size is None:
            return rows[0][1]
        return min(rows, key=lambda r: abs(r[0] - img_size))[1]


@functools.lru_cache(maxsize=256)
def _default_timm_tag(arch: str) -> str | None:
    try:
        import timm.models

        return timm.models.get_pretrained_cfg(arch).tag or None
    except Exception:  # timm missing or unknown architecture: no reference
        return None


@functools.lru_cache(maxsize=1)
def default_reference() -> ReferenceErrors:
    """The shipped copy of timm's published ImageNet results."""
    return ReferenceErrors.from_csv()


def record_key(record: dict[str, Any]) -> tuple[str, str, str]:
    """(model, dataset, protocol) of a record: rows with the same key are runs of the same thing.

    A model at initialisation is another model than its trained weights: it is named ``<model> (untrained)``.
    """
    cfg = record["config"]
    model = cfg["model_name"] + (" (untrained)" if cfg.get("pretrained") is False else "")
    return (model, dataset_label(cfg), cfg["protocol_id"])


def dataset_label(config: dict[str, Any]) -> str:
    """``dataset[/config] [split]`` of a record's config."""
    label = str(config["dataset"])
    if config.get("dataset_config"):
        label += f"/{config['dataset_config']}"
    if config.get("split"):
        label += f" [{config['split']}]"
    return label


def latest_records(records: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Keep the newest record (by ``created_at``; ties by run id) of each (model, dataset, protocol).

    Returns:
        The kept records and how many older ones were dropped.
    """
    newest: dict[tuple[str, str, str], dict[str, Any]] = {}
    count = 0
    for rec in records:
        count += 1
        key = record_key(rec)
        current = newest.get(key)
        order = (parse_created_at(rec["created_at"]), rec["run_id"])
        if current is None or order > (parse_created_at(current["created_at"]), current["run_id"]):
            newest[key] = rec
    return list(newest.values()), count - len(newest)


def _interval(ci: Sequence[float | None], confidence: float) -> str:
    lo, hi = ci
    if lo is None or hi is None:
        return "n/a"
    return f"{lo:.3g} - {hi:.3g} ({100 * confidence:.0f}%)"


def _nan(value: float | int | None) -> float:
    return math.nan if value is None else float(value)


def record_row(record: dict[str, Any], reference: ReferenceErrors | None) -> dict[str, Any]:
    """One table row (all columns, full precision) of a validated record."""
    cfg, res = record["config"], record["results"]
    proto = cfg["protocol"]
    height, width = proto["image_size"]
    timm_err = None
    if reference is not None and cfg.get("pretrained") is not False:
        timm_err = reference.lookup(cfg["model_name"], height)
    error = res["test_error"]
    pretrained = cfg.get("pretrained")
    row: dict[str, Any] = {
        C.MODEL: cfg["model_name"],
        C.R_F: _nan(res["relative_stability"]),
        C.R_F_INTERVAL: _interval(res["relative_stability_ci"], proto["confidence"]),
        C.D_F: _nan(res["diffeo_stability"]),
        C.G_F: _nan(res["noise_stability"]),
        C.TEST_ERROR: math.nan if error is None else 100.0 * error,
        C.TIMM_ERROR: _nan(timm_err),
        C.FAMILY: model_family(cfg["model_name"]),
        C.ADAPTER: cfg.get("adapter") or "unknown",
        C.DATASET: dataset_label(cfg),
        C.PROTOCOL: cfg["protocol_id"],
        C.PARAMETERS: math.nan if cfg.get("num_parameters") is None else cfg["num_parameters"] / 1e6,
        C.INPUT_SIZE: f"{height}x{width}",
        C.IMAGES: proto["num_images"],
        C.ERROR_IMAGES: res.get("num_error_images", proto.get("num_error_images")),
        C.PRETRAINED: {True: "yes", False: "no"}.get(pretrained, "unknown"),
        C.DATE: parse_created_at(record["created_at"]).strftime("%Y-%m-%d %H:%M"),
        C.TEMPERATURE: proto["temperature"],
        C.DELTA: _nan(proto["delta"]),
        C.RUN_ID: record["run_id"][:12],
        ERROR: math.nan if error is None else float(error),
        TIMM_ERROR: math.nan if timm_err is None else timm_err / 100.0,
        CI_LOW: _nan(res["relative_stability_ci"][0]),
        CI_HIGH: _nan(res["relative_stability_ci"][1]),
    }
    eq = res.get("equivariance")
    if eq is not None:
        row[C.INVARIANCE] = _nan(eq["output"])
        row[C.INVARIANCE_SETTING] = f"{eq['transform']}, {eq['mode']}, {eq['metric']}"
    cm = res.get("class_manifold")
    if cm is not None:
        row[C.D_STAR] = _nan(cm["d_star"])
        row[C.EFFECTIVE_DIMENSION] = _nan(cm["effective_dimension"])
    return row


def records_to_frame(
    records: Sequence[dict[str, Any]], reference: ReferenceErrors | None = None
) -> pd.DataFrame:
    """The leaderboard table of validated records, ranked by R_f (lower first; missing R_f last).

    The ``Rank`` column counts within rows of the same dataset and protocol; ``_record`` indexes ``records``.
    Optional metric columns appear only when a record carries them.
    """
    names = [c.name for c in C.COLUMNS]
    rows = []
    for i, rec in enumerate(records):
        row = record_row(rec, reference)
        row[RECORD] = i
        rows.append(row)
    present = {k for row in rows for k in row}
    ordered = [n for n in names if n != C.RANK and (not C.BY_NAME[n].optional or n in present)]
    frame = pd.DataFrame(rows, columns=[*ordered, ERROR, TIMM_ERROR, CI_LOW, CI_HIGH, RECORD])
    frame = frame.sort_values([C.R_F, C.MODEL], na_position="last", kind="mergesort").reset_index(drop=True)
    rank = frame.groupby([C.DATASET, C.PROTOCOL])[C.R_F].rank(method="min", na_option="keep")
    frame.insert(0, C.RANK, rank.astype("Int64"))
    return frame


def filter_frame(
    frame: pd.DataFrame,
    *,
    search: str = "",
    datasets: Sequence[str] | None = None,
    protocols: Sequence[str] | None = None,
    families: Sequence[str] | None = None,
    adapters: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Rows matching every filter; empty filters keep everything.

    ``search`` is matched case-insensitively as plain text (no regular expressions) against the model name
    and family; several terms separated by ``;`` match any of them.
    """
    keep = pd.Series(True, index=frame.index)
    terms = [t.strip().lower() for t in (search or "").split(";") if t.strip()]
    if terms:
        text = (frame[C.MODEL].astype(str) + " " + frame[C.FAMILY].astype(str)).str.lower()
        hit = pd.Series(False, index=frame.index)
        for term in terms:
            hit |= text.str.contains(term, regex=False)
        keep &= hit
    for column, allowed in (
        (C.DATASET, datasets),
        (C.PROTOCOL, protocols),
        (C.FAMILY, families),
        (C.ADAPTER, adapters),
    ):
        if allowed:
            keep &= frame[column].isin(list(allowed))
    return frame[keep]


_SIGNIFICANT = {C.R_F: 3, C.D_F: 3, C.G_F: 3, C.TEMPERATURE: 3, C.INVARIANCE: 3}
_DECIMALS = {
    C.TEST_ERROR: 2,
    C.TIMM_ERROR: 2,
    C.PARAMETERS: 2,
    C.DELTA: 2,
    C.D_STAR: 1,
    C.EFFECTIVE_DIMENSION: 1,
}


def _significant(x: float, digits: int) -> float:
    return x if not math.isfinite(x) or x == 0 else float(f"{x:.{digits}g}")


def display_frame(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The table as shown: chosen columns (plus Rank, Model, R_f) in their standard order, rounded."""
    wanted = set(columns if columns is not None else C.DEFAULT_COLUMNS) | set(C.ALWAYS_SHOWN)
    shown = [c for c in frame.columns if c in wanted and not c.startswith("_")]
    out = frame[shown].copy()
    for column, digits in _SIGNIFICANT.items():
        if column in out:
            out[column] = out[column].map(lambda x, d=digits: _significant(float(x), d))
    for column, digits in _DECIMALS.items():
        if column in out:
            out[column] = out[column].astype(float).round(digits)
    return out


def choices(frame: pd.DataFrame, column: str) -> list[str]:
    """Distinct values of a column, sorted (for filter menus)."""
    if column not in frame:
        return []
    return sorted({str(v) for v in frame[column].dropna()})
