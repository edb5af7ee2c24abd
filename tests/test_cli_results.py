"""``hubstab ls``, ``show`` and ``push`` on real results files; hub calls checked at the HfApi boundary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from hubstab.cli import main
from hubstab.errors import ResultsValidationError
from hubstab.results import push as P

OLD = Path(__file__).parent / "data" / "results_0_1_0"
ROOT = Path(__file__).resolve().parents[1]
LAYERED_ID = "5bdad5defc8b7282a0d4c21d4720b587001532ee4a78f3c932cbf82096022b0c"


@pytest.fixture
def results(tmp_path) -> Path:
    folder = tmp_path / "hubstab-results"
    shutil.copytree(OLD, folder)
    (folder / "SOURCE.md").unlink()
    return folder


def test_ls_prints_run_ids_and_paths_that_show_accepts(results, capsys):
    assert main(["ls", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines[1:] if line.startswith(("5bdad5", "01983f"))]
    assert len(rows) == 2
    for row in rows:
        run, path = row.split()[0], row.split()[-1]
        assert Path(path).is_file() and json.loads(Path(path).read_text())["run_id"].startswith(run)
        assert main(["show", path]) == 0
        by_path = capsys.readouterr().out
        assert main(["show", run, "--results", str(results)]) == 0
        assert capsys.readouterr().out == by_path
        assert f"file     {path}" in by_path


def test_show_by_run_id_errors_are_one_line(results, capsys):
    (results / "copy").mkdir()
    shutil.copy(results / "resnet18" / "5bdad5defc8b7282.json", results / "copy" / "x.json")
    assert main(["show", "5bdad5de", "--results", str(results)]) == 2
    assert "ambiguous" in capsys.readouterr().err
    assert main(["show", "abcdef12", "--results", str(results)]) == 2
    assert "no results file of run abcdef12" in capsys.readouterr().err
    assert main(["show", "no-such-file.json", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "no such results file no-such-file.json" in err and len(err.strip().splitlines()) == 1
    assert main(["show", "not-hex", "--results", str(results)]) == 2
    assert "neither a results file nor a run id" in capsys.readouterr().err


def test_show_and_ls_import_no_torch(results):
    code = (
        "import sys; from hubstab.cli import main;"
        f"assert main(['show', {str(results / 'resnet18' / '5bdad5defc8b7282.json')!r}]) == 0;"
        f"assert main(['ls', {str(results)!r}]) == 0;"
        "heavy = [m for m in ('torch', 'timm', 'transformers', 'datasets', 'accelerate') if m in sys.modules];"
        "print('HEAVY', heavy)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout and "R_f = 0.08545" in out.stdout


def test_ls_survives_a_fifo_and_links_out(results):
    os.mkfifo(results / "resnet18" / "pipe.json")
    (results / "passwd.json").symlink_to("/etc/passwd")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "hubstab", "ls", str(results)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0
    assert out.stdout.count("resnet18/") == 2
    assert "pipe.json: a named pipe (FIFO)" in out.stderr and "passwd.json: a symbolic link" in out.stderr


class FakeHfApi:
    """Records the calls push makes (the hub is not reachable from the tests)."""

    instances: ClassVar[list[FakeHfApi]] = []

    def __init__(self, token=None):
        self.token = token
        self.calls: list[tuple[str, dict]] = []
        FakeHfApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_commit(self, **kwargs):
        ops = kwargs["operations"]
        uploaded = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in ops}
        self.calls.append(("create_commit", {**kwargs, "uploaded": uploaded}))

        class Info:
            commit_url = f"https://huggingface.co/datasets/{kwargs['repo_id']}/commit/{'c' * 40}"
            pr_url = (
                f"https://huggingface.co/datasets/{kwargs['repo_id']}/discussions/7"
                if kwargs["create_pr"]
                else None
            )

        return Info()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHfApi.instances = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi


def test_push_uploads_every_file_in_one_commit(results, fake_hub, capsys):
    assert main(["push", str(results), "--repo", "org/board"]) == 0
    (api,) = fake_hub.instances
    assert [name for name, _ in api.calls] == ["create_repo", "create_commit"]
    commit = api.calls[1][1]
    assert (
        commit["repo_id"] == "org/board" and commit["repo_type"] == "dataset" and commit["create_pr"] is False
    )
    assert sorted(commit["uploaded"]) == [
        "results/resnet18/01983f1c6f622e36.json",
        "results/resnet18/01983f1c6f622e36.samples.json",
        "results/resnet18/5bdad5defc8b7282.json",
    ]
    for target, data in commit["uploaded"].items():
        assert data == (results / "resnet18" / Path(target).name).read_bytes()
    assert "2 run(s) of resnet18" in commit["commit_message"]
    assert "commit https://huggingface.co/datasets/org/board/commit/" in capsys.readouterr().out


def test_push_as_pull_request_does_not_create_the_repo(results, fake_hub):
    result = P.push_files([results / "resnet18" / "5bdad5defc8b7282.json"], "org/board", pr=True)
    (api,) = fake_hub.instances
    assert [name for name, _ in api.calls] == ["create_commit"]
    assert api.calls[0][1]["create_pr"] is True
    assert result.url.endswith("/discussions/7") and result.pr_url == result.url
    # a file renamed locally still goes where hubstab eval lays it out (model folder / run id)
    renamed = results / "mine.json"
    shutil.copy(results / "resnet18" / "5bdad5defc8b7282.json", renamed)
    assert (
        P.path_in_repo(renamed, json.loads(renamed.read_text())) == "results/resnet18/5bdad5defc8b7282.json"
    )


def test_eval_push_path_uploads_one_file_in_one_commit(results, fake_hub):
    url = P.push_results(results / "resnet18" / "5bdad5defc8b7282.json", "org/board")
    (api,) = fake_hub.instances
    assert [name for name, _ in api.calls] == ["create_repo", "create_commit"]
    assert list(api.calls[1][1]["uploaded"]) == ["results/resnet18/5bdad5defc8b7282.json"]
    assert url.startswith("https://huggingface.co/datasets/org/board/commit/")


def test_push_refuses_bad_files_before_uploading_anything(results, fake_hub, capsys):
    record = json.loads((results / "resnet18" / "5bdad5defc8b7282.json").read_text())
    record["results"]["relative_stability"] = -1.0
    (results / "bad.json").write_text(json.dumps(record))
    os.mkfifo(results / "pipe.json")
    assert main(["push", str(results), "--repo", "org/board"]) == 2
    err = capsys.readouterr().err
    assert "2 file(s) refused, nothing uploaded" in err
    assert "bad.json: record.results.relative_stability: must be >= 0" in err and "pipe.json" in err
    assert fake_hub.instances == [] or all(not api.calls for api in fake_hub.instances)
    with pytest.raises(ResultsValidationError):
        P.push_files([results / "bad.json", results / "resnet18"], "org/board")
    assert main(["push", str(results / "resnet18"), "--repo", "not-a-repo"]) == 2
    assert "org/name" in capsys.readouterr().err


def test_eval_push_to_hub_goes_through_the_same_single_commit(tmp_path, fake_hub):
    import datasets
    import numpy as np
    import torch
    from conftest import SmallCNN, load_fashion_mnist
    from PIL import Image

    from hubstab.adapters import DataConfig
    from hubstab.runner import evaluate

    x, y = load_fashion_mnist("t10k", 12)
    images = [Image.fromarray((img[0].numpy() * 255).astype(np.uint8)) for img in x]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    data = datasets.Dataset.from_dict({"image": images, "label": y.tolist()}, features=features)
    torch.manual_seed(0)
    grey = DataConfig(input_size=(1, 28, 28), mean=(0.0,), std=(1.0,), interpolation="bilinear", crop_pct=1.0)
    res = evaluate(
        SmallCNN().eval(),
        data,
        num_images=8,
        data_config=grey,
        output_dir=str(tmp_path / "out"),
        num_workers=0,
        bootstrap=20,
        per_sample=True,
        push_to_hub="org/board",
    )
    written = Path(res.extra["results_file"])
    (api,) = fake_hub.instances
    assert [name for name, _ in api.calls] == ["create_repo", "create_commit"]
    uploaded = api.calls[1][1]["uploaded"]
    folder = written.parent.name
    assert sorted(uploaded) == [
        f"results/{folder}/{written.stem}.json",
        f"results/{folder}/{written.stem}.samples.json",
    ]
    assert uploaded[f"results/{folder}/{written.stem}.json"] == written.read_bytes()
    assert res.extra["pushed_to"].startswith("https://huggingface.co/datasets/org/board/commit/")
    assert api.calls[1][1]["create_pr"] is False

    # the same settings again with --pr: the result is reused, and pushed as a pull request
    FakeHfApi.instances.clear()
    again = evaluate(
        SmallCNN().eval(),
        data,
        num_images=8,
        data_config=grey,
        output_dir=str(tmp_path / "out"),
        num_workers=0,
        bootstrap=20,
        per_sample=True,
        push_to_hub="org/board",
        push_pr=True,
    )
    assert again.extra.get("reused") is True
    (api,) = fake_hub.instances
    assert api.calls[-1][0] == "create_commit" and api.calls[-1][1]["create_pr"] is True
    assert again.extra["pushed_to"] == "https://huggingface.co/datasets/org/board/discussions/7"


def test_push_offline_is_one_clear_error(results, monkeypatch, capsys):
    # the real HfApi: HF_HUB_OFFLINE is set for the tests, so nothing can leave the machine
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["push", str(results), "--repo", "org/board", "--pr"]) == 2
    err = capsys.readouterr().err
    assert "cannot push to org/board: the hub is offline" in err and len(err.strip().splitlines()) == 1


def test_push_dry_run_lists_the_plan_and_calls_nothing(results, fake_hub, capsys):
    file = results / "resnet18" / "5bdad5defc8b7282.json"
    assert main(["push", str(results), str(file), "--repo", "org/board", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3  # two records and one per-sample file; the file named twice is planned once
    assert f"{file} -> org/board:results/resnet18/5bdad5defc8b7282.json" in out
    assert fake_hub.instances == []
