"""Benchmark of the probe-set path: row-group range reads and the cache against the whole-split path.

On the same parquet shards of real JPEG photos (foolbox's ImageNet photos re-encoded into distinct rows,
written by ``datasets`` with row groups of ``--group`` rows) served from a loopback HTTP server that answers
Range requests and counts the bytes it sends, this measures for a selection of ``--num-images`` rows:

* bytes read and seconds to the first probe batch (16 images decoded and resized to 224 px) with
  ``hubstab.load_probe_set`` on the URLs (footers, then the selected row groups' byte ranges only);
* the same again (the probe-set cache: no network);
* the whole-split path: ``datasets.load_dataset("parquet", data_files=URLS)`` (downloads every file), then
  the same selection and first batch;

the same two paths on the shards as local files (seconds only);

and models per hour of a zoo run (``hubstab.runner.zoo.run_zoo``) over small timm architectures at random
initialisation (no weights can be downloaded here; the cost of a forward pass does not depend on the weights)
on ``--zoo-images`` probe images from the same shards.

    python scripts/bench_probe.py                                    # defaults below
    python scripts/bench_probe.py --num-images 50 --zoo-images 500 --models resnet18 efficientnet_b0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm architectures only, no hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "0")  # datasets may read the loopback URLs (else HF_HUB_OFFLINE)


def _first_batch(probes, n: int = 16):
    from hubstab.adapters import collate_probes

    images, _labels, _, skipped = collate_probes([probes[i] for i in range(min(n, len(probes)))])
    return images.shape, skipped


def _transform(image):
    from hubstab.adapters.data import to_tensor

    return to_tensor(image.convert("RGB").resize((224, 224)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=int, default=4, help="parquet files (default 4)")
    parser.add_argument("--rows", type=int, default=500, help="rows per file (default 500)")
    parser.add_argument(
        "--group", type=int, default=100, help="rows per row group (default 100, as datasets)"
    )
    parser.add_argument("--size", type=int, default=160, help="stored image height in pixels (default 160)")
    parser.add_argument("--num-images", type=int, default=20, help="selected rows (default 20: 1%% of 2000)")
    parser.add_argument(
        "--models", nargs="*", default=["resnet18", "mobilenetv3_small_100", "efficientnet_b0"]
    )
    parser.add_argument(
        "--zoo-images", type=int, default=100, help="probe images per zoo model (default 100)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--mbit",
        type=float,
        default=0,
        help="limit each response of the server to this many Mbit/s (default: none)",
    )
    parser.add_argument("--json", default="hubstab-results/bench-probe.json")
    args = parser.parse_args()

    import datasets
    import torch

    from hubstab.adapters import load_probe_set
    from hubstab.runner.config import EvalConfig
    from hubstab.runner.zoo import run_zoo
    from tests.parquet_shards import write_shards
    from tests.range_server import serve

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="hubstab-bench-probe-"))
    os.environ["HUBSTAB_CACHE"] = str(work / "probe-cache")
    shards = write_shards(
        work / "shards",
        num_shards=args.shards,
        rows_per_shard=args.rows,
        rows_per_group=args.group,
        size=args.size,
    )
    total = sum(p.stat().st_size for p in shards)
    out: dict = {
        "command": " ".join(sys.argv),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "shards": {
            "files": len(shards),
            "rows": args.shards * args.rows,
            "rows_per_group": args.group,
            "bytes": total,
            "image_height": args.size,
        },
        "num_images": args.num_images,
    }
    print(
        f"{len(shards)} shards, {args.shards * args.rows} rows, {total / 1e6:.1f} MB, row groups of {args.group}"
    )
    out["server_mbit_per_response"] = args.mbit or None
    with serve(shards[0].parent, bytes_per_second=args.mbit * 125_000 or None) as server:
        urls = [f"{server.url}/{p.name}" for p in shards]

        def case(name, fn):
            sent = server.bytes_sent
            t0 = time.perf_counter()
            probes = fn()
            shape, _ = _first_batch(probes)
            seconds = time.perf_counter() - t0
            read = server.bytes_sent - sent
            out[name] = {"bytes": read, "seconds_to_first_batch": round(seconds, 3), "batch": list(shape)}
            print(f"{name:12s} {read / 1e6:8.2f} MB read  {seconds:6.2f} s to the first batch of {shape[0]}")
            return probes

        probes = case(
            "row_groups", lambda: load_probe_set(urls, num_images=args.num_images, transform=_transform)
        )
        sel = probes.info["probe_selection"]
        budget = 0
        import pyarrow.parquet as pq

        for f, g in sel["row_groups"]:
            rg = pq.ParquetFile(shards[f]).metadata.row_group(g)
            budget += sum(rg.column(j).total_compressed_size for j in range(rg.num_columns))
        footers = sum(pq.ParquetFile(p).metadata.serialized_size + 8 for p in shards)
        out["row_groups"].update(
            {
                "selected_row_groups": len(sel["row_groups"]),
                "row_group_bytes": budget,
                "footer_bytes": footers,
                "ratio_to_budget": round(out["row_groups"]["bytes"] / (budget + footers), 3),
            }
        )
        print(
            f"             budget: row groups {budget / 1e6:.2f} MB + footers {footers / 1e6:.2f} MB; "
            f"read / budget = {out['row_groups']['ratio_to_budget']}"
        )
        case("cache_hit", lambda: load_probe_set(urls, num_images=args.num_images, transform=_transform))

        def whole():
            data = datasets.load_dataset(
                "parquet",
                data_files={"validation": urls},
                split="validation",
                cache_dir=str(work / "datasets-cache"),
            )
            return load_probe_set(data, num_images=args.num_images, transform=_transform)

        case("whole_split", whole)
        local = [str(p) for p in shards]  # the same shards as local files (no bytes through the server)
        case(
            "row_groups_local",
            lambda: load_probe_set(local, num_images=args.num_images, transform=_transform),
        )

        def whole_local():
            data = datasets.load_dataset(
                "parquet",
                data_files={"validation": local},
                split="validation",
                cache_dir=str(work / "datasets-cache-local"),
            )
            return load_probe_set(data, num_images=args.num_images, transform=_transform)

        case("whole_local", whole_local)

        if args.models:
            cfg = EvalConfig(
                dataset=",".join(urls),
                num_images=args.zoo_images,
                pretrained=False,
                device="cpu",
                num_workers=0,
                output_dir=str(work / "results"),
                progress=False,
            )
            t0 = time.perf_counter()
            entries = run_zoo(cfg, list(args.models), log=None)
            wall = time.perf_counter() - t0
            out["zoo"] = {
                "models": [e.__dict__ for e in entries],
                "zoo_images": args.zoo_images,
                "seconds": round(wall, 1),
                "models_per_hour": round(3600 * len(entries) / wall, 1),
            }
            for e in entries:
                print(f"zoo {e.model:28s} {e.status:6s} {e.seconds:7.1f} s  R_f {e.relative_stability}")
            print(
                f"zoo: {len(entries)} models x {args.zoo_images} images in {wall:.0f} s = "
                f"{out['zoo']['models_per_hour']} models/hour"
            )
        out["aborted_responses"] = server.aborted
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
