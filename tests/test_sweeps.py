"""Temperature and cut-off sweeps sharing the clean pass, and results as tables."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from conftest import load_fashion_mnist

from hubstab.metrics.stability import relative_stability
from hubstab.metrics.sweeps import cut_sweep, layers_table, paper_temperatures, sweep_table, temperature_sweep
from hubstab.perturbations.diffeo import temperature_for_displacement, temperature_range
from hubstab.results.record import build_record


@pytest.fixture(scope="module")
def probes() -> tuple[torch.Tensor, torch.Tensor]:
    return load_fashion_mnist("t10k", 128)


def test_paper_temperatures():
    temps = paper_temperatures(28, cut=3)
    t1, t2 = temperature_range(28, 3)
    assert len(temps) == 30
    assert temps[0] == pytest.approx(t1 / 15, rel=1e-12)
    assert temps[-1] == pytest.approx(2 * t2, rel=1e-12)
    ratios = [b / a for a, b in itertools.pairwise(temps)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)
    # rectangular images use the effective side
    assert paper_temperatures(20, 40)[0] == pytest.approx(temperature_range(math.sqrt(1000), 3)[0] / 15)


def test_sweep_value_at_protocol_temperature_equals_single_measurement(trained_fmnist_cnn, probes):
    x, y = probes[0][:64], probes[1][:64]
    single = relative_stability(trained_fmnist_cnn, x, y, bootstrap=200)
    sweep = temperature_sweep(trained_fmnist_cnn, x, y, num=8, bootstrap=200)
    assert len(sweep.sweep) == 9  # 8 temperatures of the paper's range and the protocol one
    t0 = temperature_for_displacement(1.0, 3, 28)
    assert sweep.settings["temperature"] == single.settings["temperature"] == pytest.approx(t0)
    point = next(p for p in sweep.sweep if p.temperature == single.settings["temperature"])
    assert point.relative_stability == single.relative_stability
    assert point.diffeo_stability == single.diffeo_stability
    assert point.noise_stability == single.noise_stability
    assert point.relative_stability_ci == single.relative_stability_ci
    assert sweep.relative_stability == single.relative_stability
    # both perturbations grow with T: the sweep spans decades of D_f and G_f
    temps = [p.temperature for p in sweep.sweep]
    assert temps == sorted(temps)
    assert sweep.sweep[-1].diffeo_stability > 30 * sweep.sweep[0].diffeo_stability
    assert sweep.sweep[-1].noise_stability > 30 * sweep.sweep[0].noise_stability


def test_cut_sweep_matches_single_measurements(trained_fmnist_cnn, probes):
    x, y = probes[0][:48], probes[1][:48]
    results = cut_sweep(trained_fmnist_cnn, x, y, cuts=[3, 5], bootstrap=0)
    assert sorted(results) == [3, 5]
    for cut, result in results.items():
        assert result.settings["cut"] == cut
        assert result.settings["delta"] == 1.0
        assert result.settings["temperature"] == pytest.approx(temperature_for_displacement(1.0, cut, 28))
    alone = relative_stability(trained_fmnist_cnn, x, y, cut=5, bootstrap=0)
    assert results[5].relative_stability == alone.relative_stability
    assert results[3].relative_stability != results[5].relative_stability
    paper = cut_sweep(trained_fmnist_cnn, x[:8], cuts=[5], temperatures="paper", num=4, bootstrap=0)
    assert len(paper[5].sweep) == 5
    with pytest.raises(TypeError):
        cut_sweep(trained_fmnist_cnn, x, cut=3)


def test_tables_from_result_and_record(trained_fmnist_cnn, probes):
    x, y = probes[0][:64], probes[1][:64]
    result = relative_stability(
        trained_fmnist_cnn, x, y, temperatures=[1e-4, 3e-3], layers=["features.2", "features.8"], bootstrap=50
    )
    record = json.loads(json.dumps(build_record(result, {"model_name": "small-cnn"})))
    for source in (result, record):
        rows = sweep_table(source)
        assert [r["temperature"] for r in rows] == [p.temperature for p in result.sweep]
        assert [r["relative_stability"] for r in rows] == [p.relative_stability for p in result.sweep]
        assert all(r["ci_low"] <= r["relative_stability"] <= r["ci_high"] for r in rows)
        layers = layers_table(source)
        assert [r["layer"] for r in layers] == ["features.2", "features.8", "output"]
        assert [r["depth"] for r in layers] == [1, 2, 3]
        assert layers[-1]["relative_stability"] == result.relative_stability
        assert layers[0]["relative_stability"] == result.layers["features.2"]["relative_stability"][1]
        low = layers_table(source, temperature=1e-4)
        assert low[0]["temperature"] == 1e-4
        assert low[0]["relative_stability"] == result.layers["features.2"]["relative_stability"][0]
