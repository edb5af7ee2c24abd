"""Model adapters through the real hub code paths, offline: repos laid out in a temporary HF cache."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hubstab.adapters import DataConfig, load_model
from hubstab.adapters.labels import imagenet_labels
from hubstab.errors import HubstabError, ModelNotFoundError
from tests.conftest import SmallCNN, efficientnet_lite0_state_dict, package_dir
from tests.hub_cache import add_repo

IMAGENET_DESCRIPTIONS = list(imagenet_labels()[1])


def _photo(width: int = 300, height: int = 200, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    x = x + rng.normal(0, 40, (height, width, 3))
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))


def _save_timm(model, folder: Path, **kwargs) -> Path:
    from timm.models import save_for_hf

    save_for_hf(model, str(folder), safe_serialization=True, **kwargs)
    return folder


def _tiny_deit(folder: Path, preprocessor: dict, *, model_type: str = "deit", labels=None) -> Path:
    from transformers import DeiTConfig, DeiTForImageClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cls, model_cls = (
        (DeiTConfig, DeiTForImageClassification)
        if model_type == "deit"
        else (ViTConfig, ViTForImageClassification)
    )
    names = labels if labels is not None else IMAGENET_DESCRIPTIONS
    config = cls(
        image_size=224,
        patch_size=16,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    model_cls(config).save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return folder


def _tiny_hf_resnet(folder: Path) -> Path:
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=1000)
    config.id2label = dict(enumerate(IMAGENET_DESCRIPTIONS))
    config.label2id = {n: i for i, n in enumerate(IMAGENET_DESCRIPTIONS)}
    ResNetForImageClassification(config).save_pretrained(str(folder))
    # the preprocessor of microsoft/resnet-50: shortest_edge with crop_pct
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ConvNextImageProcessor",
                "crop_pct": 0.875,
                "do_normalize": True,
                "do_rescale": True,
                "do_resize": True,
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
                "resample": 3,
                "rescale_factor": 1 / 255,
                "size": {"shortest_edge": 224},
            }
        )
    )
    return folder


DEIT_PREPROCESSOR = {  # as in facebook/deit-small-patch16-224: size and crop_size as height/width dicts
    "image_processor_type": "DeiTImageProcessor",
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"height": 256, "width": 256},
}
OLD_STYLE_PREPROCESSOR = {  # older configs: plain ints
    "feature_extractor_type": "DeiTFeatureExtractor",
    "image_processor_type": "DeiTImageProcessor",
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "size": 240,
}
VIT_PREPROCESSOR = {
    "image_processor_type": "ViTImageProcessor",
    "do_normalize": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "size": {"height": 224, "width": 224},
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict:
    """A temporary HF_HOME holding timm and transformers repos in the hub's cache layout."""
    import timm

    home = tmp_path_factory.mktemp("hf_home")
    src = tmp_path_factory.mktemp("src")
    shas = {}
    torch.manual_seed(0)
    resnet = timm.create_model("test_resnet", pretrained=False)
    # the repo's own preprocessing differs from timm's registry default (bilinear, crop_pct 0.95)
    saved = _save_timm(resnet, src / "tr", data_config={"interpolation": "bicubic", "crop_pct": 0.9})
    shas["timm_resnet"] = add_repo(home, "timm/test_resnet.r160_in1k", saved)
    torch.manual_seed(1)
    other = timm.create_model("test_resnet", pretrained=False)
    shas["timm_resnet_v1"] = add_repo(
        home, "timm/test_resnet.r160_in1k", _save_timm(other, src / "tr1"), ref="v1"
    )
    torch.manual_seed(2)
    ten = timm.create_model("test_efficientnet", pretrained=False, num_classes=10)
    names = [f"class {i}" for i in range(10)]
    add_repo(home, "someone/effnet-10", _save_timm(ten, src / "e10", model_config={"label_names": names}))
    add_repo(home, "facebook/deit-small-patch16-224", _tiny_deit(src / "deit", DEIT_PREPROCESSOR))
    add_repo(home, "someone/deit-old-style", _tiny_deit(src / "old", OLD_STYLE_PREPROCESSOR))
    add_repo(home, "google/vit-base-patch16-224", _tiny_deit(src / "vit", VIT_PREPROCESSOR, model_type="vit"))
    add_repo(home, "microsoft/resnet-50", _tiny_hf_resnet(src / "hfresnet"))
    bert = src / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    add_repo(home, "someone/bert", bert)
    remote = src / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(
        json.dumps({"model_type": "fancy", "auto_map": {"AutoModelForImageClassification": "m.Fancy"}})
    )
    add_repo(home, "someone/fancy", remote)
    return {"home": home, "src": src, "shas": shas, "resnet": resnet, "other": other}


@pytest.fixture
def offline(hub, monkeypatch) -> dict:
    monkeypatch.setenv("HF_HOME", str(hub["home"]))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_timm_registry_name_loads_hub_weights_and_data_config(offline):
    import timm
    from timm.data import create_transform, resolve_data_config

    loaded = load_model("test_resnet.r160_in1k")
    assert loaded.adapter == "timm"
    assert loaded.name == "timm/test_resnet.r160_in1k"
    assert loaded.revision == offline["shas"]["timm_resnet"]
    assert _same_weights(loaded.model, offline["resnet"])
    assert not loaded.model.training
    cfg = loaded.data_config
    assert cfg.input_size == (3, 160, 160)
    assert cfg.interpolation == "bicubic"
    assert cfg.crop_pct == pytest.approx(0.9)
    assert loaded.label_space == "imagenet-1k" and loaded.labels[0] == "tench, Tinca tinca"
    assert loaded.num_parameters == sum(p.numel() for p in offline["resnet"].parameters())
    # preprocess is timm's own eval transform, minus normalisation
    image = _photo()
    x = loaded.preprocess(image)
    assert x.shape == (3, 160, 160) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    reference = timm.create_model(f"local-dir:{offline['src'] / 'tr'}")
    ref = create_transform(**resolve_data_config({}, model=reference))(image)
    mean, std = torch.tensor(cfg.mean)[:, None, None], torch.tensor(cfg.std)[:, None, None]
    torch.testing.assert_close((x - mean) / std, ref, atol=1e-5, rtol=1e-5)


def test_timm_hub_ids_prefixes_and_revisions(offline):
    shas = offline["shas"]
    for spec in (
        "timm/test_resnet.r160_in1k",
        "hf-hub:timm/test_resnet.r160_in1k",
        "timm:timm/test_resnet.r160_in1k",
    ):
        loaded = load_model(spec)
        assert (loaded.adapter, loaded.revision) == ("timm", shas["timm_resnet"])
        assert _same_weights(loaded.model, offline["resnet"])
    pinned = load_model("timm/test_resnet.r160_in1k@v1")
    assert pinned.revision == shas["timm_resnet_v1"] and pinned.requested_revision == "v1"
    assert _same_weights(pinned.model, offline["other"])
    by_sha = load_model("timm/test_resnet.r160_in1k", revision=shas["timm_resnet_v1"])
    assert _same_weights(by_sha.model, offline["other"])
    with pytest.raises(ModelNotFoundError, match="not in the local hub cache"):
        load_model("timm/test_resnet.r160_in1k@nope")


def test_timm_local_dir_and_label_names(offline):
    folder = offline["src"] / "e10"
    for spec in (str(folder), f"local-dir:{folder}"):
        loaded = load_model(spec)
        # recorded by the folder's name (results files travel to the hub); the path identifies the run only
        assert loaded.adapter == "timm" and loaded.name == folder.name
        assert loaded.local_path == str(folder.resolve())
        assert loaded.labels == [f"class {i}" for i in range(10)] and loaded.label_space is None
        assert loaded.model(torch.zeros(1, *loaded.data_config.input_size)).shape == (1, 10)
    hub = load_model("someone/effnet-10")
    assert hub.labels == [f"class {i}" for i in range(10)]
    init = load_model("someone/effnet-10", pretrained=False)
    assert not init.pretrained and not _same_weights(init.model, hub.model)


def test_transformers_deit_processor_matches_model_preprocessing(offline):
    from transformers import AutoImageProcessor

    loaded = load_model("facebook/deit-small-patch16-224")
    assert loaded.adapter == "transformers" and loaded.name == "facebook/deit-small-patch16-224"
    cfg = loaded.data_config
    assert cfg.input_size == (3, 224, 224)
    assert cfg.crop_pct == pytest.approx(224 / 256) and cfg.interpolation == "bicubic"
    assert cfg.mean == pytest.approx((0.485, 0.456, 0.406))
    assert loaded.label_space == "imagenet-1k"
    image = _photo(333, 250)
    x = loaded.preprocess(image)
    snapshot = next(
        (offline["home"] / "hub" / "models--facebook--deit-small-patch16-224" / "snapshots").iterdir()
    )
    ref = AutoImageProcessor.from_pretrained(str(snapshot))(images=image, return_tensors="pt")[
        "pixel_values"
    ][0]
    mean, std = torch.tensor(cfg.mean)[:, None, None], torch.tensor(cfg.std)[:, None, None]
    torch.testing.assert_close((x - mean) / std, ref, atol=2e-3, rtol=1e-3)
    logits = loaded.model((x[None] - mean) / std).logits
    assert logits.shape == (1, 1000)


@pytest.mark.parametrize(
    ("repo", "size", "mean"),
    [
        ("microsoft/resnet-50", (3, 224, 224), (0.485, 0.456, 0.406)),  # shortest_edge + crop_pct
        ("someone/deit-old-style", (3, 224, 224), (0.5, 0.5, 0.5)),  # ints for size and crop_size
        ("google/vit-base-patch16-224", (3, 224, 224), (0.5, 0.5, 0.5)),  # height/width, no crop
    ],
)
def test_transformers_preprocessor_shapes(offline, repo, size, mean):
    loaded = load_model(repo)
    assert loaded.data_config.input_size == size and loaded.data_config.mean == pytest.approx(mean)
    for w, h in ((500, 375), (375, 500), (64, 48)):
        x = loaded.preprocess(_photo(w, h))
        assert x.shape == size and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    grey = loaded.preprocess(_photo(300, 300).convert("L"))
    assert grey.shape == size and torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])


def test_shorthand_id_resolves_with_note(offline, caplog):
    with caplog.at_level(logging.WARNING, logger="hubstab"):
        loaded = load_model("facebook/deit-small")
    assert loaded.name == "facebook/deit-small-patch16-224"
    assert any("facebook/deit-small-patch16-224" in n for n in loaded.notes)
    assert "using facebook/deit-small-patch16-224" in caplog.text


def test_unknown_ids_fail_fast_with_suggestions(offline):
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE") as err:
        load_model("facebook/deit-smal-patch16-224")
    assert "did you mean" in str(err.value) and "facebook/deit-small-patch16-224" in str(err.value)
    with pytest.raises(ModelNotFoundError, match=r"did you mean.*resnet50"):
        load_model("resnet5O")
    with pytest.raises(ModelNotFoundError, match=r"no pretrained tag 'nope'.*r160_in1k"):
        load_model("test_resnet.nope")
    with pytest.raises(ModelNotFoundError, match="unknown prefix"):
        load_model("torchvision:resnet50")
    assert time.perf_counter() - start < 20


def test_unsupported_models_are_refused(offline):
    with pytest.raises(HubstabError, match="model type 'bert'"):
        load_model("someone/bert")
    with pytest.raises(HubstabError, match="trust_remote_code"):
        load_model("someone/fancy")
    with pytest.raises(HubstabError, match="no timm config"):
        load_model("timm:facebook/deit-small-patch16-224")


def test_plain_module_and_callable():
    cfg = DataConfig(input_size=(1, 28, 28), mean=(0.2860,), std=(0.3530,))
    loaded = load_model(SmallCNN(), data_config=cfg, labels=[str(i) for i in range(10)])
    assert loaded.adapter == "module" and loaded.data_config == cfg
    x = loaded.preprocess(_photo(56, 56))  # RGB in, grey out
    assert x.shape == (1, 28, 28)
    wrapped = load_model(lambda t: t.flatten(1)[:, :5], data_config=cfg)
    assert wrapped.model(torch.ones(2, 1, 28, 28)).shape == (2, 5)
    with pytest.raises(HubstabError, match="data_config"):
        load_model(SmallCNN())


@pytest.mark.slow
def test_real_efficientnet_lite0_by_hub_id_on_imagenet_photos(tmp_path, monkeypatch):
    """Real weights laid out as a timm hub repo, loaded by id, evaluated on the real ImageNet photos."""
    import re

    import timm
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    from hubstab import relative_stability
    from hubstab.adapters import collate_probes, load_probe_set, match_labels

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(efficientnet_lite0_state_dict())
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "input_size": (3, 224, 224),
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
    }
    sha = add_repo(
        tmp_path / "home", "hubstab-test/efficientnet_lite0", _save_timm(model, tmp_path / "lite0")
    )
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    paths = sorted((package_dir("foolbox") / "data").glob("imagenet_*.jpg"))
    labels = [int(re.search(r"_(\d+)\.jpg$", p.name).group(1)) for p in paths]
    synsets = list(imagenet_labels()[0])  # the dataset names classes by WordNet id, the model by description
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=synsets)})
    photos = Dataset.from_dict({"image": [str(p) for p in paths], "label": labels}, features=features)

    results = {}
    for pretrained in (True, False):
        torch.manual_seed(0)
        loaded = load_model("hubstab-test/efficientnet_lite0", pretrained=pretrained)
        assert loaded.revision == sha and loaded.label_space == "imagenet-1k"
        assert loaded.data_config.mean == (0.5, 0.5, 0.5) and loaded.data_config.input_size == (3, 224, 224)
        mapper = match_labels(
            loaded.labels, photos.features["label"].names, model_label_space=loaded.label_space
        )
        assert mapper.usable and mapper.how == "label-space"
        probes = load_probe_set(photos, num_images=None, transform=loaded.preprocess, label_mapper=mapper)
        images, y, idx, skipped = collate_probes([probes[i] for i in range(len(probes))])
        assert skipped == 0 and images.shape == (20, 3, 224, 224) and torch.equal(y, torch.tensor(labels))
        cfg = loaded.data_config
        results[pretrained] = relative_stability(
            loaded.model, images, y, mean=cfg.mean, std=cfg.std, indices=idx, seed=0, bootstrap=200
        )
    trained, init = results[True], results[False]
    print(
        f"\nEfficientNet-Lite0 on 20 ImageNet photos: error {trained.test_error:.3f}, "
        f"R_f {trained.relative_stability:.3f} (init: R_f {init.relative_stability:.3f}, error {init.test_error:.3f})"
    )
    assert trained.test_error < 0.35
    assert init.test_error > 0.8
    assert trained.relative_stability < 0.5 * init.relative_stability


def test_a_module_records_whether_it_is_trained():
    from hubstab.adapters import DataConfig, load_model

    config = DataConfig(input_size=(1, 8, 8), mean=(0.0,), std=(1.0,))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    assert load_model(net, data_config=config).pretrained is None  # not said: unknown (issue 14, item 3)
    assert load_model(net, data_config=config, pretrained=True).pretrained is True
    assert load_model(net, data_config=config, pretrained=False).pretrained is False
