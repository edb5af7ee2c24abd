"""``hubstab ls [DIR]``: the results in a folder, most stable first."""

from __future__ import annotations

import argparse
import sys

from hubstab.results.io import DEFAULT_RESULTS_DIR

HELP = "list the results files in a folder, ranked by R_f"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "ls", help=HELP, description="List results files, ranked by R_f (lower: more stable)."
    )
    p.add_argument(
        "folder",
        nargs="?",
        default=DEFAULT_RESULTS_DIR,
        help=f"results folder (default ./{DEFAULT_RESULTS_DIR})",
    )
    return p


def _cut(text, width: int) -> str:
    """``text`` in ``width`` characters, keeping its end (the informative part of paths and ids)."""
    text = str(text)
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hubstab.errors import HubstabError, ResultsValidationError
    from hubstab.results.io import iter_result_files
    from hubstab.results.validate import load_record

    folder = Path(args.folder)
    if not folder.is_dir():
        raise HubstabError(f"no results folder {folder}: run `hubstab eval` first or name the folder")
    rows, bad = [], []
    for path in iter_result_files(folder):
        try:
            rows.append((path, load_record(path)))
        except ResultsValidationError as err:
            bad.append(f"{path}: {err}")
    rows.sort(
        key=lambda r: (
            r[1]["results"]["relative_stability"]
            if r[1]["results"]["relative_stability"] is not None
            else float("inf")
        )
    )
    header = (
        f"{'model':42} {'dataset':28} {'protocol':28} {'R_f':>8} {'95% CI':>19} {'error':>7} {'P':>5}  date"
    )
    print(header)
    for _, rec in rows:
        c, r = rec["config"], rec["results"]
        lo, hi = r.get("relative_stability_ci") or (None, None)
        err = None if r.get("test_error") is None else 100 * r["test_error"]
        print(
            f"{_cut(c['model_name'], 42):42} {_cut(c.get('dataset'), 28):28} {_cut(c.get('protocol_id'), 28):28} "
            f"{_fmt(r['relative_stability'], '8.4g')} {_fmt(lo, '9.3g')}-{_fmt(hi, '<9.3g')} "
            f"{_fmt(err, '6.2f')}% {c.get('num_images') or 0:5d}  {str(rec.get('created_at', ''))[:10]}"
        )
    for line in bad:
        print(f"skipped invalid file {line}", file=sys.stderr)
    if not rows:
        print(f"(no results in {folder})")
    return 0
