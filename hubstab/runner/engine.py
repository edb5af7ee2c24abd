"""The evaluation runner: a model and a dataset in, a results file out, on one or many processes.

Images are split over the processes of an Accelerate (or torchrun) launch by position, every image keeps the
perturbations keyed by its global index, and the per-image statistics of all processes are gathered
without duplicates before reduction, so the numbers do not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hubstab.errors import DatasetError, HubstabError
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
from hubstab.runner.checkpoint import Checkpoint
from hubstab.runner.config import EvalConfig

_AMP = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def make_accelerator(device: str | None = None):
    """An ``accelerate.Accelerator`` for evaluation (CPU when asked or when no accelerator is present)."""
    from accelerate import Accelerator

    cpu = device == "cpu" or not torch.cuda.is_available()
    return Accelerator(cpu=cpu)


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
    """
    from hubstab.adapters import default_dataset, load_model

    cfg.validate()
    started = time.time()
    acc = accelerator if accelerator is not None else make_accelerator(cfg.device)
    log = _Log(acc.is_main_process and cfg.progress)
    device = acc.device
    world, rank = acc.num_processes, acc.process_index

    from hubstab.adapters import LoadedModel

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
    probes = _load_probe_set(cfg, ds_spec, loaded, cfg.num_images)
    if len(probes) < 2:
        raise DatasetError(f"the dataset has {len(probes)} usable image(s); R_f needs at least 2")
    mapper = _label_mapper(cfg, loaded, probes)
    info = probes.info

    _, height, width = loaded.data_config.input_size
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
    )
    settings["temperatures"] = temps
    settings["layers"] = list(cfg.layers) if cfg.layers else None
    settings["num_error_images_requested"] = cfg.num_error_images
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

    if cfg.output_dir and not cfg.overwrite:
        existing = find_existing(cfg.output_dir, record_config, run_id)
        if existing is not None:
            log(f"already evaluated with these settings: {existing} (use --overwrite to run again)")
            result = result_from_record(read_record(existing))
            result.extra["results_file"] = str(existing)
            result.extra["reused"] = True
            return result

    # --- resume -----------------------------------------------------------------------------------------
    session = _gather(acc, uuid.uuid4().hex[:12])[0]
    checkpoint = Checkpoint(cfg.output_dir, run_id, rank, session) if cfg.output_dir and cfg.resume else None
    earlier = checkpoint.load() if checkpoint is not None else []
    acc.wait_for_everyone()
    done = set()
    for part in earlier:
        done.update(part.indices.tolist())
    if done:
        log(f"resuming: {len(done)} of {len(probes)} images already measured")
    global_index = info["indices"]
    remaining = [pos for pos in range(len(probes)) if global_index[pos] not in done]
    shard = remaining[rank::world]

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
    if cfg.compile:
        net = torch.compile(net)
    forward = _model_forward(net, channels_last)
    mean = torch.tensor(loaded.data_config.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(loaded.data_config.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    max_batch = cfg.batch_size if isinstance(cfg.batch_size, int) else _default_batch_size(device)
    probe_batch = max(1, max_batch // 3)
    loader = _loader(probes, shard, probe_batch, cfg.num_workers, device.type == "cuda")
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    layers_ctx = contextlib.nullcontext(forward)
    if cfg.layers:
        from hubstab.metrics.layers import layer_forward

        layers_ctx = layer_forward(forward, cfg.layers, hooked=net)

    parts: list[StabilityStats] = []
    skipped = 0
    last_save = time.time()
    bar = _progress(len(remaining), acc.is_main_process and cfg.progress, "R_f")
    try:
        with evaluation_mode(net, cfg.batchnorm), amp, layers_ctx as fwd:
            for images, labels, indices, n_skipped in loader:
                skipped += n_skipped
                if images.shape[0] == 0:
                    continue
                mapped = torch.tensor([mapper(int(y)) for y in labels], dtype=torch.int64)

                def step(mfb: int, images=images, indices=indices, mapped=mapped) -> StabilityStats:
                    return batch_stats(
                        fwd,
                        images.to(device, non_blocking=True),
                        indices.to(device),
                        temps,
                        labels=mapped.to(device),
                        cut=cfg.cut,
                        interp=cfg.interp,
                        seed=cfg.seed,
                        repeats=cfg.repeats,
                        keep_components=cfg.estimator == "median",
                        max_forward_batch=mfb,
                        normalize=(mean, std),
                        fuse=cfg.batchnorm == "eval",
                    )

                stats, max_batch = _with_oom_backoff(step, max_batch, log)
                parts.append(stats)
                bar.update(images.shape[0] * world)
                if checkpoint is not None and time.time() - last_save > cfg.checkpoint_every_s:
                    checkpoint.save(StabilityStats.cat([p.to("cpu") for p in parts]))
                    last_save = time.time()
    finally:
        bar.close()
    local = StabilityStats.cat([p.to("cpu") for p in parts]) if parts else None
    if checkpoint is not None and local is not None:
        checkpoint.save(local)

    # --- gather and reduce ------------------------------------------------------------------------------------
    gathered = _gather(acc, (local, skipped))
    all_parts = earlier + [g[0] for g in gathered if g[0] is not None]
    skipped = sum(g[1] for g in gathered)
    if not all_parts:
        raise DatasetError("no image could be decoded: every selected image was corrupt or unreadable")
    stats = StabilityStats.cat(all_parts)
    if stats.num_images < 2:
        raise DatasetError(f"only {stats.num_images} image(s) could be decoded; R_f needs at least 2")
    if not mapper.usable:
        stats.labels = None
    result = build_result(stats, settings, headline_temperature=t0, include_per_sample=cfg.per_sample)
    if not mapper.usable and mapper.reason:
        result.notes.append(f"no test error: {mapper.reason}")
    if skipped:
        result.notes.append(f"{skipped} corrupt or unreadable image(s) skipped")
    if "untrained_note" in settings:
        result.notes.append(settings["untrained_note"])
    result.settings["num_images"] = stats.num_images
    result.settings["num_skipped_images"] = skipped

    if cfg.num_error_images and mapper.usable and cfg.num_error_images > stats.num_images:
        error, n_err = _test_error(cfg, ds_spec, loaded, mapper, acc, forward, mean, std, amp, max_batch, log)
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
        path = write_record(record, cfg.output_dir, per_sample=result.per_sample)
        result.extra["results_file"] = str(path)
        if checkpoint is not None:
            checkpoint.clear()
        if cfg.push_to_hub:
            from hubstab.results.push import push_results

            url = push_results(path, cfg.push_to_hub)
            result.extra["pushed_to"] = url
            log(f"pushed to {url}")
    acc.wait_for_everyone()
    return result


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
) -> tuple[float | None, int]:
    """Top-1 error on ``cfg.num_error_images`` images (clean forward passes only), over all processes."""
    error_set = _load_probe_set(cfg, ds_spec, loaded, cfg.num_error_images)
    positions = list(range(len(error_set)))[acc.process_index :: acc.num_processes]
    loader = _loader(error_set, positions, max_batch, cfg.num_workers, acc.device.type == "cuda")
    wrong = total = 0
    bar = _progress(len(error_set), acc.is_main_process and cfg.progress, "test error")
    with evaluation_mode(loaded.model), amp:
        for images, labels, _, _ in loader:
            mapped = torch.tensor([mapper(int(y)) for y in labels], dtype=torch.int64)
            known = mapped >= 0
            if images.shape[0] and known.any():
                logits = as_logits(forward((images.to(acc.device) - mean) / std)).float().cpu()
                wrong += int((logits.argmax(1)[known] != mapped[known]).sum())
                total += int(known.sum())
            bar.update(images.shape[0] * acc.num_processes)
    bar.close()
    counts = _gather(acc, (wrong, total))
    wrong, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    log(f"test error on {total} images")
    return (wrong / total if total else None), total


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
            (the name results are recorded under) or ``pretrained`` (whether a module's weights are trained;
            unknown, recorded as null, unless given).

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


__all__ = ["evaluate", "make_accelerator", "run_evaluation"]
