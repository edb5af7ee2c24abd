"""Train a few architectures on Fashion-MNIST and evaluate them with hubstab (results for the leaderboard).

Real data (Debian's dataset-fashion-mnist: `apt-get install dataset-fashion-mnist`), real training, the
same runner as ``hubstab eval``.

    python scripts/fmnist_zoo.py --out zoo --results hubstab-results --epochs 1 --num-images 500
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported after the arguments are parsed, so --help is instant
    import torch
    from torch import nn

CLASSES = [
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


def load(split: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    import torch

    with gzip.open(root / f"{split}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(root / f"{split}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))


def architectures(seed: int = 0) -> dict[str, nn.Module]:
    import timm
    import torch
    from torch import nn

    torch.manual_seed(seed)  # the initialisations are part of the experiment: make them reproducible

    return {
        "fc-3x512": nn.Sequential(
            nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
        ),
        "lenet": nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(400, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, 10),
        ),
        "resnet10t": timm.create_model("resnet10t", num_classes=10, in_chans=1),
        "vit-tiny-p4": timm.create_model(
            "vit_tiny_patch16_224", img_size=28, patch_size=4, num_classes=10, in_chans=1
        ),
    }


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0])
        for i in range(0, x.shape[0], 128):
            idx = perm[i : i + 128]
            loss = nn.functional.cross_entropy(model((x[idx] - 0.286) / 0.353), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data",
        default="/usr/share/datasets/fashion-mnist",
        help="Fashion-MNIST idx files (default: Debian's dataset-fashion-mnist, %(default)s)",
    )
    p.add_argument(
        "--out",
        default="zoo",
        help="where the test dataset is saved (default %(default)s; the models stay in memory)",
    )
    p.add_argument("--results", default="hubstab-results", help="results folder (default %(default)s)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs (default %(default)s)")
    p.add_argument("--train-images", type=int, default=30000, help="training images (default %(default)s)")
    p.add_argument(
        "--num-images", type=int, default=500, help="probe images per evaluation (default %(default)s)"
    )
    p.add_argument(
        "--untrained", action="store_true", help="also evaluate every architecture at initialisation"
    )
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    root, out = Path(args.data), Path(args.out)
    if not (root / "t10k-images-idx3-ubyte.gz").is_file():
        sys.exit(f"Fashion-MNIST is not in {root}: apt-get install dataset-fashion-mnist (or give --data)")

    import copy

    import datasets
    import numpy as np
    from PIL import Image

    import hubstab
    from hubstab.adapters import DataConfig, load_model

    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr = load("train", root)
    xte, yte = load("t10k", root)
    test_dir = out / "fashion-mnist-test"
    if not test_dir.exists():
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
        images = [Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8)) for img in xte]
        datasets.Dataset.from_dict({"image": images, "label": yte.tolist()}, features=features).save_to_disk(
            test_dir
        )
    config = DataConfig(
        input_size=(1, 28, 28), mean=(0.286,), std=(0.353,), interpolation="bilinear", crop_pct=1.0
    )
    for name, model in architectures().items():
        runs = [("untrained", copy.deepcopy(model).eval())] if args.untrained else []
        t0 = time.time()
        trained = train(model, xtr[: args.train_images], ytr[: args.train_images], args.epochs, seed=0)
        runs.append(("trained", trained))
        print(f"{name}: trained in {time.time() - t0:.0f} s")
        for state, net in runs:
            loaded = load_model(
                net,
                data_config=config,
                labels=CLASSES,
                pretrained=state == "trained",
                model_name=f"fmnist/{name}" + ("" if state == "trained" else "-init"),
            )
            res = hubstab.evaluate(
                loaded,
                str(test_dir),
                num_images=args.num_images,
                output_dir=args.results,
                progress=False,
                num_workers=0,
                overwrite=True,
                # at initialisation BatchNorm has no meaningful running statistics: use the probe set's, as
                # the paper did (with running statistics untrained resnet10t reads about 0.18 instead of ~0.7)
                batchnorm="batch" if state == "untrained" else "eval",
            )
            print(
                f"  {loaded.name}: R_f={res.relative_stability:.3g} "
                f"[95% CI {res.relative_stability_ci[0]:.3g} - {res.relative_stability_ci[1]:.3g}] "
                f"error={100 * res.test_error:.1f}%"
            )


if __name__ == "__main__":
    main()
