"""Matching a model's classes with a dataset's, so that a test error can be computed.

Rules, in order (the first that applies wins):

1. a user mapping (dataset label -> model label, by index or name, or ``"identity"``) is used as given;
2. both name their classes and the names agree position by position: identity;
3. both are recognised as the same label space (ImageNet-1k by WordNet id or by class description):
   identity through that space;
4. every dataset class name matches exactly one model class name: that one-to-one map;
5. otherwise there is no test error (``usable`` is False) and ``reason`` says why; R_f is still measured.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hubstab.errors import LabelSpaceError

IMAGENET_1K = "imagenet-1k"


def _norm(name: str) -> str:
    return re.sub(r"\s+", " ", str(name).replace("_", " ")).strip().lower()


def _first(name: str) -> str:
    return _norm(name).split(",")[0].strip()


@functools.lru_cache(maxsize=1)
def imagenet_labels() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """ImageNet-1k classes in the standard order: (WordNet ids, descriptions such as "tench, Tinca tinca")."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return tuple(info.label_names()), tuple(info.label_descriptions())


def _agree(a: Sequence[str], b: Sequence[str]) -> bool:
    """Same classes in the same order: each name equal, in full or by its first comma-separated term."""
    return len(a) == len(b) and all(
        _norm(x) == _norm(y) or _first(x) == _first(y) for x, y in zip(a, b, strict=True)
    )


def detect_label_space(labels: Sequence[str] | None) -> str | None:
    """``"imagenet-1k"`` when ``labels`` are the 1000 ImageNet classes in the standard order, else None."""
    if labels is None or len(labels) != 1000:
        return None
    synsets, descriptions = imagenet_labels()
    if _agree(labels, synsets) or _agree(labels, descriptions):
        return IMAGENET_1K
    return None


@dataclass
class LabelMapper:
    """Maps dataset label indices to model label indices.

    Attributes:
        usable: whether a test error can be computed.
        reason: why not, when ``usable`` is False (or a note on how labels were matched).
        table: dataset label -> model label; labels missing from it map to -1.
        how: ``"identity"``, ``"label-space"``, ``"names"``, ``"mapping"`` or ``"none"``.
    """

    usable: bool
    reason: str | None = None
    table: dict[int, int] = field(default_factory=dict)
    how: str = "none"
    identity: bool = False

    def __call__(self, dataset_label: int) -> int:
        """The model's index for a dataset label, or -1 when it has none (or the mapper is not usable)."""
        if not self.usable or dataset_label is None or dataset_label < 0:
            return -1
        if self.identity:
            return int(dataset_label)
        return self.table.get(int(dataset_label), -1)

    def to_dict(self) -> dict:
        """JSON-ready summary (without the table)."""
        return {"usable": self.usable, "reason": self.reason, "how": self.how}


def _index(label: int | str, names: Sequence[str] | None, side: str) -> int:
    if isinstance(label, bool):
        raise LabelSpaceError(f"label mapping: {label!r} is not a {side} label")
    if isinstance(label, int):
        if label < 0 or (names is not None and label >= len(names)):
            raise LabelSpaceError(f"label mapping: {side} label {label} is out of range")
        return label
    if isinstance(label, str):
        if label.strip().lstrip("-").isdigit():
            return _index(int(label), names, side)
        if names is None:
            raise LabelSpaceError(
                f"label mapping names the {side} class {label!r}, but the {side} does not name its classes; "
                "use indices"
            )
        hits = [i for i, n in enumerate(names) if _norm(n) == _norm(label)]
        if len(hits) != 1:
            hits = hits or [i for i, n in enumerate(names) if _first(n) == _norm(label)]
        if len(hits) != 1:
            what = "no" if not hits else "several"
            raise LabelSpaceError(f"label mapping: {what} {side} class named {label!r}")
        return hits[0]
    raise LabelSpaceError(f"label mapping: {label!r} is not a {side} label (int or class name)")


def match_labels(
    model_labels: Sequence[str] | None,
    dataset_labels: Sequence[str] | None,
    *,
    mapping: Mapping[int | str, int | str] | str | None = None,
    model_label_space: str | None = None,
) -> LabelMapper:
    """Decide whether, and how, dataset labels map onto model outputs (see the module docstring).

    Args:
        model_labels: class names in logit order, or None when the model does not name them.
        dataset_labels: the dataset's class names in label order, or None.
        mapping: user mapping dataset label -> model label (indices or names), or ``"identity"``.
        model_label_space: the model's label space when known (e.g. ``"imagenet-1k"``).

    Raises:
        LabelSpaceError: only when ``mapping`` is invalid.
    """
    if mapping is not None:
        if isinstance(mapping, str):
            if mapping != "identity":
                raise LabelSpaceError(f"label mapping must be a dict or 'identity', got {mapping!r}")
            return LabelMapper(True, None, how="mapping", identity=True)
        if not isinstance(mapping, Mapping) or not mapping:
            raise LabelSpaceError("label mapping must be a non-empty dict dataset label -> model label")
        table = {
            _index(k, dataset_labels, "dataset"): _index(v, model_labels, "model") for k, v in mapping.items()
        }
        return LabelMapper(True, None, table=table, how="mapping")
    if model_labels is None:
        return LabelMapper(
            False,
            "the model does not name its classes; pass labels=[...] to load_model or a label mapping "
            "(--label-map, or 'identity' if the dataset's label indices are the model's)",
        )
    if dataset_labels is None:
        return LabelMapper(
            False,
            "the dataset has no class names (no ClassLabel feature) to compare with the model's; "
            "pass a label mapping ('identity' if its label indices are the model's)",
        )
    if _agree(model_labels, dataset_labels):
        return LabelMapper(True, None, how="identity", identity=True)
    model_space = model_label_space or detect_label_space(model_labels)
    data_space = detect_label_space(dataset_labels)
    if model_space is not None and model_space == data_space:
        return LabelMapper(True, None, how="label-space", identity=True)
    table: dict[int, int] = {}
    missing: list[str] = []
    for i, name in enumerate(dataset_labels):
        hits = [j for j, m in enumerate(model_labels) if _norm(m) == _norm(name)]
        if len(hits) != 1:
            hits = [j for j, m in enumerate(model_labels) if _first(m) == _first(name)]
        if len(hits) == 1 and hits[0] not in table.values():
            table[i] = hits[0]
        else:
            missing.append(name)
    if not missing:
        return LabelMapper(True, None, table=table, how="names")
    return LabelMapper(
        False,
        f"the model's {len(model_labels)} classes and the dataset's {len(dataset_labels)} classes do not match "
        f"({len(missing)} dataset classes have no single model class, e.g. {', '.join(map(repr, missing[:3]))}); "
        "pass a label mapping to compute the test error",
    )
