"""``hubstab bench``: R_f evaluation speed against raw inference (a thin wrapper over ``scripts/bench.py``).

The benchmark lives in the repository's ``scripts/`` folder, next to its one-image-at-a-time reference, so
this subcommand needs a source checkout (``pip install -e .``); it takes the script's options.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType

from hubstab.errors import HubstabError

HELP = "benchmark R_f evaluation throughput against raw inference (source checkout)"


def _script_path() -> Path:
    return Path(__file__).resolve().parents[2] / "scripts" / "bench.py"


def _load_script() -> ModuleType | None:
    path = _script_path()
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("hubstab_bench_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bench", help=HELP, description=__doc__.split("\n\n")[0])
    script = _load_script()
    if script is not None:
        script.add_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    script = _load_script()
    if script is None:
        raise HubstabError(
            f"hubstab bench needs a source checkout ({_script_path()} not found): clone the repository, "
            "`pip install -e .` and run `python scripts/bench.py`"
        )
    return script.run(args)
