"""A new user's first hour (issue 14): model objects, ids that are known but not cached, missing folders,
the eval summary, one-temperature plots, image folders without a split, a fast ``fmnist_zoo.py --help``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_fashion_mnist, package_dir

import hubstab
from hubstab.adapters import DataConfig, load_model, load_probe_set
from hubstab.errors import DatasetError, HubstabError, ModelNotFoundError
from hubstab.results.validate import load_record

ROOT = Path(__file__).resolve().parents[1]
FMNIST = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """The 20 real foolbox ImageNet photos as an image folder with one sub-folder per class, no split."""
    from hubstab.adapters.labels import imagenet_labels

    wnids = imagenet_labels()[0]
    folder = tmp_path_factory.mktemp("first-hour") / "my-val-images"
    for path in sorted((package_dir("foolbox") / "data").glob("imagenet_*.jpg")):
        wnid = wnids[int(re.search(r"_(\d+)\.jpg$", path.name).group(1))]  # folders named by WordNet id
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / wnid / path.name)
    return folder


@pytest.fixture(scope="module")
def photos_saved(tmp_path_factory) -> Path:
    """The 20 real photos as a saved dataset whose ClassLabel holds the 1000 ImageNet classes (as the demo)."""
    import datasets

    from hubstab.adapters.labels import imagenet_labels

    paths = sorted((package_dir("foolbox") / "data").glob("imagenet_*.jpg"))
    labels = [int(re.search(r"_(\d+)\.jpg$", p.name).group(1)) for p in paths]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(imagenet_labels()[0]))}
    )
    data = datasets.Dataset.from_dict({"image": [str(p) for p in paths], "label": labels}, features=features)
    folder = tmp_path_factory.mktemp("first-hour") / "imagenet-photos"
    data.map(lambda row: row).save_to_disk(str(folder))  # embeds the image bytes
    return folder


@pytest.fixture(scope="module")
def fmnist_folder(tmp_path_factory) -> Path:
    """60 real Fashion-MNIST test images saved with ``save_to_disk`` (Image and ClassLabel features)."""
    import datasets
    import numpy as np
    from PIL import Image

    x, y = load_fashion_mnist("t10k", 60)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=FMNIST)})
    images = [Image.fromarray((img[0].numpy() * 255).astype(np.uint8)) for img in x]
    folder = tmp_path_factory.mktemp("first-hour") / "fmnist-60"
    datasets.Dataset.from_dict({"image": images, "label": y.tolist()}, features=features).save_to_disk(
        str(folder)
    )
    return folder


# --- items 2 and 3: a module object brings its data config and says what it is ------------------------------


@pytest.mark.slow
def test_a_timm_module_needs_no_data_config_and_is_named_by_its_architecture(
    efficientnet_lite0, photos_saved, tmp_path
):
    """The real EfficientNet-Lite0 as a plain timm module: evaluate() reads its pretrained_cfg, so the numbers
    equal those with the data config given explicitly, and the test error is the real one (10-15%)."""
    from timm.data import resolve_model_data_config

    kw = dict(num_images=8, num_workers=0, bootstrap=100)
    res = hubstab.evaluate(efficientnet_lite0, str(photos_saved), output_dir=str(tmp_path), **kw)
    explicit = DataConfig.from_timm(resolve_model_data_config(efficientnet_lite0))
    assert explicit.mean == (0.5, 0.5, 0.5) and explicit.input_size == (3, 224, 224)
    ref = hubstab.evaluate(efficientnet_lite0, str(photos_saved), data_config=explicit, **kw)
    assert res.relative_stability == pytest.approx(ref.relative_stability, rel=1e-5)
    assert res.test_error is not None and res.test_error <= 0.25  # 85-90% top-1 on these photos
    # the ImageNet mean/std of most timm models (a wrong guess for this one) gives other numbers
    wrong = DataConfig((3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic", 0.875)
    guess = hubstab.evaluate(efficientnet_lite0, str(photos_saved), data_config=wrong, **kw)
    assert guess.relative_stability != pytest.approx(res.relative_stability, rel=1e-3)

    (file,) = [p for p in tmp_path.rglob("*.json") if not p.name.endswith(".samples.json")]
    config = load_record(file)["config"]
    assert config["model_name"] == "tf_efficientnet_lite0.in1k" and config["adapter"] == "timm"
    assert config["pretrained"] is None  # an object does not say whether it is trained
    assert file.parent.name == "tf_efficientnet_lite0.in1k"

    named = hubstab.evaluate(
        efficientnet_lite0,
        str(photos_saved),
        output_dir=str(tmp_path),
        model_name="me/lite0-imagenet",
        pretrained=True,
        **kw,
    )
    record = load_record(named.extra["results_file"])
    assert record["config"]["model_name"] == "me/lite0-imagenet" and record["config"]["pretrained"] is True
    assert Path(named.extra["results_file"]).parent.name == "me__lite0-imagenet"


def test_two_module_objects_of_one_class_are_told_apart():
    import timm

    a = load_model(timm.create_model("resnet10t", pretrained=False, num_classes=10))
    b = load_model(timm.create_model("resnet14t", pretrained=False, num_classes=10))
    assert type(a.model) is type(b.model)  # both timm ResNet: the class name alone collided
    assert (a.name, b.name) == ("resnet10t.c3_in1k", "resnet14t.c3_in1k")
    assert a.pretrained is None and load_model(a.model, pretrained=False).pretrained is False
    assert load_model(a.model, model_name="mine/r10").name == "mine/r10"


def test_a_transformers_module_takes_its_data_config_from_its_image_processor(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=10,
        id2label=dict(enumerate(FMNIST)),
        label2id={n: i for i, n in enumerate(FMNIST)},
    )
    ViTForImageClassification(config).save_pretrained(str(tmp_path / "tiny-vit"))
    model = ViTForImageClassification.from_pretrained(str(tmp_path / "tiny-vit"))
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.2] * 3, image_std=[0.3] * 3)
    loaded = load_model(model, image_processor=processor)
    assert loaded.adapter == "transformers" and loaded.name == str(tmp_path / "tiny-vit")
    assert loaded.data_config.input_size == (3, 32, 32)
    assert loaded.data_config.mean == pytest.approx((0.2,) * 3) and loaded.labels == FMNIST
    with pytest.raises(HubstabError, match="image_processor="):
        load_model(model)


def test_a_plain_module_still_needs_a_data_config():
    with pytest.raises(HubstabError, match="data_config=DataConfig"):
        load_model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)))


# --- item 5: "did you mean" never suggests the typed id; known but not cached says so ----------------------


@pytest.fixture
def empty_offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_a_known_id_not_cached_offline_says_how_to_fetch_it(empty_offline_cache):
    with pytest.raises(ModelNotFoundError) as err:
        load_model("facebook/deit-small-patch16-224")
    message = str(err.value)
    assert "exists on the hub but is not in the local hub cache" in message
    assert "hf download facebook/deit-small-patch16-224" in message
    assert "did you mean" not in message
    with pytest.raises(ModelNotFoundError, match=re.escape("hf download timm/resnet18.a1_in1k")):
        load_model("resnet18.a1_in1k")


def test_did_you_mean_lists_other_ids_only(empty_offline_cache):
    from hubstab.adapters.resolve import did_you_mean

    assert "a/b" not in did_you_mean("a/b", ["a/b", "a/bc", "A/B"])
    with pytest.raises(ModelNotFoundError) as err:
        load_model("facebook/deit-smal-patch16-224")  # a typo
    message = str(err.value)
    suggestions = message.split("did you mean: ", 1)[1]
    assert "facebook/deit-small-patch16-224" in suggestions
    assert "facebook/deit-smal-patch16-224," not in suggestions + ","


# --- items 6 and 10: local folders ---------------------------------------------------------------------------


def test_a_missing_local_folder_is_no_such_folder(tmp_path, monkeypatch, empty_offline_cache):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for arg in ("./my-val-images", str(tmp_path / "nope"), "~/surely-not-here-hubstab", "data/val"):
        with pytest.raises(DatasetError, match="no such folder"):
            load_probe_set(arg)
    with pytest.raises(DatasetError, match="not in the local hub cache"):
        load_probe_set("someone/some-dataset")  # a hub id stays a hub id


@pytest.mark.slow
def test_the_cli_says_no_such_folder_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    (tmp_path / "model").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "hubstab", "eval", "resnet10t", "--untrained", "--dataset", "./my-val-images"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "no such folder" in lines[-1] and "./my-val-images" in lines[-1]


def test_an_image_folder_has_no_split_and_is_named_by_the_folder(photo_folder, tmp_path):
    probes = load_probe_set(str(photo_folder), num_images=5)
    assert probes.info["split"] is None
    assert probes.info["dataset"] == "my-val-images"
    assert probes.info["dataset_path"] == str(photo_folder.resolve())
    assert len(probes) == 5 and probes[0][0].shape[0] == 3
    # a folder that does have splits keeps them
    split_folder = tmp_path / "with-splits"
    shutil.copytree(photo_folder, split_folder / "test")
    shutil.copytree(photo_folder, split_folder / "train")
    assert load_probe_set(str(split_folder), num_images=5).info["split"] == "test"


# --- items 7 and 8: the eval summary and one-temperature plots -------------------------------------------


@pytest.fixture(scope="module")
def sweep_run(trained_fmnist_cnn, fmnist_folder, tmp_path_factory):
    """The trained Fashion-MNIST CNN through the CLI's code path with a sweep, layers and per-sample values."""
    out = tmp_path_factory.mktemp("summary")
    res = hubstab.evaluate(
        trained_fmnist_cnn,
        str(fmnist_folder),
        data_config=DataConfig((1, 28, 28), (0.0,), (1.0,)),
        num_images=40,
        temperatures=[3e-4, 3e-3],
        layers=["features.2", "features.5"],
        per_sample=True,
        output_dir=str(out),
        num_workers=0,
        bootstrap=100,
        label_map="identity",
    )
    return res


def test_the_summary_prints_the_sweep_layers_and_per_sample_file(sweep_run):
    from hubstab.cli.eval import format_summary

    text = format_summary(sweep_run)
    assert "dataset  fmnist-60, 40 probe images" in text  # the folder's name, no split
    config = sweep_run.extra["config"]  # the protocol line, as `hubstab show` prints it
    assert (
        f"protocol {config['protocol']['name']} v{config['protocol']['version']}, {config['protocol_id']}"
        in text
    )
    sweep = [line for line in text.splitlines() if re.match(r"^\s+\d\.\d{3}e-\d\d\s", line)]
    assert len(sweep) == len(sweep_run.sweep) == 3  # the protocol T and two more
    for point in sweep_run.sweep:
        assert any(
            f"{point.relative_stability:.4g}" in line and f"{point.temperature:.3e}" in line for line in sweep
        )
    for name, values in sweep_run.layers.items():
        t = values["temperatures"].index(sweep_run.settings["temperature"])
        line = next(line for line in text.splitlines() if line.split()[:1] == [name])
        assert f"{values['relative_stability'][t]:.4g}" in line
    samples = Path(sweep_run.extra["results_file"]).with_suffix(".samples.json")
    assert samples.is_file() and f"per-sample values {samples}" in text


def test_a_plain_run_prints_no_sweep_or_layer_table(trained_fmnist_cnn, fmnist_folder):
    from hubstab.cli.eval import format_summary

    res = hubstab.evaluate(
        trained_fmnist_cnn,
        str(fmnist_folder),
        data_config=DataConfig((1, 28, 28), (0.0,), (1.0,)),
        num_images=20,
        num_workers=0,
        bootstrap=50,
    )
    text = format_summary(res)
    assert "sweep" not in text and "layers" not in text and "per-sample" not in text


def test_plot_sweep_of_one_temperature_draws_the_point_and_its_interval(trained_fmnist_cnn, fmnist_folder):
    from hubstab.plots import plot_sweep

    res = hubstab.evaluate(
        trained_fmnist_cnn,
        str(fmnist_folder),
        data_config=DataConfig((1, 28, 28), (0.0,), (1.0,)),
        num_images=20,
        num_workers=0,
        bootstrap=50,
    )
    assert len(res.sweep) == 1
    fig = plot_sweep(res)
    left, right = fig.axes
    lo, hi = res.relative_stability_ci
    segments = [seg for c in left.collections for seg in c.get_segments()] if left.collections else []
    assert any(seg[0][1] == pytest.approx(lo) and seg[1][1] == pytest.approx(hi) for seg in segments), (
        "no error bar from the low to the high end of the interval"
    )
    drawn = [tuple(line.get_ydata()) for line in right.get_lines()]
    assert (res.diffeo_stability,) in drawn and (res.noise_stability,) in drawn
    assert all(line.get_marker() not in (None, "None", "") for line in right.get_lines())


def test_cli_plot_layers_without_layers_says_the_cli_option(trained_fmnist_cnn, fmnist_folder, tmp_path):
    hubstab.evaluate(
        trained_fmnist_cnn,
        str(fmnist_folder),
        data_config=DataConfig((1, 28, 28), (0.0,), (1.0,)),
        num_images=20,
        num_workers=0,
        bootstrap=50,
        output_dir=str(tmp_path / "res"),
    )
    (file,) = [p for p in (tmp_path / "res").rglob("*.json")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "hubstab", "plot", "layers", str(file), "-o", str(tmp_path / "l.png")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--layers blocks" in done.stderr and "layers='blocks'" not in done.stderr


# --- item 12: scripts/fmnist_zoo.py --help is instant -------------------------------------------------------


def test_fmnist_zoo_help_parses_before_importing_torch():
    code = (
        "import runpy, sys\n"
        "sys.argv = ['fmnist_zoo.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'scripts' / 'fmnist_zoo.py')!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TORCH IMPORTED' if 'torch' in sys.modules else 'NO TORCH')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "--untrained" in done.stdout and "dataset-fashion-mnist" in done.stdout
    assert done.stdout.strip().endswith("NO TORCH")


def test_cli_model_name_reaches_the_run_config():
    import argparse

    from hubstab.cli import eval as eval_cli

    parser = argparse.ArgumentParser()
    eval_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", "./my-checkpoint", "--model-name", "me/finetuned"])
    assert eval_cli.config_from_args(args).model_name == "me/finetuned"
    assert eval_cli.config_from_args(parser.parse_args(["eval", "x"])).model_name is None
