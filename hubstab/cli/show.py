"""``hubstab show FILE``: one results file, validated, as a summary or as JSON."""

from __future__ import annotations

import argparse
import json

HELP = "show one results file (validated)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("show", help=HELP, description="Validate a results file and print its summary.")
    p.add_argument("file", help="a results .json file")
    p.add_argument("--json", action="store_true", help="print the validated JSON instead of the summary")
    return p


def run(args: argparse.Namespace) -> int:
    from hubstab.cli.eval import format_summary
    from hubstab.results.io import result_from_record
    from hubstab.results.validate import load_record

    record = load_record(args.file)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    result = result_from_record(record)
    result.extra["wall_time_s"] = record.get("wall_time_s")
    print(format_summary(result))
    protocol = record["config"]["protocol"]
    keys = (
        "temperature",
        "delta",
        "cut",
        "interp",
        "estimator",
        "seed",
        "repeats",
        "image_size",
        "num_images",
        "bootstrap",
    )
    print("settings " + ", ".join(f"{k}={protocol.get(k)}" for k in keys))
    if len(result.sweep) > 1:
        print(
            "sweep    T -> R_f: "
            + ", ".join(f"{p.temperature:.3g}:{p.relative_stability:.3g}" for p in result.sweep)
        )
    if result.layers:
        print(
            "layers   R_k: "
            + ", ".join(f"{k}={v['relative_stability'][0]:.3g}" for k, v in result.layers.items())
        )
    print(f"run_id   {record['run_id']}   created {record.get('created_at')}")
    return 0
