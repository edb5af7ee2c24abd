"""``hubstab show FILE_OR_RUN_ID``: one results file, validated, as a summary or as JSON (imports no torch)."""

from __future__ import annotations

import argparse
import json

from hubstab.results.io import DEFAULT_RESULTS_DIR

HELP = "show one results file (validated), by path or by run id"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "show",
        help=HELP,
        description="Validate a results file and print its summary. Name it by its path or by its run id "
        "(the first digits are enough, as `hubstab ls` prints them).",
    )
    p.add_argument("file", metavar="FILE_OR_RUN_ID", help="a results .json file, or a run id (6+ hex digits)")
    p.add_argument(
        "--results",
        default=DEFAULT_RESULTS_DIR,
        metavar="DIR",
        help=f"folder searched for a run id (default ./{DEFAULT_RESULTS_DIR})",
    )
    p.add_argument("--json", action="store_true", help="print the validated JSON instead of the summary")
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hubstab.errors import HubstabError, ResultsValidationError
    from hubstab.results.io import find_run
    from hubstab.results.summary import format_record
    from hubstab.results.validate import load_record

    path = Path(args.file)
    if not (path.exists() or path.is_symlink()):
        if "/" in args.file or args.file.endswith(".json"):
            raise HubstabError(f"no such results file {args.file} (`hubstab ls` lists files and run ids)")
        path = find_run(args.results, args.file)
    try:
        record = load_record(path)
    except ResultsValidationError as err:
        raise ResultsValidationError(f"{path}: {err}") from None
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(format_record(record, path))
    return 0
