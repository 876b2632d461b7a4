"""Gradient Ascent (the paper's `Ascent` baseline): epochs of -CE on D_f until Acc(D_f) <= gamma.

Retain-set free. At most `epochs` epochs of D_f (the `unlearn:` budget by default), constant learning rate,
and REM's proxy Acc(D_r) (1 - max(Acc(D_f), gamma)) picks the epoch to keep (the original model counts as
epoch 0), as in REM's released code.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from remflow.losses import gradient_ascent
from remflow.methods.base import MethodConfig, UnlearnContext, register
from remflow.methods.forgetting import forget_with_proxy


class GaConfig(MethodConfig):
    method: Literal["ga"] = "ga"
    gamma: float = Field(0.2, ge=0, lt=1, description="stop once Acc(D_f) <= gamma; proxy floor (REM's code: 0.2)")


@register("ga", GaConfig, summary="gradient ascent (-CE) on D_f until Acc(D_f) <= gamma, proxy selection",
          reference="Schoepf et al. 2026 §4 (Ascent); Goel et al. 2024")
def unlearn(ctx: UnlearnContext, cfg: GaConfig) -> torch.nn.Module:
    return forget_with_proxy(ctx, cfg, gradient_ascent, "ga")
