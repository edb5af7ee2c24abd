"""Probe sets: a seeded, recorded selection of images from any image dataset, preprocessed for one model.

Accepted datasets: hub ids (``org/name``, optionally ``@rev``) through ``datasets``, local folders (an image
folder, a ``save_to_disk`` folder, parquet files), a single parquet file, and ``datasets.Dataset`` objects.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hubstab.adapters.labels import IMAGENET_1K, LabelMapper
from hubstab.adapters.resolve import cached_snapshot, hub_offline, hub_reachable
from hubstab.errors import DatasetError

logger = logging.getLogger("hubstab")

SPLIT_PREFERENCE: tuple[str, ...] = ("validation", "valid", "val", "test", "train")
"""Split chosen when none is named: the first present."""
IMAGE_COLUMNS: tuple[str, ...] = ("image", "img", "images", "pixel_values", "jpg", "png", "webp", "picture")
LABEL_COLUMNS: tuple[str, ...] = ("label", "labels", "fine_label", "class", "cls", "target", "category", "y")

DEFAULT_DATASETS: dict[str, tuple[str, str]] = {IMAGENET_1K: ("benjamin-paine/imagenet-1k", "validation")}
"""Default probe datasets per label space: (hub dataset id, split)."""


def default_dataset(label_space: str | None) -> tuple[str, str] | None:
    """The default probe dataset (hub id, split) of a label space, or None when there is none.

    ImageNet-1k models default to ``benjamin-paine/imagenet-1k`` (validation split, 50,000 images), a public
    (non-gated) copy of ILSVRC-2012 with the standard class order and names, stored as parquet: only the row
    groups holding the selected images are fetched (:mod:`hubstab.adapters.parquet`).
    """
    return DEFAULT_DATASETS.get(label_space) if label_space else None


def to_tensor(image: Any) -> torch.Tensor:
    """Default transform: PIL image -> (3, H, W) float RGB in [0, 1] at the image's own size."""
    image = image.convert("RGB") if image.mode != "RGB" else image
    array = np.asarray(image, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def _decode(value: Any):
    """A PIL image from a dataset cell (undecoded Image feature, path, bytes, array or PIL image)."""
    from PIL import Image

    if value is None:
        raise ValueError("empty image cell")
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict):
        if value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            image = Image.open(value["path"])
        else:
            raise ValueError("image cell has neither bytes nor path")
    elif isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, (str, os.PathLike)):
        image = Image.open(value)
    else:
        array = np.asarray(value)
        if array.dtype != np.uint8:
            scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
            array = np.clip(array * scale, 0, 255).astype(np.uint8)
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.transpose(1, 2, 0)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        image = Image.fromarray(array)
    image.load()
    return image


class ProbeSet(torch.utils.data.Dataset):
    """The selected probe images of a dataset split.

    Item ``i`` is ``(image, label, index)``: ``image`` a (C, H, W) tensor in [0, 1] from ``transform`` (None when
    the image cannot be decoded), ``label`` the model's class index (-1 when unknown or unmapped), ``index`` the
    row's index in the source split (global, so perturbations keyed by it do not depend on batching).

    Attributes:
        info: ``dataset`` (a hub id, or a local folder's name), ``dataset_path`` (a local folder's absolute
            path, else None), ``dataset_config``, ``split``, ``dataset_revision``, ``image_column``,
            ``label_column``, ``selection_seed``, ``indices`` (sorted source rows), ``class_names``,
            ``num_rows`` (rows in the split), ``selection`` (``"random"``, ``"all"`` or ``"first"``), ``label_mapping``.
    """

    def __init__(
        self,
        rows: Any,
        info: dict[str, Any],
        transform: Callable[[Any], torch.Tensor],
        label_mapper: LabelMapper | None,
    ):
        self.rows = rows
        self.info = info
        self.transform = transform
        self.label_mapper = label_mapper

    def __len__(self) -> int:
        return len(self.info["indices"])

    def _row(self, i: int) -> dict[str, Any]:
        return self.rows[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        row = self._row(i)
        index = int(self.info["indices"][i])
        label_col = self.info["label_column"]
        raw = row.get(label_col) if label_col else None
        label = int(raw) if raw is not None and not isinstance(raw, str) else -1
        if self.label_mapper is not None:
            label = self.label_mapper(label)
        try:
            decoded = _decode(row[self.info["image_column"]])
        except Exception as exc:  # a corrupt or unreadable image is skipped and counted, not fatal
            logger.debug("skipping row %d: %s", index, exc)
            return None, label, index
        # errors of the transform itself are bugs or misconfiguration, not corrupt data: they propagate
        return self.transform(decoded), label, index


def collate_probes(
    batch: Sequence[tuple[torch.Tensor | None, int, int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Stack probe items, dropping corrupt ones.

    Returns:
        images (B, C, H, W), labels (B,) int64, source row indices (B,) int64, and the number of items dropped.
    """
    good = [item for item in batch if item[0] is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), skipped
    shapes = {tuple(item[0].shape) for item in good}
    if len(shapes) > 1:
        raise DatasetError(
            f"probe images have different sizes {sorted(shapes)}; give a transform that resizes them "
            "(LoadedModel.preprocess)"
        )
    images = torch.stack([item[0] for item in good])
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    indices = torch.tensor([item[2] for item in good], dtype=torch.long)
    return images, labels, indices, skipped


def _image_column(features: dict[str, Any], name: str | None) -> str:
    from datasets import Image

    columns = list(features)
    if name is not None:
        if name not in features:
            raise DatasetError(f"no column {name!r} in the dataset; its columns are {columns}")
        return name
    typed = [c for c, f in features.items() if isinstance(f, Image)]
    if typed:
        return typed[0]
    for c in IMAGE_COLUMNS:
        if c in features:
            return c
    raise DatasetError(
        f"the dataset has no image column (columns: {columns}); name it with image_column= (--image-column)"
    )


def _label_column(features: dict[str, Any], name: str | None, image_column: str) -> str | None:
    from datasets import ClassLabel, Value

    if name is not None:
        if name not in features:
            raise DatasetError(f"no label column {name!r} in the dataset; its columns are {list(features)}")
        return name
    typed = [c for c, f in features.items() if isinstance(f, ClassLabel) and c != image_column]
    if typed:
        return typed[0]
    for c in LABEL_COLUMNS:
        f = features.get(c)
        if isinstance(f, Value) and f.dtype.startswith(("int", "uint")):
            return c
    return None


def _class_names(features: dict[str, Any], label_column: str | None) -> list[str] | None:
    from datasets import ClassLabel

    feature = features.get(label_column) if label_column else None
    return list(feature.names) if isinstance(feature, ClassLabel) else None


def _select(num_rows: int, num_images: int | None, seed: int) -> list[int]:
    if num_images is None or num_images >= num_rows:
        return list(range(num_rows))
    if num_images < 1:
        raise DatasetError(f"num_images must be at least 1, got {num_images}")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(num_rows, size=num_images, replace=False))


def _pick_split(splits: Sequence[str], split: str | None, what: str) -> str:
    if split is not None:
        if split not in splits:
            raise DatasetError(f"{what} has no split {split!r}; its splits are {list(splits)}")
        return split
    for s in SPLIT_PREFERENCE:
        if s in splits:
            return s
    if len(splits) == 1:
        return next(iter(splits))
    raise DatasetError(f"{what} has several splits {list(splits)}; choose one with split=")


def _is_saved(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def _path_like(text: str) -> bool:
    """Whether a dataset argument is meant as a local path: it starts with ``.``, ``/`` or ``~``, or its
    parent folder exists (``data/val`` when ``data/`` does), rather than being a hub id."""
    if text.startswith((".", "/", "~")):
        return True
    parent = Path(text).parent
    return parent != Path(".") and parent.is_dir()


def _names_split(path: Path, split: str | None) -> bool:
    """Whether a local folder or file has the split ``split`` in a file or folder name (two levels deep)."""
    if split is None or path.is_file():
        return False
    names = []
    with os.scandir(path) as top:
        for child in top:
            names.append(child.name)
            if child.is_dir():
                with os.scandir(child.path) as inner:
                    names.extend(c.name for c in inner if c.is_dir())
    return any(split.lower() in n.lower() for n in names)


def _load_local(path: Path, split: str | None, config_name: str | None, streaming: bool):
    import datasets

    if path.is_dir() and _is_saved(path):
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            name = _pick_split(list(data), split, str(path))
            return data[name], name
        return data, split or (str(data.split) if data.split is not None else None)
    if path.is_file():
        if path.suffix != ".parquet":
            raise DatasetError(
                f"{path} is a file; hubstab reads parquet files, image folders and saved datasets"
            )
        builder_args: dict[str, Any] = {"data_files": {"train": str(path)}}
        module = "parquet"
    else:
        builder_args = {}
        module = str(path)
    return _load_with_builder(module, str(path), split, config_name, None, streaming, **builder_args)


def _load_with_builder(module: str, what: str, split, config_name, revision, streaming, **kwargs):
    import datasets

    try:
        builder = datasets.load_dataset_builder(module, config_name, revision=revision, **kwargs)
        splits = list(builder.info.splits or {})
        if not splits:
            probe = datasets.load_dataset(module, config_name, revision=revision, streaming=True, **kwargs)
            splits = list(probe)
        name = _pick_split(splits, split, what)
        data = datasets.load_dataset(
            module, config_name, split=name, revision=revision, streaming=streaming, **kwargs
        )
    except DatasetError:
        raise
    except (FileNotFoundError, ValueError) as exc:
        raise DatasetError(f"cannot load dataset {what}: {exc}") from exc
    return data, name


def _load_hub(dataset_id: str, split, config_name, revision, streaming):
    """A hub dataset: online through ``datasets``; offline from the hub cache's snapshot folder."""
    if not hub_reachable():
        snapshot = cached_snapshot(dataset_id, revision, "dataset")
        if snapshot is None:
            why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached"
            raise DatasetError(
                f"dataset {dataset_id} is not in the local hub cache and {why}; download it once with network "
                "access, or give a local folder"
            )
        data, name = _load_with_builder(str(snapshot), dataset_id, split, config_name, None, streaming)
        return data, name, snapshot.name
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        sha = HfApi().dataset_info(dataset_id, revision=revision, timeout=10).sha
    except GatedRepoError as exc:
        raise DatasetError(
            f"dataset {dataset_id} is gated: accept its terms on the hub and log in (`hf auth login`)"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise DatasetError(f"dataset {dataset_id} does not exist on the hub or is private") from exc
    except RevisionNotFoundError as exc:
        raise DatasetError(f"dataset {dataset_id} has no revision {revision!r}") from exc
    data, name = _load_with_builder(dataset_id, dataset_id, split, config_name, sha or revision, streaming)
    return data, name, sha or revision


def _stream_rows(data, image_column: str, indices: list[int]) -> list[dict[str, Any]]:
    """Rows at ``indices`` (sorted) of a streamed split, decoding only those images."""
    from datasets import Image

    if isinstance(data.features.get(image_column) if data.features else None, Image):
        data = data.cast_column(image_column, Image(decode=False))
    wanted, rows = set(indices), []
    last = indices[-1] if indices else -1
    for i, row in enumerate(data):
        if i in wanted:
            rows.append(row)
        if i >= last:
            break
    return rows


def load_probe_set(
    dataset: Any,
    *,
    split: str | None = None,
    config_name: str | None = None,
    revision: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    num_images: int | None = 500,
    seed: int = 0,
    streaming: bool = False,
    transform: Callable[[Any], torch.Tensor] = to_tensor,
    label_mapper: LabelMapper | None = None,
) -> ProbeSet:
    """Select probe images from a dataset.

    Args:
        dataset: a hub id (``org/name`` or ``org/name@rev``), a local folder or parquet file, an ``hf://`` or
            ``http(s)://`` URL of parquet files (a glob or a list: one split, in order), or a ``datasets.Dataset``.
            Parquet data is read by row groups (block sampling, only the selected byte ranges) and cached:
            see :mod:`hubstab.adapters.parquet`.
        split: the split; default the first of validation, valid, val, test, train that exists.
        config_name: the dataset configuration (subset), if it has several.
        revision: hub revision of the dataset (branch, tag or commit).
        image_column, label_column: column names; detected from the features when omitted (Image and
            ClassLabel features first, then usual names).
        num_images: how many rows to select at random (None: all rows).
        seed: seed of that selection.
        streaming: stream a hub dataset instead of downloading it (reads up to the last selected row).
        transform: PIL image -> (C, H, W) tensor in [0, 1] (``LoadedModel.preprocess``).
        label_mapper: maps dataset labels to the model's (``match_labels``); None keeps dataset labels.

    Raises:
        DatasetError: unknown or unreachable dataset, missing split or column.
    """
    import datasets

    if isinstance(dataset, (str, os.PathLike, list, tuple)):
        # parquet (hub, hf://, http(s), local, lists): fetch only the selected row groups, through the cache
        from hubstab.adapters.parquet import load_parquet_selection

        found = load_parquet_selection(
            dataset,
            split=split,
            config_name=config_name,
            revision=revision,
            image_column=image_column,
            label_column=label_column,
            num_images=num_images,
            seed=seed,
        )
        if found is not None:
            rows, info = found
            info["label_mapping"] = label_mapper.to_dict() if label_mapper is not None else None
            return ProbeSet(rows, info, transform, label_mapper)

    dataset_revision, dataset_path, unsplit = revision, None, False
    if isinstance(dataset, datasets.DatasetDict):
        name = _pick_split(list(dataset), split, "the dataset")
        data, dataset_name, split = dataset[name], "<in-memory>", name
    elif isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
        data, dataset_name = dataset, getattr(dataset.info, "dataset_name", None) or "<in-memory>"
        split = split or (str(dataset.split) if dataset.split is not None else None)
    elif isinstance(dataset, (str, os.PathLike)):
        text = str(dataset)
        path = Path(text).expanduser()
        if path.exists():
            requested = split
            data, split = _load_local(path, split, config_name, streaming)
            # shown by the folder's name; the absolute path is recorded too (and tells folders apart)
            dataset_name, dataset_path = path.resolve().name, str(path.resolve())
            # `datasets` calls a folder without splits "train": record no split then
            unsplit = requested is None and not _is_saved(path) and not _names_split(path, split)
        elif _path_like(text):
            raise DatasetError(f"no such folder or file: {text} (a local dataset path that does not exist)")
        else:
            repo, at, rev = text.partition("@")
            if at:
                if revision is not None and revision != rev:
                    raise DatasetError(f"dataset {text!r} pins revision {rev!r} but revision={revision!r}")
                revision = rev
            if repo.count("/") != 1:
                raise DatasetError(f"{text!r} is neither an existing path nor a hub dataset id (org/name)")
            data, split, dataset_revision = _load_hub(repo, split, config_name, revision, streaming)
            dataset_name = repo
    else:
        raise DatasetError(f"cannot read a dataset from a {type(dataset).__name__}")

    features = dict(data.features or {})
    if not features and isinstance(data, datasets.IterableDataset):
        first = next(iter(data), None)
        features = {key: None for key in (first or {})}
    img_col = _image_column(features, image_column)
    lab_col = _label_column(features, label_column, img_col)
    class_names = _class_names(features, lab_col)

    if isinstance(data, datasets.IterableDataset):
        splits = getattr(data.info, "splits", None) or {}
        known = splits.get(split) if split else None
        num_rows = int(known.num_examples) if known is not None and known.num_examples else None
        if num_rows is not None:
            indices, selection = _select(num_rows, num_images, seed), "random"
        elif num_images is None:
            raise DatasetError("a streamed dataset of unknown size needs num_images")
        else:
            indices, selection = list(range(num_images)), "first"
        rows = _stream_rows(data, img_col, indices)
        indices = indices[: len(rows)]
        num_rows = num_rows if num_rows is not None else len(rows)
    else:
        from datasets import Image

        num_rows = len(data)
        indices = _select(num_rows, num_images, seed)
        selection = "all" if len(indices) == num_rows else "random"
        if isinstance(features.get(img_col), Image):
            data = data.cast_column(img_col, Image(decode=False))
        rows = data.select(indices)
    if not indices:
        raise DatasetError(f"the {split} split of {dataset_name} has no rows")
    info = {
        "dataset": dataset_name,
        "dataset_path": dataset_path,
        "dataset_config": config_name,
        "split": None if unsplit else split,
        "dataset_revision": dataset_revision,
        "image_column": img_col,
        "label_column": lab_col,
        "selection_seed": seed,
        "selection": selection,
        "indices": list(indices),
        "class_names": class_names,
        "num_rows": num_rows,
        "label_mapping": label_mapper.to_dict() if label_mapper is not None else None,
    }
    return ProbeSet(rows, info, transform, label_mapper)
