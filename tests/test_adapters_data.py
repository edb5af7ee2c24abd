"""Dataset adapters: datasets built in the test, on disk, and as a hub repo in a temporary HF cache."""

from __future__ import annotations

import io
import time

import pytest
import torch
from PIL import Image

from hubstab.adapters import DataConfig, collate_probes, default_dataset, load_probe_set, match_labels
from hubstab.adapters.config import build_transform
from hubstab.errors import DatasetError
from tests.hub_cache import add_repo

NAMES = ["cat", "dog", "bird"]


def _png(level: int, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> bytes:
    """A flat image whose grey level encodes its row, so items can be traced back to rows."""
    buf = io.BytesIO()
    Image.new(mode, size, level if mode == "L" else (level, level, level)).save(buf, format="PNG")
    return buf.getvalue()


def _dataset(n: int = 20, corrupt: tuple[int, ...] = (), mode: str = "RGB"):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    images = [
        {"bytes": b"not an image" if i in corrupt else _png(10 * i, mode=mode), "path": None}
        for i in range(n)
    ]
    features = Features({"picture": ImageFeature(), "kind": ClassLabel(names=NAMES)})
    return Dataset.from_dict({"picture": images, "kind": [i % 3 for i in range(n)]}, features=features)


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _level(image: torch.Tensor) -> int:
    return round(float(image.mean()) * 255)


def test_in_memory_dataset_detection_selection_and_items():
    data = _dataset(20)
    probes = load_probe_set(data, num_images=8, seed=3)
    info = probes.info
    assert (info["image_column"], info["label_column"], info["class_names"]) == ("picture", "kind", NAMES)
    assert info["num_rows"] == 20 and info["selection_seed"] == 3 and info["selection"] == "random"
    assert len(probes) == 8 and info["indices"] == sorted(set(info["indices"]))
    assert load_probe_set(data, num_images=8, seed=3).info["indices"] == info["indices"]
    assert load_probe_set(data, num_images=8, seed=4).info["indices"] != info["indices"]
    for i in range(len(probes)):
        image, label, index = probes[i]
        assert index == info["indices"][i]
        assert image.shape == (3, 10, 12) and _level(image) == 10 * index  # the item is row `index`
        assert label == index % 3
    everything = load_probe_set(data, num_images=None)
    assert everything.info["indices"] == list(range(20)) and everything.info["selection"] == "all"


def test_corrupt_images_are_skipped_and_counted():
    probes = load_probe_set(_dataset(6, corrupt=(2, 4)), num_images=None)
    assert probes[2][0] is None and probes[2][2] == 2
    images, labels, indices, skipped = collate_probes([probes[i] for i in range(len(probes))])
    assert skipped == 2 and indices.tolist() == [0, 1, 3, 5] and images.shape == (4, 3, 10, 12)
    assert labels.tolist() == [0, 1, 0, 2]


def test_grey_images_are_converted_for_rgb_models_and_mapped_labels():
    cfg = DataConfig(input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
    mapper = match_labels(["bird", "cat", "dog", "fish"], NAMES)
    probes = load_probe_set(
        _dataset(6, mode="L"), num_images=None, transform=build_transform(cfg), label_mapper=mapper
    )
    image, label, _ = probes[1]
    assert image.shape == (3, 16, 16) and torch.allclose(image[0], image[2])
    assert label == 2  # dataset "dog" -> model index 2
    assert probes.info["label_mapping"]["usable"] is True


def test_columns_named_by_user_and_errors():
    from datasets import Dataset

    data = Dataset.from_dict({"blob": [_png(5), _png(6)], "y2": [1, 0], "text": ["a", "b"]})
    with pytest.raises(DatasetError, match="no image column"):
        load_probe_set(Dataset.from_dict({"text": ["a", "b"]}))
    probes = load_probe_set(data, image_column="blob", label_column="y2", num_images=None)
    assert probes[0][1] == 1 and probes.info["class_names"] is None and _level(probes[1][0]) == 6
    with pytest.raises(DatasetError, match="no label column 'nope'"):
        load_probe_set(data, image_column="blob", label_column="nope")
    unlabelled = load_probe_set(data, image_column="blob", num_images=None)
    assert unlabelled.info["label_column"] is None and unlabelled[0][1] == -1


def test_local_image_folder_saved_dataset_and_parquet(tmp_path):
    from datasets import DatasetDict

    root = tmp_path / "folder"
    for i, name in enumerate(["ant", "bee"] * 3):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / f"{i}.png").write_bytes(_png(40 + i))
    probes = load_probe_set(root, num_images=None)
    assert probes.info["class_names"] == ["ant", "bee"] and len(probes) == 6
    assert sorted(probes[i][1] for i in range(6)) == [0, 0, 0, 1, 1, 1]

    full = _dataset(12)
    DatasetDict({"train": full.select(range(6)), "test": full.select(range(6, 12))}).save_to_disk(
        tmp_path / "saved"
    )
    saved = load_probe_set(tmp_path / "saved", num_images=None)
    assert saved.info["split"] == "test" and _level(saved[0][0]) == 60  # test split preferred over train
    train = load_probe_set(tmp_path / "saved", split="train", num_images=None)
    assert _level(train[0][0]) == 0
    with pytest.raises(DatasetError, match="no split 'validation'"):
        load_probe_set(tmp_path / "saved", split="validation")

    full.to_parquet(str(tmp_path / "rows.parquet"))
    parquet = load_probe_set(tmp_path / "rows.parquet", num_images=4, seed=1)
    assert parquet.info["class_names"] == NAMES
    assert [_level(parquet[i][0]) for i in range(4)] == [10 * i for i in parquet.info["indices"]]


def test_hub_dataset_from_the_cache_offline(tmp_path):
    import os

    repo = tmp_path / "repo" / "data"
    repo.mkdir(parents=True)
    full = _dataset(15)
    full.select(range(10)).to_parquet(str(repo / "train-00000-of-00001.parquet"))
    full.select(range(10, 15)).to_parquet(str(repo / "validation-00000-of-00001.parquet"))
    sha = add_repo(tmp_path / "hf_home", "someone/tiny-images", tmp_path / "repo", repo_type="dataset")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    probes = load_probe_set("someone/tiny-images", num_images=3, seed=0)
    info = probes.info
    assert (info["dataset"], info["split"], info["dataset_revision"], info["num_rows"]) == (
        "someone/tiny-images",
        "validation",
        sha,
        5,
    )
    assert [_level(probes[i][0]) for i in range(3)] == [100 + 10 * i for i in info["indices"]]
    pinned = load_probe_set(f"someone/tiny-images@{sha}", split="train", num_images=None)
    assert pinned.info["num_rows"] == 10
    streamed = load_probe_set("someone/tiny-images", split="train", num_images=4, streaming=True)
    assert len(streamed) == 4
    assert [_level(streamed[i][0]) for i in range(4)] == [10 * i for i in streamed.info["indices"]]
    start = time.perf_counter()
    with pytest.raises(DatasetError, match="not in the local hub cache"):
        load_probe_set("someone/missing-images")
    assert time.perf_counter() - start < 5


def test_default_dataset():
    dataset_id, split = default_dataset("imagenet-1k")
    assert "/" in dataset_id and split == "validation"
    assert default_dataset(None) is None and default_dataset("cifar-10") is None
