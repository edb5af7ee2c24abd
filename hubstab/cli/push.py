"""``hubstab push FILE_OR_DIR... --repo ORG/NAME [--pr]``: validate results files and upload them in one commit."""

from __future__ import annotations

import argparse

HELP = "upload results files to a hub dataset repo (one commit, optionally a pull request)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "push",
        help=HELP,
        description="Validate results files and upload them all to a hub dataset repo in one commit, under "
        "results/<model>/<run id>.json (per-sample files go with them). Nothing is uploaded when any file "
        "is invalid. Needs `hf auth login` with write access (or --pr without it on repos that accept PRs).",
    )
    p.add_argument(
        "paths", nargs="+", metavar="FILE_OR_DIR", help="results files, or folders searched for them"
    )
    p.add_argument(
        "--repo", required=True, metavar="ORG/NAME", help="the hub dataset repo (the leaderboard's source)"
    )
    p.add_argument("--pr", action="store_true", help="open a pull request instead of committing to main")
    p.add_argument("--message", help="commit title (default: names the runs)")
    p.add_argument(
        "--dry-run", action="store_true", help="validate and list what would be uploaded, upload nothing"
    )
    return p


def run(args: argparse.Namespace) -> int:
    from hubstab.results.push import collect_uploads, push_files

    if args.dry_run:
        for upload in collect_uploads(args.paths):
            print(f"{upload.local} -> {args.repo}:{upload.path_in_repo}")
        return 0
    result = push_files(args.paths, args.repo, pr=args.pr, message=args.message)
    for upload in result.uploads:
        print(f"{upload.local} -> {upload.path_in_repo}")
    print(("pull request " if args.pr else "commit ") + result.url)
    return 0
