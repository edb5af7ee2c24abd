"""The evaluation runner (Accelerate) and its configuration.

Names are imported lazily: ``hubstab.runner.zoo`` and ``hubstab.runner.config`` serve the command line's
parser, which must not import torch (``hubstab ls`` and ``show`` start in a fraction of a second).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalConfig": "hubstab.runner.config",
    "evaluate": "hubstab.runner.engine",
    "make_accelerator": "hubstab.runner.engine",
    "run_evaluation": "hubstab.runner.engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hubstab.runner' has no attribute {name!r}")
