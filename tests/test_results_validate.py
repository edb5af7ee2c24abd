"""Validation of untrusted results records: real records pass, broken ones fail with a message naming the field."""

from __future__ import annotations

import copy
import json
import math

import pytest
from _leaderboard_records import measure, random_cnn

from hubstab.errors import ResultsValidationError
from hubstab.results import validate as V
from hubstab.results.record import SCHEMA_VERSION


@pytest.fixture(scope="module")
def records() -> list[dict]:
    """Records of real measurements covering the shapes build_record produces."""
    recs = [
        measure(random_cnn(0), "fmnist/cnn-a", pretrained=False, sweep=True, layers=True, num_images=32),
        measure(random_cnn(1), "fmnist/cnn-b", pretrained=False, bootstrap=0, num_images=16),
    ]
    from conftest import load_fashion_mnist

    from hubstab import relative_stability
    from hubstab.results.record import build_record

    images, _ = load_fashion_mnist("t10k", 16)
    result = relative_stability(
        random_cnn(2), images, None, estimator="median", repeats=2, bootstrap=50, seed=7
    )
    from hubstab.metrics.equivariance import equivariance_deviation
    from hubstab.metrics.manifold import class_manifold_dimension

    model = random_cnn(2)
    result.extra["equivariance"] = equivariance_deviation(model, images[:8], "rotation90").to_dict()
    result.extra["class_manifold"] = class_manifold_dimension(
        model, images[:2], 3, dims=[1, 4], repeats=1, steps=3
    ).to_dict()
    recs.append(build_record(result, {"model_name": "fmnist/cnn-c", "dataset": "fashion_mnist"}))
    return recs


def test_schema_version_is_supported():
    assert SCHEMA_VERSION in V.SUPPORTED_SCHEMA_VERSIONS


def test_choices_match_the_measurement_code():
    from hubstab.metrics.stability import ESTIMATORS
    from hubstab.perturbations.diffeo import INTERPOLATIONS

    assert V.INTERPOLATIONS == INTERPOLATIONS
    assert V.ESTIMATORS == ESTIMATORS


def test_accepts_every_record_build_record_produces(records, tmp_path):
    # the records cover: sweep + layers, no bootstrap (interval null), median, no labels, extra metrics
    assert records[0]["results"]["layers"] and len(records[0]["results"]["sweep"]) == 4
    assert records[1]["results"]["relative_stability_ci"] == [None, None]
    assert records[2]["results"]["test_error"] is None
    for rec in records:
        assert V.validate_record(rec) == rec
        text = json.dumps(rec)
        assert V.parse_record(text) == rec
        path = tmp_path / f"{rec['run_id'][:12]}.json"
        path.write_text(text)
        assert V.load_record(path) == rec


def test_interval_need_not_contain_the_estimate(records):
    # a bootstrap percentile interval can miss the point estimate; only low <= high is required
    rec = copy.deepcopy(records[0])
    r = rec["results"]["relative_stability"]
    rec["results"]["relative_stability_ci"] = [r * 1.1, r * 1.3]
    V.validate_record(rec)


def _set(path: str, value):
    def mutate(rec):
        keys = path.split(".")
        obj = rec
        for k in keys[:-1]:
            obj = obj[int(k)] if isinstance(obj, list) else obj[k]
        last = keys[-1]
        if value is _DELETE:
            del obj[last]
        elif isinstance(obj, list):
            obj[int(last)] = value
        else:
            obj[last] = value

    return mutate


_DELETE = object()

BAD = [
    (
        "results.relative_stability",
        "NaN",
        "results.relative_stability: must be a number, got the string 'NaN'",
    ),
    ("results.relative_stability", "0.3", "not strings"),
    ("results.relative_stability", -0.2, "results.relative_stability: must be >= 0"),
    ("results.diffeo_stability", -1e-3, "results.diffeo_stability: must be >= 0"),
    ("results.noise_stability", float("nan"), "finite"),
    ("results.relative_stability", float("inf"), "finite"),
    ("results.relative_stability_ci", [0.5, 0.2], "low end 0.5 is above high end 0.2"),
    ("results.relative_stability_ci", [0.5, None], "both ends"),
    ("results.relative_stability_ci", [0.1], "must have 2 entries"),
    ("results.test_error", 1.5, "results.test_error: must be <= 1"),
    ("results.test_error", "12%", "results.test_error: must be a number"),
    ("results.sweep.0.relative_stability", -1.0, "results.sweep[0].relative_stability: must be >= 0"),
    (
        "results.layers.block1.relative_stability",
        [0.1],
        "results.layers.block1.relative_stability: must have",
    ),
    ("results.relative_stability", _DELETE, "results.relative_stability: is required"),
    ("config.protocol.cut", _DELETE, "config.protocol.cut: is required but missing"),
    ("config.protocol.temperature", 0.0, "config.protocol.temperature: must be > 0"),
    ("config.protocol.cut", True, "config.protocol.cut: must be an integer, got a boolean"),
    ("config.protocol.cut", 3.0, "config.protocol.cut: must be an integer"),
    ("config.protocol.estimator", "trimmed", "config.protocol.estimator: must be one of mean, median"),
    ("config.protocol.interp", "cubic", "config.protocol.interp: must be one of"),
    ("config.protocol.num_images", 1, "config.protocol.num_images: must be >= 2"),
    ("config.protocol.confidence", 1.0, "config.protocol.confidence: must be below 1"),
    ("config.protocol.image_size", [28], "config.protocol.image_size: must have 2 entries"),
    ("config.protocol", _DELETE, "config.protocol: is required"),
    ("config.model_name", _DELETE, "config.model_name: is required"),
    ("config.model_name", "   ", "config.model_name: must not be empty"),
    ("config.model_name", "x" * 1000, "config.model_name: is longer than 300"),
    ("config.model_name", "bad\x00name", "control characters"),
    ("config.num_parameters", -5, "config.num_parameters: must be >= 0"),
    ("config.pretrained", "yes", "config.pretrained: must be true or false"),
    ("schema_version", 2, "unknown schema version"),
    ("schema_version", "1", "unknown schema version"),
    ("schema_version", _DELETE, "schema_version: is required"),
    ("run_id", "../../etc/passwd", "record.run_id: must be the 64 lower-case hex digits"),
    ("created_at", "yesterday", "record.created_at: must be an ISO 8601"),
    ("notes", ["ok", 3], "record.notes[1]: must be a string"),
    ("wall_time_s", -1.0, "record.wall_time_s: must be >= 0"),
    ("results.big", 10**30, "integer beyond"),
    (
        "results.equivariance",
        {"transform": "rot", "mode": "both", "metric": "cos", "output": 0.1},
        "mode: must be one of",
    ),
    (
        "results.class_manifold",
        {"target_class": 1, "d_star": -2.0, "effective_dimension": 3.0},
        "d_star: must be >= 0",
    ),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[f"{p}={str(v)[:12]}" for p, v, _ in BAD])
def test_rejects_bad_records_with_a_clear_message(records, path, value, message):
    rec = copy.deepcopy(records[0])
    _set(path, value)(rec)
    with pytest.raises(ResultsValidationError) as err:
        V.validate_record(rec)
    assert message in str(err.value)


def test_rejects_what_is_not_a_record():
    for obj in ([], "record", None, 3):
        with pytest.raises(ResultsValidationError, match="record: must be an object"):
            V.validate_record(obj)


def test_rejects_deep_nesting_and_long_lists(records):
    rec = copy.deepcopy(records[0])
    deep: list = []
    for _ in range(V.MAX_DEPTH + 5):
        deep = [deep]
    rec["results"]["extra"] = deep
    with pytest.raises(ResultsValidationError, match="nested deeper"):
        V.validate_record(rec)
    rec["results"]["extra"] = list(range(V.MAX_LIST_ITEMS + 1))
    with pytest.raises(ResultsValidationError, match="more than"):
        V.validate_record(rec)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_parse_rejects_non_json_number_literals(records, literal):
    text = json.dumps(records[0]).replace(json.dumps(records[0]["results"]["relative_stability"]), literal, 1)
    assert literal in text
    with pytest.raises(ResultsValidationError, match=f"contains {literal}.*not valid JSON.*null"):
        V.parse_record(text)


def test_parse_reports_broken_json_and_encoding():
    with pytest.raises(ResultsValidationError, match=r"not valid JSON: .* line 1"):
        V.parse_record('{"schema_version": 1,')
    with pytest.raises(ResultsValidationError, match="not UTF-8"):
        V.parse_record(b"\xff\xfe{}")
    with pytest.raises(ResultsValidationError, match=r"nested too deeply|nested deeper"):
        V.parse_record("[" * 200_000 + "]" * 200_000, max_bytes=10**6)


def test_load_record_refuses_large_files_before_reading(records, tmp_path):
    text = json.dumps(records[0])
    path = tmp_path / "big.json"
    path.write_text(text + " " * 1000)
    limit = len(text) + 10
    with pytest.raises(ResultsValidationError, match=f"more than the limit of {limit}"):
        V.load_record(path, max_bytes=limit)
    assert V.load_record(path, max_bytes=len(text) + 1000) == records[0]
    with pytest.raises(ResultsValidationError, match=r"cannot read missing\.json"):
        V.load_record(tmp_path / "missing.json")


def test_markup_in_strings_is_kept_verbatim(records):
    # validation does not try to clean markup: it keeps the text, and the app shows it as plain text
    rec = copy.deepcopy(records[0])
    name = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    rec["config"]["model_name"] = name
    assert V.validate_record(rec)["config"]["model_name"] == name


def test_created_at_parsing():
    aware = V.parse_created_at("2026-03-01T10:00:00+02:00")
    naive = V.parse_created_at("2026-03-01T08:00:00")
    assert aware == naive and aware.utcoffset().total_seconds() == 0
    assert math.isclose((V.parse_created_at("2026-03-02T08:00:00+00:00") - naive).total_seconds(), 86400)
