"""``hubstab eval MODEL``: measure R_f = D_f / G_f and the test error, write a results file."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from hubstab.errors import HubstabError
from hubstab.results.io import DEFAULT_RESULTS_DIR

HELP = "measure the relative stability R_f of a model and write a results file"

EPILOG = """examples:
  hubstab eval facebook/deit-small-patch16-224
  hubstab eval timm/resnet50.a1_in1k --dataset ./val-images --num-images 1000 --dtype bfloat16
  hubstab eval ./my-checkpoint --dataset fashion_mnist --split test --delta 1 --cut 3
  hubstab eval resnet18.a1_in1k --temperatures paper --layers blocks
  hubstab eval MODEL --num-processes 2        (or: accelerate launch -m hubstab eval MODEL)
  hubstab eval timm/resnet18.a1_in1k facebook/deit-small-patch16-224 --protocol in1k-v1
  hubstab eval --models 'timm:resnet*' --top 10 --shard 0/4   (a zoo: failures recorded, exit 1 if any)

exit codes: 0 success, 1 the run failed, 2 bad input (unknown model or dataset, bad option, output folder
not writable, NaN/Inf outputs), 130 interrupted by Ctrl-C, 143 by SIGTERM (finished images are saved and
the same command resumes)."""


def _temperatures(text: str) -> list[float] | str:
    if text.strip().lower() == "paper":
        return "paper"
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError("a comma-separated list of temperatures, or 'paper'") from err


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError("an integer or 'auto'") from err


def _label_map(text: str) -> dict[int, int] | str:
    if text.strip() == "identity":
        return "identity"
    try:
        pairs = [p.split(":") for p in text.split(",") if p.strip()]
        return {int(a): int(b) for a, b in pairs}
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            "pairs DATASET_LABEL:MODEL_LABEL separated by commas, e.g. 0:3,1:7"
        ) from err


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help=HELP,
        description="Measure D_f, G_f, R_f = D_f / G_f (with a bootstrap interval) and the test error of an "
        "image classifier, and write a versioned results file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        nargs="*",
        help="timm name, hub id (org/name, timm/..., hf-hub:...), '@REV' suffix, or local folder; "
        "several ids evaluate each in turn (see --models-file, --models)",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        help="hub dataset id, local folder (images, saved dataset, parquet); default: "
        "the default dataset of the model's label space (see README)",
    )
    g.add_argument(
        "--split", help="dataset split (default: the first of validation, valid, val, test, train)"
    )
    g.add_argument("--dataset-config", help="dataset configuration name")
    g.add_argument("--dataset-revision", help="dataset revision (branch, tag or commit)")
    g.add_argument("--image-column", help="image column (default: detected from the features)")
    g.add_argument("--label-column", help="label column (default: detected from the features)")
    g.add_argument(
        "--label-map",
        type=_label_map,
        help="dataset->model label pairs, e.g. 0:3,1:7, or 'identity' when the dataset's label indices are the model's",
    )
    g.add_argument(
        "--num-images", type=int, default=500, help="probe images P, a seeded selection (default 500)"
    )
    g.add_argument(
        "--num-error-images", type=int, help="images for the test error when more than P (clean passes only)"
    )
    g.add_argument(
        "--streaming", action="store_true", help="stream a large hub dataset instead of downloading it"
    )
    g = p.add_argument_group("protocol")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--delta", type=float, default=1.0, help="typical displacement in pixels (default 1)")
    m.add_argument("--temperature", type=float, help="diffeo temperature T instead of --delta")
    g.add_argument(
        "--temperatures",
        type=_temperatures,
        default=[],
        help="extra temperatures for a sweep (comma list), or 'paper' for 30 in [T1/15, 2 T2]",
    )
    g.add_argument("--cut", type=int, default=3, help="high-frequency cut-off c (default 3)")
    g.add_argument(
        "--interp", default="linear", choices=["linear", "nearest", "gaussian"], help="interpolation"
    )
    g.add_argument(
        "--estimator", default="mean", choices=["mean", "median"], help="mean (default) or the paper's median"
    )
    g.add_argument("--repeats", type=int, default=1, help="diffeo and noise draws per image (default 1)")
    g.add_argument("--seed", type=int, default=0, help="seed of the selection and perturbations (default 0)")
    g.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples for the interval (default 1000)"
    )
    g.add_argument(
        "--batchnorm",
        default="eval",
        choices=["eval", "batch"],
        help="BatchNorm statistics: running (eval, default) or batch: those of the whole probe set per input "
        "kind, as the paper at initialisation (independent of --batch-size and processes)",
    )
    g.add_argument(
        "--noise-space",
        default="pixel",
        choices=["pixel", "normalized"],
        help="noise isotropic in [0, 1] pixels (default) or after mean/std normalisation (the authors' "
        "CIFAR-10 / Fashion-MNIST setting)",
    )
    g.add_argument(
        "--denominator",
        default="distinct",
        choices=["distinct", "all-pairs"],
        help="pairs of the denominator: distinct images (default) or the authors' P x P with self-pairs",
    )
    g.add_argument("--layers", help="also measure layers: 'blocks', 'all', or comma-separated module names")
    g.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="SPEC",
        help="also measure: equivariance:TRANSFORM[:MODE[:METRIC]] (e.g. equivariance:rotation90, "
        "equivariance:translation:equivariance:euclidean) or class-manifold[:CLASS]; one of each kind",
    )
    g.add_argument(
        "--metric-images", type=int, default=32, help="images for --metric measurements (default 32)"
    )
    g = p.add_argument_group("model")
    g.add_argument("--revision", help="model revision (also accepted as MODEL@REV)")
    g.add_argument(
        "--model-name",
        help="name to record the results under (default: the id; a local folder is otherwise named by its path)",
    )
    g.add_argument("--untrained", action="store_true", help="random initialisation of the architecture")
    g.add_argument(
        "--trust-remote-code", action="store_true", help="allow code from the model repo (off by default)"
    )
    g = p.add_argument_group("running")
    g.add_argument(
        "--batch-size",
        type=_batch_size,
        default="auto",
        help="largest forward batch (clean, deformed, noisy count separately) or 'auto' (default)",
    )
    g.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="compute dtype (autocast)",
    )
    g.add_argument("--device", help="cpu or cuda (default: the accelerator Accelerate finds)")
    g.add_argument("--num-workers", type=int, default=2, help="data-loading workers per process (default 2)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument(
        "--num-processes",
        type=int,
        default=1,
        help="launch this many processes (torchrun) and split the images",
    )
    g = p.add_argument_group("output")
    g.add_argument(
        "--output-dir", default=DEFAULT_RESULTS_DIR, help=f"results folder (default ./{DEFAULT_RESULTS_DIR})"
    )
    g.add_argument(
        "--per-sample", action="store_true", help="also write per-image values beside the results file"
    )
    g.add_argument("--push-to-hub", metavar="REPO", help="upload the results file to this hub dataset repo")
    g.add_argument(
        "--pr",
        action="store_true",
        help="with --push-to-hub: open a pull request instead of committing to main",
    )
    g.add_argument("--overwrite", action="store_true", help="run again even if these settings were evaluated")
    g.add_argument("--no-resume", action="store_true", help="ignore partial results of an interrupted run")
    g.add_argument("--quiet", action="store_true", help="no progress bar or messages, only the summary")
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=8,
        metavar="N",
        help="save finished images every N batches or 60 s, whichever comes first (default 8)",
    )
    g.add_argument(
        "--exclude-nonfinite",
        action="store_true",
        help="leave out probe images whose outputs are NaN/Inf, with a note (default: stop with an error)",
    )
    g.add_argument(
        "--check",
        action="store_true",
        help="check the settings, device and output folder, then stop (nothing is loaded)",
    )

    from hubstab.runner.zoo import add_arguments

    add_arguments(p)
    return p


def _relaunch(args: argparse.Namespace) -> int:
    argv = list(args._argv)
    i = argv.index("--num-processes") if "--num-processes" in argv else None
    if i is not None:
        del argv[i : i + 2]
    else:
        argv = [a for a in argv if not a.startswith("--num-processes=")]
    cmd = [
        sys.executable,
        "-m",
        "hubstab.cli._torchrun",
        "--standalone",
        f"--nproc_per_node={args.num_processes}",
        "-m",
        "hubstab.cli",
        *argv,
    ]
    env = dict(os.environ, HUBSTAB_LAUNCHED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return _wait_forwarding_signals(subprocess.Popen(cmd, env=env))


def _wait_forwarding_signals(proc: subprocess.Popen) -> int:
    """Wait for the launcher; SIGTERM is passed on to it, and on Ctrl-C (which the whole process group
    receives) we wait while the processes save what they finished, then exit 130 or 143."""
    import signal

    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                received.append(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if received:
        print(
            f"hubstab eval: interrupted by {signal.Signals(received[0]).name}; each process said above what it saved",
            file=sys.stderr,
        )
        return 128 + received[0]
    return code


def config_from_args(args: argparse.Namespace):
    """The :class:`~hubstab.runner.config.EvalConfig` of parsed ``hubstab eval`` options."""
    from hubstab.runner.config import EvalConfig

    model, revision = (args.model[0] if args.model else ""), args.revision
    temps = args.temperatures
    return EvalConfig(
        model=model,
        model_name=args.model_name,
        dataset=args.dataset,
        split=args.split,
        dataset_config=args.dataset_config,
        dataset_revision=args.dataset_revision,
        image_column=args.image_column,
        label_column=args.label_column,
        label_map=args.label_map,
        revision=revision,
        num_images=args.num_images,
        num_error_images=args.num_error_images,
        delta=None if args.temperature is not None else args.delta,
        temperature=args.temperature,
        temperatures=temps,
        cut=args.cut,
        interp=args.interp,
        estimator=args.estimator,
        repeats=args.repeats,
        seed=args.seed,
        bootstrap=args.bootstrap,
        batchnorm=args.batchnorm,
        noise_space=args.noise_space,
        denominator=args.denominator,
        layers=[s.strip() for s in args.layers.split(",")]
        if args.layers and "," in args.layers
        else ([args.layers] if args.layers else None),
        metrics=list(args.metric),
        metric_images=args.metric_images,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        num_workers=args.num_workers,
        compile=args.compile,
        pretrained=not args.untrained,
        trust_remote_code=args.trust_remote_code,
        streaming=args.streaming,
        output_dir=args.output_dir,
        per_sample=args.per_sample,
        push_to_hub=args.push_to_hub,
        push_pr=args.pr,
        overwrite=args.overwrite,
        resume=not args.no_resume,
        progress=not args.quiet,
        checkpoint_every_batches=args.checkpoint_every,
        nonfinite="exclude" if args.exclude_nonfinite else "error",
    )


def _g(value, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, (int, float)) else "n/a"


def _e(value) -> str:
    return f"{value:.3e}" if isinstance(value, (int, float)) else "n/a"


def format_sweep(result) -> list[str]:
    """Table lines of a temperature sweep: T, delta, R_f with its interval, D_f, G_f (empty without one)."""
    from hubstab.metrics.sweeps import sweep_table

    rows = sweep_table(result)
    if len(rows) < 2:
        return []
    lines = [f"sweep    {'T':>10}  {'delta px':>8}  {'R_f':>8}  {'95% CI':>19}  {'D_f':>9}  {'G_f':>9}"]
    for r in rows:
        ci = f"{_g(r['ci_low'])} - {_g(r['ci_high'])}" if r["ci_low"] is not None else "n/a"
        lines.append(
            f"         {_e(r['temperature']):>10}  {_g(r['delta'], 3):>8}  {_g(r['relative_stability']):>8}  "
            f"{ci:>19}  {_g(r['diffeo_stability']):>9}  {_g(r['noise_stability']):>9}"
        )
    return lines


def format_layers(result) -> list[str]:
    """Table lines of per-layer R_k, D_k, G_k at the headline temperature, the output last."""
    from hubstab.metrics.sweeps import layers_table

    if not result.layers:
        return []
    rows = layers_table(result)
    width = max(len(str(r["layer"])) for r in rows)
    lines = [f"layers   {'layer':<{width}}  {'R_k':>8}  {'D_k':>9}  {'G_k':>9}"]
    for r in rows:
        lines.append(
            f"         {r['layer']!s:<{width}}  {_g(r['relative_stability']):>8}  "
            f"{_g(r['diffeo_stability']):>9}  {_g(r['noise_stability']):>9}"
        )
    return lines


def format_summary(result) -> str:
    """The readable end-of-run summary: model, dataset, R_f, D_f, G_f, test error, then the sweep (T, delta,
    R_f, D_f, G_f per temperature) and the per-layer R_k when measured, notes, time and file paths."""
    from pathlib import Path

    from hubstab.results.summary import metric_lines

    cfg = result.extra.get("config", {})
    env = result.extra.get("environment") or {}
    lines = [
        f"model    {cfg.get('model_name')} ({cfg.get('adapter')}"
        + (f", revision {cfg.get('model_revision')}" if cfg.get("model_revision") else "")
        + ")",
        f"dataset  {cfg.get('dataset')}"
        + (f" [{cfg.get('split')}]" if cfg.get("split") else "")
        + f", {result.num_images} probe images",
        result.summary(),
    ]
    published = result.extra.get("published")
    if published:
        lines.append(f"published top-1 error = {100 * published['top1_error']:.2f}% ({published['source']})")
    protocol = cfg.get("protocol") or {}
    if cfg.get("protocol_id"):
        name = f"{protocol['name']} v{protocol.get('version')}, " if protocol.get("name") else ""
        lines.append(f"protocol {name}{cfg['protocol_id']}")
    lines += format_sweep(result)
    lines += format_layers(result)
    lines += metric_lines(result.extra)  # --metric: equivariance deviation, class-manifold dimension
    lines += [f"note     {n}" for n in result.notes]
    tail = []
    if result.extra.get("wall_time_s") is not None:
        tail.append(
            f"time {result.extra['wall_time_s']:.1f} s on {env.get('device')} x{env.get('num_processes', 1)}"
        )
    if result.extra.get("results_file"):
        tail.append(
            f"results {result.extra['results_file']}" + (" (reused)" if result.extra.get("reused") else "")
        )
    if tail:
        lines.append("   ".join(tail))
    if result.extra.get("results_file"):
        samples = Path(result.extra["results_file"]).with_suffix(".samples.json")
        if samples.is_file():
            lines.append(f"per-sample values {samples}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.num_processes < 1:
        raise HubstabError("--num-processes must be >= 1")
    cfg = config_from_args(args)
    from hubstab.runner.zoo import apply_cli_protocol, is_zoo, run_cli

    apply_cli_protocol(cfg, args)
    if args.check:
        import warnings

        from hubstab.runner.preflight import preflight

        for message in preflight(cfg):
            warnings.warn(message, UserWarning, stacklevel=1)
        print(f"settings are valid; results would go to {cfg.output_dir}")
        return 0
    if args.num_processes > 1 and "WORLD_SIZE" not in os.environ:
        return _relaunch(args)
    from hubstab.runner.engine import run_evaluation

    if is_zoo(args):
        return run_cli(args, cfg)
    if not args.model:
        raise HubstabError("give a MODEL id (or several, or --models-file FILE, or --models 'timm:PATTERN')")
    result = run_evaluation(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_summary(result))
    return 0
