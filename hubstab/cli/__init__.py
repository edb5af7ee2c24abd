"""The ``hubstab`` command line: one module per subcommand, each exposing ``add_parser`` and ``run``.

A subcommand module ``hubstab/cli/<name>.py`` defines::

    HELP = "one line shown in `hubstab --help`"
    def add_parser(subparsers) -> argparse.ArgumentParser  # registers its options
    def run(args: argparse.Namespace) -> int               # exit code

Exit codes: 0 success, 1 the run failed, 2 bad input (unknown model, dataset, option, unwritable output
folder, NaN/Inf outputs), 130 interrupted by SIGINT (Ctrl-C), 143 by SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import warnings

SUBCOMMANDS: tuple[str, ...] = ("eval", "ls", "show", "push", "plot", "leaderboard", "bench", "cache")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


from hubstab.errors import HubstabError as UserError  # noqa: E402  (re-exported for subcommands)


def build_parser() -> argparse.ArgumentParser:
    from hubstab import __version__

    parser = argparse.ArgumentParser(
        prog="hubstab",
        description="Relative stability of vision models toward diffeomorphisms, R_f = D_f / G_f.",
    )
    parser.add_argument("--version", action="version", version=f"hubstab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"hubstab.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"hubstab.cli.{name}":
                continue
            raise
        sub = module.add_parser(subparsers)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    args._argv = raw
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return EXIT_USAGE
    # warnings as one line each, never a source line
    warnings.formatwarning = lambda message, category, *rest, **kw: f"hubstab: warning: {message}\n"
    try:
        return int(args._run(args) or 0)
    except UserError as err:
        print(f"hubstab {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:
        # the runner's message says what was saved and where; elsewhere nothing was being measured
        message = getattr(err, "message", None) or "interrupted"
        print(f"hubstab {args.command}: {message}", file=sys.stderr)
        return 128 + int(getattr(err, "signum", signal.SIGINT))
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as err:
        if os.environ.get("HUBSTAB_DEBUG"):
            raise
        print(
            f"hubstab {args.command}: failed: {type(err).__name__}: {err} (set HUBSTAB_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
