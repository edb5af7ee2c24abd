"""``hubstab ls [DIR]``: the results in a folder, most stable first."""

from __future__ import annotations

import argparse
import sys

from hubstab.results.io import DEFAULT_RESULTS_DIR

HELP = "list the results files in a folder, ranked by R_f"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "ls",
        help=HELP,
        description="List results files, ranked by R_f (lower: more stable), with their run ids and paths; "
        "invalid files, FIFOs and symlinks leading out of the folder are skipped and listed on stderr.",
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

    from hubstab.errors import HubstabError
    from hubstab.results.io import scan_results

    folder = Path(args.folder)
    if not folder.is_dir():
        raise HubstabError(f"no results folder {folder}: run `hubstab eval` first or name the folder")
    scan = scan_results(folder)
    rows = sorted(
        scan.records,
        key=lambda r: (
            r[1]["results"]["relative_stability"]
            if r[1]["results"]["relative_stability"] is not None
            else float("inf")
        ),
    )
    header = (
        f"{'run':12} {'model':36} {'dataset':24} {'protocol':28} {'R_f':>8} {'95% CI':>19} {'error':>7} "
        f"{'P':>5}  {'date':10}  file"
    )
    print(header)
    for path, rec in rows:
        c, r = rec["config"], rec["results"]
        lo, hi = r.get("relative_stability_ci") or (None, None)
        err = None if r.get("test_error") is None else 100 * r["test_error"]
        ci = "-" if lo is None or hi is None else f"{lo:9.3g}-{hi:<9.3g}"
        print(
            f"{rec['run_id'][:12]} {_cut(c['model_name'], 36):36} {_cut(c.get('dataset'), 24):24} "
            f"{_cut(c.get('protocol_id'), 28):28} "
            f"{_fmt(r['relative_stability'], '8.4g')} {ci:>19} "
            f"{'-' if err is None else f'{err:.2f}%':>7} {c.get('num_images') or 0:5d}  {str(rec.get('created_at', ''))[:10]:10}  "
            f"{path}"
        )
    for skipped in scan.skipped:
        print(f"skipped {skipped}", file=sys.stderr)
    if not rows:
        print(f"(no results in {folder})")
    else:
        where = "" if folder == Path(DEFAULT_RESULTS_DIR) else f" --results {folder}"
        print(f"(`hubstab show RUN{where}` or `hubstab show FILE` prints one; RUN as in the first column)")
    return 0
