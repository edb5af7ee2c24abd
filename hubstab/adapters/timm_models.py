"""timm adapter: registry names, timm hub repos and local folders in timm's hub format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from hubstab.adapters.config import DataConfig, build_transform
from hubstab.adapters.resolve import ModelSpec, UnsupportedModelError, fetch_repo, not_found


def is_timm_config(config: dict[str, Any]) -> bool:
    """Whether a repo's ``config.json`` is in timm's format (it names an ``architecture``)."""
    return isinstance(config.get("architecture"), str)


def registry_hub_id(name: str) -> str | None:
    """The hub repo holding the pretrained weights of a timm registry name (``timm/arch.tag``), if any.

    Raises:
        ModelNotFoundError: unknown architecture or pretrained tag, with close names.
    """
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        raise not_found(name, f"{name!r} is not a timm model name nor a hub id (org/name)")
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:
        tags = [n for n in timm.list_pretrained(f"{arch}.*")]
        raise not_found(
            name, f"timm model {arch!r} has no pretrained tag {tag!r} (tags: {', '.join(tags) or 'none'})"
        ) from None
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def timm_labels(pretrained_cfg: dict[str, Any]) -> list[str] | None:
    """Class names in logit order from a timm ``pretrained_cfg`` (descriptions when given), or None."""
    labels = pretrained_cfg.get("label_names")
    if labels is None:
        return None
    labels = [str(x) for x in labels]
    descriptions = pretrained_cfg.get("label_descriptions")
    if isinstance(descriptions, dict) and len(descriptions) == len(labels):
        labels = [str(descriptions.get(x, x)) for x in labels]
    return labels


def load_timm(
    spec: ModelSpec, *, pretrained: bool, config: dict[str, Any] | None, folder: Path | None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Create a timm model from a parsed spec.

    Args:
        spec: the parsed id (registry name, hub repo or directory).
        pretrained: load the weights (False: the architecture at initialisation).
        config: the repo's parsed ``config.json`` when already read.
        folder: the local snapshot or directory holding the repo's files, when there is one.

    Returns:
        The model in eval mode and facts about it: ``name``, ``revision``, ``data_config`` (DataConfig),
        ``labels``, ``pretrained``.
    """
    import timm
    from timm.data import resolve_model_data_config

    revision = spec.revision
    name = spec.target
    if spec.kind == "registry" and pretrained:
        hub_id = registry_hub_id(spec.target)
        if hub_id is not None:
            name = hub_id
            folder, revision = fetch_repo(hub_id)
            config = json.loads((folder / "config.json").read_text())
    elif spec.kind == "registry":
        registry_hub_id(spec.target)  # validates the name and tag
    if folder is not None:
        if config is None or not is_timm_config(config):
            raise UnsupportedModelError(
                f"{name} has no timm config.json (with an 'architecture'); it cannot be loaded with timm"
            )
        arch = config["architecture"]
        if not timm.is_model(arch):
            raise UnsupportedModelError(
                f"{name} needs timm architecture {arch!r}, which this timm ({timm.__version__}) does not know; "
                "upgrade timm"
            )
        try:
            model = timm.create_model(f"local-dir:{folder}", pretrained=pretrained)
        except RuntimeError as exc:
            if "No suitable checkpoints" in str(exc):
                raise UnsupportedModelError(f"{name} has no weights file (model.safetensors)") from exc
            raise
    else:
        model = timm.create_model(spec.target, pretrained=pretrained)
    model.eval()
    data_config = DataConfig.from_timm(resolve_model_data_config(model))
    labels = timm_labels(getattr(model, "pretrained_cfg", {}) or {})
    return model, {
        "name": name,
        "revision": revision,
        "data_config": data_config,
        "labels": labels,
        "num_classes": getattr(model, "num_classes", None),
        "pretrained": pretrained,
        "transform": build_transform(data_config),
    }
