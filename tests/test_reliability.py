"""Nothing lost, nothing silently wrong: settings checked before loading, interrupts, unwritable outputs,
non-finite outputs, run identity, and the lock that keeps two identical runs from both measuring."""

from __future__ import annotations

import glob
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import load_fashion_mnist
from torch import nn

import hubstab
from hubstab.adapters import DataConfig
from hubstab.cli import main
from hubstab.errors import HubstabError
from hubstab.metrics.finite import NonFiniteError, nonfinite_mask
from hubstab.runner import evaluate
from hubstab.runner.checkpoint import Checkpoint, RunLock

GREY = DataConfig(input_size=(1, 28, 28), mean=(0.0,), std=(1.0,), interpolation="bilinear", crop_pct=1.0)
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]


def _dataset(n: int = 80, labels: list[int] | None = None):
    import datasets
    import numpy as np
    from PIL import Image

    x, y = load_fashion_mnist("t10k", n)
    images = [Image.fromarray((img[0].numpy() * 255).astype(np.uint8)) for img in x]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES)})
    return datasets.Dataset.from_dict({"image": images, "label": labels or y.tolist()}, features=features)


@pytest.fixture(scope="module")
def fmnist_dataset():
    """80 real Fashion-MNIST test images with Image and ClassLabel features."""
    return _dataset()


def _kw(tmp_path, **extra):
    kw = dict(num_images=30, data_config=GREY, output_dir=str(tmp_path), num_workers=0, bootstrap=100)
    kw["label_map"] = "identity"
    return {**kw, **extra}


# --- 2. everything checkable is checked before the model loads -------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--delta", "0"], "--delta"),
        (["--delta", "nan"], "--delta"),
        (["--delta", "-1"], "--delta"),
        (["--temperature", "inf"], "--temperature"),
        (["--temperatures", "1e-4,inf"], "--temperatures"),
        (["--temperatures", "0"], "--temperatures"),
        (["--num-images", "1"], "--num-images"),
        (["--cut", "1"], "--cut"),
        (["--repeats", "0"], "--repeats"),
        (["--bootstrap", "-5"], "--bootstrap"),
        (["--checkpoint-every", "0"], "--checkpoint-every"),
        (["--device", "tpu"], "--device"),
        (["--output-dir", "FILE"], "output-dir"),
        (["--output-dir", "FILE/below"], "output-dir"),
    ],
)
def test_impossible_settings_stop_before_the_model_loads(args, message, tmp_path, capsys):
    # the model id does not exist: reaching the model loader would give a different error
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    args = [a.replace("FILE", str(blocker)) for a in args]
    out = [] if any(a.startswith("--output-dir") for a in args) else ["--output-dir", str(tmp_path / "o")]
    code = main(["eval", "no-such-org/no-such-model-xyz", "--quiet", *out, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0] and "no-such-model" not in err[0], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    code = main(["eval", "no-such-org/x", "--device", "cuda", "--output-dir", str(tmp_path)])
    assert code == 2 and "no CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code = main(["eval", "no-such-org/x", "--output-dir", str(folder / "sub")])
    finally:
        folder.chmod(0o700)
    assert code == 2 and "cannot be written" in capsys.readouterr().err


def test_temperature_past_t2_warns_but_runs_the_check(tmp_path, capsys):
    with pytest.warns(UserWarning, match="above T2"):
        code = main(["eval", "m", "--temperature", "0.02", "--output-dir", str(tmp_path), "--check"])
    assert code == 0 and "valid" in capsys.readouterr().out
    assert not list(tmp_path.iterdir()), "the probe file is removed"


def _option_values():
    from hypothesis import strategies as st

    number = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(10**20), 10**20),
        st.sampled_from(["0", "-0", "1e-300", "1e308", "nan", "-inf", "paper", "auto", "", "1,2", "x"]),
    ).map(str)
    options = st.sampled_from(
        [
            "--delta", "--temperature", "--temperatures", "--cut", "--num-images", "--num-error-images",
            "--repeats", "--seed", "--bootstrap", "--batch-size", "--num-workers", "--metric-images",
            "--checkpoint-every", "--interp", "--estimator", "--dtype", "--batchnorm", "--label-map",
            "--device", "--metric", "--layers", "--num-processes",
        ]
    )  # fmt: skip
    return st.lists(st.tuples(options, st.one_of(number, st.text(max_size=12))), max_size=5)


def test_random_settings_give_exit_0_or_2_never_a_traceback(tmp_path):
    from hypothesis import HealthCheck, given, settings

    out = str(tmp_path / "out")

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_option_values())
    def check(pairs):
        argv = ["eval", "some/model", "--check", "--output-dir", out, "--quiet"]
        for option, value in pairs:
            argv += [f"{option}={value}"]
        try:
            code = main(argv)
        except SystemExit as err:  # argparse: unparsable value, usage on stderr
            code = err.code
        assert code in (0, 2), argv

    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        check()


# --- 2b. a measurement whose output cannot be written is kept ------------------------------------------------


def test_unwritable_results_file_keeps_the_measurement(
    trained_fmnist_cnn, fmnist_dataset, tmp_path, monkeypatch
):
    import hubstab.runner.engine as engine

    real_write, real_stats = engine.write_record, engine.batch_stats

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine, "write_record", disk_full)
    with pytest.raises(HubstabError, match=r"No space left.*kept in .*partial"):
        evaluate(trained_fmnist_cnn, fmnist_dataset, **_kw(tmp_path))
    assert list((tmp_path / ".partial").rglob("part-*.safetensors"))

    def must_not_measure(*args, **kwargs):
        raise AssertionError("the kept measurement must be reused")

    monkeypatch.setattr(engine, "write_record", real_write)
    monkeypatch.setattr(engine, "batch_stats", must_not_measure)
    res = evaluate(trained_fmnist_cnn, fmnist_dataset, **_kw(tmp_path))
    monkeypatch.setattr(engine, "batch_stats", real_stats)
    fresh = evaluate(trained_fmnist_cnn, fmnist_dataset, **_kw(tmp_path / "fresh"))
    assert res.relative_stability == fresh.relative_stability
    assert res.relative_stability_ci == fresh.relative_stability_ci
    assert not (tmp_path / ".partial").exists(), "no empty .partial/ after a finished run"


# --- 3. non-finite outputs ----------------------------------------------------------------------------------


def _poisoned(n_bad: int = 3, n: int = 20):
    x, y = load_fashion_mnist("t10k", n)
    x = x.clone()
    bad = [2, 7, 11][:n_bad]
    for i in bad:
        x[i, 0, 5, 5] = math.nan  # a corrupt pixel: the trained CNN's logits for that image are NaN
    return x, y, bad


def test_nonfinite_outputs_are_an_error_with_their_count(trained_fmnist_cnn):
    x, y, _ = _poisoned()
    with pytest.raises(NonFiniteError, match=r"3 of 20 probe image.*--dtype float32"):
        hubstab.relative_stability(trained_fmnist_cnn, x, y, bootstrap=50)


def test_float16_overflow_is_detected_the_same_way():
    from conftest import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN().eval()
    x, y = load_fashion_mnist("t10k", 12)
    kw = dict(mean=[0.0], std=[1e-5], bootstrap=20)  # inputs up to 1e5: activations past float16's 65504
    with pytest.raises(NonFiniteError, match=r"12 of 12 .*--dtype float32"):
        hubstab.relative_stability(model, x, y, amp_dtype=torch.float16, **kw)
    assert math.isfinite(hubstab.relative_stability(model, x, y, **kw).relative_stability)


def test_excluded_nonfinite_images_give_the_result_of_the_others(trained_fmnist_cnn):
    x, y, bad = _poisoned()
    res = hubstab.relative_stability(trained_fmnist_cnn, x, y, bootstrap=50, nonfinite="exclude")
    good = [i for i in range(20) if i not in bad]
    ref = hubstab.relative_stability(trained_fmnist_cnn, x[good], y[good], indices=good, bootstrap=50)
    assert res.num_images == 17 and math.isfinite(res.relative_stability)
    assert res.relative_stability == pytest.approx(ref.relative_stability, rel=1e-12)
    assert res.test_error == ref.test_error
    assert res.settings["num_nonfinite_excluded"] == 3
    assert any("3 of 20" in n and "excluded" in n for n in res.notes)


def test_a_nan_relative_stability_never_has_a_finite_interval(trained_fmnist_cnn):
    from hubstab.metrics.stability import batch_stats, build_result, settings_dict

    x, y, bad = _poisoned(1, 10)
    stats = batch_stats(trained_fmnist_cnn, x, torch.arange(10), [1e-3], labels=y)
    assert nonfinite_mask(stats).tolist() == [i in bad for i in range(10)]
    settings = settings_dict(
        temperature=1e-3, delta=1.0, cut=3, interp="linear", estimator="mean", seed=0, repeats=1,
        image_size=(28, 28), num_images=10, bootstrap=50, confidence=0.95, batchnorm="eval", amp_dtype=None,
    )  # fmt: skip
    res = build_result(stats, settings, headline_temperature=1e-3)
    assert math.isnan(res.relative_stability)
    assert all(math.isnan(v) for v in res.relative_stability_ci)


class _NaNForBright(nn.Module):
    """The trained CNN, except that inputs brighter than ``threshold`` on average give NaN logits."""

    def __init__(self, net: nn.Module, threshold: float):
        super().__init__()
        self.net, self.threshold = net, threshold

    def forward(self, x):
        out = self.net(x)
        bright = x.mean((1, 2, 3)) > self.threshold
        return torch.where(bright[:, None], torch.full_like(out, math.nan), out)


def _bright_threshold(dataset, num_images: int) -> tuple[float, int]:
    """A brightness threshold in a wide gap between probe images, and how many lie above it."""
    from hubstab.adapters import load_probe_set

    probes = load_probe_set(dataset, num_images=num_images, seed=0)
    x, _ = load_fashion_mnist("t10k", 80)
    means = sorted(float(x[i].mean()) for i in probes.info["indices"])
    upper = means[len(means) // 2 :]
    gap, i = max((upper[j + 1] - upper[j], j) for j in range(len(upper) - 3))  # 3 or more above
    assert gap > 0.02, "perturbations at delta = 1 px move the mean by far less than this gap"
    return (upper[i] + upper[i + 1]) / 2, len(upper) - i - 1


def test_runner_refuses_or_excludes_nonfinite_images(trained_fmnist_cnn, fmnist_dataset, tmp_path):
    threshold, n_bad = _bright_threshold(fmnist_dataset, 30)
    model = _NaNForBright(trained_fmnist_cnn, threshold).eval()
    with pytest.raises(NonFiniteError, match=rf"{n_bad} of 30 probe image.*--exclude-nonfinite"):
        evaluate(model, fmnist_dataset, **_kw(tmp_path))
    res = evaluate(model, fmnist_dataset, **_kw(tmp_path, nonfinite="exclude"))
    assert res.num_images == 30 - n_bad and res.settings["num_nonfinite_excluded"] == n_bad
    assert math.isfinite(res.relative_stability) and all(map(math.isfinite, res.relative_stability_ci))
    assert 0 <= res.test_error < 0.5  # from the finite logits only
    record = json.loads(Path(res.extra["results_file"]).read_text())
    assert any(f"{n_bad} of 30" in n for n in record["notes"])
    assert record["config"]["protocol"]["nonfinite"] == "exclude"


def test_test_error_images_with_nan_logits_are_not_counted(trained_fmnist_cnn, fmnist_dataset, tmp_path):
    threshold, _ = _bright_threshold(fmnist_dataset, 30)
    model = _NaNForBright(trained_fmnist_cnn, threshold).eval()
    kw = _kw(tmp_path, nonfinite="exclude", num_error_images=80)
    res = evaluate(model, fmnist_dataset, **kw)
    x, y = load_fashion_mnist("t10k", 80)
    finite = x.mean((1, 2, 3)) <= threshold
    with torch.no_grad():
        wrong = (trained_fmnist_cnn(x[finite]).argmax(1) != y[finite]).double().mean().item()
    assert res.settings["num_error_images"] == int(finite.sum())
    assert res.test_error == pytest.approx(wrong)
    assert any("NaN or infinite logits left out" in n for n in res.notes)


# --- 4. the run id covers what changes a number; fewer images and unusable labels are said ----------------


def test_label_map_is_part_of_the_run_id(trained_fmnist_cnn, fmnist_dataset, tmp_path):
    kw = _kw(tmp_path)
    kw.pop("label_map")
    unmatched = evaluate(trained_fmnist_cnn, fmnist_dataset, **kw)
    mapped = evaluate(trained_fmnist_cnn, fmnist_dataset, label_map="identity", **kw)
    assert not mapped.extra.get("reused"), "a different label map must not reuse the earlier result"
    assert mapped.extra["run_id"] != unmatched.extra["run_id"]
    assert unmatched.test_error is None and mapped.test_error is not None


def test_fewer_images_than_asked_and_unusable_labels_are_noted(trained_fmnist_cnn, tmp_path):
    _, y = load_fashion_mnist("t10k", 40)
    labels = y.tolist()
    for i in (0, 5, 9, 30):
        labels[i] = -1  # unlabelled rows
    ds = _dataset(40, labels)
    res = evaluate(trained_fmnist_cnn, ds, **_kw(tmp_path, num_images=100))
    assert res.num_images == 40 and res.settings["num_images_requested"] == 100
    assert any("fewer than the 100 asked for" in n for n in res.notes)
    assert res.settings["num_unusable_labels"] == 4 and res.settings["num_error_images"] == 36
    assert any("4 of 40 probe images have no usable label" in n for n in res.notes)
    exact = evaluate(trained_fmnist_cnn, ds, **_kw(tmp_path, num_images=None))
    assert exact.extra["run_id"] != res.extra["run_id"]


# --- 5. two identical runs: the second waits, then reuses ---------------------------------------------------


def test_second_identical_run_waits_for_the_lock_then_reuses(trained_fmnist_cnn, fmnist_dataset, tmp_path):
    first = evaluate(trained_fmnist_cnn, fmnist_dataset, **_kw(tmp_path))
    path = Path(first.extra["results_file"])
    saved = path.read_bytes()
    path.unlink()  # as if the first run were still measuring
    lock = RunLock(tmp_path, first.extra["run_id"])
    lock.acquire()
    out: dict = {}
    second = threading.Thread(
        target=lambda: out.update(res=evaluate(trained_fmnist_cnn, fmnist_dataset, **_kw(tmp_path)))
    )
    second.start()
    time.sleep(3)
    assert second.is_alive() and not path.exists(), "the second run must wait, not measure"
    path.write_bytes(saved)  # the first run finishes and releases its claim
    lock.release()
    second.join(60)
    assert out["res"].extra.get("reused") is True
    assert out["res"].relative_stability == first.relative_stability
    assert not (tmp_path / ".partial").exists()


# --- 1 and 6. interrupted real runs resume to the same numbers, bit for bit ---------------------------------


@pytest.fixture(scope="module")
def cli_model_and_data(tmp_path_factory, fmnist_dataset):
    import timm
    from timm.models._hub import save_for_hf

    root = tmp_path_factory.mktemp("fault")
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
    save_for_hf(model, str(root / "model"))
    fmnist_dataset.save_to_disk(str(root / "data"))
    return root


def _eval_cmd(root: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "hubstab", "eval", str(root / "model"), "--dataset", str(root / "data"),
        "--num-images", "30", "--batch-size", "3", "--quiet", "--bootstrap", "100", "--num-workers", "0",
        "--label-map", "identity", "--device", "cpu", "--checkpoint-every", "1", "--output-dir", str(out),
    ]  # fmt: skip


_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def uninterrupted(cli_model_and_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    proc = subprocess.run(_eval_cmd(cli_model_and_data, out), capture_output=True, text=True, env=_ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.rglob("*.json")
    assert not (out / ".partial").exists(), "no empty .partial/ after a finished run"
    return json.loads(path.read_text())


def _interrupt(cmd: list[str], out: Path, sig: int, at: int) -> tuple[int, str]:
    """Start ``cmd`` and send ``sig`` once ``at`` batches are saved in ``out``; returns (exit code, stderr)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ENV)
    deadline = time.time() + 300
    while len(glob.glob(f"{out}/.partial/*/part-*.safetensors")) < at and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.005)
    assert proc.poll() is None, f"the run finished before batch {at}: {proc.stderr.read()[-2000:]}"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


@pytest.mark.slow
def test_interrupted_runs_resume_bit_for_bit(cli_model_and_data, uninterrupted, tmp_path):
    """SIGINT, SIGTERM and SIGKILL at random batches, then a resume on two processes: same numbers."""
    out = tmp_path / "out"
    cmd = _eval_cmd(cli_model_and_data, out)
    run_id = uninterrupted["run_id"]
    kept = 0
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        at = kept + random.randint(1, 6)  # the batch the signal comes after (30 batches of 1 image)
        code, stderr = _interrupt(cmd, out, sig, at)
        kept = len(Checkpoint(out, run_id, rank=-1, block_size=1).load())
        assert kept >= at, f"{sig!r} after batch {at}: only {kept} batches kept"
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
        else:
            assert code == 128 + sig, stderr
            (line,) = [ln for ln in stderr.splitlines() if ln.strip()]
            assert f"{kept} of 30 probe images measured are saved in {out}/.partial" in line, line
    again = subprocess.run([*cmd, "--num-processes", "2"], capture_output=True, text=True, env=_ENV)
    assert again.returncode == 0, again.stderr[-2000:]
    (path,) = out.rglob("*.json")
    record = json.loads(path.read_text())
    assert record["environment"]["num_processes"] == 2
    assert record["run_id"] == run_id
    assert record["results"] == uninterrupted["results"], "not bit for bit"
    assert record["notes"] == uninterrupted["notes"]
    assert not (out / ".partial").exists(), "no empty .partial/ after the resumed run"


@pytest.mark.slow
def test_two_identical_cli_runs_at_once_measure_once(cli_model_and_data, uninterrupted, tmp_path):
    cmd = [*_eval_cmd(cli_model_and_data, tmp_path), "--checkpoint-every", "8"]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ENV)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-1000:] for _, err in outputs]
    reused = [out for out, _ in outputs if "(reused)" in out]
    assert len(reused) == 1, "exactly one of the two runs measures; the other waits and reuses its file"
    (path,) = tmp_path.rglob("*.json")
    assert json.loads(path.read_text())["results"] == uninterrupted["results"]
    assert not (tmp_path / ".partial").exists()
