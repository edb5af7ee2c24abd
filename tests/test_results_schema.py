"""The results contract: the shipped JSON Schema matches the models, old files load, hostile numbers fail cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from hubstab.errors import ResultsValidationError
from hubstab.results import schema as S
from hubstab.results import validate as V

OLD = Path(__file__).parent / "data" / "results_0_1_0"
OLD_FILES = sorted(p for p in OLD.rglob("*.json") if not p.name.endswith(".samples.json"))
ROOT = Path(__file__).resolve().parents[1]


def test_shipped_schema_is_in_sync_with_the_models():
    shipped = resources.files("hubstab.results").joinpath("results.schema.json").read_text()
    assert shipped == S.json_schema_text(), (
        "run: python -m hubstab.results.schema > hubstab/results/results.schema.json"
    )
    schema = json.loads(shipped)
    assert schema["$schema"].endswith("2020-12/schema")
    assert {"schema_version", "run_id", "config", "results", "created_at"} <= set(schema["required"])


def test_old_files_still_load():
    assert len(OLD_FILES) == 2
    for path in OLD_FILES:
        record = V.load_record(path)
        assert record["environment"]["hubstab"] == "0.1.0"
        assert record == json.loads(path.read_text())
    layered = V.load_record(OLD / "resnet18" / "5bdad5defc8b7282.json")
    assert len(layered["results"]["sweep"]) == 3 and layered["results"]["layers"]
    other = V.load_record(OLD / "resnet18" / "01983f1c6f622e36.json")
    assert other["results"]["equivariance"]["transform"] == "rotation90"


def test_json_schema_agrees_with_the_validator_on_real_and_broken_files():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads(S.json_schema_text()))
    for path in OLD_FILES:
        record = json.loads(path.read_text())
        assert not list(validator.iter_errors(record))
        for mutate in (
            lambda r: r["results"].__setitem__("relative_stability", -1.0),
            lambda r: r["config"]["protocol"].__setitem__("estimator", "trimmed"),
            lambda r: r["config"].pop("model_name"),
            lambda r: r.__setitem__("run_id", "abc"),
            lambda r: r["results"].__setitem__("published", {"top1_error": 15.0, "source": "x"}),
            lambda r: r["environment"].__setitem__("num_threads", 0),
        ):
            broken = json.loads(path.read_text())
            mutate(broken)
            assert list(validator.iter_errors(broken))
            with pytest.raises(ResultsValidationError):
                V.validate_record(broken)


def test_keys_added_by_others_are_typed_and_unknown_keys_bounded():
    record = V.load_record(OLD_FILES[0])
    record["config"]["protocol"].update(
        {"name": "in1k-v1", "version": 1, "noise_space": "input", "batchnorm_statistics": "running"}
    )
    record["config"]["protocol"]["probe_selection"] = {
        "scheme": "row-groups",
        "seed": 0,
        "files": ["a.parquet"],
    }
    record["results"]["published"] = {
        "top1_error": 0.2,
        "source": "timm results-imagenet.csv",
        "img_size": 224,
    }
    record["environment"].update({"numpy": "2.4.6", "cpu": "AMD EPYC", "gpu": None, "num_threads": 2})
    record["results"]["future_metric"] = {"value": 1.5, "per_layer": [0.1, None, True, "x"]}
    assert V.validate_record(record) == record
    for where, key, value, message in [
        ("protocol", "version", "1", "config.protocol.version: must be an integer"),
        ("protocol", "name", "x" * 400, "config.protocol.name: is longer than 300"),
        (
            "results",
            "published",
            {"top1_error": 1.5, "source": "x"},
            "results.published.top1_error: must be <= 1",
        ),
        ("results", "published", {"source": "x"}, "results.published.top1_error: is required"),
        ("environment", "num_threads", True, "environment.num_threads: must be an integer"),
        ("results", "future_metric", {"v": "x" * 5000}, "results.future_metric.v: is longer than 4000"),
        ("results", "future_metric", [1e308, 10**19], "results.future_metric[1]: is an integer beyond"),
    ]:
        bad = json.loads(json.dumps(record))
        target = bad["config"]["protocol"] if where == "protocol" else bad[where]
        target[key] = value
        with pytest.raises(ResultsValidationError) as err:
            V.validate_record(bad)
        assert message in str(err.value)


def test_a_small_file_with_a_5000_digit_integer_is_one_clear_error(tmp_path):
    text = OLD_FILES[0].read_text()
    record = json.loads(text)
    record["results"]["relative_stability"] = 0.5
    big = json.dumps(record).replace('"relative_stability": 0.5', '"relative_stability": ' + "7" * 5000, 1)
    assert len(big) < 16_000 and "7" * 5000 in big
    path = tmp_path / "big-int.json"
    path.write_text(big)
    with pytest.raises(ResultsValidationError, match="integer of 5000 digits"):
        V.load_record(path)
    for literal in ("1e999", "-1e400"):
        with pytest.raises(ResultsValidationError, match="overflows a float"):
            V.parse_record(
                json.dumps(record).replace('"relative_stability": 0.5', f'"relative_stability": {literal}', 1)
            )


def test_dates_out_of_range_in_utc_are_refused():
    record = V.load_record(OLD_FILES[0])
    record["created_at"] = "0001-01-01T00:00:00+14:00"
    with pytest.raises(ResultsValidationError) as err:
        V.validate_record(record)
    assert str(err.value) == (
        "record.created_at: must be an ISO 8601 date and time such as 2026-01-31T12:00:00+00:00, "
        "got the string '0001-01-01T00:00:00+14:00'"
    )


def test_validation_imports_no_torch():
    code = (
        "import sys, hubstab.results.validate, hubstab.results.schema, hubstab.results.io;"
        "bad = [m for m in ('torch', 'timm', 'transformers', 'datasets') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_key_the_writer_writes_is_typed_in_the_schema():
    from hubstab.results.record import CONFIG_KEYS, environment

    assert set(CONFIG_KEYS) <= set(S.Config.model_fields)
    assert set(environment("cpu")) <= set(S.Environment.model_fields)
    for path in OLD_FILES:
        record = json.loads(path.read_text())
        assert set(record) <= set(S.Record.model_fields)
        assert set(record["config"]["protocol"]) <= set(S.Protocol.model_fields)
        assert set(record["results"]) <= set(S.Results.model_fields)
        for point in record["results"]["sweep"]:
            assert set(point) <= set(S.SweepPoint.model_fields)
