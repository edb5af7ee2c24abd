"""The probe-set cache: the selected rows of a dataset, stored once per selection on this machine.

Each entry is one parquet file ``<cache>/<key>.parquet`` holding the selected rows as the source stored them
(encoded image bytes, label) plus their ``index`` in the split, with the provenance (dataset, revision, split,
selection scheme, seed, row groups, indices) as JSON in the file's metadata. The key is a hash of everything
that defines the selection (see :func:`selection_key`), so a second model, run or process reads the rows
from here without touching the network. Entries are written to a temporary file and renamed into place
(atomic: concurrent writers of the same key both produce a complete file), and the cache is kept under a
size bound by removing the least recently used entries.

Location: ``$HUBSTAB_CACHE`` if set, else ``$HF_HOME/hubstab/probes`` (``~/.cache/huggingface/hubstab/probes``).
Bound: ``$HUBSTAB_CACHE_MAX_BYTES`` (default 20 GB).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE_FORMAT = 1
"""Version of the entry layout and of the selection scheme; part of every key."""
DEFAULT_MAX_BYTES = 20 * 10**9
_META = b"hubstab_probe_set"


def cache_dir() -> Path:
    """The cache folder, read from the environment at call time (``HUBSTAB_CACHE`` or ``HF_HOME``)."""
    if os.environ.get("HUBSTAB_CACHE"):
        return Path(os.environ["HUBSTAB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(home).expanduser() / "hubstab" / "probes"


def max_bytes() -> int:
    """The size bound of the cache in bytes (``HUBSTAB_CACHE_MAX_BYTES``, default 20 GB)."""
    text = os.environ.get("HUBSTAB_CACHE_MAX_BYTES")
    try:
        return int(float(text)) if text else DEFAULT_MAX_BYTES
    except ValueError:
        return DEFAULT_MAX_BYTES


def selection_key(definition: dict[str, Any]) -> str:
    """SHA-256 (hex) of a selection's definition: sources, revision, config, split, columns, size, seed."""
    text = json.dumps({"format": CACHE_FORMAT, **definition}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class CacheEntry:
    """One cached probe set: its key, file, size in bytes, last use (epoch s) and provenance."""

    key: str
    path: Path
    size: int
    last_used: float
    info: dict[str, Any]


def _read_info(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(_META, b"{}"))


def load(key: str):
    """The cached rows of ``key`` as ``(pyarrow.Table, info)``, or None when absent or unreadable."""
    import pyarrow.parquet as pq

    path = cache_dir() / f"{key}.parquet"
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
        info = json.loads((table.schema.metadata or {}).get(_META, b"{}"))
    except Exception:  # a truncated or foreign file is a cache miss, never an error
        return None
    if info.get("key") != key:
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # last use, for the size bound
    return table.replace_schema_metadata(None), info


def store(key: str, table, info: dict[str, Any]) -> Path:
    """Write the rows of ``key`` (a ``pyarrow.Table``) with ``info``, atomically; then apply the size bound."""
    import pyarrow.parquet as pq

    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    meta = dict(table.schema.metadata or {})
    meta[_META] = json.dumps({**info, "key": key}, default=str).encode()
    tmp = folder / f".tmp-{uuid.uuid4().hex}.parquet"
    try:
        pq.write_table(table.replace_schema_metadata(meta), tmp)
        os.replace(tmp, folder / f"{key}.parquet")
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    prune(max_bytes(), keep=key)
    return folder / f"{key}.parquet"


def entries() -> list[CacheEntry]:
    """Every cached probe set, most recently used first."""
    folder = cache_dir()
    out = []
    for path in folder.glob("*.parquet") if folder.is_dir() else []:
        if path.name.startswith("."):
            continue
        try:
            stat = path.stat()
            info = _read_info(path)
        except Exception:
            info, stat = {}, path.stat()
        out.append(CacheEntry(path.stem, path, stat.st_size, stat.st_mtime, info))
    return sorted(out, key=lambda e: e.last_used, reverse=True)


def prune(limit: int, keep: str | None = None) -> list[Path]:
    """Remove the least recently used entries (never ``keep``) until the cache holds at most ``limit`` bytes."""
    removed = []
    items = entries()
    total = sum(e.size for e in items)
    for entry in reversed(items):
        if total <= limit:
            break
        if entry.key == keep:
            continue
        with contextlib.suppress(OSError):
            entry.path.unlink()
            removed.append(entry.path)
            total -= entry.size
    folder = cache_dir()
    for tmp in folder.glob(".tmp-*") if folder.is_dir() else []:  # left by killed writers
        with contextlib.suppress(OSError):
            if time.time() - tmp.stat().st_mtime > 3600:
                tmp.unlink()
    return removed


def clear(prefix: str = "") -> list[Path]:
    """Remove the entries whose key starts with ``prefix`` (all when empty); returns the removed files."""
    removed = []
    for entry in entries():
        if entry.key.startswith(prefix):
            with contextlib.suppress(OSError):
                entry.path.unlink()
                removed.append(entry.path)
    return removed
