#!/usr/bin/env python
"""How fast is an R_f evaluation compared with the model's own inference? One run, one device.

For each model (timm architectures at random initialisation) it measures

* raw inference: images/s of ``model(x)`` at the forward batch R_f uses, with the same dtype and layout;
* R_f: forward passes/s of :func:`hubstab.relative_stability` on random images already on the device,
  counted as 3 per probe image per temperature (clean, deformed, noisy), and the ratio R_f / raw;
* peak memory of one R_f chunk against one inference batch of the same forward batch size;

and, for the field sampler and bilinear interpolation alone, hubstab's batched path against a
one-image-at-a-time reference written here in the style of the paper's code (sine series per image, direct
clamped bilinear remap, one image per call). ``--scaling`` adds the cost against image size and number of
probe images. It prints a table and writes JSON.

    python scripts/bench.py                                   # CPU, small defaults, a few minutes
    python scripts/bench.py --device cuda --dtype bfloat16 \\
        --models resnet50 deit_small_patch16_224 convnext_tiny efficientnet_b0 --num-images 2048 --batch 384

Timing: every case runs once to warm up, then ``--repeats`` times with the cases interleaved (order reversed
on every other repeat); the median is reported. On CUDA the device is synchronised only around timed
regions. Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after a reset; on the CPU a fresh
subprocess per case resets the kernel's peak-RSS counter (``/proc/self/clear_refs``, value 5) right before
the call and reads ``VmHWM`` after it (``ru_maxrss`` where that is unavailable). Both report the working
memory of the call: the peak above what was resident just before it (model weights and input images).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CPU_MODELS = ("resnet50", "deit_small_patch16_224", "efficientnet_b0", "convnext_tiny")
GPU_MODELS = ("resnet50", "deit_small_patch16_224", "convnext_tiny", "efficientnet_b0")
DTYPES = ("float32", "bfloat16", "float16")


# --------------------------------------------------------------------------------------------------------
# The one-image-at-a-time reference (the paper's code style): not imported from hubstab on purpose.
# --------------------------------------------------------------------------------------------------------


def reference_coefficients(temperature: float, cut: int, *, generator=None, device=None):
    """(2, cut, cut) coefficients C_ij ~ N(0, T / (i^2 + j^2)) of u and v, zero outside i^2 + j^2 < (c + 1/2)^2."""
    import torch

    k = torch.arange(1, cut + 1, device=device, dtype=torch.float32)
    r2 = k.view(-1, 1) ** 2 + k.view(1, -1) ** 2
    scale = torch.sqrt(temperature / r2) * (r2 < (cut + 0.5) ** 2)
    z = torch.randn((2, cut, cut), generator=generator, device=device)
    return z * scale


def reference_field(coefficients, height: int, width: int):
    """Pixel displacements (dx, dy), each (H, W), of one field: u(x, y) = sum C_ij sin(i pi x) sin(j pi y)."""
    import torch

    cut = coefficients.shape[-1]
    k = torch.arange(1, cut + 1, device=coefficients.device, dtype=torch.float32)
    sin_x = torch.sin(torch.pi * k.view(-1, 1) * torch.linspace(0, 1, width, device=k.device))  # (cut, W)
    sin_y = torch.sin(torch.pi * k.view(-1, 1) * torch.linspace(0, 1, height, device=k.device))  # (cut, H)
    u = torch.einsum("ij,ix,jy->yx", coefficients[0], sin_x, sin_y)
    v = torch.einsum("ij,ix,jy->yx", coefficients[1], sin_x, sin_y)
    return u * width, v * height


def reference_remap(image, dx, dy):
    """One image (C, H, W): pixel (x, y) takes the source value at (x - dx, y - dy), clamped, bilinear."""
    import torch

    _, height, width = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, device=image.device, dtype=dx.dtype),
        torch.arange(width, device=image.device, dtype=dx.dtype),
        indexing="ij",
    )
    x = (xs - dx).clamp(0, width - 1)
    y = (ys - dy).clamp(0, height - 1)
    x0, y0 = x.floor().long(), y.floor().long()
    x1, y1 = (x0 + 1).clamp(max=width - 1), (y0 + 1).clamp(max=height - 1)
    wx, wy = x - x0, y - y0
    top = (1 - wx) * image[:, y0, x0] + wx * image[:, y0, x1]
    bottom = (1 - wx) * image[:, y1, x0] + wx * image[:, y1, x1]
    return (1 - wy) * top + wy * bottom


def reference_deform(image, temperature: float, cut: int = 3, *, generator=None):
    """Deform one image (C, H, W) with a fresh max-entropy field, the reference way."""
    coefficients = reference_coefficients(temperature, cut, generator=generator, device=image.device)
    dx, dy = reference_field(coefficients, image.shape[-2], image.shape[-1])
    return reference_remap(image, dx, dy)


# --------------------------------------------------------------------------------------------------------
# Timing and memory helpers
# --------------------------------------------------------------------------------------------------------


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    cases: dict[str, Callable[[], Any]],
    device,
    *,
    repeats: int = 3,
    warmups: dict[str, Callable[[], Any]] | None = None,
) -> dict[str, list[float]]:
    """Wall times in seconds of every case, ``repeats`` times each, interleaved (order reversed every other
    repeat) after one untimed warm-up each (the case itself, or ``warmups[name]`` when given, e.g. a lighter
    call with the same shapes); the device is synchronised around each timed call only."""
    for name, fn in cases.items():
        (warmups or {}).get(name, fn)()
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            _sync(device)
            start = time.perf_counter()
            cases[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes(reset_worked: bool) -> int:
    if reset_worked:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------------------------------------
# Models and the measured cases
# --------------------------------------------------------------------------------------------------------


def create_model(
    name: str,
    *,
    image_size: int,
    device,
    channels_last: bool = False,
    compile_model: bool = False,
    seed: int = 0,
):
    """A timm model at random initialisation, in eval mode on ``device`` (ViTs are built for ``image_size``)."""
    import timm
    import torch

    torch.manual_seed(seed)
    try:
        model = timm.create_model(name, pretrained=False, img_size=image_size)
    except TypeError:  # architectures without an img_size argument (convnets)
        model = timm.create_model(name, pretrained=False)
    model = model.eval().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model = torch.compile(model)
    return model


def _autocast(device, dtype):
    import torch

    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _random_images(n: int, size: int, device, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, size, size), generator=gen).to(device)


def make_cases(
    model, *, device, dtype, image_size: int, batch: int, num_images: int, temperatures: int = 1
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """The two timed cases of one model, ``raw`` and ``rf``, with what they count.

    ``rf`` is ``relative_stability`` on ``num_images`` random probe images already on ``device`` with
    ``batch_size=batch``: chunks of ``batch // 3`` probes, one fused forward of ``3 * (batch // 3)`` inputs.
    ``raw`` runs ``model(x)`` on a batch of that same size, as many times as R_f has forward passes.
    """
    import torch

    import hubstab
    from hubstab.metrics.stability import protocol_temperature
    from hubstab.perturbations.diffeo import sweep_temperatures

    if batch < 3:
        raise ValueError("batch must be at least 3 (clean, deformed and noisy inputs of one probe)")
    forward_batch = 3 * (batch // 3)
    images = _random_images(num_images, image_size, device, seed=1)
    x = _random_images(forward_batch, image_size, device, seed=2)
    sweep = sweep_temperatures(image_size, 3, temperatures) if temperatures > 1 else None
    amp_dtype = None if dtype == torch.float32 else dtype
    t0, _ = protocol_temperature(image_size, image_size, 3, delta=1.0, temperature=None)
    n_temps = len({t0, *(sweep or [])})  # the protocol temperature plus the sweep, as relative_stability does
    rf_kwargs = dict(
        delta=1.0,
        temperatures=sweep,
        batch_size=batch,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        amp_dtype=amp_dtype,
        device=device,
    )
    forward_passes = 3 * num_images * n_temps
    raw_calls = math.ceil(forward_passes / forward_batch)

    def raw() -> None:
        with torch.inference_mode(), _autocast(device, dtype):
            for _ in range(raw_calls):
                model(x)

    def rf() -> None:
        hubstab.relative_stability(model, images, **rf_kwargs)

    def raw_warmup() -> None:
        with torch.inference_mode(), _autocast(device, dtype):
            model(x)

    def rf_warmup() -> None:  # one chunk: every shape of the timed run but the last partial chunk
        hubstab.relative_stability(model, images[: max(2, batch // 3)], **rf_kwargs)

    counts = {
        "forward_batch": forward_batch,
        "probes_per_chunk": batch // 3,
        "num_temperatures": n_temps,
        "rf_forward_passes": forward_passes,
        "raw_images": raw_calls * forward_batch,
    }
    counts["warmups"] = {"raw": raw_warmup, "rf": rf_warmup}
    return {"raw": raw, "rf": rf}, counts


def memory_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Working memory (bytes) of one inference batch (``spec["case"] == "raw"``) or one R_f chunk (``"rf"``).

    Runs in the current process: on CUDA with the allocator's peak counter, on the CPU with the kernel's
    peak-RSS counter (reset just before the call). Call it in a fresh process on the CPU (see
    :func:`peak_memory`) so that memory freed by earlier work does not hide the peak.
    """
    import torch

    import hubstab

    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    model = create_model(
        spec["model"],
        image_size=spec["image_size"],
        device=device,
        channels_last=spec["channels_last"],
    )
    probes = spec["batch"] // 3
    forward_batch = 3 * probes
    amp_dtype = None if dtype == torch.float32 else dtype
    if spec["case"] == "raw":
        inputs = _random_images(forward_batch, spec["image_size"], device, seed=2)

        def call() -> None:
            with torch.inference_mode(), _autocast(device, dtype):
                model(inputs)
    else:
        inputs = _random_images(max(2, probes), spec["image_size"], device, seed=1)

        def call() -> None:
            hubstab.relative_stability(
                model,
                inputs,
                delta=1.0,
                batch_size=spec["batch"],
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                amp_dtype=amp_dtype,
                device=device,
            )

    with torch.inference_mode(), _autocast(device, dtype):  # initialise libraries with little memory
        model(inputs[:1])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        method = "torch.cuda.max_memory_allocated"
    else:
        before = _rss_bytes()
        reset = _reset_peak_rss()
        call()
        peak = _peak_rss_bytes(reset)
        method = "VmHWM after clear_refs" if reset else "ru_maxrss"
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "case": spec["case"],
        "working_bytes": max(0, peak - before),
        "resident_before_bytes": before,
        "param_bytes": params,
        "method": method,
    }


def peak_memory(spec: dict[str, Any], *, subprocess_on_cpu: bool = True) -> dict[str, Any]:
    """:func:`memory_case` of ``spec``, in a fresh Python process when on the CPU."""
    if spec["device"].startswith("cuda") or not subprocess_on_cpu:
        return memory_case(spec)
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-case", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory case {spec} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_model(
    name: str,
    *,
    device,
    dtype,
    image_size: int,
    batch: int,
    num_images: int,
    repeats: int = 3,
    temperatures: int = 1,
    channels_last: bool = False,
    compile_model: bool = False,
    memory: bool = True,
) -> dict[str, Any]:
    """Raw inference against R_f for one model: throughputs, their ratio, peak memory."""
    import torch

    model = create_model(
        name, image_size=image_size, device=device, channels_last=channels_last, compile_model=compile_model
    )
    cases, counts = make_cases(
        model,
        device=device,
        dtype=dtype,
        image_size=image_size,
        batch=batch,
        num_images=num_images,
        temperatures=temperatures,
    )
    warmups = counts.pop("warmups")
    times = time_interleaved(cases, device, repeats=repeats, warmups=None if compile_model else warmups)
    raw_s, rf_s = _median(times["raw"]), _median(times["rf"])
    raw_rate = counts["raw_images"] / raw_s
    rf_rate = counts["rf_forward_passes"] / rf_s
    # Time R_f takes over the time its forward passes take alone (1.0: limited by the model only).
    overhead = rf_s / (counts["rf_forward_passes"] / raw_rate)
    row: dict[str, Any] = {
        "model": name,
        "params_millions": sum(p.numel() for p in model.parameters()) / 1e6,
        **counts,
        "raw_images_per_s": raw_rate,
        "rf_forward_passes_per_s": rf_rate,
        "ratio": rf_rate / raw_rate,
        "rf_time_over_forward_time": overhead,
        "ratio_of_fastest": min(times["raw"])
        / counts["raw_images"]
        * counts["rf_forward_passes"]
        / min(times["rf"]),
        "raw_times_s": times["raw"],
        "rf_times_s": times["rf"],
    }
    del model, cases
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if memory:
        spec = {
            "model": name,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "image_size": image_size,
            "batch": batch,
            "channels_last": channels_last,
        }
        mem = {case: peak_memory({**spec, "case": case}) for case in ("raw", "rf")}
        row["memory"] = mem
        row["memory_raw_mib"] = mem["raw"]["working_bytes"] / 2**20
        row["memory_rf_mib"] = mem["rf"]["working_bytes"] / 2**20
        row["memory_ratio"] = mem["rf"]["working_bytes"] / max(mem["raw"]["working_bytes"], 1)
    return row


def bench_sampler(
    *, device, image_size: int, num_images: int, batch: int, repeats: int = 3, cut: int = 3
) -> dict[str, Any]:
    """Fields + bilinear interpolation alone: hubstab batched (per-image seeded) against one image at a time."""
    import torch

    from hubstab.perturbations.diffeo import (
        apply_coefficients,
        sample_coefficients,
        temperature_for_displacement,
    )

    images = _random_images(num_images, image_size, device, seed=3)
    indices = torch.arange(num_images, device=device)
    temperature = temperature_for_displacement(1.0, cut, image_size)

    def batched() -> None:
        for start in range(0, num_images, batch):
            sl = slice(start, start + batch)
            coefficients = sample_coefficients(temperature, cut, indices=indices[sl], seed=0)
            apply_coefficients(images[sl], coefficients, cut, "linear")

    def one_at_a_time() -> None:
        gen = torch.Generator(device=device).manual_seed(0)
        for i in range(num_images):
            reference_deform(images[i], temperature, cut, generator=gen)

    times = time_interleaved({"batched": batched, "one_at_a_time": one_at_a_time}, device, repeats=repeats)
    batched_rate = num_images / _median(times["batched"])
    single_rate = num_images / _median(times["one_at_a_time"])
    return {
        "image_size": image_size,
        "num_images": num_images,
        "batch": batch,
        "batched_images_per_s": batched_rate,
        "one_at_a_time_images_per_s": single_rate,
        "speedup": batched_rate / single_rate,
        "batched_times_s": times["batched"],
        "one_at_a_time_times_s": times["one_at_a_time"],
    }


def bench_scaling(
    name: str,
    *,
    device,
    dtype,
    sizes: Sequence[int],
    image_counts: Sequence[int],
    batch: int,
    repeats: int = 3,
    channels_last: bool = False,
) -> list[dict[str, Any]]:
    """R_f and raw-inference time of one model for every image size and number of probe images."""
    rows = []
    for size in sizes:
        model = create_model(name, image_size=size, device=device, channels_last=channels_last)
        for n in image_counts:
            cases, counts = make_cases(
                model, device=device, dtype=dtype, image_size=size, batch=batch, num_images=n
            )
            times = time_interleaved(cases, device, repeats=repeats, warmups=counts.pop("warmups"))
            raw_s, rf_s = _median(times["raw"]), _median(times["rf"])
            forward_s = raw_s * counts["rf_forward_passes"] / counts["raw_images"]
            rows.append(
                {
                    "model": name,
                    "image_size": size,
                    "num_images": n,
                    "rf_s": rf_s,
                    "forward_s": forward_s,
                    "rf_ms_per_image": 1e3 * rf_s / n,
                    "rf_time_over_forward_time": rf_s / forward_s,
                }
            )
    return rows


def write_image_folder(
    path: Path, num_images: int, *, height: int = 256, width: int = 320, seed: int = 0
) -> Path:
    """An image folder (two class subfolders) of smooth random JPEGs, larger than the model input so that
    loading decodes, resizes and crops as with real photos."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(num_images):
        folder = path / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
        coarse.resize((width, height), Image.BILINEAR).save(folder / f"{i:05d}.jpg", quality=90)
    return path


def bench_end_to_end(
    name: str,
    *,
    device,
    dtype,
    image_size: int,
    batch: int,
    num_images: int,
    repeats: int = 3,
    channels_last: bool = False,
    num_workers: int = 2,
) -> dict[str, Any]:
    """The whole run from an image folder through :func:`hubstab.runner.evaluate` (data loading, decoding,
    resizing, perturbations, forwards, reduction) against raw inference of as many forward passes."""
    import tempfile

    import torch

    from hubstab.adapters import DataConfig
    from hubstab.runner import evaluate

    model = create_model(name, image_size=image_size, device=device, channels_last=channels_last)
    data_config = DataConfig((3, image_size, image_size), IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.875)
    forward_batch = 3 * (batch // 3)
    x = _random_images(forward_batch, image_size, device, seed=2)
    raw_calls = math.ceil(3 * num_images / forward_batch)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_image_folder(Path(tmp) / "images", num_images)

        def end_to_end(n: int = num_images) -> None:
            evaluate(
                model,
                str(folder),
                num_images=n,
                batch_size=batch,
                dtype=str(dtype).removeprefix("torch."),
                device=str(device),
                data_config=data_config,
                output_dir=None,
                num_workers=num_workers,
                resume=False,
            )

        def raw() -> None:
            with torch.inference_mode(), _autocast(device, dtype):
                for _ in range(raw_calls):
                    model(x)

        times = time_interleaved(
            {"raw": raw, "end_to_end": end_to_end},
            device,
            repeats=repeats,
            warmups={"raw": raw, "end_to_end": lambda: end_to_end(min(num_images, max(2, batch // 3)))},
        )
    raw_rate = raw_calls * forward_batch / _median(times["raw"])
    e2e_rate = 3 * num_images / _median(times["end_to_end"])
    return {
        "model": name,
        "num_images": num_images,
        "source_image_size": [256, 320],
        "num_workers": num_workers,
        "raw_images_per_s": raw_rate,
        "end_to_end_forward_passes_per_s": e2e_rate,
        "ratio": e2e_rate / raw_rate,
        "raw_times_s": times["raw"],
        "end_to_end_times_s": times["end_to_end"],
    }


def environment(device) -> dict[str, Any]:
    """Device and versions, as recorded in the JSON and the README."""
    import timm
    import torch

    import hubstab

    env = {
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "hubstab": hubstab.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def sync_check(*, device, image_size: int = 64, batch: int = 8) -> str:
    """On CUDA, run ``batch_stats`` once with synchronisation debugging set to error: ``"none"`` if it
    never waits for the device, else the error. Not applicable elsewhere."""
    import torch

    from hubstab.metrics.stability import batch_stats

    if device.type != "cuda":
        return "not applicable (cpu)"
    model = create_model("resnet18", image_size=image_size, device=device)
    images = _random_images(batch, image_size, device)
    indices = torch.arange(batch, device=device)
    batch_stats(model, images, indices, [1e-3])  # first call fills per-device caches
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch_stats(model, images, indices, [1e-3, 2e-3])
        return "none"
    except RuntimeError as err:
        return f"synchronises: {err}"
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the benchmark's options on ``parser`` (shared by this script and ``hubstab bench``)."""
    parser.add_argument(
        "--models", nargs="*", help="timm architectures (random init); default per device; none: skip"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None, help="autocast dtype (cpu: float32, cuda: bf16)"
    )
    parser.add_argument("--image-size", type=int, default=224, help="square image side in pixels")
    parser.add_argument("--batch", type=int, default=None, help="forward batch (cpu 48, cuda 384)")
    parser.add_argument("--num-images", type=int, default=None, help="probe images (cpu 32, cuda 2048)")
    parser.add_argument("--temperatures", type=int, default=1, help="1: protocol T only; N: plus a sweep")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case (median reported)")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="model in channels-last layout (default: on for cuda, off for cpu)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (raw and R_f)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory cases")
    parser.add_argument("--no-sampler", action="store_true", help="skip the sampler comparison")
    parser.add_argument("--sampler-images", type=int, default=None, help="images for the sampler (cpu 64)")
    parser.add_argument("--sampler-batch", type=int, default=None, help="sampler batch (cpu 32, cuda 256)")
    parser.add_argument("--scaling", action="store_true", help="also measure cost vs image size and images")
    parser.add_argument("--scaling-model", default="resnet18")
    parser.add_argument("--scaling-sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--scaling-images", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument(
        "--json", default=None, help="output file (default hubstab-results/bench-<device>.json)"
    )
    parser.add_argument(
        "--end-to-end",
        nargs="*",
        default=None,
        metavar="MODEL",
        help="also time hubstab.runner.evaluate from a folder of JPEGs (default model: the first)",
    )
    parser.add_argument("--workers", type=int, default=2, help="data-loading workers of the end-to-end case")
    parser.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)
    return parser


def format_report(report: dict[str, Any]) -> str:
    """The human-readable tables of a report from :func:`run_bench`."""
    env, s = report["environment"], report["settings"]
    lines = [
        f"device {env['device']} ({env.get('gpu', env['cpu'])}, {env['cpu_threads']} threads) | "
        f"torch {env['torch']} | timm {env['timm']} | hubstab {env['hubstab']}",
        f"dtype {s['dtype']} | {s['image_size']} px | batch {s['batch']} | {s['num_images']} probe images | "
        f"channels_last {s['channels_last']} | compile {s['compile']} | median of {s['repeats']}",
        "",
        f"{'model':<24}{'raw img/s':>11}{'R_f fwd/s':>11}{'ratio':>7}{'R_f/fwd time':>14}"
        f"{'mem raw MiB':>13}{'mem R_f MiB':>13}{'mem ratio':>11}",
    ]
    for row in report["models"]:
        mem = (
            f"{row['memory_raw_mib']:>13.0f}{row['memory_rf_mib']:>13.0f}{row['memory_ratio']:>11.2f}"
            if "memory_ratio" in row
            else f"{'-':>13}{'-':>13}{'-':>11}"
        )
        lines.append(
            f"{row['model']:<24}{row['raw_images_per_s']:>11.1f}{row['rf_forward_passes_per_s']:>11.1f}"
            f"{row['ratio']:>7.2f}{row['rf_time_over_forward_time']:>14.2f}{mem}"
        )
    sampler = report.get("sampler")
    if sampler:
        lines += [
            "",
            f"sampler (fields + bilinear remap, {sampler['image_size']} px, {sampler['num_images']} images, "
            f"batch {sampler['batch']}): batched {sampler['batched_images_per_s']:.0f} img/s, "
            f"one at a time {sampler['one_at_a_time_images_per_s']:.0f} img/s, "
            f"speedup {sampler['speedup']:.1f}x",
        ]
    for row in report.get("end_to_end") or []:
        lines.append(
            f"end to end from JPEGs ({row['model']}, {row['num_images']} images {row['source_image_size'][0]}x"
            f"{row['source_image_size'][1]}, {row['num_workers']} workers): "
            f"{row['end_to_end_forward_passes_per_s']:.1f} fwd/s vs raw {row['raw_images_per_s']:.1f} img/s, "
            f"ratio {row['ratio']:.2f}"
        )
    if report.get("sync_check"):
        lines.append(f"host-device synchronisation inside batch_stats: {report['sync_check']}")
    scaling = report.get("scaling")
    if scaling:
        lines += [
            "",
            f"scaling ({scaling[0]['model']}): {'size':>5}{'images':>8}{'R_f s':>9}{'fwd s':>9}"
            f"{'ms/image':>10}{'R_f/fwd':>9}",
        ]
        for r in scaling:
            lines.append(
                f"{'':>{len(scaling[0]['model']) + 11}}{r['image_size']:>5}{r['num_images']:>8}"
                f"{r['rf_s']:>9.2f}{r['forward_s']:>9.2f}{r['rf_ms_per_image']:>10.1f}"
                f"{r['rf_time_over_forward_time']:>9.2f}"
            )
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run every requested measurement and return the report (also written as JSON by :func:`main`)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    dtype_name = args.dtype or ("bfloat16" if on_gpu else "float32")
    dtype = getattr(torch, dtype_name)
    channels_last = on_gpu if args.channels_last is None else args.channels_last
    batch = args.batch or (384 if on_gpu else 48)
    num_images = args.num_images or (2048 if on_gpu else 32)
    models = list(GPU_MODELS if on_gpu else CPU_MODELS) if args.models is None else args.models
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "environment": environment(device),
        "settings": {
            "dtype": dtype_name,
            "image_size": args.image_size,
            "batch": batch,
            "num_images": num_images,
            "temperatures": args.temperatures,
            "repeats": args.repeats,
            "channels_last": channels_last,
            "compile": args.compile,
            "models": models,
            "rf_call": "hubstab.relative_stability(model, images_on_device, delta=1.0, batch_size=batch, "
            "mean/std=ImageNet, amp_dtype=dtype, bootstrap=1000); batchnorm eval (fused forward)",
            "forward_passes": "3 per probe image per temperature",
            "memory_method": "cuda: max_memory_allocated; cpu: VmHWM after clear_refs in a fresh process; "
            "working memory above the resident model and inputs",
        },
        "models": [],
    }
    for name in models:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        report["models"].append(
            bench_model(
                name,
                device=device,
                dtype=dtype,
                image_size=args.image_size,
                batch=batch,
                num_images=num_images,
                repeats=args.repeats,
                temperatures=args.temperatures,
                channels_last=channels_last,
                compile_model=args.compile,
                memory=not args.no_memory,
            )
        )
    if not args.no_sampler:
        print("[bench] sampler ...", file=sys.stderr, flush=True)
        report["sampler"] = bench_sampler(
            device=device,
            image_size=args.image_size,
            num_images=args.sampler_images or (1024 if on_gpu else 64),
            batch=args.sampler_batch or (256 if on_gpu else 32),
            repeats=args.repeats,
        )
    report["sync_check"] = sync_check(device=device) if on_gpu else None
    if args.end_to_end is not None:
        report["end_to_end"] = []
        for name in args.end_to_end or models[:1]:
            print(f"[bench] end to end {name} ...", file=sys.stderr, flush=True)
            report["end_to_end"].append(
                bench_end_to_end(
                    name,
                    device=device,
                    dtype=dtype,
                    image_size=args.image_size,
                    batch=batch,
                    num_images=num_images,
                    repeats=args.repeats,
                    channels_last=channels_last,
                    num_workers=args.workers,
                )
            )
    if args.scaling:
        print("[bench] scaling ...", file=sys.stderr, flush=True)
        report["scaling"] = bench_scaling(
            args.scaling_model,
            device=device,
            dtype=dtype,
            sizes=args.scaling_sizes,
            image_counts=args.scaling_images,
            batch=batch,
            repeats=args.repeats,
            channels_last=channels_last,
        )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark for parsed ``args``: print the tables, write the JSON; exit code 0."""
    if args.memory_case:
        print(json.dumps(memory_case(json.loads(args.memory_case))))
        return 0
    report = run_bench(args)
    print(format_report(report))
    path = Path(args.json or f"hubstab-results/bench-{report['environment']['device'].replace(':', '')}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
