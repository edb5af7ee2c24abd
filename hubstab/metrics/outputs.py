"""The network's output among its representations: logits from any model output (shared by the metrics).

Kept apart from :mod:`hubstab.metrics.stability` so that the layer hooks (:mod:`hubstab.metrics.layers`) and
the stability core do not import each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

OUTPUT = "output"
"""Name of the network's output (logits) among the representations."""


def as_logits(output: Any) -> torch.Tensor:
    """The logits of a model output: a tensor, an object with ``.logits``, a mapping or the first of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


def representations(output: Any) -> dict[str, torch.Tensor]:
    """``{"output": logits, ...}`` from a model output or from a dict of representations."""
    if isinstance(output, Mapping) and OUTPUT in output:
        reps = dict(output)
        reps[OUTPUT] = as_logits(reps[OUTPUT])
        return reps
    return {OUTPUT: as_logits(output)}
