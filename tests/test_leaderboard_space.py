"""The leaderboard as a deployable hub Space and as part of the wheel.

- ``leaderboard/`` is the generated copy of the package's app (``scripts/sync_space.py``), in sync;
- that folder alone, with no torch importable and no results source, starts an empty board;
- its ``requirements.txt`` covers what it imports and resolves from PyPI without torch (needs PyPI);
- the wheel ships the app, and ``hubstab leaderboard`` serves from it run from another directory.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from _leaderboard_records import SPACE_DIR, measure, quick_linear, write_records

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "transformers", "accelerate", "datasets", "safetensors")
# import name -> requirement name, for the third-party packages the Space may import
DISTRIBUTIONS = {
    "gradio": "gradio",
    "pandas": "pandas",
    "numpy": "numpy",
    "altair": "altair",
    "huggingface_hub": "huggingface_hub",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic",  # pinned by pydantic itself
    "typing_extensions": "typing_extensions",
    "jsonschema": "jsonschema",
}
BLOCK_HEAVY = (
    "import sys\nfor _m in {heavy!r}:\n    sys.modules[_m] = None  # importing it raises ImportError\n"
)


def _sync_module():
    spec = importlib.util.spec_from_file_location("sync_space", ROOT / "scripts" / "sync_space.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HUBSTAB_RESULTS", "HF_TOKEN")}
    return {**env, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **extra}


def _requirements() -> set[str]:
    names = set()
    for line in (SPACE_DIR / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(
                line.split(";")[0].split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip().lower()
            )
    return names


def test_space_folder_is_the_generated_copy_of_the_package():
    sync = _sync_module()
    assert sync.differences() == [], "leaderboard/ is stale: run python scripts/sync_space.py"
    files = sync.expected_files()
    assert "hubstab/leaderboard/app.py" in files and "hubstab/results/validate.py" in files
    assert "hubstab/leaderboard/data/results-imagenet.csv" in files
    assert not any(f.startswith(("hubstab/metrics", "hubstab/runner", "hubstab/adapters")) for f in files)
    # only module-level imports are followed: io.py imports hubstab.metrics (torch) inside a function and
    # under TYPE_CHECKING, neither of which the Space runs
    io_imports = sync.module_imports(ROOT / "hubstab" / "results" / "io.py")
    assert not any(name.startswith(("hubstab.metrics", "torch")) for name in io_imports)
    assert "hubstab.leaderboard.reading" in sync.module_imports(ROOT / "hubstab" / "leaderboard" / "app.py")
    card = (SPACE_DIR / "README.md").read_text()
    assert "sdk: gradio" in card and "app_file: app.py" in card


def test_space_requirements_cover_its_imports_and_name_no_torch():
    """Every third-party module the Space's code imports at module level is a requirement; torch is none."""
    sync = _sync_module()
    local = {"hubstab", "__future__"}
    imported = set()
    for path in SPACE_DIR.rglob("*.py"):
        for name in sync.module_imports(path) if path.is_relative_to(SPACE_DIR / "hubstab") else []:
            imported.add(name.split(".")[0])
        if path.name == "app.py" and path.parent == SPACE_DIR:
            tree = ast.parse(path.read_text())
            imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    third_party = {m for m in imported - local if m not in sys.stdlib_module_names}
    assert third_party <= set(DISTRIBUTIONS), f"unknown imports {third_party - set(DISTRIBUTIONS)}"
    requirements = _requirements()
    assert {DISTRIBUTIONS[m].lower() for m in third_party} <= requirements
    assert not requirements & set(HEAVY) and "hubstab" not in requirements


@pytest.mark.slow
def test_space_folder_alone_starts_an_empty_board_without_torch(tmp_path):
    space = tmp_path / "space"
    shutil.copytree(SPACE_DIR, space, ignore=shutil.ignore_patterns("__pycache__"))
    script = BLOCK_HEAVY.format(heavy=HEAVY) + (
        "import hubstab, gradio\n"
        "from hubstab.leaderboard import app, reading\n"
        "board = app.Board(None)\n"
        "demo = app.build_app(None)\n"
        "print(json.dumps({'hubstab': hubstab.__file__, 'source': board.loaded.source,\n"
        "                  'records': len(board.loaded.records), 'summary': board.loaded.summary(),\n"
        "                  'blocks': type(demo).__name__}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + script],
        cwd=space,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(info["hubstab"]).resolve().is_relative_to(space.resolve())  # the copy, not the checkout
    assert info["source"] == "no results source" and info["records"] == 0 and info["blocks"] == "Blocks"
    assert "HUBSTAB_RESULTS" in info["summary"]


@pytest.mark.slow
def test_space_requirements_resolve_from_pypi_without_torch(tmp_path):
    """``pip install -r leaderboard/requirements.txt`` as a fresh environment of this Python would resolve it
    (``--ignore-installed``: nothing already installed counts)."""
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        pytest.skip("PyPI is not reachable")
    report = tmp_path / "report.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "-r",
            str(SPACE_DIR / "requirements.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    installed = {
        item["metadata"]["name"].lower().replace("_", "-")
        for item in json.loads(report.read_text())["install"]
    }
    assert {"gradio", "pandas", "altair", "huggingface-hub", "pydantic", "jsonschema"} <= installed
    heavy = {h.replace("_", "-") for h in HEAVY} | {"nvidia-cudnn-cu12", "triton"}
    assert not installed & heavy, installed & heavy


@pytest.mark.slow
def test_wheel_ships_the_app_and_serves_from_another_directory(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = tmp_path.glob("hubstab-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    for name in ("app.py", "reading.py", "submit.py", "data/results-imagenet.csv", "data/SOURCE.md"):
        assert f"hubstab/leaderboard/{name}" in names
    assert not any(n.startswith("leaderboard/") for n in names)

    results = tmp_path / "results"
    write_records(
        results, [measure(quick_linear(0, steps=20), "fmnist/linear", pretrained=True, num_images=32)]
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _clean_env(PYTHONPATH=str(tmp_path / "site"))
    where = subprocess.run(
        [sys.executable, "-c", "import hubstab.leaderboard.app as a; print(a.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert Path(where.stdout.strip()).is_relative_to(tmp_path / "site"), where.stderr  # the wheel's copy
    port = _free_port()
    log = tmp_path / "app.log"
    code = BLOCK_HEAVY.format(heavy=HEAVY) + "from hubstab.cli import main\nsys.exit(main())"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "leaderboard", "--results", str(results), "--port", str(port)],
            cwd=elsewhere,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as response:
                    config = json.loads(response.read())
                break
            except OSError:
                assert time.time() < deadline, log.read_text()
                time.sleep(0.5)
        assert config["title"] == "hubstab leaderboard"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
