"""Label-space matching between a model's classes and a dataset's."""

from __future__ import annotations

import pytest

from hubstab.adapters import detect_label_space, match_labels
from hubstab.adapters.labels import imagenet_labels
from hubstab.errors import LabelSpaceError

SYNSETS, DESCRIPTIONS = (list(x) for x in imagenet_labels())


def test_same_names_same_order_is_identity():
    mapper = match_labels(["Cat", "dog_house"], ["cat", "dog house"])
    assert mapper.usable and mapper.how == "identity" and [mapper(0), mapper(1), mapper(-1)] == [0, 1, -1]


def test_imagenet_by_synset_and_by_description():
    assert detect_label_space(SYNSETS) == detect_label_space(DESCRIPTIONS) == "imagenet-1k"
    assert detect_label_space(DESCRIPTIONS[::-1]) is None and detect_label_space(["a"] * 3) is None
    mapper = match_labels(DESCRIPTIONS, SYNSETS)
    assert mapper.usable and mapper.how == "label-space" and mapper(517) == 517
    first_lemmas = [d.split(",")[0] for d in DESCRIPTIONS]  # datasets that keep only the first name
    assert match_labels(DESCRIPTIONS, first_lemmas).usable


def test_permuted_and_subset_names_map_one_to_one():
    mapper = match_labels(["bird", "cat", "dog", "fish"], ["dog", "cat"])
    assert mapper.usable and mapper.how == "names" and [mapper(0), mapper(1)] == [2, 1]
    imagenette = ["tench", "English springer", "cassette player"]
    sub = match_labels(DESCRIPTIONS, imagenette)
    assert sub.usable and [sub(i) for i in range(3)] == [
        0,
        DESCRIPTIONS.index("English springer, English springer spaniel"),
        482,
    ]


def test_mismatch_is_not_usable_with_a_reason():
    mapper = match_labels(DESCRIPTIONS, ["airplane", "automobile", "bird"])
    assert not mapper.usable and "airplane" in mapper.reason and mapper(1) == -1
    assert not match_labels(None, ["a", "b"]).usable
    no_names = match_labels(["a", "b"], None)
    assert not no_names.usable and "mapping" in no_names.reason


def test_user_mapping_by_name_or_index_and_invalid_mappings():
    mapper = match_labels(["x", "y", "z"], ["a", "b"], mapping={"a": "z", 1: 0})
    assert mapper.usable and [mapper(0), mapper(1)] == [2, 0]
    assert match_labels(None, None, mapping="identity")(7) == 7
    with pytest.raises(LabelSpaceError, match="no model class named 'w'"):
        match_labels(["x", "y"], ["a"], mapping={"a": "w"})
    with pytest.raises(LabelSpaceError, match="out of range"):
        match_labels(["x", "y"], ["a"], mapping={0: 5})
    with pytest.raises(LabelSpaceError):
        match_labels(["x"], ["a"], mapping="reverse")
