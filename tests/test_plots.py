"""Figures from results and results files, through the API and `hubstab plot`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import SmallCNN, load_fashion_mnist

from hubstab.cli import main
from hubstab.errors import ResultsValidationError
from hubstab.metrics.stability import relative_stability
from hubstab.plots import plot_error_vs_stability, plot_layers, plot_sweep
from hubstab.results.record import build_record

LAYERS = ["features.2", "features.5", "features.8"]


def _record(result, name: str) -> dict:
    config = {
        "model_name": name,
        "dataset": "fashion_mnist",
        "split": "test",
        "num_images": result.num_images,
    }
    return json.loads(json.dumps(build_record(result, config)))


@pytest.fixture(scope="module")
def results() -> list:
    """Three small CNNs at different seeds, measured with layers and a short sweep on real images."""
    x, y = load_fashion_mnist("t10k", 24)
    out = []
    for seed in range(3):
        torch.manual_seed(seed)
        out.append(
            relative_stability(
                SmallCNN().eval(), x, y, temperatures=[1e-4, 1e-3, 1e-2], layers=LAYERS, bootstrap=20
            )
        )
    return out


@pytest.fixture()
def files(results, tmp_path) -> list:
    paths = []
    for i, result in enumerate(results):
        path = tmp_path / f"cnn-{i}.json"
        path.write_text(json.dumps(_record(result, f"cnn-{i}")))
        paths.append(path)
    return paths


def test_plot_layers_draws_every_layer_then_the_output(results):
    result = results[0]
    fig = plot_layers(result)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [*LAYERS, "output"]
    lines = {line.get_label(): line for line in ax.get_lines() if line.get_label().endswith("_k")}
    assert set(lines) == {"R_k", "D_k", "G_k"}
    r = list(lines["R_k"].get_ydata())
    head = result.layers[LAYERS[0]]["temperatures"].index(result.settings["temperature"])
    assert r[:-1] == [result.layers[n]["relative_stability"][head] for n in LAYERS]
    assert r[-1] == result.relative_stability
    with pytest.raises(ResultsValidationError, match="layers="):
        plot_layers(relative_stability(SmallCNN(), torch.rand(4, 1, 28, 28), bootstrap=0))


def test_plot_sweep_and_error_from_records(results, files):
    fig = plot_sweep(files)
    r_lines = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("cnn-")]
    assert [line.get_label() for line in r_lines] == ["cnn-0", "cnn-1", "cnn-2"]
    assert list(r_lines[1].get_xdata()) == pytest.approx([p.temperature for p in results[1].sweep])
    assert list(r_lines[1].get_ydata()) == pytest.approx([p.relative_stability for p in results[1].sweep])
    assert len(fig.axes[1].get_lines()) == 6  # D_f and G_f per result
    fig = plot_error_vs_stability(files, reference=True)
    offsets = fig.axes[0].collections[0].get_offsets()
    assert offsets.shape == (3, 2)
    assert list(offsets[:, 0]) == pytest.approx([r.relative_stability for r in results])
    assert list(offsets[:, 1]) == pytest.approx([r.test_error for r in results])
    ref = fig.axes[0].get_lines()[0]
    assert ref.get_ydata()[0] == pytest.approx(0.2 * math.sqrt(ref.get_xdata()[0]))


def test_cli_writes_png_and_svg(files, tmp_path):
    png = tmp_path / "out" / "layers.png"
    assert main(["plot", "layers", str(files[0]), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "sweep.svg"
    assert main(["plot", "sweep", *map(str, files), "-o", str(svg)]) == 0
    assert b"<svg" in svg.read_bytes()[:2000]
    err = tmp_path / "error.png"
    # a folder of results, with a per-sample file beside one (as --per-sample writes): left out, as in `ls`
    files[0].with_suffix(".samples.json").write_text(json.dumps({"run_id": "0" * 64, "index": [0]}))
    assert main(["plot", "error", str(files[0].parent), "-o", str(err)]) == 0
    assert err.stat().st_size > 1000


def test_cli_rejects_bad_input(files, tmp_path, capsys):
    assert main(["plot", "layers", *map(str, files), "-o", str(tmp_path / "a.png")]) == 2
    assert main(["plot", "sweep", str(files[0]), "-o", str(tmp_path / "a.gif")]) == 2
    bad = tmp_path / "bad.json"
    record = json.loads(files[0].read_text())
    record["results"]["relative_stability"] = "0.5"  # numbers as strings are refused
    bad.write_text(json.dumps(record))
    assert main(["plot", "error", str(bad), "-o", str(tmp_path / "b.png")]) == 2
    assert "relative_stability" in capsys.readouterr().err
    assert not (tmp_path / "b.png").exists()
