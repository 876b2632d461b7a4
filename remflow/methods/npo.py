"""NPO, Negative Preference Optimization (Zhang et al. 2024), adapted to classifiers as in REM's code.

Per-sample loss -(2/beta) log sigmoid(beta (CE - CE_ref)) on D_f, with the frozen original model as the
reference: gradient ascent on CE weighted by 2 sigmoid(-beta (CE - CE_ref)), which fades once a sample is
forgotten. Epochs of D_f until Acc(D_f) <= gamma (at most `epochs`), constant learning rate, selection by
REM's proxy Acc(D_r) (1 - max(Acc(D_f), gamma)); retain-set free.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from remflow.losses import npo
from remflow.methods.base import MethodConfig, UnlearnContext, register
from remflow.methods.forgetting import forget_with_proxy


class NpoConfig(MethodConfig):
    method: Literal["npo"] = "npo"
    beta: float = Field(1.0, gt=0, description="NPO temperature (REM's code and NPO's synthetic runs: 1)")
    gamma: float = Field(0.2, ge=0, lt=1, description="stop once Acc(D_f) <= gamma; proxy floor (REM's code: 0.2)")


@register("npo", NpoConfig, summary="NPO on D_f (bounded, weighted gradient ascent) until Acc(D_f) <= gamma, "
          "proxy selection", reference="Zhang et al. 2024; Schoepf et al. 2026 §4")
def unlearn(ctx: UnlearnContext, cfg: NpoConfig) -> torch.nn.Module:
    return forget_with_proxy(ctx, cfg, npo, "npo")
