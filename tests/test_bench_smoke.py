"""Smoke tests of scripts/bench.py on tiny models and images (no timing assertions), and of its
one-image-at-a-time reference against hubstab's batched sampler."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from hubstab.perturbations.diffeo import (
    apply_displacement,
    diffeo_modes,
    displacement_field,
    sample_coefficients,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_script_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _as_matrix(coefficients: torch.Tensor, cut: int) -> torch.Tensor:
    """hubstab's (2, K) mode coefficients as the reference's (2, cut, cut) matrix C[:, i - 1, j - 1]."""
    matrix = torch.zeros(2, cut, cut)
    for k, (i, j) in enumerate(diffeo_modes(cut).tolist()):
        matrix[:, i - 1, j - 1] = coefficients[:, k]
    return matrix


@pytest.mark.parametrize(("cut", "height", "width"), [(3, 24, 24), (5, 17, 30)])
def test_reference_field_and_remap_match_hubstab(bench, cut, height, width):
    coefficients = sample_coefficients(4e-3, cut, indices=torch.arange(2), seed=5)
    dx, dy = displacement_field(coefficients, cut, height, width)
    images = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    batched = apply_displacement(images, dx, dy)
    assert (dx.abs().max() > 0.5) and (dy.abs().max() > 0.5)  # a real deformation, not the identity
    for b in range(2):
        rdx, rdy = bench.reference_field(_as_matrix(coefficients[b], cut), height, width)
        torch.testing.assert_close(rdx, dx[b], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rdy, dy[b], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bench.reference_remap(images[b], rdx, rdy), batched[b], atol=1e-5, rtol=0)


def test_reference_coefficients_have_the_max_entropy_variance(bench):
    temperature, cut = 0.02, 3
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([bench.reference_coefficients(temperature, cut, generator=gen) for _ in range(3000)])
    k = torch.arange(1, cut + 1, dtype=torch.float32)
    r2 = k.view(-1, 1) ** 2 + k.view(1, -1) ** 2
    kept = r2 < (cut + 0.5) ** 2
    variance = draws.var(dim=0)  # (2, cut, cut)
    expected = temperature / r2
    assert torch.all(variance[:, ~kept] == 0)
    ratio = variance[:, kept] / expected[kept]
    assert torch.all((ratio > 0.85) & (ratio < 1.15)), ratio


def test_reference_deform_keeps_edges_and_moves_the_inside(bench):
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = bench.reference_deform(image, 1e-2, 3, generator=torch.Generator().manual_seed(2))
    assert out.shape == image.shape
    torch.testing.assert_close(out[:, 0, :], image[:, 0, :])  # the field vanishes on the border
    torch.testing.assert_close(out[:, :, -1], image[:, :, -1])
    assert (out - image).abs().mean() > 1e-3


def test_bench_model_counts_and_rates(bench):
    row = bench.bench_model(
        "test_resnet",
        device=CPU,
        dtype=torch.float32,
        image_size=32,
        batch=6,
        num_images=5,
        repeats=1,
        memory=False,
    )
    assert row["forward_batch"] == 6 and row["probes_per_chunk"] == 2
    assert row["rf_forward_passes"] == 3 * 5 and row["raw_images"] == 18  # ceil(15 / 6) batches of 6
    assert len(row["raw_times_s"]) == len(row["rf_times_s"]) == 1
    assert row["raw_images_per_s"] > 0 and row["rf_forward_passes_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["rf_forward_passes_per_s"] / row["raw_images_per_s"])
    assert row["rf_time_over_forward_time"] == pytest.approx(1 / row["ratio"])


def test_sweep_counts_every_temperature(bench):
    model = bench.create_model("test_vit", image_size=32, device=CPU)
    cases, counts = bench.make_cases(
        model, device=CPU, dtype=torch.float32, image_size=32, batch=9, num_images=3, temperatures=3
    )
    assert counts["num_temperatures"] == 4  # protocol temperature + a 3-point sweep
    assert counts["rf_forward_passes"] == 3 * 3 * 4
    cases["rf"]()


@pytest.mark.slow  # a fresh process per case (about 15 s on 2 busy cores)
def test_memory_cases_in_process_and_in_a_subprocess(bench):
    spec = {"model": "test_resnet", "device": "cpu", "dtype": "float32", "image_size": 32, "batch": 6}
    spec["channels_last"] = False
    rf = bench.memory_case({**spec, "case": "rf"})
    assert rf["working_bytes"] >= 0 and rf["param_bytes"] > 0 and rf["resident_before_bytes"] > 0
    raw = bench.peak_memory({**spec, "case": "raw"})  # fresh process, as the CPU benchmark does
    assert raw["case"] == "raw" and raw["working_bytes"] >= 0 and raw["param_bytes"] == rf["param_bytes"]


def test_sampler_comparison(bench):
    out = bench.bench_sampler(device=CPU, image_size=16, num_images=4, batch=3, repeats=1)
    assert out["batched_images_per_s"] > 0 and out["one_at_a_time_images_per_s"] > 0
    assert out["speedup"] == pytest.approx(out["batched_images_per_s"] / out["one_at_a_time_images_per_s"])


def test_cli_writes_json_and_table(tmp_path, capsys):
    from hubstab.cli import main

    path = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            *("--device", "cpu", "--models", "test_resnet", "--image-size", "32", "--batch", "6"),
            *("--num-images", "4", "--repeats", "1", "--sampler-images", "3", "--sampler-batch", "2"),
            *("--no-memory", "--scaling", "--scaling-model", "test_resnet", "--scaling-sizes", "16", "24"),
            *("--scaling-images", "3", "--end-to-end", "--workers", "0", "--json", str(path)),
        ]
    )
    assert code == 0
    report = json.loads(path.read_text())
    assert report["environment"]["device"] == "cpu" and report["environment"]["torch"] == torch.__version__
    assert [r["model"] for r in report["models"]] == ["test_resnet"]
    assert {(r["image_size"], r["num_images"]) for r in report["scaling"]} == {(16, 3), (24, 3)}
    assert report["sampler"]["num_images"] == 3
    (e2e,) = report["end_to_end"]  # from a folder of JPEGs through hubstab.runner.evaluate
    assert e2e["model"] == "test_resnet" and e2e["end_to_end_forward_passes_per_s"] > 0
    table = capsys.readouterr().out
    assert "test_resnet" in table and "speedup" in table and "scaling" in table
