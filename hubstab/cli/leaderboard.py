"""``hubstab leaderboard``: serve the Gradio leaderboard over a results folder or hub dataset repo."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from hubstab.errors import HubstabError

HELP = "serve the leaderboard app (models ranked by R_f, against test error)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "leaderboard",
        help=HELP,
        description=(
            "Serve the Gradio leaderboard: every results file below --results (a folder, or a hub dataset "
            "repo downloaded with snapshot_download) is validated; invalid files are skipped and listed."
        ),
    )
    parser.add_argument(
        "--results",
        metavar="DIR|REPO",
        default=None,
        help="results folder or hub dataset repo id (org/name); default $HUBSTAB_RESULTS, else "
        "./hubstab-results (the folder hubstab eval writes); with neither, an empty board",
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)"
    )
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off)")
    return parser


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        raise HubstabError("the leaderboard needs gradio: pip install 'hubstab[leaderboard]'")
    from hubstab.leaderboard.app import build_app
    from hubstab.results.validate import MAX_RECORD_BYTES

    demo = build_app(args.results, strict=args.results is not None)
    try:
        demo.launch(  # quiet: gradio's own lines would suggest `share=True` in launch(); ours follows
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            max_file_size=MAX_RECORD_BYTES,
            quiet=not args.share,
            prevent_thread_lock=True,
        )
    except OSError as err:
        raise HubstabError(
            f"cannot listen on {args.host}:{args.port} ({err}); choose another --port"
        ) from None
    hint = "" if args.share else "; --share for a public link"
    print(
        f"hubstab leaderboard: serving on http://{args.host}:{args.port} (Ctrl-C to stop{hint})",
        file=sys.stderr,
    )
    import time

    try:  # not demo.block_thread(): it swallows Ctrl-C, and the exit code is then 0 rather than 130
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        demo.close()
        raise
    return 0
