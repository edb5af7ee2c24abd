"""Property tests: random and mutated results files never raise anything but ResultsValidationError.

Fed to the validator (text, bytes and parsed objects) and to the leaderboard's reader, which must list
a bad file and go on, and build its table from whatever it accepted.
"""

from __future__ import annotations

import copy
import importlib
import json
import sys
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hubstab.errors import ResultsValidationError  # noqa: E402
from hubstab.results import validate as V  # noqa: E402

OLD = Path(__file__).parent / "data" / "results_0_1_0"
REAL = [json.loads(p.read_text()) for p in sorted(OLD.rglob("*[0-9a-f].json"))]
ROOT = Path(__file__).resolve().parents[1]

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["", "1", "NaN", "2026-01-31T12:00:00+00:00", "0001-01-01T00:00:00+14:00", "a" * 64])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


def _paths(obj, prefix=()):
    """Every (path, value) inside a JSON value."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_records(draw):
    """A real record with a few random edits: a value replaced, a key deleted or added."""
    record = copy.deepcopy(draw(st.sampled_from(REAL)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p, _ in _paths(record) if p]
        path = draw(st.sampled_from(paths))
        parent = record
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return record


@st.composite
def mutated_texts(draw):
    """The bytes of a real file, cut, spliced or with bytes changed."""
    data = bytearray(
        json.dumps(draw(st.sampled_from(REAL)), indent=draw(st.sampled_from([None, 2]))).encode()
    )
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[i] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[i : i + draw(st.integers(1, 50))]
        else:
            data[i:i] = draw(
                st.sampled_from([b"9" * 5000, b"NaN", b"1e999", b"[" * 100, b'"\x00"', b"\xff", b"{}"])
            )
    return bytes(data)


def _check(fn, *args):
    try:
        return fn(*args)
    except ResultsValidationError:
        return None


@SETTINGS
@given(json_values)
def test_random_json_is_a_record_or_a_validation_error(value):
    _check(V.validate_record, value)
    _check(V.parse_record, json.dumps(value))


@SETTINGS
@given(mutated_records())
def test_mutated_records_are_valid_or_a_validation_error(record):
    result = _check(V.parse_record, json.dumps(record))
    if result is not None:
        assert result == json.loads(json.dumps(record))
        V.parse_created_at(result["created_at"])  # what readers do with a valid record never fails


@SETTINGS
@given(mutated_texts())
def test_mutated_bytes_are_valid_or_a_validation_error(data):
    _check(V.parse_record, data)


def _leaderboard_reading():
    """The leaderboard's reader: ``hubstab.leaderboard.reading`` or the Space folder's ``reading``."""
    try:
        return importlib.import_module("hubstab.leaderboard.reading")
    except ModuleNotFoundError:
        pytest.importorskip("pandas")
        folder = str(ROOT / "leaderboard")
        if folder not in sys.path:
            sys.path.insert(0, folder)
        return importlib.import_module("reading")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.lists(mutated_records(), min_size=1, max_size=4), st.lists(mutated_texts(), max_size=3))
def test_the_leaderboard_reader_skips_bad_files_and_builds_its_table(records, texts):
    reading = _leaderboard_reading()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i, record in enumerate(records):
            (root / f"r{i}.json").write_text(json.dumps(record))
        for i, data in enumerate(texts):
            (root / f"t{i}.json").write_bytes(data)
        loaded = reading.read_results_dir(root)
        assert len(loaded.records) + len(loaded.problems) == len(records) + len(texts)
        frame = reading.records_to_frame(loaded.records)
        assert len(frame) == len(loaded.records)
        for record in loaded.records:
            reading.describe_record(record)


def test_the_leaderboard_reader_skips_fifos_and_device_links(tmp_path):
    import os
    import shutil
    import signal

    reading = _leaderboard_reading()
    shutil.copy(OLD / "resnet18" / "5bdad5defc8b7282.json", tmp_path / "good.json")
    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")

    def hung(signum, frame):
        raise TimeoutError("the reader blocked on a FIFO or a device")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        loaded = reading.read_results_dir(tmp_path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert [r["run_id"][:16] for r in loaded.records] == ["5bdad5defc8b7282"]
    problems = " ".join(p.message for p in loaded.problems)
    assert len(loaded.problems) == 2 and "FIFO" in problems
