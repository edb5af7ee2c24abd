"""Time the leaderboard on many results files: reading and validating them, building the table, the app.

One real results record is measured first (a small randomly initialised CNN on 64 Fashion-MNIST test images
when Debian's dataset-fashion-mnist is installed, else on random images), then written ``--num-files``
times under as many model names, as ``hubstab eval`` lays them out. Timed: ``reading.load_results``
(find + validate every file), ``select_runs`` + ``records_to_frame`` + ``display_frame``, ``build_app``,
and the start-up of the Space folder (``python app.py`` in a copy of ``leaderboard/``, until it answers
HTTP 200). Median of ``--repeats``.

    python scripts/bench_leaderboard.py --num-files 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def _record() -> dict:
    import gzip

    import numpy as np
    import torch
    from torch import nn

    from hubstab import relative_stability
    from hubstab.results.record import build_record

    if FMNIST.exists():
        with gzip.open(FMNIST) as f:
            raw = np.frombuffer(f.read(), np.uint8, offset=16)[: 64 * 784].copy()
        images, dataset = torch.from_numpy(raw).float().div(255).reshape(64, 1, 28, 28), "fashion_mnist"
    else:
        images, dataset = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)), "random"
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 10)
    ).eval()
    result = relative_stability(model, images, temperatures=[1e-4, 1e-3, 3e-3], bootstrap=200)
    config = {"model_name": "bench/cnn", "adapter": "torch", "pretrained": False, "dataset": dataset}
    return build_record(result, config)


def _write(folder: Path, record: dict, n: int) -> int:
    from hubstab.results.io import write_record

    size = 0
    for i in range(n):
        rec = json.loads(json.dumps(record))
        rec["config"]["model_name"] = f"bench/cnn-{i:05d}"
        rec["run_id"] = f"{i:064x}"
        size += write_record(rec, folder).stat().st_size
    return size


def _median(f, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _space_startup(results: Path | None) -> float:
    """Seconds from ``python app.py`` in a copy of the Space folder to its first HTTP 200."""
    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "space"
        shutil.copytree(ROOT / "leaderboard", space, ignore=shutil.ignore_patterns("__pycache__"))
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HUBSTAB_RESULTS")}
        env.update(GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
        if results is not None:
            env["HUBSTAB_RESULTS"] = str(results)
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=space,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"app.py exited with code {proc.returncode}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                        return time.perf_counter() - start
                except OSError:
                    time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-files", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-startup", action="store_true", help="skip the Space start-up timing")
    args = parser.parse_args(argv)

    from hubstab.leaderboard import reading

    record = _record()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "results"
        size = _write(folder, record, args.num_files)
        load_s, loaded = _median(lambda: reading.load_results(folder), args.repeats)
        assert len(loaded.records) == args.num_files and not loaded.problems

        def table():
            kept, _ = reading.select_runs(loaded.records)
            frame = reading.records_to_frame(kept, reading.default_reference())
            return reading.display_frame(reading.filter_frame(frame, group=reading.default_group(frame)))

        table_s, shown = _median(table, args.repeats)
        from hubstab.leaderboard.app import build_app

        build_s, _ = _median(lambda: build_app(folder), args.repeats)
        report = {
            "num_files": args.num_files,
            "bytes_per_file": round(size / args.num_files),
            "load_and_validate_s": round(load_s, 3),
            "table_s": round(table_s, 3),
            "rows": len(shown),
            "build_app_s": round(build_s, 3),
        }
        if not args.no_startup:
            report["space_startup_empty_s"] = round(_space_startup(None), 2)
            report["space_startup_with_files_s"] = round(_space_startup(folder), 2)
    report.update(python=sys.version.split()[0], cpus=os.cpu_count(), load_average=os.getloadavg()[0])
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
