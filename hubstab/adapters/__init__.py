"""Adapters: load any hub vision model and any image dataset with their own preprocessing.

* :func:`load_model` -> :class:`LoadedModel` (timm, transformers or a plain module);
* :func:`load_probe_set` -> :class:`ProbeSet` (hub datasets, local folders, ``datasets.Dataset``);
* :func:`match_labels` -> :class:`LabelMapper` (whether a test error can be computed).
"""

from hubstab.adapters.config import DataConfig
from hubstab.adapters.data import ProbeSet, collate_probes, default_dataset, load_probe_set
from hubstab.adapters.labels import LabelMapper, detect_label_space, match_labels
from hubstab.adapters.models import LoadedModel, load_model

__all__ = [
    "DataConfig",
    "LabelMapper",
    "LoadedModel",
    "ProbeSet",
    "collate_probes",
    "default_dataset",
    "detect_label_space",
    "load_model",
    "load_probe_set",
    "match_labels",
]
