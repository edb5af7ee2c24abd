"""The evaluation runner: same numbers as the functional API, results files, re-runs, resume, processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_fashion_mnist

import hubstab
import hubstab.errors
from hubstab.adapters import DataConfig
from hubstab.results.validate import load_record
from hubstab.runner import evaluate
from hubstab.runner.config import EvalConfig

# the conftest CNN was trained on raw [0, 1] pixels
GREY = DataConfig(input_size=(1, 28, 28), mean=(0.0,), std=(1.0,), interpolation="bilinear", crop_pct=1.0)


@pytest.fixture(scope="module")
def fmnist_dataset():
    """80 real Fashion-MNIST test images as a datasets.Dataset with Image and ClassLabel features."""
    import datasets
    import numpy as np
    from PIL import Image

    x, y = load_fashion_mnist("t10k", 80)
    names = [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]
    images = [Image.fromarray((img[0].numpy() * 255).astype(np.uint8)) for img in x]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": images, "label": y.tolist()}, features=features)


def _kw(tmp_path, **extra):
    kw = dict(num_images=60, data_config=GREY, output_dir=str(tmp_path), num_workers=0, bootstrap=200)
    kw["label_map"] = "identity"  # a plain module does not name its classes; they are Fashion-MNIST's
    return {**kw, **extra}


def test_runner_equals_functional_api(trained_fmnist_cnn, fmnist_dataset, tmp_path):
    res = evaluate(trained_fmnist_cnn, fmnist_dataset, batch_size=21, **_kw(tmp_path))
    files = sorted(Path(tmp_path).rglob("*.json"))
    record = load_record(files[0])
    x, y = load_fashion_mnist("t10k", 80)
    from hubstab.adapters import load_probe_set

    probes = load_probe_set(fmnist_dataset, num_images=60, seed=0)
    rows = torch.tensor(probes.info["indices"])
    ref = hubstab.relative_stability(
        trained_fmnist_cnn, x[rows], y[rows], indices=rows, mean=GREY.mean, std=GREY.std, bootstrap=200
    )
    assert res.relative_stability == pytest.approx(ref.relative_stability, rel=1e-5)
    assert res.diffeo_stability == pytest.approx(ref.diffeo_stability, rel=1e-5)
    assert res.test_error == pytest.approx(ref.test_error)
    assert res.test_error < 0.4  # a trained network on real data
    assert record["results"]["relative_stability"] == pytest.approx(res.relative_stability)
    assert record["config"]["protocol"]["delta"] == 1.0 and record["config"]["protocol"]["cut"] == 3
    assert record["environment"]["num_processes"] == 1


def test_rerun_is_recognised_and_overwrite_measures_again(trained_fmnist_cnn, fmnist_dataset, tmp_path):
    first = evaluate(trained_fmnist_cnn, fmnist_dataset, **_kw(tmp_path))
    again = evaluate(trained_fmnist_cnn, fmnist_dataset, **_kw(tmp_path))
    assert again.extra.get("reused") is True
    assert again.relative_stability == pytest.approx(first.relative_stability)
    other = evaluate(trained_fmnist_cnn, fmnist_dataset, **_kw(tmp_path, seed=1))
    assert not other.extra.get("reused")
    forced = evaluate(trained_fmnist_cnn, fmnist_dataset, **_kw(tmp_path, overwrite=True))
    assert not forced.extra.get("reused")
    assert len(list(Path(tmp_path).rglob("*.json"))) == 2


def test_interrupted_run_resumes_to_the_same_result(
    trained_fmnist_cnn, fmnist_dataset, tmp_path, monkeypatch
):
    import hubstab.runner.engine as runner

    whole = evaluate(trained_fmnist_cnn, fmnist_dataset, batch_size=30, **_kw(tmp_path / "whole"))
    real = runner.batch_stats
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "batch_stats", interrupted)
    kw = _kw(tmp_path / "resumed", checkpoint_every_s=0.0)
    with pytest.raises(KeyboardInterrupt):
        evaluate(trained_fmnist_cnn, fmnist_dataset, batch_size=30, **kw)
    partial = list((tmp_path / "resumed" / ".partial").rglob("*.safetensors"))
    assert partial, "finished batches must be kept"
    monkeypatch.setattr(runner, "batch_stats", real)
    resumed = evaluate(trained_fmnist_cnn, fmnist_dataset, batch_size=30, **kw)
    assert resumed.relative_stability == pytest.approx(whole.relative_stability, rel=1e-6)
    assert resumed.relative_stability_ci == pytest.approx(whole.relative_stability_ci, rel=1e-6)
    assert resumed.num_images == whole.num_images == 60
    assert not list((tmp_path / "resumed" / ".partial").rglob("*.safetensors"))


def test_corrupt_images_are_skipped_and_counted(trained_fmnist_cnn, fmnist_dataset, tmp_path):
    import datasets

    rows = fmnist_dataset.cast_column("image", datasets.Image(decode=False)).to_list()
    rows[3]["image"] = {"bytes": b"not an image at all", "path": None}
    rows[10]["image"] = {"bytes": rows[10]["image"]["bytes"][:40], "path": None}  # truncated PNG
    broken = datasets.Dataset.from_list(rows, features=fmnist_dataset.features)
    res = evaluate(trained_fmnist_cnn, broken, **_kw(tmp_path, num_images=None))
    assert res.settings["num_skipped_images"] == 2
    assert res.num_images == 78
    assert any("2 corrupt" in n for n in res.notes)


def _hubstab(*args, env=None, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "hubstab.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


@pytest.fixture(scope="module")
def local_model_and_data(tmp_path_factory, fmnist_dataset):
    """A timm checkpoint folder (hub format) and a saved dataset folder, for the CLI."""
    import timm
    from timm.models._hub import save_for_hf

    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=10, in_chans=1)
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "input_size": (1, 28, 28),
        "mean": (0.286,),
        "std": (0.353,),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "num_classes": 10,
    }
    model_dir = root / "resnet10t-fmnist"
    save_for_hf(model, str(model_dir))
    data_dir = root / "fmnist-test"
    fmnist_dataset.save_to_disk(str(data_dir))
    return model_dir, data_dir


@pytest.mark.slow  # launches torchrun with 2 processes (about 30 s on 2 busy cores)
def test_cli_one_and_two_processes_give_the_same_numbers(local_model_and_data, tmp_path):
    model_dir, data_dir = local_model_and_data
    common = [
        str(model_dir),
        "--dataset",
        str(data_dir),
        "--num-images",
        "40",
        "--batch-size",
        "15",
        "--quiet",
        "--bootstrap",
        "200",
        "--num-workers",
        "0",
        "--label-map",
        "identity",
        "--device",
        "cpu",
    ]
    one = _hubstab("eval", *common, "--output-dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    assert "R_f =" in one.stdout and "D_f =" in one.stdout
    two = _hubstab("eval", *common, "--output-dir", str(tmp_path / "two"), "--num-processes", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    (f1,) = list((tmp_path / "one").rglob("*.json"))
    (f2,) = list((tmp_path / "two").rglob("*.json"))
    r1, r2 = load_record(f1), load_record(f2)
    assert r1["environment"]["num_processes"] == 1
    assert r2["environment"]["num_processes"] == 2, "the run was not distributed"
    for key in ("relative_stability", "diffeo_stability", "noise_stability", "test_error"):
        assert r2["results"][key] == pytest.approx(r1["results"][key], rel=1e-5, abs=1e-9)
    assert r2["results"]["relative_stability_ci"] == pytest.approx(
        r1["results"]["relative_stability_ci"], rel=1e-5
    )
    assert r1["run_id"] == r2["run_id"]
    ls = _hubstab("ls", str(tmp_path / "one"))
    assert ls.returncode == 0 and "resnet10t-fmnist" in ls.stdout
    show = _hubstab("show", str(f1))
    assert show.returncode == 0 and "R_f =" in show.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "no-such-org/no-such-model-xyz", "--dataset", "DATA"], "model"),
        (["eval", "MODEL", "--dataset", "/no/such/folder-or-org/x"], "dataset"),
        (["eval", "MODEL", "--dataset", "DATA", "--num-images", "1"], "num-images"),
        (["show", "/no/such/results.json"], "results"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(local_model_and_data, args, message):
    model_dir, data_dir = local_model_and_data
    args = [str(model_dir) if a == "MODEL" else str(data_dir) if a == "DATA" else a for a in args]
    proc = _hubstab(*args, "--output-dir", "/tmp/unused") if args[0] == "eval" else _hubstab(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "warn" not in line.lower()]
    assert len(lines) == 1 and message in lines[0].lower(), proc.stderr


def test_results_record_round_trips(trained_fmnist_cnn, fmnist_dataset, tmp_path):
    res = evaluate(trained_fmnist_cnn, fmnist_dataset, per_sample=True, temperatures=[1e-4], **_kw(tmp_path))
    path = Path(res.extra["results_file"])
    record = json.loads(path.read_text())
    assert record["schema_version"] == 1
    assert len(record["results"]["sweep"]) == 2
    samples = json.loads(path.with_suffix(".samples.json").read_text())
    assert len(samples["index"]) == 60 and samples["run_id"] == record["run_id"]
    from hubstab.results.io import result_from_record

    back = result_from_record(load_record(path))
    assert back.relative_stability == pytest.approx(res.relative_stability)
    assert back.settings["temperature"] == pytest.approx(res.settings["temperature"])


def test_other_metrics_go_into_the_results_file(trained_fmnist_cnn, fmnist_dataset, tmp_path):
    res = evaluate(
        trained_fmnist_cnn, fmnist_dataset, metrics=["equivariance:flip"], metric_images=16, **_kw(tmp_path)
    )
    record = load_record(res.extra["results_file"])
    eq = record["results"]["equivariance"]
    assert eq["transform"] == "flip" and eq["mode"] == "invariance" and eq["num_images"] == 16
    assert eq["output"] > 0  # a CNN trained on upright clothes is not flip invariant
    with pytest.raises(hubstab.errors.HubstabError, match="metric"):
        evaluate(trained_fmnist_cnn, fmnist_dataset, metrics=["curvature"], **_kw(tmp_path))
    for bad, why in [
        ("equivariance:rot", "rotation90"),
        ("equivariance:flip:inv", "mode"),
        ("class-manifold:x", "index"),
        ("equivariance:flip,equivariance:rotation90", "2 times"),
    ]:
        with pytest.raises(hubstab.errors.HubstabError, match=why):  # refused before anything is loaded
            EvalConfig(model="m", dataset="d", metrics=bad.split(",")).validate()
