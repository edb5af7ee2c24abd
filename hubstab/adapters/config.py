"""The data configuration a model expects: input size, resize/crop policy and normalisation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
CROP_MODES: tuple[str, ...] = ("center", "squash", "border")


@dataclass(frozen=True)
class DataConfig:
    """How images reach a model.

    Probe images are resized and cropped to ``input_size`` in [0, 1]; perturbations act on them, and only then
    are they normalised with ``mean``/``std`` on the device.

    Attributes:
        input_size: (C, H, W) the model takes, in channels and pixels.
        mean: per-channel mean subtracted after perturbing (in [0, 1] pixel units).
        std: per-channel standard deviation divided by after perturbing.
        interpolation: resize interpolation (``"bilinear"``, ``"bicubic"``, ...).
        crop_pct: fraction of the resized image kept by the crop (timm's convention: the image is first
            resized to ``size / crop_pct``, then cropped to ``size``); 1.0 keeps everything.
        crop_mode: ``"center"`` (shorter side resized, centre crop), ``"squash"`` (both sides resized, aspect
            ratio not kept) or ``"border"`` (fit inside, then pad).
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        size = tuple(int(v) for v in self.input_size)
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"input_size must be (C, H, W) with positive entries, got {self.input_size!r}")
        object.__setattr__(self, "input_size", size)
        mean = tuple(float(v) for v in self.mean)
        std = tuple(float(v) for v in self.std)
        if len(mean) != len(std) or len(mean) not in (1, size[0]):
            raise ValueError(
                f"mean and std need one value per channel ({size[0]}), got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if not 0.0 < float(self.crop_pct) <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")

    @property
    def channels(self) -> int:
        """Number of input channels (1 for grey models, 3 for RGB)."""
        return self.input_size[0]

    @classmethod
    def from_timm(cls, cfg: Mapping[str, Any]) -> DataConfig:
        """Build from a timm data config (``timm.data.resolve_model_data_config``)."""
        return cls(
            input_size=tuple(cfg["input_size"]),
            mean=tuple(cfg.get("mean", (0.0,) * 3)),
            std=tuple(cfg.get("std", (1.0,) * 3)),
            interpolation=str(cfg.get("interpolation") or "bilinear"),
            crop_pct=float(cfg.get("crop_pct") or 1.0),
            crop_mode=str(cfg.get("crop_mode") or "center"),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def build_transform(config: DataConfig):
    """The evaluation transform of ``config`` without normalisation: PIL image -> (C, H, W) float in [0, 1].

    Uses timm's own evaluation transform (resize to ``size / crop_pct``, crop to ``size``) with
    ``normalize=False``; the image is first converted to RGB or grey to match the model's channels.
    """
    from timm.data.transforms_factory import transforms_imagenet_eval

    inner = transforms_imagenet_eval(
        img_size=config.input_size[1:],
        crop_pct=config.crop_pct,
        crop_mode=config.crop_mode,
        interpolation=config.interpolation,
        normalize=False,
    )
    return ImageTransform(inner, config.channels)


class ImageTransform:
    """PIL image -> tensor in [0, 1]: channel conversion, then an inner resize/crop/to-tensor transform."""

    def __init__(self, inner, channels: int):
        self.inner = inner
        self.channels = channels

    def __call__(self, image):
        import torch

        image = to_mode(image, self.channels)
        out = self.inner(image)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the image transform returned {type(out).__name__}, expected a tensor")
        if out.dtype == torch.uint8:  # timm's transform without normalisation keeps 0..255 integers
            return out.float().div_(255.0)
        return out.float().clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"ImageTransform(channels={self.channels}, {self.inner!r})"


def to_mode(image, channels: int):
    """Convert a PIL image to grey (``channels == 1``) or RGB (otherwise), dropping any alpha channel."""
    mode = "L" if channels == 1 else "RGB"
    if image.mode == mode:
        return image
    if image.mode in ("RGBA", "LA", "P") and mode == "RGB":
        image = image.convert("RGBA")
    return image.convert(mode)
