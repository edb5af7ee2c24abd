"""``hubstab leaderboard``: serve the Gradio leaderboard over a results folder or hub dataset repo."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from hubstab.errors import HubstabError

HELP = "serve the leaderboard app (models ranked by R_f, against test error)"
APP_DIR_ENV = "HUBSTAB_LEADERBOARD_DIR"
"""Environment variable pointing at the folder that holds the leaderboard's app.py."""


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
        help="results folder or hub dataset repo id (org/name); default $HUBSTAB_RESULTS or ./results",
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)"
    )
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off)")
    return parser


def app_dir() -> Path:
    """The folder of the leaderboard app: ``$HUBSTAB_LEADERBOARD_DIR`` or ``leaderboard/`` of the checkout."""
    env = os.environ.get(APP_DIR_ENV)
    folder = Path(env) if env else Path(__file__).resolve().parents[2] / "leaderboard"
    if not (folder / "app.py").is_file():
        raise HubstabError(
            f"the leaderboard app is not at {folder}: run from a hubstab source checkout (it ships in "
            f"leaderboard/), or set {APP_DIR_ENV} to the folder holding app.py"
        )
    return folder


def load_app() -> ModuleType:
    """Import the leaderboard's ``app.py`` (its folder goes on ``sys.path``, as on a hub Space)."""
    if importlib.util.find_spec("gradio") is None:
        raise HubstabError("the leaderboard needs gradio: pip install 'hubstab[leaderboard]'")
    folder = app_dir()
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("hubstab_leaderboard_app", folder / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(args: argparse.Namespace) -> int:
    app = load_app()
    demo = app.build_app(args.results)
    print(f"hubstab leaderboard: serving on http://{args.host}:{args.port}", file=sys.stderr)
    try:
        demo.launch(
            server_name=args.host, server_port=args.port, share=args.share, max_file_size=app.MAX_RECORD_BYTES
        )
    except OSError as err:
        raise HubstabError(
            f"cannot listen on {args.host}:{args.port} ({err}); choose another --port"
        ) from None
    return 0
