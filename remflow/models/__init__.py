"""Models: ResNet-9, a small CNN and a small ViT, all implementing the expansion interface of layers.py, and the
user's own classes (remflow/plugins.py)."""

from __future__ import annotations

from typing import Any

from torch import nn

from remflow.errors import RemflowError
from remflow.models.cnn import SmallCNN
from remflow.models.layers import SHARED_ID, Route, WidenableNet
from remflow.models.resnet9 import ResNet9
from remflow.models.vit import ViT
from remflow.config import CnnCfg, PluginModelCfg, ResNet9Cfg, ViTCfg

__all__ = ["SHARED_ID", "Route", "WidenableNet", "build_model", "count_params", "shape_signature"]


def build_model(cfg: Any, in_channels: int, num_classes: int, image_size: int) -> WidenableNet:
    if isinstance(cfg, CnnCfg):
        return SmallCNN(in_channels, num_classes, cfg.width, cfg.layout)
    if isinstance(cfg, ResNet9Cfg):
        return ResNet9(in_channels, num_classes, cfg.width, cfg.layout)
    if isinstance(cfg, ViTCfg):
        if image_size % cfg.patch:
            raise RemflowError(f"image size {image_size} is not a multiple of the patch size", key="model.patch",
                               got=cfg.patch)
        return ViT(in_channels, num_classes, image_size, cfg.patch, cfg.dim, cfg.depth, cfg.heads, cfg.dim_head,
                   cfg.mlp_dim)
    if isinstance(cfg, PluginModelCfg):  # the user's own class (remflow/plugins.py)
        from remflow.plugins import build_plugin_model

        return build_plugin_model(cfg, in_channels, num_classes, image_size)
    raise RemflowError("unknown model", key="model.name", got=getattr(cfg, "name", cfg))  # pragma: no cover


def count_params(*models: nn.Module) -> int:
    return sum(p.numel() for m in models for p in m.parameters())


def shape_signature(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def checkpoint_meta(model: WidenableNet, cfg: Any, splits, *, variant: str, route: dict | None) -> dict:
    """Everything needed to rebuild `model` from its tensors: the config that made it travels with it."""
    return {
        "model": cfg.model_dump(),
        "in_channels": splits.in_channels,
        "num_classes": splits.num_classes,
        "image_size": splits.image_size,
        "added": dict(model.added),
        "route": route,
        "variant": variant,
        "dataset": splits.name,
        "fingerprint": splits.fingerprint,
    }


def load_model(path, device=None) -> tuple[WidenableNet, dict]:
    """Rebuild a model from a remflow checkpoint (safetensors; no code is executed)."""
    from pydantic import TypeAdapter, ValidationError

    from remflow.io import load_checkpoint
    from remflow.config import ModelCfg

    tensors, meta = load_checkpoint(path)
    try:
        cfg = TypeAdapter(ModelCfg).validate_python(meta["model"])
        model = build_model(cfg, int(meta["in_channels"]), int(meta["num_classes"]), int(meta["image_size"]))
        if meta.get("added"):
            model.widen_({k: int(v) for k, v in meta["added"].items()})
        model.load_state_dict(tensors, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, ValidationError) as e:
        raise RemflowError(f"checkpoint does not match its recorded architecture ({str(e).splitlines()[0]})",
                           key=str(path), hint="delete it and rerun the stage that writes it") from None
    if device is not None:
        model.to(device)
    return model, meta
