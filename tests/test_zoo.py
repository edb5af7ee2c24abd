"""Many models in one command, named protocols and published accuracy.

The CLI test runs three ids (two tiny timm models laid out in a temporary hub cache, one unknown id) on
parquet shards of real JPEG photos through the probe-set cache.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hubstab.adapters.published import published_top1
from hubstab.errors import HubstabError
from hubstab.protocols import PROTOCOLS, apply_protocol, explicit_options, identify
from hubstab.results.validate import load_record
from hubstab.runner.config import EvalConfig
from hubstab.runner.zoo import collect_models, format_table, run_zoo, take_shard, timm_models
from tests.hub_cache import add_repo
from tests.parquet_shards import write_shards

ROOT = Path(__file__).resolve().parents[1]


def test_models_file_shards_and_timm_patterns(tmp_path):
    listing = tmp_path / "models.txt"
    listing.write_text(
        "# my zoo\nresnet18.a1_in1k  # a comment\n\nfacebook/deit-small-patch16-224@main\nresnet18.a1_in1k\n"
    )
    models = collect_models(["timm/x"], models_file=str(listing))
    assert models == ["timm/x", "resnet18.a1_in1k", "facebook/deit-small-patch16-224@main"]
    assert take_shard(list("abcdefg"), "1/3") == ["b", "e"]
    assert sorted(
        take_shard(list("abcdefg"), "0/3")
        + take_shard(list("abcdefg"), "1/3")
        + take_shard(list("abcdefg"), "2/3")
    ) == list("abcdefg")
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(HubstabError, match="--shard"):
            take_shard(["a"], bad)
    top = timm_models("timm:resnet1*", top=3)
    assert len(top) == 3 and all(n.startswith("resnet1") for n in top)
    errors = [published_top1(n)["top1_error"] for n in top]
    assert errors == sorted(errors)
    with open(ROOT / "hubstab" / "leaderboard" / "data" / "results-imagenet.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["model"].startswith("resnet1")]
    assert errors[0] == pytest.approx(min(float(r["top1_err"]) for r in rows) / 100)
    with pytest.raises(HubstabError, match="no timm pretrained model"):
        timm_models("timm:no_such_arch_*")
    with pytest.raises(HubstabError, match="no model"):
        collect_models([])


def test_published_top1_is_timms_row():
    with open(ROOT / "hubstab" / "leaderboard" / "data" / "results-imagenet.csv") as f:
        row = next(
            r for r in csv.DictReader(f) if r["model"] == "resnet50.a1_in1k" and r["img_size"] == "224"
        )
    found = published_top1("timm/resnet50.a1_in1k", 224)
    assert found["top1_error"] == pytest.approx(float(row["top1_err"]) / 100)
    assert found["model"] == "resnet50.a1_in1k" and "results-imagenet.csv" in found["source"]
    assert published_top1("resnet50", 224)["model"] == "resnet50.a1_in1k"  # timm's default tag
    assert published_top1("facebook/deit-small-patch16-224") is None


def _in1k_values(**changes):
    p = PROTOCOLS["in1k-v1"]
    values = {
        k: getattr(p, k)
        for k in (
            "dataset",
            "split",
            "selection",
            "num_images",
            "delta",
            "cut",
            "interp",
            "estimator",
            "repeats",
            "seed",
            "bootstrap",
            "confidence",
            "batchnorm",
            "noise_space",
            "denominator",
        )
    }
    values.update(temperatures=[], dataset_revision="0" * 40)
    return {**values, **changes}


def test_protocols_name_only_exact_bundles():
    assert identify(_in1k_values()) == {"name": "in1k-v1", "version": 1}
    paper = _in1k_values(estimator="median", temperatures="paper", denominator="all-pairs")
    assert identify(paper) == {"name": "paper", "version": 1}
    # the paper's estimator with hubstab's distinct-pairs denominators is not the paper's protocol
    assert identify({**paper, "denominator": "distinct"}) == {"name": "custom", "version": 0}
    for change in (
        {"num_images": 499},
        {"cut": 5},
        {"delta": None},
        {"selection": "random"},
        {"dataset": "./my-photos"},
        {"temperatures": [1e-4]},
        {"seed": 1},
        {"bootstrap": 200},
        {"noise_space": "normalized"},
        {"denominator": "all-pairs"},
        {"batchnorm": "batch"},
    ):
        assert identify(_in1k_values(**change)) == {"name": "custom", "version": 0}, change
    cfg = EvalConfig(model="m", estimator="mean", cut=5, num_images=100, seed=3)
    apply_protocol(cfg, "paper", explicit_options(["m", "--cut", "5", "--num-im=100"]))
    assert (cfg.estimator, cfg.temperatures, cfg.dataset, cfg.split) == (
        "median",
        "paper",
        "benjamin-paine/imagenet-1k",
        "validation",
    )
    assert (cfg.cut, cfg.num_images, cfg.seed) == (5, 100, 0)  # typed options (abbreviated too) win
    cfg = EvalConfig(model="m", dataset="./val")
    apply_protocol(cfg, "in1k-v1", explicit_options(["m", "--dataset", "./val"]))
    assert (cfg.dataset, cfg.split, cfg.num_images) == ("./val", None, 500)  # split: the folder's own
    with pytest.raises(HubstabError, match="did you mean 'paper'"):
        apply_protocol(EvalConfig(), "papr")


def test_run_zoo_records_failures_and_continues(tmp_path):
    calls = []

    class Result:
        def __init__(self, rf):
            self.relative_stability, self.test_error, self.settings = rf, 0.25, {"name": "custom"}
            self.extra = {"results_file": f"{rf}.json"}

    def fake(cfg):
        calls.append(cfg.model)
        if cfg.model == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory after backoff")
        return Result(float("nan") if cfg.model == "nan" else 0.5)

    entries = run_zoo(EvalConfig(output_dir=str(tmp_path)), ["a", "oom", "nan", "b"], log=None, evaluate=fake)
    assert calls == ["a", "oom", "nan", "b"]
    assert [e.status for e in entries] == ["ok", "failed", "failed", "ok"]
    assert "out of memory" in entries[1].reason and "non-finite" in entries[2].reason
    (journal,) = (tmp_path / ".zoo").glob("*.jsonl")
    assert [json.loads(line)["status"] for line in journal.read_text().splitlines()] == [
        e.status for e in entries
    ]
    table = format_table(entries)
    assert "FAILED" in table and "2 of 4 models evaluated, 2 failed" in table


def _hubstab(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "hubstab.cli", *args],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env},
    )


@pytest.mark.slow
def test_cli_zoo_with_a_bad_id_writes_the_others_and_reuses_them(tmp_path):
    import timm
    from timm.models import save_for_hf

    pytest.importorskip("foolbox")
    shards = write_shards(tmp_path / "shards", num_shards=2, rows_per_shard=100, rows_per_group=50, size=64)
    home = tmp_path / "hf"
    for i, arch in enumerate(("test_resnet", "test_efficientnet")):
        torch.manual_seed(i)
        save_for_hf(timm.create_model(arch, pretrained=False), str(tmp_path / arch), safe_serialization=True)
        add_repo(home, f"timm/{arch}.r160_in1k", tmp_path / arch)
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HUBSTAB_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "results"
    args = [
        "eval",
        "timm/test_resnet.r160_in1k",
        "hubstab-test/no-such-model",
        "timm/test_efficientnet.r160_in1k",
        "--dataset",
        str(shards[0].parent),
        "--split",
        "validation",
        "--num-images",
        "6",
        "--bootstrap",
        "50",
        "--num-workers",
        "0",
        "--device",
        "cpu",
        "--quiet",
        "--output-dir",
        str(out),
    ]
    first = _hubstab(*args, env=env)
    assert first.returncode == 1, first.stderr[-2000:]
    assert "hubstab-test/no-such-model" in first.stderr and "failed" in first.stderr
    files = sorted(p for p in out.rglob("*.json") if ".zoo" not in p.parts)
    assert len(files) == 2
    for path in files:
        record = load_record(path)
        protocol = record["config"]["protocol"]
        assert protocol["name"] == "custom" and protocol["version"] == 0  # not ImageNet-1k's protocol data
        assert (
            protocol["probe_selection"]["scheme"] == "row-groups"
            and len(protocol["probe_selection"]["row_groups"]) == 1
        )
        assert record["config"]["num_images"] == 6 and record["results"]["test_error"] is not None
    assert len(list((tmp_path / "cache").glob("*.parquet"))) == 1  # one fetch, read again by the second model
    assert "2 of 3 models evaluated, 1 failed" in first.stdout
    mtimes = [p.stat().st_mtime_ns for p in files]

    again = _hubstab(*args, env=env)
    assert again.returncode == 1 and "hubstab-test/no-such-model" in again.stderr
    assert again.stdout.count("reused") == 2
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    assert sorted(p for p in out.rglob("*.json") if ".zoo" not in p.parts) == files


def test_default_imagenet_settings_are_named_in1k_v1(tmp_path, monkeypatch):
    """The CLI's defaults on the default ImageNet-1k dataset (laid out in a temporary hub cache) are in1k-v1."""
    from hubstab.adapters import load_probe_set
    from hubstab.adapters.data import default_dataset
    from hubstab.protocols import protocol_settings

    pytest.importorskip("foolbox")
    write_shards(tmp_path / "ds" / "data", num_shards=2, rows_per_shard=300, rows_per_group=100, size=32)
    sha = add_repo(tmp_path / "hf", "benjamin-paine/imagenet-1k", tmp_path / "ds", repo_type="dataset")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HUBSTAB_CACHE", str(tmp_path / "cache"))
    cfg = EvalConfig(model="some-in1k-model")
    dataset, split = default_dataset("imagenet-1k")
    probes = load_probe_set(dataset, split=split, num_images=cfg.num_images, seed=cfg.seed)
    settings = protocol_settings(cfg, probes.info, num_images=len(probes), delta=1.0)
    assert (settings["name"], settings["version"]) == ("in1k-v1", 1)
    assert probes.info["dataset_revision"] == sha and len(settings["probe_selection"]["row_groups"]) == 5
    assert "cache" not in settings["probe_selection"] and "source" not in settings["probe_selection"]
    assert (
        settings["probe_selection"]["rows"] == probes.info["indices"] and len(probes.info["indices"]) == 500
    )
    cfg.estimator = "median"
    assert protocol_settings(cfg, probes.info, num_images=len(probes), delta=1.0)["name"] == "custom"
    apply_protocol(cfg, "paper")
    assert protocol_settings(cfg, probes.info, num_images=len(probes), delta=1.0)["name"] == "paper"
    fewer = load_probe_set(dataset, split=split, num_images=100, seed=0)
    assert protocol_settings(cfg, fewer.info, num_images=len(fewer), delta=1.0)["name"] == "custom"


def test_protocol_id_separates_fidelity_settings():
    from hubstab.results.record import protocol_id

    base = {"delta": 1.0, "cut": 3, "interp": "linear", "estimator": "mean"}
    assert protocol_id(base) == "delta=1px cut=3 linear mean"  # files of 0.1.0 keep their id
    assert protocol_id(
        {**base, "noise_space": "pixel", "denominator_pairs": "distinct", "batchnorm": "eval"}
    ) == (protocol_id(base))
    ids = {
        protocol_id({**base, "noise_space": "normalized"}),
        protocol_id({**base, "denominator_pairs": "all-pairs"}),
        protocol_id({**base, "batchnorm": "batch"}),
        protocol_id(base),
    }
    assert len(ids) == 4
