"""transformers adapter: AutoModelForImageClassification with the repo's own AutoImageProcessor."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from hubstab.adapters.config import DataConfig, to_mode
from hubstab.adapters.resolve import UnsupportedModelError

_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_GENERIC_LABEL = re.compile(r"^LABEL_\d+$")


def is_transformers_config(config: dict[str, Any]) -> bool:
    """Whether a repo's ``config.json`` is a transformers config (it has a ``model_type``)."""
    return isinstance(config.get("model_type"), str)


def check_supported(config: dict[str, Any], name: str, trust_remote_code: bool) -> None:
    """Raise :class:`UnsupportedModelError` unless AutoModelForImageClassification can build ``config``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    model_type = config.get("model_type")
    auto_map = config.get("auto_map") or {}
    if model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return
    if "AutoModelForImageClassification" in auto_map:
        if trust_remote_code:
            return
        raise UnsupportedModelError(
            f"{name} needs its own code from the repo (model type {model_type!r}); pass trust_remote_code=True "
            "(--trust-remote-code) only if you trust that code"
        )
    raise UnsupportedModelError(
        f"{name} has model type {model_type!r}, which is not an image classifier that transformers' "
        "AutoModelForImageClassification supports (supported types include "
        + ", ".join(sorted(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)[:12])
        + ", ...)"
    )


class ProcessorTransform:
    """PIL image -> (C, H, W) in [0, 1] through the model's own image processor, without normalising.

    Processors whose output follows the image's aspect ratio (``shortest_edge`` without a crop) are followed
    by a centre crop to a square of that edge, so that probe images share one size.
    """

    def __init__(self, processor: Any, channels: int, square: int | None = None):
        self.processor = processor
        self.channels = channels
        self.square = square

    def __call__(self, image) -> torch.Tensor:
        image = to_mode(image, self.channels)
        if self.channels == 1:
            image = image.convert("RGB")  # processors expect 3 channels; reduced again below
        out = self.processor(images=image, do_normalize=False, return_tensors="pt")["pixel_values"][0]
        out = out.float()
        if self.channels == 1 and out.shape[0] == 3:
            out = out.mean(dim=0, keepdim=True)
        if self.square is not None:
            from torchvision.transforms.functional import center_crop

            out = center_crop(out, [self.square, self.square])
        return out.clamp_(0.0, 1.0)


def _size_dict(size: Any) -> dict[str, int]:
    """A processor's ``size``/``crop_size`` (dict, SizeDict or int) as a dict of its set entries."""
    if size is None:
        return {}
    if isinstance(size, int):
        return {"height": size, "width": size}
    if isinstance(size, dict):
        return {k: int(v) for k, v in size.items() if isinstance(v, int)}
    keys = ("height", "width", "shortest_edge", "longest_edge")
    return {k: int(getattr(size, k)) for k in keys if isinstance(getattr(size, k, None), int)}


def _probe_sizes(transform: ProcessorTransform) -> list[tuple[int, ...]]:
    from PIL import Image

    shapes = []
    for size in ((320, 240), (240, 320)):
        shapes.append(tuple(transform(Image.new("RGB", size, (128, 64, 32))).shape))
    return shapes


def processor_data_config(processor: Any, channels: int) -> tuple[DataConfig, ProcessorTransform]:
    """The DataConfig equivalent to an image processor, and the transform that applies the processor.

    Handles ``size`` as ``{"height", "width"}``, ``{"shortest_edge"}`` (with ``crop_pct``) or an int, and
    ``crop_size`` as an int or a dict; the input size is measured by running the processor.
    """
    transform = ProcessorTransform(processor, channels)
    shapes = _probe_sizes(transform)
    size = _size_dict(getattr(processor, "size", None))
    if shapes[0] != shapes[1]:
        edge = size.get("shortest_edge") or min(shapes[0][1:])
        transform = ProcessorTransform(processor, channels, square=int(edge))
        shapes = _probe_sizes(transform)
    c, h, w = shapes[0]
    do_norm = getattr(processor, "do_normalize", True)
    mean = getattr(processor, "image_mean", None) if do_norm else None
    std = getattr(processor, "image_std", None) if do_norm else None
    mean = tuple(mean) if mean is not None else (0.0,) * 3
    std = tuple(std) if std is not None else (1.0,) * 3
    if channels == 1:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    resample = getattr(processor, "resample", None)
    try:
        interpolation = _RESAMPLE.get(int(resample), "bilinear") if resample is not None else "bilinear"
    except (TypeError, ValueError):
        interpolation = str(getattr(resample, "name", "bilinear")).lower()
        interpolation = interpolation if interpolation in _RESAMPLE.values() else "bilinear"
    crop_pct = getattr(processor, "crop_pct", None)
    if crop_pct is None and getattr(processor, "do_center_crop", False) and size:
        edge = size.get("shortest_edge") or size.get("height")
        if edge:
            crop_pct = min(1.0, h / float(edge))
    if not crop_pct or not getattr(processor, "do_resize", True):
        crop_pct = 1.0
    crop_mode = "center" if getattr(processor, "do_center_crop", False) or crop_pct < 1.0 else "squash"
    if "shortest_edge" in size and crop_mode == "squash":
        crop_mode = "center"
    config = DataConfig(
        input_size=(c, h, w),
        mean=mean,
        std=std,
        interpolation=interpolation,
        crop_pct=min(1.0, float(crop_pct)),
        crop_mode=crop_mode,
    )
    return config, transform


def load_transformers(
    folder: Path, *, name: str, pretrained: bool, trust_remote_code: bool, config: dict[str, Any]
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load an image classifier and its image processor from a local folder (a hub snapshot or a directory).

    Returns:
        The model in eval mode and facts: ``data_config``, ``labels``, ``num_classes``, ``transform``.
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    check_supported(config, name, trust_remote_code)
    kwargs = {"trust_remote_code": trust_remote_code, "local_files_only": True}
    if pretrained:
        has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
        if not has_weights:
            raise UnsupportedModelError(f"{name} has no weights file (model.safetensors)")
        model = AutoModelForImageClassification.from_pretrained(str(folder), **kwargs)
    else:
        hf_config = AutoConfig.from_pretrained(str(folder), **kwargs)
        model = AutoModelForImageClassification.from_config(hf_config, trust_remote_code=trust_remote_code)
    model.eval()
    try:
        processor = AutoImageProcessor.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(
            f"{name} has no usable image processor (preprocessor_config.json): {exc}"
        ) from exc
    channels = int(getattr(model.config, "num_channels", 3) or 3)
    data_config, transform = processor_data_config(processor, channels)
    id2label = getattr(model.config, "id2label", None) or {}
    num_classes = int(getattr(model.config, "num_labels", len(id2label)) or len(id2label))
    labels = (
        [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(num_classes)] if id2label else None
    )
    if labels and all(_GENERIC_LABEL.match(x) for x in labels):
        labels = None  # LABEL_0, LABEL_1, ...: the config names no classes
    return model, {
        "data_config": data_config,
        "labels": labels,
        "num_classes": num_classes,
        "transform": transform,
    }
