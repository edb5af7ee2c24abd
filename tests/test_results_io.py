"""Safe reading and writing of results folders: regular files only, no links out, sizes first, 0644 files."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from hubstab.errors import ResultsValidationError
from hubstab.results import io
from hubstab.results.validate import load_record

OLD = Path(__file__).parent / "data" / "results_0_1_0"
LAYERED = OLD / "resnet18" / "5bdad5defc8b7282.json"
OTHER = OLD / "resnet18" / "01983f1c6f622e36.json"


@pytest.fixture
def hostile(tmp_path) -> Path:
    """A results folder with two real records and every kind of file that must be skipped."""
    root = tmp_path / "results"
    shutil.copytree(OLD, root)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(LAYERED, outside / "elsewhere.json")
    (root / "resnet18" / "pipe.json").parent.mkdir(exist_ok=True)
    os.mkfifo(root / "resnet18" / "pipe.json")
    (root / "passwd.json").symlink_to("/etc/passwd")
    (root / "zero.json").symlink_to("/dev/zero")
    (root / "linked-out.json").symlink_to(outside / "elsewhere.json")
    (root / "linked-dir").symlink_to(outside, target_is_directory=True)
    (root / "alias.json").symlink_to(root / "resnet18" / "5bdad5defc8b7282.json")  # inside: allowed
    (root / "big.json").write_text(" " * 3_000_000)
    (root / "broken.json").write_text('{"schema_version": 1,')
    (root / ".hidden.json").write_text("{}")
    return root


def test_scan_reads_only_safe_files_and_says_why_others_were_skipped(hostile):
    scan = io.scan_results(hostile)
    read = sorted(p.name for p, _ in scan.records)
    assert read == ["01983f1c6f622e36.json", "5bdad5defc8b7282.json", "alias.json"]
    reasons = {p.name: reason for p, reason in ((s.path, s.reason) for s in scan.skipped)}
    assert set(reasons) == {
        "pipe.json",
        "passwd.json",
        "zero.json",
        "linked-out.json",
        "big.json",
        "broken.json",
    }
    assert "FIFO" in reasons["pipe.json"]
    for name in ("passwd.json", "zero.json", "linked-out.json"):
        assert "symbolic link leading out" in reasons[name]
    assert "more than the limit" in reasons["big.json"]
    assert "not valid JSON" in reasons["broken.json"]
    # the FIFO was never opened for reading: a non-blocking writer finds no reader
    with pytest.raises(OSError):
        os.open(hostile / "resnet18" / "pipe.json", os.O_WRONLY | os.O_NONBLOCK)


def test_load_record_refuses_fifos_and_devices_without_blocking(hostile):
    with pytest.raises(ResultsValidationError, match=r"named pipe \(FIFO\)"):
        load_record(hostile / "resnet18" / "pipe.json")
    with pytest.raises(ResultsValidationError, match="a device"):
        load_record("/dev/zero")
    with pytest.raises(ResultsValidationError, match="symbolic link"):
        load_record(hostile / "alias.json", follow_symlinks=False)


def test_hub_snapshot_links_into_blobs_are_read(tmp_path):
    # the hub cache keeps files in blobs/ and links them from snapshots/<commit>/
    repo = tmp_path / "hub" / "datasets--org--results"
    blob = repo / "blobs" / ("a" * 40)
    blob.parent.mkdir(parents=True)
    shutil.copy(LAYERED, blob)
    snapshot = repo / "snapshots" / ("b" * 40)
    (snapshot / "results" / "resnet18").mkdir(parents=True)
    (snapshot / "results" / "resnet18" / "5bdad5defc8b7282.json").symlink_to(f"../../../../blobs/{'a' * 40}")
    (snapshot / "evil.json").symlink_to("/etc/passwd")
    scan = io.scan_results(snapshot)
    assert [rec["run_id"][:16] for _, rec in scan.records] == ["5bdad5defc8b7282"]
    assert [s.path.name for s in scan.skipped] == ["evil.json"]


def test_scan_limits_the_number_of_files(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.json").write_text(LAYERED.read_text())
    scan = io.scan_results(tmp_path, max_files=2)
    assert len(scan.records) == 2 and "more than 2 files" in scan.skipped[0].reason


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_results_files_are_written_0644_less_the_umask(tmp_path, umask, mode):
    record = load_record(LAYERED)
    old = os.umask(umask)
    try:
        path = io.write_record(record, tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert load_record(path) == record


def test_the_writer_refuses_a_record_that_breaks_the_schema(tmp_path):
    record = load_record(LAYERED)
    record["config"]["protocol"]["temperatures"] = [2.3e-5, 0.0]
    with pytest.raises(ResultsValidationError, match=r"config\.protocol\.temperatures\[1\]: must be > 0"):
        io.write_record(record, tmp_path)
    assert not list(tmp_path.rglob("*.json"))


def test_environment_records_numpy_cpu_threads_and_validates():
    from hubstab.results.record import environment
    from hubstab.results.validate import validate_record

    env = environment("cpu", 1)
    import numpy
    import torch

    assert env["numpy"] == numpy.__version__
    assert env["num_threads"] == torch.get_num_threads() >= 1
    assert env["cpu"] and isinstance(env["cpu"], str)
    assert env["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    record = json.loads(LAYERED.read_text())
    record["environment"] = env
    validate_record(record)


def test_local_dataset_path_is_in_the_run_id_but_not_in_the_file():
    from hubstab.metrics.result import StabilityResult
    from hubstab.results.record import build_record, run_identity

    config = {"model_name": "m", "dataset": "photos", "num_images": 8, "protocol": {"delta": 1.0}}
    a = run_identity({**config, "dataset_path": "/data/a/photos"})
    b = run_identity({**config, "dataset_path": "/data/b/photos"})
    assert a != b and run_identity(config) not in (a, b)
    settings = {"delta": 1.0, "cut": 3, "interp": "linear", "estimator": "mean"}
    result = StabilityResult(0.5, 0.1, 0.2, (0.4, 0.6), None, 8, settings)
    record = build_record(result, {**config, "dataset_path": "/data/a/photos"})
    assert "/data/a" not in json.dumps(record)
