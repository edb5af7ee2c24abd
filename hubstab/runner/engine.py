"""The evaluation runner: a model and a dataset in, a results file out, on one or many processes.

Images are split over the processes of an Accelerate (or torchrun) launch by position, every image keeps the
perturbations keyed by its global index, and the per-image statistics of all processes are gathered
without duplicates before reduction, so the numbers do not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hubstab.errors import DatasetError, HubstabError
from hubstab.metrics.finite import NonFiniteError, exclusion_note, measure_finite
from hubstab.metrics.result import StabilityResult
from hubstab.metrics.stability import (
    StabilityStats,
    as_logits,
    batch_stats,
    build_result,
    evaluation_mode,
    protocol_temperature,
    settings_dict,
)
from hubstab.results.io import find_existing, read_record, result_from_record, write_record
from hubstab.results.record import build_record, environment, indices_digest, run_identity
from hubstab.runner.checkpoint import Block, Checkpoint, RunLock
from hubstab.runner.config import EvalConfig
from hubstab.runner.preflight import OutputError

_AMP = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def make_accelerator(device: str | None = None):
    """An ``accelerate.Accelerator`` for evaluation (CPU when asked or when no accelerator is present).

    A device that was asked for but is absent (``cuda`` without a GPU) raises instead of falling back.
    """
    from accelerate import Accelerator

    from hubstab.runner.preflight import check_device

    check_device(device)
    cpu = device == "cpu" or not torch.cuda.is_available()
    return Accelerator(cpu=cpu)


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during a run; ``message`` says truthfully what was kept and where."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message)
        self.signum = signum
        self.message = message


class _Terminated(KeyboardInterrupt):
    signum = signal.SIGTERM


def _raise_terminated(signum, frame):
    raise _Terminated()


@contextlib.contextmanager
def _signals_as_interrupts():
    """SIGTERM raises like Ctrl-C (SIGINT) for the duration, so finished work is saved before exiting."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored():
    """A second Ctrl-C or SIGTERM does not cut the final checkpoint short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


class _Log:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(message, flush=True)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _with_oom_backoff(fn: Callable[[int], Any], max_batch: int, log: _Log) -> tuple[Any, int]:
    """Call ``fn(max_batch)``, halving the forward batch on out-of-memory errors; returns the batch that worked."""
    while True:
        try:
            return fn(max_batch), max_batch
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            if not _is_oom(err) or max_batch <= 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            max_batch = max(1, max_batch // 2)
            log(f"out of memory: retrying with forward batches of {max_batch}")


def _default_batch_size(device: torch.device) -> int:
    return 384 if device.type == "cuda" else 48


def _loader(dataset, positions: list[int], batch_size: int, num_workers: int, pin: bool):
    from torch.utils.data import DataLoader, Subset

    from hubstab.adapters import collate_probes

    return DataLoader(
        Subset(dataset, positions),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers if len(positions) > batch_size else 0,
        collate_fn=collate_probes,
        pin_memory=pin,
    )


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", dynamic_ncols=True, leave=False)


def _gather(acc, obj: Any) -> list[Any]:
    if acc.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def _load_probe_set(cfg: EvalConfig, dataset: Any, loaded, num_images: int | None):
    from hubstab.adapters import load_probe_set

    return load_probe_set(
        dataset,
        split=cfg.split,
        config_name=cfg.dataset_config,
        revision=cfg.dataset_revision,
        image_column=cfg.image_column,
        label_column=cfg.label_column,
        num_images=num_images,
        seed=cfg.seed,
        streaming=cfg.streaming,
        transform=loaded.preprocess,
    )


def _label_mapper(cfg: EvalConfig, loaded, probes):
    from hubstab.adapters import match_labels

    return match_labels(
        loaded.labels,
        probes.info.get("class_names"),
        mapping=cfg.label_map,
        model_label_space=loaded.label_space,
    )


def _model_forward(model: nn.Module, channels_last: bool) -> Callable[[torch.Tensor], Any]:
    if not channels_last:
        return model

    def forward(x: torch.Tensor) -> Any:
        return model(x.contiguous(memory_format=torch.channels_last))

    return forward


def run_evaluation(
    cfg: EvalConfig,
    *,
    model: nn.Module | Any | None = None,
    dataset: Any | None = None,
    data_config: Any | None = None,
    accelerator: Any | None = None,
    image_processor: Any | None = None,
) -> StabilityResult:
    """Evaluate ``cfg.model`` (or the given model object) on a dataset and write the results file.

    Returns the same :class:`StabilityResult` on every process. With ``cfg.output_dir`` set, an earlier run
    with identical settings is recognised and returned without recomputation (unless ``cfg.overwrite``),
    and an interrupted run resumes from its partial files.

    Settings, device and output folder are checked before the model is loaded. SIGINT and SIGTERM save
    what this process finished and raise :class:`RunInterrupted` (a ``KeyboardInterrupt``) whose message says
    what was kept; a second identical run waits for the first (a lock in ``.partial/``) and reuses its file.
    """
    from hubstab.runner.preflight import preflight

    for message in preflight(cfg):
        warnings.warn(message, HubstabWarning, stacklevel=2)
    state = _RunState()
    with _signals_as_interrupts():
        try:
            return _run(
                cfg,
                state,
                model=model,
                dataset=dataset,
                data_config=data_config,
                accelerator=accelerator,
                image_processor=image_processor,
            )
        except KeyboardInterrupt as err:
            if isinstance(err, RunInterrupted):
                raise
            raise RunInterrupted(getattr(err, "signum", signal.SIGINT), state.message(err)) from None


class HubstabWarning(UserWarning):
    """A legal setting outside the paper's range (e.g. a temperature past T2)."""


class _RunState:
    """What an interruption has to report: the checkpoint folder and how many images it holds."""

    def __init__(self):
        self.checkpoint: Checkpoint | None = None
        self.output_dir: str | None = None
        self.total: int | None = None
        self.kept = 0
        self.world = 1

    def message(self, err: BaseException) -> str:
        name = signal.Signals(getattr(err, "signum", signal.SIGINT)).name
        head = f"interrupted by {name}"
        if self.total is None:
            return f"{head} before measuring: nothing to keep"
        if self.checkpoint is None:
            return f"{head}: nothing kept (no --output-dir, so no partial files)"
        if self.kept == 0:
            return f"{head} before any image was finished: nothing to keep"
        if self.world > 1:
            return (
                f"{head}: the probe images this process finished are saved in {self.checkpoint.folder}; "
                "run the same command again to resume"
            )
        done = "all" if self.kept >= self.total else f"{self.kept} of"
        return (
            f"{head}: {done} {self.total} probe images measured are saved in {self.checkpoint.folder}; "
            f"run the same command again to resume"
        )


def _label_map_setting(label_map: Any) -> Any:
    if isinstance(label_map, dict):
        return sorted([int(a), int(b)] for a, b in label_map.items())
    return label_map


def _blocks(num_positions: int, size: int) -> list[list[int]]:
    return [list(range(s, min(s + size, num_positions))) for s in range(0, num_positions, size)]


def _run(
    cfg: EvalConfig,
    state: _RunState,
    *,
    model: nn.Module | Any | None,
    dataset: Any | None,
    data_config: Any | None,
    accelerator: Any | None,
    image_processor: Any | None = None,
) -> StabilityResult:
    from hubstab.adapters import default_dataset, load_model
    from hubstab.runner.preflight import delta_warning

    started = time.time()
    acc = accelerator if accelerator is not None else make_accelerator(cfg.device)
    log = _Log(acc.is_main_process and cfg.progress)
    state.world = acc.num_processes

    from hubstab.adapters import LoadedModel

    # a random initialisation is seeded by the run's seed: the same weights on every process and every run
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        loaded = (
            model
            if isinstance(model, LoadedModel)
            else load_model(
                model if model is not None else cfg.model,
                revision=cfg.revision,
                data_config=data_config,
                pretrained=cfg.pretrained,
                trust_remote_code=cfg.trust_remote_code,
                model_name=cfg.model_name,
                image_processor=image_processor,
            )
        )
    if cfg.model_name and loaded.name != cfg.model_name:
        loaded.name = cfg.model_name
    _, height, width = loaded.data_config.input_size
    if cfg.temperature is None and cfg.delta is not None and acc.is_main_process:
        from hubstab.perturbations.diffeo import effective_side

        message = delta_warning(cfg.delta, cfg.cut, effective_side(height, width))
        if message:
            warnings.warn(message, HubstabWarning, stacklevel=3)
    ds_spec = dataset if dataset is not None else cfg.dataset
    if ds_spec is None:
        default = default_dataset(loaded.label_space)
        if default is None:
            raise DatasetError(
                f"no default dataset for the label space of {loaded.name} ({loaded.label_space or 'unknown'}): "
                "pass --dataset"
            )
        ds_spec, default_split = default
        cfg.split = cfg.split or default_split
        log(f"dataset: {ds_spec} (split {cfg.split}), the default for {loaded.label_space} classifiers")
    # one fetch per machine: the first process fills the probe-set cache, the others read it (after it, even
    # when it failed, so that they fail with the same message instead of waiting)
    if not acc.is_local_main_process:
        acc.wait_for_everyone()
    try:
        probes = _load_probe_set(cfg, ds_spec, loaded, cfg.num_images)
    finally:
        if acc.is_local_main_process:
            acc.wait_for_everyone()
    if len(probes) < 2:
        raise DatasetError(f"the dataset has {len(probes)} usable image(s); R_f needs at least 2")
    mapper = _label_mapper(cfg, loaded, probes)
    info = probes.info

    t0, delta0 = protocol_temperature(
        height,
        width,
        cfg.cut,
        delta=None if cfg.temperature is not None else cfg.delta,
        temperature=cfg.temperature,
    )
    if cfg.temperatures == "paper":
        from hubstab.perturbations.diffeo import effective_side, sweep_temperatures

        extra = sweep_temperatures(effective_side(height, width), cfg.cut)
    else:
        extra = [float(t) for t in cfg.temperatures]
    temps = sorted({t0, *extra})
    amp_dtype = _AMP.get(cfg.dtype)
    settings = settings_dict(
        temperature=t0,
        delta=delta0,
        cut=cfg.cut,
        interp=cfg.interp,
        estimator=cfg.estimator,
        seed=cfg.seed,
        repeats=cfg.repeats,
        image_size=(height, width),
        num_images=len(probes),
        bootstrap=cfg.bootstrap,
        confidence=cfg.confidence,
        batchnorm=cfg.batchnorm,
        amp_dtype=amp_dtype,
        noise_space=cfg.noise_space,
        denominator=cfg.denominator,
    )
    settings["temperatures"] = temps
    settings["layers"] = list(cfg.layers) if cfg.layers else None
    settings["num_error_images_requested"] = cfg.num_error_images
    # everything else that changes a number is part of the run id too
    settings["num_images_requested"] = cfg.num_images
    settings["label_map"] = _label_map_setting(cfg.label_map)
    settings["metrics"] = list(cfg.metrics) or None
    settings["metric_images"] = cfg.metric_images if cfg.metrics else None
    settings["nonfinite"] = cfg.nonfinite
    from hubstab.protocols import protocol_settings

    settings.update(protocol_settings(cfg, info, num_images=len(probes), delta=delta0))
    record_config = {
        "model_name": loaded.name,
        "model_revision": loaded.revision,
        "model_sha": getattr(loaded, "commit_sha", None),
        "adapter": loaded.adapter,
        "model_dtype": cfg.dtype,
        "num_parameters": loaded.num_parameters,
        "pretrained": loaded.pretrained,
        "label_space": loaded.label_space,
        "dataset": info.get("dataset"),
        "dataset_path": info.get("dataset_path"),
        "model_path": getattr(loaded, "local_path", None),
        "dataset_config": info.get("dataset_config"),
        "split": info.get("split"),
        "dataset_revision": info.get("dataset_revision"),
        "image_column": info.get("image_column"),
        "label_column": info.get("label_column"),
        "num_images": len(probes),
        "indices_sha256": indices_digest(info["indices"]),
        "selection_seed": cfg.seed,
    }
    run_id = run_identity({**record_config, "protocol": settings})

    def reuse() -> StabilityResult | None:
        if not cfg.output_dir or cfg.overwrite:
            return None
        existing = find_existing(cfg.output_dir, record_config, run_id)
        if existing is None:
            return None
        log(f"already evaluated with these settings: {existing} (use --overwrite to run again)")
        result = result_from_record(read_record(existing))
        result.extra["results_file"] = str(existing)
        result.extra["reused"] = True
        if cfg.push_to_hub and acc.is_main_process:  # a reused result is pushed as a new one would be
            from hubstab.results.push import push_results

            result.extra["pushed_to"] = push_results(existing, cfg.push_to_hub, pr=cfg.push_pr)
            log(f"pushed to {result.extra['pushed_to']}")
        return result

    earlier_result = reuse()
    if earlier_result is not None:
        return earlier_result

    # --- claim the run: a second identical run waits here, then reuses the first one's file ----------------
    lock = RunLock(cfg.output_dir, run_id) if cfg.output_dir and acc.is_main_process else None
    if lock is not None:
        lock.acquire(lambda who: log(f"{who} is measuring these settings: waiting for it (Ctrl-C to stop)"))
    try:
        acc.wait_for_everyone()
        earlier_result = reuse()
        if earlier_result is not None:
            return earlier_result
        return _measure(
            cfg, state, acc, log, loaded, probes, mapper, ds_spec, temps, t0, amp_dtype, settings,
            record_config, run_id, started,
        )  # fmt: skip
    finally:
        if lock is not None:
            lock.release()


def _measure(
    cfg, state, acc, log, loaded, probes, mapper, ds_spec, temps, t0, amp_dtype, settings,
    record_config, run_id, started,
) -> StabilityResult:  # fmt: skip
    """Measure the blocks not finished yet, reduce, write the results file (under the run's lock)."""
    device = acc.device
    world, rank = acc.num_processes, acc.process_index
    max_batch = cfg.batch_size if isinstance(cfg.batch_size, int) else _default_batch_size(device)
    block_size = max(1, max_batch // 3)
    blocks = _blocks(len(probes), block_size)
    state.total = len(probes)

    # --- resume: blocks finished by earlier sessions, whatever their number of processes -------------------
    session = _gather(acc, uuid.uuid4().hex[:12])[0]
    checkpoint = (
        Checkpoint(cfg.output_dir, run_id, rank, session, block_size=block_size) if cfg.output_dir else None
    )
    state.checkpoint = checkpoint
    earlier = checkpoint.load() if checkpoint is not None and cfg.resume else []
    earlier = [b for b in earlier if 0 <= b.number < len(blocks)]
    acc.wait_for_everyone()
    done = {b.number for b in earlier}
    state.kept = sum(b.num_images for b in earlier)
    if checkpoint is not None and checkpoint.ignored:
        log(f"partial files not used: {', '.join(checkpoint.ignored)}")
    if done:
        log(f"resuming: {state.kept} of {len(probes)} images already measured")
    remaining = [n for n in range(len(blocks)) if n not in done]
    mine = remaining[rank::world]

    # --- measure ------------------------------------------------------------------------------------------
    net = loaded.model
    if loaded.pretrained is False:
        note = "untrained model"
        if cfg.batchnorm == "eval" and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()
        ):
            note += " evaluated with BatchNorm running statistics; the paper used batch statistics (--batchnorm batch)"
        settings["untrained_note"] = note
    net = net.to(device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    eager = net
    if cfg.compile:
        net = torch.compile(net)
    forward = _model_forward(net, channels_last)
    mean = torch.tensor(loaded.data_config.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(loaded.data_config.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    loader = _block_loader(probes, [blocks[n] for n in mine], cfg.num_workers, device.type == "cuda")
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    layers_ctx = contextlib.nullcontext(forward)
    if cfg.layers:
        from hubstab.metrics.layers import layer_forward

        layers_ctx = layer_forward(forward, cfg.layers, hooked=net)

    from hubstab.metrics.batchnorm import batchnorm_layers

    full_set = cfg.batchnorm == "batch" and bool(batchnorm_layers(eager))
    calibration = contextlib.nullcontext()
    if full_set:
        calibration = _full_set_statistics(
            cfg,
            probes,
            eager,
            loaded.data_config.input_size,
            channels_last,
            (mean, std),
            temps,
            max_batch,
            acc,
            log,
        )

    finished: list[Block] = []
    unsaved: list[Block] = []
    last_save = time.time()

    def save() -> None:
        nonlocal unsaved, last_save
        if checkpoint is not None and unsaved:
            checkpoint.save(unsaved)
            state.kept += sum(b.num_images for b in unsaved)
        unsaved = []
        last_save = time.time()

    bar = _progress(len(probes) - state.kept, acc.is_main_process and cfg.progress, "R_f")
    try:
        mode = evaluation_mode(net, "eval" if full_set else cfg.batchnorm)
        with mode, amp, calibration as bn_statistics, layers_ctx as fwd:
            bn_world = getattr(bn_statistics, "world_size", None)
            for number, (images, labels, indices, n_skipped) in zip(mine, loader, strict=True):
                if images.shape[0] == 0:
                    block = Block(number, None, n_skipped)
                else:
                    mapped = torch.tensor([mapper(int(y)) for y in labels], dtype=torch.int64)

                    def step(mfb: int, images=images, indices=indices, mapped=mapped):
                        def measure(keep: torch.Tensor) -> StabilityStats:
                            return batch_stats(
                                fwd,
                                images[keep].to(device, non_blocking=True),
                                indices[keep].to(device),
                                temps,
                                labels=mapped[keep].to(device),
                                cut=cfg.cut,
                                interp=cfg.interp,
                                seed=cfg.seed,
                                repeats=cfg.repeats,
                                keep_components=cfg.estimator == "median",
                                max_forward_batch=mfb,
                                normalize=(mean, std),
                                fuse=cfg.batchnorm == "eval",
                                noise_space=cfg.noise_space,
                                batchnorm_statistics=bn_statistics,
                            )

                        everything = torch.ones(images.shape[0], dtype=torch.bool)
                        return measure_finite(measure, everything, cfg.nonfinite)

                    (stats, bad), max_batch = _with_oom_backoff(step, max_batch, log)
                    block = Block(number, None if stats is None else stats.to("cpu"), n_skipped, bad)
                finished.append(block)
                unsaved.append(block)
                # the main process's blocks stand for every process's; never past the total (uneven blocks)
                bar.update(min((block.num_images + block.skipped) * world, max(0, bar.total - bar.n)))
                if (
                    len(unsaved) >= cfg.checkpoint_every_batches
                    or time.time() - last_save > cfg.checkpoint_every_s
                ):
                    save()
    except KeyboardInterrupt:
        with _signals_ignored():
            save()  # what this process finished is on disk before it exits
        raise
    finally:
        bar.close()
    save()

    # --- gather and reduce: blocks in block order, so the sums are the same however the work was split ------
    gathered = _gather(acc, finished)
    all_blocks = sorted([*earlier, *(b for part in gathered for b in part)], key=lambda b: b.number)
    if len({b.number for b in all_blocks}) != len(all_blocks) or len(all_blocks) != len(blocks):
        raise HubstabError("internal error: the measured blocks do not cover the probe set exactly once")
    skipped = sum(b.skipped for b in all_blocks)
    nonfinite = sorted(i for b in all_blocks for i in b.nonfinite)
    if nonfinite and cfg.nonfinite == "error":
        where = f" (measurements kept in {checkpoint.folder})" if checkpoint is not None else ""
        raise NonFiniteError(
            len(nonfinite), len(probes) - skipped, f"; --exclude-nonfinite leaves them out{where}"
        )
    parts = [b.stats for b in all_blocks if b.stats is not None and b.stats.num_images > 0]
    if not parts:
        if nonfinite:
            raise NonFiniteError(len(nonfinite), len(probes) - skipped, ": no finite image is left")
        raise DatasetError("no image could be decoded: every selected image was corrupt or unreadable")
    stats = StabilityStats.cat(parts)
    if stats.num_images < 2:
        raise DatasetError(f"only {stats.num_images} usable image(s); R_f needs at least 2")
    if not mapper.usable:
        stats.labels = None
    result = build_result(stats, settings, headline_temperature=t0, include_per_sample=cfg.per_sample)
    if not mapper.usable and mapper.reason:
        result.notes.append(f"no test error: {mapper.reason}")
    if skipped:
        result.notes.append(f"{skipped} corrupt or unreadable image(s) skipped")
    if nonfinite:
        result.notes.append(exclusion_note(len(nonfinite), len(probes) - skipped))
    if cfg.num_images is not None and len(probes) < cfg.num_images:
        result.notes.append(
            f"{len(probes)} probe images selected, fewer than the {cfg.num_images} asked for: "
            "that is every image of the split"
        )
    if stats.labels is not None:
        unusable = int((stats.labels < 0).sum())
        if unusable:
            result.notes.append(
                f"{unusable} of {stats.num_images} probe images have no usable label (unlabelled, e.g. -1, or "
                "outside the model's classes): the test error uses the others"
            )
        result.settings["num_unusable_labels"] = unusable
    if "untrained_note" in settings:
        result.notes.append(settings["untrained_note"])
    result.settings["num_images"] = stats.num_images
    from hubstab.adapters.published import published_results

    result.extra.update(
        published_results(
            loaded.adapter, loaded.name, bool(loaded.pretrained), loaded.data_config.input_size[1]
        )
    )
    result.settings["num_skipped_images"] = skipped
    result.settings["num_nonfinite_excluded"] = len(nonfinite)
    if full_set:
        result.settings["batchnorm_statistics_processes"] = bn_world

    if cfg.num_error_images and mapper.usable and cfg.num_error_images > stats.num_images:
        error, n_err, n_bad = _test_error(
            cfg, ds_spec, loaded, mapper, acc, forward, mean, std, amp, max_batch, log
        )
        if n_bad and cfg.nonfinite == "error":
            raise NonFiniteError(
                n_bad, n_bad + n_err, " in the test-error images; --exclude-nonfinite skips them"
            )
        if n_bad:
            result.notes.append(f"test error: {n_bad} image(s) with NaN or infinite logits left out")
        if n_err:
            result.test_error = error
            result.settings["num_error_images"] = n_err

    if cfg.metrics:
        extra_metrics = None
        if acc.is_main_process:
            extra_metrics = _other_metrics(cfg, probes, mapper, loaded, net, device)
        result.extra.update(_gather(acc, extra_metrics)[0] if world > 1 else extra_metrics)

    wall = time.time() - started
    env = environment(str(device), world)
    record = build_record(result, record_config, env=env, wall_time_s=wall, run_id=run_id)
    result.extra.update(
        {"config": record["config"], "environment": env, "run_id": record["run_id"], "wall_time_s": wall}
    )
    if cfg.output_dir and acc.is_main_process:
        try:
            path = write_record(record, cfg.output_dir, per_sample=result.per_sample)
        except OSError as err:
            kept = (
                f"the measurement is kept in {checkpoint.folder}"
                if checkpoint is not None
                else "nothing kept"
            )
            raise OutputError(
                f"could not write the results file into {cfg.output_dir!r} ({err.strerror or err}); {kept}: "
                "fix the folder and run the same command again to write it without measuring"
            ) from None
        result.extra["results_file"] = str(path)
        if checkpoint is not None:
            checkpoint.clear()
        if cfg.push_to_hub:
            from hubstab.results.push import push_results

            url = push_results(path, cfg.push_to_hub, pr=cfg.push_pr)
            result.extra["pushed_to"] = url
            log(f"pushed to {url}")
    acc.wait_for_everyone()
    return result


def _block_loader(dataset, blocks: list[list[int]], num_workers: int, pin: bool):
    """Batches that are exactly the given blocks of positions, in order."""
    from torch.utils.data import DataLoader

    from hubstab.adapters import collate_probes

    return DataLoader(
        dataset,
        batch_sampler=blocks,
        num_workers=num_workers if len(blocks) > 1 else 0,
        collate_fn=collate_probes,
        pin_memory=pin,
    )


def _full_set_statistics(
    cfg: EvalConfig, probes, net: nn.Module, input_size, channels_last, normalize, temps, max_batch, acc, log
):
    """The context of :func:`hubstab.metrics.batchnorm.full_set_batchnorm` over every probe image.

    Each process decodes its share of the whole probe set once (images already measured by an interrupted
    run included: the statistics are those of the whole set) and keeps it in host memory for the passes.
    """
    from hubstab.metrics.batchnorm import full_set_batchnorm
    from hubstab.metrics.stability import perturbed_inputs

    device = acc.device
    positions = list(range(len(probes)))[acc.process_index :: acc.num_processes]
    loader = _loader(probes, positions, max_batch, cfg.num_workers, False)
    cached = [(images, indices) for images, _, indices, _ in loader if images.shape[0]]
    log(f"BatchNorm: full-set statistics over {len(probes)} images, layer by layer")

    def batches():
        for images, indices in cached:
            yield perturbed_inputs(
                images.to(device),
                indices.to(device),
                temps,
                cut=cfg.cut,
                interp=cfg.interp,
                seed=cfg.seed,
                repeats=cfg.repeats,
                noise_space=cfg.noise_space,
                normalize=normalize,
            )

    example = (torch.zeros((1, *input_size), device=device) - normalize[0]) / normalize[1]
    return full_set_batchnorm(net, _model_forward(net, channels_last), batches, example)


def _other_metrics(cfg: EvalConfig, probes, mapper, loaded, net: nn.Module, device) -> dict[str, Any]:
    """Invariance/equivariance deviation and class-manifold dimension on the first probe images (main process)."""
    from hubstab.adapters import collate_probes

    items = [probes[i] for i in range(min(cfg.metric_images, len(probes)))]
    images, labels, indices, _ = collate_probes(items)
    labels = torch.tensor([mapper(int(y)) for y in labels], dtype=torch.int64)
    dc = loaded.data_config
    out: dict[str, Any] = {}
    for spec in cfg.metrics:
        kind, *parts = spec.split(":")
        if kind == "equivariance":
            from hubstab.metrics.equivariance import equivariance_deviation

            if not parts:
                raise HubstabError(
                    "--metric equivariance needs a transformation, e.g. equivariance:rotation90"
                )
            transform = parts[0]
            mode = parts[1] if len(parts) > 1 else "invariance"
            metric = parts[2] if len(parts) > 2 else "cosine"
            res = equivariance_deviation(
                net,
                images,
                transform,
                layers=cfg.layers,
                mode=mode,
                metric=metric,
                seed=cfg.seed,
                mean=dc.mean,
                std=dc.std,
                device=device,
                indices=indices,
                batchnorm=cfg.batchnorm,
            )
            out["equivariance"] = res.to_dict()
        else:
            from hubstab.metrics.manifold import class_manifold_dimension

            target = int(parts[0]) if parts else 0
            # the cutting-plane search optimises many subspaces per image: a few starting images suffice
            starts = slice(0, min(4, images.shape[0]))
            res = class_manifold_dimension(
                net,
                images[starts],
                target,
                labels=labels[starts] if mapper.usable else None,
                seed=cfg.seed,
                mean=dc.mean,
                std=dc.std,
                device=device,
                indices=indices[starts],
                batchnorm=cfg.batchnorm,
            )
            out["class_manifold"] = res.to_dict()
    return out


@torch.no_grad()
def _test_error(
    cfg, ds_spec, loaded, mapper, acc, forward, mean, std, amp, max_batch, log
) -> tuple[float | None, int, int]:
    """Top-1 error on ``cfg.num_error_images`` images (clean forward passes only), over all processes.

    Returns the error, the images it counts, and the images left out because their logits were not finite.
    """
    error_set = _load_probe_set(cfg, ds_spec, loaded, cfg.num_error_images)
    positions = list(range(len(error_set)))[acc.process_index :: acc.num_processes]
    loader = _loader(error_set, positions, max_batch, cfg.num_workers, acc.device.type == "cuda")
    wrong = total = nonfinite = 0
    bar = _progress(len(error_set), acc.is_main_process and cfg.progress, "test error")
    with evaluation_mode(loaded.model), amp:
        for images, labels, _, _ in loader:
            mapped = torch.tensor([mapper(int(y)) for y in labels], dtype=torch.int64)
            known = mapped >= 0
            if images.shape[0] and known.any():
                logits = as_logits(forward((images.to(acc.device) - mean) / std)).float().cpu()
                finite = torch.isfinite(logits).all(1)
                nonfinite += int((known & ~finite).sum())
                known &= finite  # the argmax of NaN logits is no prediction
                wrong += int((logits.argmax(1)[known] != mapped[known]).sum())
                total += int(known.sum())
            bar.update(min(images.shape[0] * acc.num_processes, max(0, bar.total - bar.n)))
    bar.close()
    counts = _gather(acc, (wrong, total, nonfinite))
    wrong, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    nonfinite = sum(c[2] for c in counts)
    log(f"test error on {total} images")
    return (wrong / total if total else None), total, nonfinite


def evaluate(
    model: str | nn.Module | Any,
    dataset: str | Any | None = None,
    *,
    split: str | None = None,
    num_images: int | None = 500,
    num_error_images: int | None = None,
    delta: float | None = 1.0,
    temperature: float | None = None,
    cut: int = 3,
    temperatures: list[float] | None = None,
    estimator: str = "mean",
    seed: int = 0,
    batch_size: int | str = "auto",
    dtype: str = "float32",
    output_dir: str | None = None,
    data_config: Any | None = None,
    accelerator: Any | None = None,
    image_processor: Any | None = None,
    **options: Any,
) -> StabilityResult:
    """Evaluate the relative stability R_f of a model on a dataset, end to end.

    Args:
        model: a hub or timm id (``"facebook/deit-small-patch16-224"``, ``"timm/resnet50.a1_in1k"``), a local
            checkpoint folder, a :class:`hubstab.adapters.LoadedModel`, or an ``nn.Module`` (then give
            ``data_config``).
        dataset: a hub dataset id, a local folder (image folder, saved dataset, parquet) or a
            ``datasets.Dataset``; None picks the default dataset of the model's label space.
        split: dataset split (default: the dataset's test/validation split).
        num_images: probe images P, a seeded selection (None: all).
        num_error_images: images for the test error, when more than the probes are wanted.
        delta: typical displacement of the diffeomorphisms in pixels (default 1 px), or give ``temperature``.
        cut: high-frequency cut-off of the diffeomorphisms.
        temperatures: further temperatures for a sweep, sharing the clean pass.
        estimator: ``"mean"`` or the paper's ``"median"``.
        seed: seeds the image selection and the per-image perturbations.
        batch_size: largest forward batch, or ``"auto"`` (halves on out-of-memory).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (autocast).
        output_dir: folder for the results file; None writes nothing.
        data_config: :class:`hubstab.adapters.DataConfig` for an ``nn.Module`` that has none of its own (a
            timm model brings its ``pretrained_cfg``; a transformers model its ``image_processor``).
        accelerator: an existing ``accelerate.Accelerator`` (default: a new one).
        image_processor: the image processor of a transformers model given as an object.
        **options: any further field of :class:`hubstab.runner.config.EvalConfig`, e.g. ``model_name``
            (the name results are recorded under), ``pretrained`` (whether a module's weights are trained;
            unknown, recorded as null, unless given) or ``nonfinite="exclude"`` (leave out probe images with
            NaN/Inf outputs; default: an error).

    Returns:
        The :class:`StabilityResult`, identical on every process.
    """
    spec = model if isinstance(model, str) else getattr(model, "name", type(model).__name__)
    ds = dataset if isinstance(dataset, str) or dataset is None else None
    cfg = EvalConfig(
        model=spec,
        dataset=ds,
        split=split,
        num_images=num_images,
        num_error_images=num_error_images,
        delta=delta,
        temperature=temperature,
        cut=cut,
        temperatures=list(temperatures or []),
        estimator=estimator,
        seed=seed,
        batch_size=batch_size,
        dtype=dtype,
        output_dir=output_dir,
        progress=options.pop("progress", False),
    )
    for key, value in options.items():
        if not hasattr(cfg, key):
            raise HubstabError(f"unknown option {key!r} for evaluate()")
        setattr(cfg, key, value)
    return run_evaluation(
        cfg,
        model=None if isinstance(model, str) else model,
        dataset=None if isinstance(dataset, str) or dataset is None else dataset,
        data_config=data_config,
        accelerator=accelerator,
        image_processor=image_processor,
    )


__all__ = ["HubstabWarning", "RunInterrupted", "evaluate", "make_accelerator", "run_evaluation"]
