"""``hubstab plot layers|sweep|error RESULTS.json... -o out.png``: figures of results files."""

from __future__ import annotations

import argparse
from pathlib import Path

from hubstab.errors import HubstabError

HELP = "plot results files: R_k against depth, R_f against T, test error against R_f"

KINDS: tuple[str, ...] = ("layers", "sweep", "error")
FORMATS: tuple[str, ...] = (".png", ".svg", ".pdf")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "plot",
        help=HELP,
        description=(
            "layers: R_k, D_k, G_k against depth (one file, measured with --layers); "
            "sweep: R_f, D_f, G_f against temperature (one line per file); "
            "error: test error against R_f (one point per file; folders are searched for *.json)."
        ),
    )
    parser.add_argument("kind", choices=KINDS, help="which figure")
    parser.add_argument("results", nargs="+", type=Path, help="results files (JSON) or folders of them")
    parser.add_argument("-o", "--output", type=Path, required=True, help="figure file: .png, .svg or .pdf")
    parser.add_argument("--temperature", type=float, default=None, help="layers: temperature to show")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--dpi", type=int, default=150, help="resolution of PNG files")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="error: draw the CIFAR-10 fit 0.2 sqrt(R_f) of Petrini et al.",
    )
    return parser


def _files(paths: list[Path]) -> list[Path]:
    from hubstab.results.io import iter_result_files

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            # the same files as `hubstab ls`: no per-sample files, hidden folders (.partial) or FIFOs
            files.extend(iter_result_files(path))
        elif path.is_file():
            files.append(path)
        else:
            raise HubstabError(f"no such results file or folder: {path}")
    if not files:
        raise HubstabError("no results files (*.json) found in the folders given")
    return files


def run(args: argparse.Namespace) -> int:
    from hubstab import plots

    if args.output.suffix.lower() not in FORMATS:
        raise HubstabError(f"the output must end in one of {', '.join(FORMATS)}, got {args.output.name!r}")
    files = _files(list(args.results))
    if args.kind == "layers":
        if len(files) != 1:
            raise HubstabError("`hubstab plot layers` draws one results file; give exactly one")
        from hubstab.metrics.sweeps import layers_table

        record = plots.load_source(files[0])
        if len(layers_table(record, args.temperature)) < 2:
            raise HubstabError(
                f"{files[0]} has no layer-wise values: measure them with `hubstab eval MODEL --layers blocks`"
            )
        fig = plots.plot_layers(record, temperature=args.temperature, title=args.title)
    elif args.kind == "sweep":
        fig = plots.plot_sweep(files, title=args.title)
    else:
        fig = plots.plot_error_vs_stability(files, reference=args.reference, title=args.title)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=args.dpi)
    print(f"wrote {args.output}")
    return 0
