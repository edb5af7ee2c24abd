"""``hubstab cache ls|clear``: the probe-set cache (selected rows of parquet datasets, see README)."""

from __future__ import annotations

import argparse
import datetime as _dt

HELP = "list or clear the probe-set cache (probe images fetched from parquet datasets)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "cache",
        help=HELP,
        description="The probe-set cache holds the rows selected from parquet datasets (encoded images, labels, "
        "provenance), one file per selection, under $HUBSTAB_CACHE or $HF_HOME/hubstab/probes; its size is "
        "bounded by $HUBSTAB_CACHE_MAX_BYTES (default 20 GB, least recently used entries go first).",
    )
    p.add_argument("action", choices=["ls", "clear"], help="ls: list the entries; clear: remove them")
    p.add_argument(
        "keys", nargs="*", default=[], metavar="KEY", help="clear only entries whose key starts with KEY"
    )
    return p


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def run(args: argparse.Namespace) -> int:
    from hubstab.adapters import probe_cache

    folder = probe_cache.cache_dir()
    if args.action == "clear":
        removed = []
        for prefix in args.keys or [""]:
            removed += probe_cache.clear(prefix)
        print(f"removed {len(removed)} cached probe set(s) from {folder}")
        return 0
    items = probe_cache.entries()
    total = sum(e.size for e in items)
    print(f"{folder}: {len(items)} probe set(s), {_size(total)} (bound {_size(probe_cache.max_bytes())})")
    for e in items:
        info = e.info
        sel = info.get("probe_selection") or {}
        used = _dt.datetime.fromtimestamp(e.last_used, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
        where = info.get("dataset")
        if info.get("split"):
            where += f" [{info['split']}]"
        if info.get("dataset_revision"):
            where += f" @{str(info['dataset_revision'])[:12]}"
        print(
            f"{e.key[:16]}  {_size(e.size):>9}  {used}  {where}  {len(info.get('indices') or [])} images, "
            f"seed {sel.get('seed')}, {len(sel.get('row_groups') or [])} row groups"
        )
    return 0
