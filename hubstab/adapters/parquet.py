"""Probe sets from parquet datasets at a cost proportional to the selection.

A parquet split (hub dataset ids whose data is parquet or that have the hub's ``refs/convert/parquet``
conversion, ``hf://`` paths, ``http(s)://`` URLs, local parquet files or folders, a glob, or a list of these
taken in order as one split) is read like this:

1. the footers of all files give the row groups and their row counts (a few KB to a few hundred KB each);
2. a seeded sampler draws whole row groups at random until they hold ``num_images`` rows, then draws that
   many rows among them (block sampling, scheme ``"row-groups"``: the row groups, rows and seed are recorded);
3. only the byte ranges of the image and label columns of those row groups are fetched (fsspec for URLs,
   ``huggingface_hub.HfFileSystem`` for ``hf://``, pyarrow for the parquet layout; nothing else is read);
4. the selected rows go to the probe-set cache (:mod:`hubstab.adapters.probe_cache`), so the same selection
   is read from disk next time, before any footer or network access.

Datasets that are not parquet keep the whole-split path of :mod:`hubstab.adapters.data`.
"""

from __future__ import annotations

import glob as _glob
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hubstab.adapters import probe_cache
from hubstab.errors import DatasetError

logger = logging.getLogger("hubstab")

SCHEME = "row-groups"
"""Name of the block-sampling scheme recorded with every selection made here."""
_GLOB_CHARS = set("*?[")
_THREADS = 8


@dataclass
class ParquetSplit:
    """The parquet files of one split, in order, and what identifies them.

    Attributes:
        name: the dataset as recorded (hub id, URL, path).
        files: file paths or URLs, in order (their rows are concatenated).
        split: the split name.
        revision: the dataset revision read (commit sha of a hub repo), if known.
        scheme: where the files were found: ``"local"``, ``"http"``, ``"hf"``, ``"hub-cache"``.
    """

    name: str
    files: list[str]
    split: str
    revision: str | None = None
    scheme: str = "local"
    storage_options: dict[str, Any] = field(default_factory=dict)


def _is_parquet_name(text: str) -> bool:
    return text.split("?")[0].endswith(".parquet")


def _expand(spec: str) -> list[str]:
    """A path, URL or glob -> the files it names (sorted when a glob)."""
    if "://" in spec:
        if not _GLOB_CHARS & set(spec.split("://", 1)[1]):
            return [spec]
        import fsspec

        _fs, _, paths = fsspec.get_fs_token_paths(spec)
        protocol = spec.split("://", 1)[0]
        return [f"{protocol}://{p}" if "://" not in p else p for p in sorted(paths)]
    if _GLOB_CHARS & set(spec):
        return sorted(_glob.glob(os.path.expanduser(spec)))
    return [spec]


def _scheme_of(files: list[str]) -> str:
    kinds = {f.split("://", 1)[0] if "://" in f else "local" for f in files}
    kinds = {"http" if k in ("http", "https") else k for k in kinds}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _from_builder(path: str, what: str, split, config_name, revision, scheme) -> ParquetSplit | None:
    """The parquet data files ``datasets`` resolves for a folder or hub repo (no data is downloaded)."""
    import datasets

    from hubstab.adapters.data import _pick_split

    try:
        builder = datasets.load_dataset_builder(path, config_name, revision=revision)
    except Exception as exc:  # not loadable this way: the whole-split path reports the problem
        logger.debug("no parquet builder for %s: %s", what, exc)
        return None
    data_files = getattr(builder.config, "data_files", None) or {}
    if builder.name != "parquet" or not data_files:
        return None
    name = _pick_split([str(s) for s in data_files], split, what)
    files = [str(f) for f in data_files[name]]
    if not files or not all(_is_parquet_name(f) for f in files):
        return None
    return ParquetSplit(what, files, name, revision, scheme)


def _converted_parquet(repo: str, split, config_name, revision) -> ParquetSplit | None:
    """The hub's automatic parquet conversion of a dataset repo (branch ``refs/convert/parquet``)."""
    from huggingface_hub import HfFileSystem

    from hubstab.adapters.data import _pick_split

    fs = HfFileSystem()
    root = f"datasets/{repo}@refs%2Fconvert%2Fparquet/{config_name or 'default'}"
    try:
        splits = [Path(p).name for p in fs.ls(root, detail=False)]
        name = _pick_split(splits, split, repo)
        files = sorted(fs.glob(f"{root}/{name}/*.parquet"))
    except (FileNotFoundError, OSError) as exc:
        logger.debug("no parquet conversion of %s: %s", repo, exc)
        return None
    if not files:
        return None
    return ParquetSplit(repo, [f"hf://{f}" for f in files], name, revision, "hf")


def resolve_hub(repo: str, split, config_name, revision) -> ParquetSplit | None:
    """The parquet files of a hub dataset split: its own parquet data, else the hub's conversion.

    Offline (``HF_HUB_OFFLINE`` or no network), the repo's snapshot in the local hub cache is used.
    Returns None when the dataset is not parquet (the caller falls back to ``datasets``).
    """
    from hubstab.adapters.resolve import cached_snapshot, hub_reachable

    if not hub_reachable():
        snapshot = cached_snapshot(repo, revision, "dataset")
        if snapshot is None:
            return None
        found = _from_builder(str(snapshot), repo, split, config_name, None, "hub-cache")
        if found is not None:
            found.revision = snapshot.name
        return found
    from huggingface_hub import HfApi

    try:
        sha = HfApi().dataset_info(repo, revision=revision, timeout=10).sha or revision
    except Exception as exc:  # unknown, gated, private: the whole-split path raises the right message
        logger.debug("dataset_info(%s) failed: %s", repo, exc)
        return None
    found = _from_builder(repo, repo, split, config_name, sha, "hf")
    return found if found is not None else _converted_parquet(repo, split, config_name, sha)


def resolve_files(dataset: Any, split: str | None) -> ParquetSplit | None:
    """Parquet files named directly: a local parquet file or glob, URL(s), ``hf://`` path(s), or a list.

    Several files (a list, a glob, or a comma-separated string of parquet names) form one split in order.
    Returns None when ``dataset`` does not name parquet files.
    """
    if isinstance(dataset, (list, tuple)):
        specs = [str(d) for d in dataset]
    elif isinstance(dataset, (str, os.PathLike)):
        text = str(dataset)
        parts = [p.strip() for p in text.split(",")] if "," in text else [text]
        specs = parts if len(parts) > 1 and all(_is_parquet_name(p) for p in parts) else [text]
    else:
        return None
    files: list[str] = []
    for spec in specs:
        files.extend(_expand(spec))
    if not files or not all(_is_parquet_name(f) for f in files):
        if isinstance(dataset, (list, tuple)):
            raise DatasetError(f"a list of datasets must name parquet files; got {specs}")
        return None
    files = [f if "://" in f else str(Path(f).expanduser().resolve()) for f in files]
    missing = [f for f in files if "://" not in f and not Path(f).is_file()]
    if missing:
        raise DatasetError(f"no such parquet file: {missing[0]}")
    name = specs[0] if len(specs) == 1 else f"{specs[0]} (+{len(specs) - 1} more)"
    if len(specs) == 1 and "://" not in specs[0]:
        name = files[0] if len(files) == 1 else specs[0]
    return ParquetSplit(name, files, split or "train", None, _scheme_of(files))


def select_row_groups(
    group_rows: list[int], num_images: int | None, seed: int
) -> tuple[list[int], list[int]]:
    """Block sampling: whole row groups drawn at random, then ``num_images`` rows among their rows.

    Args:
        group_rows: rows in each row group, in split order.
        num_images: rows wanted (None or at least the split's size: all rows).
        seed: seed of both draws (``numpy.random.default_rng``).

    Returns:
        The chosen row groups (sorted positions in ``group_rows``) and the chosen rows (sorted global indices).
    """
    total = int(sum(group_rows))
    starts = np.concatenate([[0], np.cumsum(group_rows)[:-1]]).astype(int) if group_rows else np.array([])
    if num_images is None or num_images >= total:
        return [g for g, n in enumerate(group_rows) if n], list(range(total))
    if num_images < 1:
        raise DatasetError(f"num_images must be at least 1, got {num_images}")
    rng = np.random.default_rng(seed)
    chosen, covered = [], 0
    for g in rng.permutation(len(group_rows)):
        if group_rows[g] == 0:
            continue
        chosen.append(int(g))
        covered += group_rows[g]
        if covered >= num_images:
            break
    chosen.sort()
    candidates = np.concatenate([np.arange(starts[g], starts[g] + group_rows[g]) for g in chosen])
    rows = rng.choice(candidates, size=num_images, replace=False)
    return chosen, sorted(int(i) for i in rows)


def _open(url: str, options: dict[str, Any]):
    """A pyarrow ``ParquetFile`` reading ``url`` by byte ranges only (no read-ahead, no whole-file fetch)."""
    import pyarrow.parquet as pq

    if "://" not in url:
        return pq.ParquetFile(url), None
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **options)
    handle = fs.open(path, "rb", cache_type="none", block_size=2**20)
    return pq.ParquetFile(handle), handle


def _definition(source: ParquetSplit | None, dataset: Any, **selection: Any) -> dict[str, Any]:
    """What defines a selection, for the cache key (local files by path, size and modification time)."""
    if source is not None and source.scheme == "local":
        sources: Any = [[f, os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in source.files]
    elif source is not None:
        sources = list(source.files)
    else:
        sources = str(dataset)
    return {"sources": sources, **selection}


def _rows_of(table) -> list[dict[str, Any]]:
    return table.to_pylist()


def load_parquet_selection(
    dataset: Any,
    *,
    split: str | None = None,
    config_name: str | None = None,
    revision: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    num_images: int | None = 500,
    seed: int = 0,
    use_cache: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    """The selected rows and provenance of a parquet dataset, or None when ``dataset`` is not parquet.

    Args: as :func:`hubstab.adapters.load_probe_set`; ``use_cache=False`` neither reads nor writes the cache.

    Returns:
        ``(rows, info)``: rows as dicts of the source's columns (image cells undecoded), ``info`` the probe
        set's provenance (see :class:`hubstab.adapters.data.ProbeSet`) with ``selection = "row-groups"`` and
        ``probe_selection`` (scheme, seed, row groups as ``[file, group]`` pairs, files, cache status).
    """
    from hubstab.adapters.data import _class_names, _image_column, _is_saved, _label_column

    selection = {
        "revision": revision,
        "config": config_name,
        "split": split,
        "image_column": image_column,
        "label_column": label_column,
        "num_images": num_images,
        "seed": seed,
        "scheme": SCHEME,
    }
    source = resolve_files(dataset, split)
    hub_repo = None
    if source is None and isinstance(dataset, (str, os.PathLike)):
        path = Path(str(dataset)).expanduser()
        if path.is_dir():
            if _is_saved(path):
                return None
            source = _from_builder(str(path), str(path.resolve()), split, config_name, None, "local")
            if source is None:
                return None
        elif not path.exists() and "://" not in str(dataset):
            repo, at, rev = str(dataset).partition("@")
            if repo.count("/") != 1:
                return None
            hub_repo = repo
            selection["revision"] = rev if at else revision
        else:
            return None
    key = probe_cache.selection_key(_definition(source, hub_repo or dataset, **selection))
    if use_cache:
        cached = probe_cache.load(key)
        if cached is not None:
            table, info = cached
            info["probe_selection"]["cache"] = "hit"
            return _rows_of(table.drop_columns(["__index__"])), info
    if hub_repo is not None:
        source = resolve_hub(hub_repo, split, config_name, selection["revision"])
        if source is None:
            return None

    opened = _open_all(source)
    try:
        import datasets

        first = opened[0][0]
        features = dict(datasets.Features.from_arrow_schema(first.schema_arrow))
        img_col = _image_column(features, image_column)
        lab_col = _label_column(features, label_column, img_col)
        groups = [(f, g) for f, (pf, _) in enumerate(opened) for g in range(pf.metadata.num_row_groups)]
        group_rows = [opened[f][0].metadata.row_group(g).num_rows for f, g in groups]
        chosen, indices = select_row_groups(group_rows, num_images, seed)
        if not indices:
            raise DatasetError(f"the {source.split} split of {source.name} has no rows")
        columns = [img_col] + ([lab_col] if lab_col else [])
        table = _read_groups(opened, groups, group_rows, chosen, indices, columns)
    finally:
        for _, handle in opened:
            if handle is not None:
                handle.close()
    info = {
        "dataset": source.name,
        "dataset_config": config_name,
        "split": source.split,
        "dataset_revision": source.revision,
        "image_column": img_col,
        "label_column": lab_col,
        "selection_seed": seed,
        "selection": SCHEME if len(indices) < sum(group_rows) else "all",
        "indices": indices,
        "class_names": _class_names(features, lab_col),
        "num_rows": int(sum(group_rows)),
        "probe_selection": {
            "scheme": SCHEME,
            "seed": seed,
            "source": source.scheme,
            "files": [f if "://" in f else Path(f).name for f in source.files],
            "row_groups": [list(groups[g]) for g in chosen],
            "rows_in_row_groups": int(sum(group_rows[g] for g in chosen)),
            "num_row_groups": len(groups),
            "distinct_labels": len(set(table.column(lab_col).to_pylist())) if lab_col else None,
            "cache": "miss",
            "cache_key": key,
        },
    }
    if use_cache:
        stored = {**info, "probe_selection": {**info["probe_selection"], "cache": "stored"}}
        try:
            probe_cache.store(key, table, stored)
        except OSError as exc:  # a read-only or full disk costs a re-fetch next time, not the run
            logger.warning("could not write the probe-set cache (%s): %s", probe_cache.cache_dir(), exc)
    return _rows_of(table.drop_columns(["__index__"])), info


def _open_all(source: ParquetSplit) -> list[tuple[Any, Any]]:
    """Open every file of the split and read its footer (in parallel for remote files)."""
    try:
        if source.scheme == "local" or len(source.files) == 1:
            return [_open(f, source.storage_options) for f in source.files]
        with ThreadPoolExecutor(min(_THREADS, len(source.files))) as pool:
            return list(pool.map(lambda f: _open(f, source.storage_options), source.files))
    except FileNotFoundError as exc:
        raise DatasetError(f"no such parquet file: {exc}") from exc
    except ImportError as exc:
        raise DatasetError(
            f"reading {source.files[0]} needs a package that is not installed ({exc}); "
            "for http(s) URLs: pip install aiohttp"
        ) from exc
    except Exception as exc:
        if type(exc).__name__ in ("ArrowInvalid", "ArrowIOError"):
            raise DatasetError(f"{source.name} is not a readable parquet file: {exc}") from exc
        raise


def _read_groups(opened, groups, group_rows, chosen, indices, columns):
    """The wanted rows of the chosen row groups (only their ``columns``), with an ``__index__`` column."""
    import pyarrow as pa

    starts = np.concatenate([[0], np.cumsum(group_rows)[:-1]]).astype(int)
    wanted = np.asarray(indices)

    def read(g: int):
        f, local = groups[g]
        table = opened[f][0].read_row_group(local, columns=columns)
        lo = starts[g]
        take = wanted[(wanted >= lo) & (wanted < lo + group_rows[g])]
        table = table.take(pa.array(take - lo))
        return table.append_column("__index__", pa.array(take, type=pa.int64()))

    by_file: dict[int, list[int]] = {}
    for g in chosen:
        by_file.setdefault(groups[g][0], []).append(g)
    remote = any(handle is not None for _, handle in opened)
    if not remote or len(by_file) == 1:
        return pa.concat_tables([read(g) for g in chosen])
    # remote files are read in parallel, one thread per file (a file handle is never shared between threads)
    with ThreadPoolExecutor(min(_THREADS, len(by_file))) as pool:
        parts = dict(zip(by_file, pool.map(lambda gs: [read(g) for g in gs], by_file.values()), strict=True))
    tables = {g: t for f, gs in by_file.items() for g, t in zip(gs, parts[f], strict=True)}
    return pa.concat_tables([tables[g] for g in chosen])
