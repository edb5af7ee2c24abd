"""The evaluation runner (Accelerate) and its configuration."""

from hubstab.runner.config import EvalConfig
from hubstab.runner.engine import evaluate, make_accelerator, run_evaluation

__all__ = ["EvalConfig", "evaluate", "make_accelerator", "run_evaluation"]
