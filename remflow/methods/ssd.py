"""SSD, Selective Synaptic Dampening (Foster, Schoepf & Brintrup, AAAI 2024): training-free, one shot.

Importance [.] = mean over batches of the squared gradient of the cross-entropy (a diagonal Fisher with the
labels the model was trained on), computed in eval mode on D_f and on the full training set D. A parameter
is selected where [.]_Df > alpha [.]_D and multiplied by min(1, lambda [.]_D / [.]_Df). Defaults are SSD's
published ResNet18/CIFAR values (alpha 10, lambda 1). As in SSD (and unlike Goel et al.'s variant, which
uses D_r) the reference importance is taken over the whole training set; `reference: retain` is Goel's.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt

from remflow.methods import importance as imp
from remflow.methods.base import MethodConfig, UnlearnContext, register


class SsdConfig(MethodConfig):
    method: Literal["ssd"] = "ssd"
    alpha: float = Field(10.0, gt=0, description="selection: [.]_Df > alpha [.]_D (SSD, ResNet18/CIFAR: 10)")
    lam: float = Field(1.0, gt=0, description="dampening: x min(1, lambda [.]_D / [.]_Df) (SSD: 1)")
    reference: Literal["train", "retain"] = Field(
        "train", description="importance reference set: the full training set (SSD) or D_r (Goel et al.)")
    importance_batch_size: PositiveInt | None = Field(
        None, description="batch size of the importance passes (default: the recipe's batch size)")


@register("ssd", SsdConfig, summary="dampen the parameters far more important to D_f than to D_tr (squared "
          "CE gradients), no training", reference="Foster et al. 2024 (AAAI)")
def unlearn(ctx: UnlearnContext, cfg: SsdConfig) -> torch.nn.Module:
    task, model = ctx.task, ctx.model
    bs = cfg.importance_batch_size or ctx.recipe(cfg).batch_size
    ref_set = task.everything if cfg.reference == "train" else task.retain
    imp_f = imp.estimate(ctx, model, task.forget, imp.ce_loss, transform="square", batch_size=bs, stream="ssd-f")
    imp_d = imp.estimate(ctx, model, ref_set, imp.ce_loss, transform="square", batch_size=bs, stream="ssd-d")
    # dampen in place: `model` is its own source (each parameter is copied onto itself before scaling)
    selected = imp.dampen(model, model, imp_f, imp_d, alpha=cfg.alpha, lam=cfg.lam)
    ctx.stats.update(selected=selected, selected_share=round(selected / max(imp.num_scalars(imp_f), 1), 8))
    return model
