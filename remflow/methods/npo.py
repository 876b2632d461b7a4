"""NPO, Negative Preference Optimization (Zhang et al. 2024), adapted to classifiers as in REM's code.

Per-sample loss -(2/beta) log sigmoid(beta (CE - CE_ref)) on D_f, with the frozen original model as the
reference: gradient ascent on CE weighted by 2 sigmoid(-beta (CE - CE_ref)), which fades once a sample is
forgotten. Epochs of D_f until Acc(D_f) <= gamma (at most `epochs`, at least `min_epochs`: the released code
runs one even when the original model is already below gamma), constant learning rate, selection by REM's
proxy Acc(D_r) (1 - max(Acc(D_f), gamma)); retain-set free. As in the released code, an epoch is kept only if
it beats the original's proxy and the last epoch is returned when none does (`fallback: original` returns the
original model unchanged instead, remflow's earlier rule).
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
    min_epochs: int = Field(1, ge=0, description="epochs run whatever Acc(D_f) is (the released code: 1)")
    fallback: Literal["last", "original"] = Field(
        "last", description="when no epoch's proxy beats the original's: the last epoch (the released code) or "
        "the original model unchanged")


@register("npo", NpoConfig, summary="NPO on D_f (bounded, weighted gradient ascent) until Acc(D_f) <= gamma, "
          "proxy selection", reference="Zhang et al. 2024; Schoepf et al. 2026 §4")
def unlearn(ctx: UnlearnContext, cfg: NpoConfig) -> torch.nn.Module:
    return forget_with_proxy(ctx, cfg, npo, "npo")
