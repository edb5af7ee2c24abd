"""Reading results for the leaderboard: find the files, validate them, build and filter the table.

Results come from a local folder or a hub dataset repo (downloaded with ``snapshot_download``). Every
``*.json`` below the folder is read and validated with :func:`hubstab.results.validate.load_record`; files
that fail are skipped and reported, never fatal. A model's row is its run with the most probe images (ties:
the newest by ``created_at``; file names are never parsed). Ranks count within one dataset and protocol
group, among trained models only.

This module and everything it imports stay free of torch, so the hub Space installs without it.
"""

from __future__ import annotations

import functools
import html
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pandas as pd

from hubstab.errors import HubstabError, ResultsValidationError
from hubstab.leaderboard import columns as C
from hubstab.results.io import DEFAULT_RESULTS_DIR, strip_model_prefix
from hubstab.results.validate import MAX_RECORD_BYTES, load_record, parse_created_at

try:  # the results folder reader that refuses FIFOs, devices and links out of the folder
    from hubstab.results.io import scan_results as _scan_results
except ImportError:  # hubstab versions without it: a plain walk (validation is the same)
    _scan_results = None

DATA_DIR = Path(__file__).resolve().parent / "data"
TIMM_RESULTS_CSV = DATA_DIR / "results-imagenet.csv"
"""Published ImageNet-1k validation results of timm models (see data/SOURCE.md)."""
RESULTS_ENV = "HUBSTAB_RESULTS"
"""Environment variable naming the results source (folder or hub dataset repo); overrides the default."""
DEFAULT_RESULTS = DEFAULT_RESULTS_DIR
"""Default results folder, the one ``hubstab eval`` writes and ``hubstab ls`` reads."""
SUBMISSIONS_DIR = "submissions"
"""Folder of a results repo holding files submitted by users (through pull requests)."""
SAMPLES_SUFFIX = ".samples.json"
"""Per-sample files that ``hubstab eval`` writes beside a record (not records themselves)."""
MAX_FILES = 20_000
"""Most results files read from one source."""
HUB_URL = "https://huggingface.co"

BOARD = "board"
SUBMITTED = "submitted"
SESSION = "submitted (this session, not published)"
ORIGIN_KEY = "_leaderboard_origin"
"""Key the reader adds to a validated record: where it came from (:data:`BOARD`, :data:`SUBMITTED`, ...)."""

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_REPO_ID = REPO_ID
_TIMM_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")
_FAMILY_PREFIXES = ("tf_", "tv_", "gluon_", "legacy_", "timm_")
_FAMILY_ALIASES = {"wide": "resnet"}
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")

# Internal columns (not shown): the index of the record behind a row, the errors as fractions, ...
RECORD = "_record"
ERROR = "_error"
TIMM_ERROR = "_timm_error"
CI_LOW = "_ci_low"
CI_HIGH = "_ci_high"
UNTRAINED = "_untrained"
LINK = "_link"
GROUP = "_group"

NO_SOURCE = "no results source"


@dataclass(frozen=True)
class Problem:
    """A results file that was skipped, and why."""

    path: str
    message: str


@dataclass
class LoadedResults:
    """Valid records of a source, the files that were skipped, and where they came from.

    Attributes:
        records: validated records, each with :data:`ORIGIN_KEY` set.
        problems: files skipped, with the reason.
        source: description of the source (``hub dataset org/name``, a folder, or :data:`NO_SOURCE`).
        error: why the source itself could not be read (the board is then empty), else None.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    source: str = ""
    error: str | None = None

    def summary(self) -> str:
        """One line: how many records were read from where, how many files were skipped."""
        if self.error:
            return f"cannot read the results: {self.error}"
        if self.source == NO_SOURCE:
            return (
                f"no results source: ./{DEFAULT_RESULTS} does not exist here and ${RESULTS_ENV} is not set "
                "(see the instructions below)"
            )
        text = f"{len(self.records)} valid results file(s) from {self.source}"
        if self.problems:
            text += f"; {len(self.problems)} file(s) skipped (see 'Skipped files')"
        return text


def resolve_source(source: str | os.PathLike[str] | None, *, local: bool = True) -> tuple[Path | None, str]:
    """The local folder of a results source and a description of it.

    Args:
        source: a folder, or a hub dataset repo id ``org/name`` (downloaded with ``snapshot_download``;
            honours ``HF_HUB_OFFLINE`` and the local cache). None: ``$HUBSTAB_RESULTS`` if set, else
            ``./hubstab-results`` when it exists, else no source at all (``(None, NO_SOURCE)``).
        local: accept local folders (False: hub repo ids only).

    Raises:
        HubstabError: neither an existing folder nor a repo that can be fetched.
    """
    if source is None:
        source = os.environ.get(RESULTS_ENV, "").strip() or None
        if source is None:
            default = Path(DEFAULT_RESULTS)
            return (default, f"folder {DEFAULT_RESULTS}") if default.is_dir() else (None, NO_SOURCE)
    text = os.fspath(source)
    path = Path(text).expanduser()
    if local and path.is_dir():
        return path, f"folder {path.resolve().name or path}"  # its name only: no path of this machine
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


def _relative(path: Path, root: Path) -> Path:
    try:
        return Path(path).relative_to(root)
    except ValueError:
        return Path(Path(path).name)


def read_results_dir(
    folder: str | os.PathLike[str], *, max_bytes: int = MAX_RECORD_BYTES, max_files: int = MAX_FILES
) -> LoadedResults:
    """Read and validate every ``*.json`` below ``folder`` (hidden files and per-sample files skipped).

    Files under ``submissions/`` are marked as submitted by users, the others as the board's own runs. Paths
    in the problems are relative to ``folder``.
    """
    root = Path(folder)
    loaded = LoadedResults(source=str(root))
    if (
        _scan_results is not None
    ):  # the safe folder reader of hubstab.results.io (no FIFOs, no escaping links)
        scan = _scan_results(root, max_bytes=max_bytes, max_files=max_files)
        found = [(_relative(path, root), record) for path, record in scan.records]
        loaded.problems += [Problem(_relative(s.path, root).as_posix(), s.reason) for s in scan.skipped]
    else:
        found = []
        paths = sorted(
            p
            for p in root.rglob("*.json")
            if not p.name.endswith(SAMPLES_SUFFIX)
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if len(paths) > max_files:
            loaded.problems.append(Problem(".", f"{len(paths)} files; only the first {max_files} were read"))
            paths = paths[:max_files]
        for path in paths:
            try:
                found.append((path.relative_to(root), load_record(path, max_bytes=max_bytes)))
            except ResultsValidationError as err:
                loaded.problems.append(Problem(path.relative_to(root).as_posix(), str(err)))
            except Exception as err:  # a validator bug must cost one file, never the board
                message = f"cannot be read: {type(err).__name__}: {err}"[:300]
                loaded.problems.append(Problem(path.relative_to(root).as_posix(), message))
    for relative, record in found:
        record[ORIGIN_KEY] = SUBMITTED if relative.parts[0] == SUBMISSIONS_DIR else BOARD
        loaded.records.append(record)
    return loaded


def load_results(source: str | os.PathLike[str] | None = None) -> LoadedResults:
    """Records of a folder or hub dataset repo (see :func:`resolve_source`), invalid files reported.

    With no source configured the result is empty (``source == NO_SOURCE``), not an error.
    """
    folder, description = resolve_source(source)
    if folder is None:
        return LoadedResults(source=description)
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
    for record in loaded.records:
        record[ORIGIN_KEY] = SESSION
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
    try:
        return load_record(path, max_bytes=max_bytes)
    except ResultsValidationError:
        raise
    except Exception as err:  # a validator bug must reject the file, not crash the session
        raise ResultsValidationError(f"the file cannot be read ({type(err).__name__})") from None


def describe_record(record: dict[str, Any]) -> str:
    """One plain-text line naming a record and its R_f."""
    cfg, res = record["config"], record["results"]
    r = res["relative_stability"]
    value = "n/a" if r is None else f"{r:.3g}"
    return f"{model_label(cfg['model_name'])} on {dataset_label(cfg)} ({protocol_label(cfg)}): R_f = {value}"


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


def is_untrained(record: dict[str, Any]) -> bool:
    """A run of a randomly initialised model (``pretrained`` recorded as false; unknown counts as trained)."""
    return record["config"].get("pretrained") is False


def record_key(record: dict[str, Any]) -> tuple[str, str, str]:
    """(model, dataset, protocol) of a record: rows with the same key are runs of the same thing.

    A model at initialisation is another model than its trained weights: it is named ``<model> (untrained)``.
    """
    cfg = record["config"]
    model = cfg["model_name"] + (" (untrained)" if is_untrained(record) else "")
    dataset = f"{cfg['dataset']}/{cfg.get('dataset_config') or ''} [{cfg.get('split') or ''}]"
    return (model, dataset, f"{protocol_label(cfg)} {cfg['protocol_id']}")


def _is_local_path(text: str) -> bool:
    """Whether a model or dataset name is a path on the machine that ran it (not a hub id or a name)."""
    return (
        text.startswith(("/", "~", "./", "../", ".\\", "..\\", "local-dir:", "file:"))
        or text in (".", "..")
        or "\\" in text
        or re.match(r"[A-Za-z]:", text) is not None
        or text.strip("/").count("/") > 1
    )


def local_name(text: str) -> str:
    """The last component of a path, whatever system wrote it (``/tmp/x/val-images/`` -> ``val-images``)."""
    text = text.removeprefix("local-dir:").removeprefix("file:").rstrip("/\\")
    name = PureWindowsPath(text).name if "\\" in text else PurePosixPath(text).name
    return name or text or "?"


def model_label(name: str) -> str:
    """A model's name as shown: the id as given, or a local folder's name (never its absolute path)."""
    name = str(name)
    return local_name(name) if _is_local_path(name) else name


def model_link(name: str, adapter: str | None = None) -> str | None:
    """The hub page of a model id (``org/name``; a bare timm name is ``timm/<name>``), None for local models."""
    name = str(name).strip()
    if _is_local_path(name):
        return None
    bare = name
    for prefix in ("hf-hub:", "hf_hub:", "timm:", "transformers:"):
        bare = bare.removeprefix(prefix)
    bare = bare.split("@", 1)[0]
    if _REPO_ID.fullmatch(bare):
        return f"{HUB_URL}/{bare}"
    if adapter == "timm" and _TIMM_NAME.fullmatch(bare):
        return f"{HUB_URL}/timm/{bare}"
    return None


def escape_markdown(text: str) -> str:
    """Text that renders as itself in Markdown: punctuation backslash-escaped, ``& < >`` as entities."""
    return html.escape(_MARKDOWN_SPECIAL.sub(r"\\\1", str(text)), quote=False)


def model_markdown(name: str, link: str | None) -> str:
    """The Model cell: the escaped name, linked to its hub page when it has one."""
    text = escape_markdown(name)
    return f"[{text}]({link})" if link else text


def dataset_label(config: dict[str, Any]) -> str:
    """``dataset[/config] [split]`` of a record's config; a local folder is shown by its name only."""
    dataset = str(config["dataset"])
    label = local_name(dataset) if _is_local_path(dataset) else dataset
    if config.get("dataset_config"):
        label += f"/{config['dataset_config']}"
    if config.get("split"):
        label += f" [{config['split']}]"
    return label


def protocol_label(config: dict[str, Any]) -> str:
    """The protocol's name (``config.protocol.name`` and version, e.g. ``in1k-v1``), else ``custom (<id>)``."""
    protocol = config.get("protocol") or {}
    name = protocol.get("name")
    if isinstance(name, str) and name.strip() and name.strip() != "custom":
        name = name.strip()
        version = protocol.get("version")
        if isinstance(version, int) and not isinstance(version, bool) and not name.endswith(f"v{version}"):
            name += f" v{version}"
        return name
    return f"custom ({config['protocol_id']})"


def _num_images(record: dict[str, Any]) -> int:
    value = record["config"]["protocol"].get("num_images")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def select_runs(records: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One run per (model, dataset, protocol): the one with the most probe images; ties: the newest.

    Newest is by ``created_at`` (ties by run id); file names are never parsed.

    Returns:
        The kept records and how many other runs were left out.
    """
    best: dict[tuple[str, str, str], dict[str, Any]] = {}
    count = 0

    def order(rec: dict[str, Any]) -> tuple[int, Any, str]:
        return (_num_images(rec), parse_created_at(rec["created_at"]), rec["run_id"])

    for rec in records:
        count += 1
        key = record_key(rec)
        current = best.get(key)
        if current is None or order(rec) > order(current):
            best[key] = rec
    return list(best.values()), count - len(best)


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
        C.MODEL: model_label(cfg["model_name"]),
        C.R_F: _nan(res["relative_stability"]),
        C.R_F_INTERVAL: _interval(res["relative_stability_ci"], proto["confidence"]),
        C.D_F: _nan(res["diffeo_stability"]),
        C.G_F: _nan(res["noise_stability"]),
        C.TEST_ERROR: math.nan if error is None else 100.0 * error,
        C.TIMM_ERROR: _nan(timm_err),
        C.FAMILY: model_family(cfg["model_name"]),
        C.ADAPTER: cfg.get("adapter") or "unknown",
        C.DATASET: dataset_label(cfg),
        C.PROTOCOL: protocol_label(cfg),
        C.PARAMETERS: math.nan if cfg.get("num_parameters") is None else cfg["num_parameters"] / 1e6,
        C.INPUT_SIZE: f"{height}x{width}",
        C.IMAGES: proto["num_images"],
        C.ERROR_IMAGES: res.get("num_error_images", proto.get("num_error_images")),
        C.PRETRAINED: {True: "yes", False: "no"}.get(pretrained, "unknown"),
        C.DATE: parse_created_at(record["created_at"]).strftime("%Y-%m-%d %H:%M"),
        C.TEMPERATURE: proto["temperature"],
        C.DELTA: _nan(proto["delta"]),
        C.RUN_ID: record["run_id"][:12],
        C.ORIGIN: record.get(ORIGIN_KEY, BOARD),
        ERROR: math.nan if error is None else float(error),
        TIMM_ERROR: math.nan if timm_err is None else timm_err / 100.0,
        CI_LOW: _nan(res["relative_stability_ci"][0]),
        CI_HIGH: _nan(res["relative_stability_ci"][1]),
        UNTRAINED: is_untrained(record),
        LINK: model_link(cfg["model_name"], cfg.get("adapter")),
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
    """The leaderboard table of validated records, sorted by R_f (lower first; missing R_f last).

    ``Rank`` counts within rows of the same dataset and protocol (the ``_group`` column), among trained
    models only: runs at initialisation get no rank. ``_record`` indexes ``records``. Optional metric
    columns appear only when a record carries them.
    """
    names = [c.name for c in C.COLUMNS]
    rows = []
    for i, rec in enumerate(records):
        row = record_row(rec, reference)
        row[RECORD] = i
        rows.append(row)
    present = {k for row in rows for k in row}
    ordered = [n for n in names if n != C.RANK and (not C.BY_NAME[n].optional or n in present)]
    internal = [ERROR, TIMM_ERROR, CI_LOW, CI_HIGH, UNTRAINED, LINK, RECORD]
    frame = pd.DataFrame(rows, columns=[*ordered, *internal])
    frame[UNTRAINED] = frame[UNTRAINED].astype(bool)
    frame = frame.sort_values([C.R_F, C.MODEL], na_position="last", kind="mergesort").reset_index(drop=True)
    frame[GROUP] = group_labels(frame)
    ranked = frame[C.R_F].where(~frame[UNTRAINED])
    rank = ranked.groupby(frame[GROUP]).rank(method="min", na_option="keep")
    frame.insert(0, C.RANK, rank.astype("Int64"))
    return frame


GROUP_SEPARATOR = " | "


def group_labels(frame: pd.DataFrame) -> pd.Series:
    """``dataset | protocol`` of each row: the groups within which rows are comparable."""
    if frame.empty:
        return pd.Series([], index=frame.index, dtype=object)
    return frame[C.DATASET].astype(str) + GROUP_SEPARATOR + frame[C.PROTOCOL].astype(str)


def groups(frame: pd.DataFrame) -> list[tuple[str, int]]:
    """The (dataset | protocol) groups of a table with their number of trained models, largest first.

    Groups with no trained model (only runs at initialisation) come last, ordered by their number of runs.
    """
    if frame.empty:
        return []
    trained = (~frame[UNTRAINED]).groupby(frame[GROUP]).sum()
    total = frame.groupby(GROUP).size()
    order = sorted(total.index, key=lambda g: (-int(trained[g]), -int(total[g]), g))
    return [(g, int(trained[g])) for g in order]


def default_group(frame: pd.DataFrame) -> str | None:
    """The group shown first: the one with the most trained models (ties: most runs, then by name)."""
    found = groups(frame)
    return found[0][0] if found else None


def group_choices(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, value) pairs for the group chooser: ``dataset | protocol (n models)``."""
    total = frame.groupby(GROUP).size() if not frame.empty else {}
    out = []
    for group, trained in groups(frame):
        untrained = int(total[group]) - trained
        label = f"{group} ({trained} model{'s' if trained != 1 else ''}"
        label += f", {untrained} at initialisation)" if untrained else ")"
        out.append((label, group))
    return out


def filter_frame(
    frame: pd.DataFrame,
    *,
    search: str = "",
    datasets: Sequence[str] | None = None,
    protocols: Sequence[str] | None = None,
    families: Sequence[str] | None = None,
    adapters: Sequence[str] | None = None,
    group: str | None = None,
    untrained: bool | None = None,
) -> pd.DataFrame:
    """Rows matching every filter; empty filters keep everything.

    ``group`` keeps one ``dataset | protocol`` group; ``untrained`` keeps only runs at initialisation
    (True) or only trained models (False).

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
    if group is not None and GROUP in frame:
        keep &= frame[GROUP] == group
    if untrained is not None and UNTRAINED in frame:
        keep &= frame[UNTRAINED] == untrained
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


def _empty(column: pd.Series) -> bool:
    values = column.dropna()
    return values.empty or bool(values.astype(str).str.strip().isin(["", "n/a", "nan", "<NA>"]).all())


def display_frame(
    frame: pd.DataFrame, columns: Sequence[str] | None = None, *, links: bool = True
) -> pd.DataFrame:
    """The table as shown: chosen columns (plus Rank, Model, R_f) in their standard order, rounded.

    Columns with no value in any row are dropped. With ``links`` the Model column is Markdown: the escaped
    name, linked to its hub page when it has one (see :func:`model_link`).
    """
    wanted = set(columns if columns is not None else C.DEFAULT_COLUMNS) | set(C.ALWAYS_SHOWN)
    shown = [
        c
        for c in frame.columns
        if c in wanted and not c.startswith("_") and (c in C.ALWAYS_SHOWN or not _empty(frame[c]))
    ]
    out = frame[shown].copy()
    for column, digits in _SIGNIFICANT.items():
        if column in out:
            out[column] = out[column].map(lambda x, d=digits: _significant(float(x), d))
    for column, digits in _DECIMALS.items():
        if column in out:
            out[column] = out[column].astype(float).round(digits)
    if links and C.MODEL in out:
        link = frame[LINK] if LINK in frame else pd.Series(None, index=frame.index)
        out[C.MODEL] = [
            model_markdown(name, url if isinstance(url, str) else None)
            for name, url in zip(out[C.MODEL], link.loc[out.index], strict=True)
        ]
    return out


def datatypes(frame: pd.DataFrame) -> list[str]:
    """Gradio datatypes of a displayed frame's columns (from :mod:`columns`)."""
    return [C.BY_NAME[c].kind for c in frame.columns]


def legend(frame: pd.DataFrame) -> str:
    """Markdown legend of a displayed frame: each column's name and what it means."""
    lines = [f"- **{escape_markdown(c)}**: {escape_markdown(C.BY_NAME[c].help)}" for c in frame.columns]
    return "\n".join(lines)


def choices(frame: pd.DataFrame, column: str) -> list[str]:
    """Distinct values of a column, sorted (for filter menus)."""
    if column not in frame:
        return []
    return sorted({str(v) for v in frame[column].dropna()})
