"""Real parquet shards of real JPEG photos, laid out as ``datasets`` writes image datasets.

The 20 ImageNet photos that foolbox ships are re-encoded (a different crop, size and JPEG quality per copy,
so every row holds distinct bytes) into a few hundred rows, and written with ``Dataset.to_parquet`` in row
groups of ``rows_per_group`` rows, image bytes embedded, labels as an ImageNet ``ClassLabel``.
"""

from __future__ import annotations

import importlib.util
import io
import re
from pathlib import Path


def foolbox_photos() -> list[tuple[Path, int]]:
    """(path, ImageNet class index) of foolbox's 20 ImageNet photos."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("foolbox is not installed (pip install -e '.[test]')")
    folder = Path(spec.origin).parent / "data"
    paths = sorted(folder.glob("imagenet_*.jpg"))
    return [(p, int(re.search(r"_(\d+)\.jpg$", p.name).group(1))) for p in paths]


def write_shards(
    folder: Path,
    *,
    num_shards: int = 4,
    rows_per_shard: int = 200,
    rows_per_group: int = 50,
    size: int = 96,
    split: str = "validation",
) -> list[Path]:
    """Write ``num_shards`` parquet files ``{split}-0000i-of-0000n.parquet`` into ``folder``; returns them."""
    import datasets
    from PIL import Image

    from hubstab.adapters.labels import imagenet_labels

    photos = [(Image.open(p).convert("RGB"), label) for p, label in foolbox_photos()]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(imagenet_labels()[0]))}
    )
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    row = 0
    for shard in range(num_shards):
        images, labels = [], []
        for _ in range(rows_per_shard):
            photo, label = photos[row % len(photos)]
            k = row // len(photos)
            w, h = photo.size
            m = k % 17  # a different crop for every copy of a photo
            crop = photo.crop((m, (3 * m) % 19, w - (5 * m) % 23, h - m)).resize((size + k % 9, size))
            buf = io.BytesIO()
            crop.save(buf, format="JPEG", quality=70 + k % 25)
            images.append({"bytes": buf.getvalue(), "path": None})
            labels.append(label)
            row += 1
        path = folder / f"{split}-{shard:05d}-of-{num_shards:05d}.parquet"
        datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
            str(path), batch_size=rows_per_group
        )
        paths.append(path)
    return paths
