"""Many models in one command: ``hubstab eval ID1 ID2 ...``, ``--models-file``, ``--models 'timm:PATTERN'``.

Every model runs under the same settings (one protocol), resumably: a model already evaluated with these
settings is reused from its results file, a failing model (unknown id, gated repo, out of memory after the
batch backoff, non-finite outputs, ...) is recorded with its reason and the next one runs. Models and their
memory are released between models. The probe images of a dataset are fetched once and then read from the
probe-set cache. ``--shard I/N`` keeps every N-th model starting at I (0-based), for job arrays; within a
model, Accelerate still splits the images over processes.

The status of every model is appended, as it finishes, to ``<output-dir>/.zoo/<start time>.jsonl``.
"""

from __future__ import annotations

import copy
import fnmatch
import gc
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hubstab.errors import HubstabError


@dataclass
class ZooEntry:
    """The outcome of one model of a zoo run.

    Attributes:
        model: the id as given.
        status: ``"ok"`` (measured), ``"reused"`` (an earlier results file with the same settings) or
            ``"failed"``.
        reason: why it failed (one line), else None.
        relative_stability, test_error: the headline numbers (None when failed or unknown).
        published_top1_error: timm's published ImageNet top-1 error (fraction), when known.
        protocol: the protocol name recorded (``in1k-v1``, ``paper``, ``custom``).
        results_file: the results file written or reused.
        seconds: wall time spent on the model in this command.
    """

    model: str
    status: str
    reason: str | None = None
    relative_stability: float | None = None
    test_error: float | None = None
    published_top1_error: float | None = None
    protocol: str | None = None
    results_file: str | None = None
    seconds: float = 0.0


def read_models_file(path: str | os.PathLike) -> list[str]:
    """Model ids from a file: one per line, ``#`` starts a comment, blank lines ignored, ``@rev`` kept."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise HubstabError(f"cannot read the models file {path}: {exc.strerror or exc}") from exc
    models = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            models.append(line)
    return models


def timm_models(pattern: str, top: int | None = None) -> list[str]:
    """timm's pretrained tags matching a glob (``timm:resnet*``, ``resnet*.a1_in1k``).

    With ``top``, the ``top`` best by published ImageNet top-1 (timm's results CSV); tags without a
    published value are left out then.
    """
    import timm

    from hubstab.adapters.published import published_table, rank_by_published

    glob = pattern.removeprefix("timm:")
    names = [
        n
        for n in timm.list_pretrained()
        if fnmatch.fnmatchcase(n, glob) or fnmatch.fnmatchcase(n, glob + ".*")
    ]
    if not names:
        raise HubstabError(f"no timm pretrained model matches {glob!r}")
    if top is not None:
        table = published_table()
        names = rank_by_published([n for n in names if n in table])[:top]
        if not names:
            raise HubstabError(f"no timm model matching {glob!r} has a published ImageNet result")
    return names


def take_shard(models: list[str], shard: str | None) -> list[str]:
    """Every N-th model starting at I for ``shard = "I/N"`` (0 <= I < N); all models when None."""
    if not shard:
        return list(models)
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError as exc:
        raise HubstabError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4), got {shard!r}") from exc
    if not 0 <= i < n:
        raise HubstabError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4), got {shard!r}")
    return list(models[i::n])


def collect_models(
    ids: list[str],
    *,
    models_file: str | None = None,
    pattern: str | None = None,
    top: int | None = None,
    shard: str | None = None,
) -> list[str]:
    """The models of a zoo command, in order and without duplicates, then sharded."""
    if top is not None and (top < 1 or not pattern):
        raise HubstabError("--top K needs K >= 1 and --models 'timm:PATTERN'")
    models = list(ids)
    if models_file:
        models += read_models_file(models_file)
    if pattern:
        models += timm_models(pattern, top)
    models = list(dict.fromkeys(models))
    if not models:
        raise HubstabError(
            "no model to evaluate: give MODEL ids, --models-file FILE or --models 'timm:PATTERN'"
        )
    return take_shard(models, shard)


def _release() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, HubstabError):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def run_zoo(cfg: Any, models: list[str], *, log: Any = print, evaluate: Any = None) -> list[ZooEntry]:
    """Evaluate every model of ``models`` with the settings of ``cfg`` (an ``EvalConfig``), one after another.

    Args:
        cfg: the settings shared by all models (its ``model`` field is replaced per model).
        models: model ids.
        log: where progress lines go (None: nowhere).
        evaluate: the evaluation function (default :func:`hubstab.runner.engine.run_evaluation`).

    Returns:
        One :class:`ZooEntry` per model, in order; failures are entries, not exceptions (an interrupt
        still stops the loop).
    """
    if evaluate is None:
        from hubstab.runner.engine import run_evaluation as evaluate
    say = log or (lambda _msg: None)
    journal = None
    if cfg.output_dir and int(os.environ.get("RANK", "0")) == 0:
        folder = Path(cfg.output_dir) / ".zoo"
        folder.mkdir(parents=True, exist_ok=True)
        journal = folder / (time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}.jsonl")
    entries = []
    for k, model in enumerate(models, 1):
        say(f"[{k}/{len(models)}] {model}")
        run_cfg = copy.deepcopy(cfg)
        run_cfg.model = model
        started = time.time()
        try:
            result = evaluate(run_cfg)
            rf = result.relative_stability
            if rf is None or not math.isfinite(rf):
                raise HubstabError(f"non-finite R_f ({rf}): the model's outputs are not finite")
            protocol = (result.extra.get("config") or {}).get("protocol") or result.settings
            entry = ZooEntry(
                model=model,
                status="reused" if result.extra.get("reused") else "ok",
                relative_stability=float(rf),
                test_error=result.test_error,
                published_top1_error=(result.extra.get("published") or {}).get("top1_error"),
                protocol=protocol.get("name"),
                results_file=result.extra.get("results_file"),
            )
        except KeyboardInterrupt:
            raise
        except Exception as err:  # every failure is recorded and the next model runs
            entry = ZooEntry(model=model, status="failed", reason=_reason(err))
            say(f"  failed: {entry.reason}")
        finally:
            result = None
            _release()
        entry.seconds = round(time.time() - started, 3)
        entries.append(entry)
        if journal is not None:
            with open(journal, "a") as f:
                f.write(json.dumps(asdict(entry)) + "\n")
    return entries


def format_table(entries: list[ZooEntry]) -> str:
    """The end-of-run table: one line per model with R_f, test error, published error, status, seconds."""

    def pct(v: float | None) -> str:
        return f"{100 * v:.2f}%" if v is not None else "-"

    rows = [("model", "R_f", "test error", "published", "protocol", "status", "s")]
    for e in entries:
        rows.append(
            (
                e.model,
                f"{e.relative_stability:.4g}" if e.relative_stability is not None else "-",
                pct(e.test_error),
                pct(e.published_top1_error),
                e.protocol or "-",
                e.status if e.status != "failed" else f"FAILED: {e.reason}",
                f"{e.seconds:.1f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 2)]
    lines = []
    for r in rows:
        head = "  ".join(c.ljust(w) for c, w in zip(r[:-2], widths, strict=False))
        lines.append(f"{head}  {r[-1].rjust(6)}  {r[-2]}")
    failed = sum(e.status == "failed" for e in entries)
    done = len(entries) - failed
    total = sum(e.seconds for e in entries)
    lines.append(f"{done} of {len(entries)} models evaluated, {failed} failed, {total:.0f} s")
    return "\n".join(lines)


def add_arguments(parser: Any) -> None:
    """The zoo and protocol options of ``hubstab eval`` (models, ``--models-file``, ``--models``, ``--top``,
    ``--shard``, ``--protocol``)."""
    from hubstab.protocols import DEFAULT_PROTOCOL, PROTOCOLS

    g = parser.add_argument_group("many models (a zoo) and protocols")
    g.add_argument(
        "--models-file", metavar="FILE", help="model ids, one per line ('#' comments, '@rev' allowed)"
    )
    g.add_argument(
        "--models",
        metavar="timm:PATTERN",
        help="timm's pretrained tags matching a glob, e.g. 'timm:resnet*' or 'timm:*.a1_in1k'",
    )
    g.add_argument(
        "--top", type=int, metavar="K", help="with --models: the K best by published ImageNet top-1"
    )
    g.add_argument("--shard", metavar="I/N", help="every N-th model starting at I (0-based), for job arrays")
    g.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        help=f"a named, versioned bundle of settings (default for ImageNet-1k models: {DEFAULT_PROTOCOL}); "
        "an explicit option that changes one of them makes the run 'custom'",
    )


def is_zoo(args: Any) -> bool:
    """Whether a parsed ``hubstab eval`` command asks for several models."""
    return len(args.model) > 1 or bool(args.models_file or args.models or args.shard)


def apply_cli_protocol(cfg: Any, args: Any) -> None:
    """Apply ``--protocol NAME`` to ``cfg``, keeping the protocol options given explicitly on the command line."""
    if getattr(args, "protocol", None):
        from hubstab.protocols import apply_protocol, explicit_options

        apply_protocol(cfg, args.protocol, explicit_options(list(getattr(args, "_argv", []))))


def run_cli(args: Any, cfg: Any) -> int:
    """``hubstab eval`` over many models: run them, print the table; exit code 1 if any failed."""
    models = collect_models(
        list(args.model), models_file=args.models_file, pattern=args.models, top=args.top, shard=args.shard
    )
    main = int(os.environ.get("RANK", "0")) == 0
    entries = run_zoo(cfg, models, log=print if main and cfg.progress else None)
    if main:
        print(format_table(entries))
        for e in entries:
            if e.status == "failed":
                print(f"failed: {e.model}: {e.reason}", file=sys.stderr)
    return 1 if any(e.status == "failed" for e in entries) else 0
