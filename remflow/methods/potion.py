"""Potion (Schoepf, Foster & Brintrup 2024, "Potion: Towards Poison Unlearning"): label-free adaptive SSD with
Poison Trigger Neutralisation search. Training-free.

1. Importance (computed once, in eval mode): the mean over batches of |d ||f(x)||_2 / d theta|, the absolute
   gradient of the batch mean of the logits' L2 norm (no labels), on D_f and on D_r.
2. Adaptive selection: r = imp_f / imp_r over all scalar parameters (NaN/Inf dropped); alpha* = the
   (100 - ln(1 + 100 frac))-th percentile of r; parameters with imp_f > alpha* imp_r are multiplied by
   min(1, lambda imp_r / imp_f), lambda = 1.
3. Search: each try starts again from the original weights. While Acc(D_f) (corrupted labels, training
   augmentation) stays above rho * Acc_orig(D_f) and above `floor`, frac <- 1.1 frac and retry, at most
   `max_tries` tries; the last try is returned when none succeeds.

`variant: paper` is Potion as REM's code runs it (start frac = |D_f| / |D_tr|, 50 tries, rho 0.2, floor 0.2);
`variant: original` is Potion's release (start frac = |D_f| / |D_tr| / 25, 500 tries, no floor; rho is swept
there, 0.2 is kept as the default).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, PositiveInt

from remflow.methods import importance as imp
from remflow.methods.base import MethodConfig, UnlearnContext, register
from remflow.methods.forgetting import forget_accuracy

_TRIES = {"paper": 50, "original": 500}
_START_DIVISOR = {"paper": 1.0, "original": 25.0}
_FLOOR = {"paper": 0.2, "original": 0.0}


class PotionConfig(MethodConfig):
    method: Literal["potion"] = "potion"
    variant: Literal["paper", "original"] = Field(
        "paper", description="paper: REM's run of Potion (start frac |D_f|/|D_tr|, 50 tries); original: Potion's "
        "release (start frac |D_f|/|D_tr|/25, 500 tries)")
    rho: float = Field(0.2, ge=0, le=1, description="stop once Acc(D_f) <= rho Acc_orig(D_f) (REM: 0.2; "
                       "Potion sweeps 0..0.75)")
    floor: float | None = Field(None, ge=0, le=1, description="also stop once Acc(D_f) <= floor (default: 0.2 "
                                "in the paper variant, as REM's code; 0, i.e. off, in the original)")
    lam: float = Field(1.0, gt=0, description="dampening: x min(1, lambda imp_r / imp_f) (Potion: 1)")
    growth: float = Field(1.1, gt=1, description="frac <- growth x frac after a failed try (Potion: 1.1)")
    max_tries: PositiveInt | None = Field(None, description="default: 50 (paper) or 500 (original)")
    start_frac: float | None = Field(None, gt=0, le=1, description="default: |D_f|/|D_tr|, divided by 25 in the "
                                     "original variant")
    importance_batch_size: PositiveInt | None = Field(
        None, description="batch size of the importance passes (default: the recipe's batch size)")


def percentile_for(frac: float) -> float:
    """ASSD's parameter-free percentile: P = 100 - ln(1 + 100 frac)."""
    return max(0.0, 100.0 - math.log1p(100.0 * frac))


@register("potion", PotionConfig, summary="label-free adaptive SSD, dampening more each try until the poison "
          "no longer fits D_f; no training", reference="Schoepf et al. 2024 (Potion)")
def unlearn(ctx: UnlearnContext, cfg: PotionConfig) -> torch.nn.Module:
    task, model = ctx.task, ctx.model
    bs = cfg.importance_batch_size or ctx.recipe(cfg).batch_size
    original = ctx.frozen_copy(model)
    ctx.note_params(model, original)
    imp_f = imp.estimate(ctx, model, task.forget, imp.logit_norm_loss, transform="abs", batch_size=bs,
                         stream="potion-f")
    imp_r = imp.estimate(ctx, model, task.retain, imp.logit_norm_loss, transform="abs", batch_size=bs,
                         stream="potion-r")
    ratios = imp.finite_ratios(imp_f, imp_r)

    gen = ctx.generator("potion-acc")
    acc_orig = forget_accuracy(ctx, model, task.forget, gen)
    target = max(cfg.rho * acc_orig, _FLOOR[cfg.variant] if cfg.floor is None else cfg.floor)
    frac = cfg.start_frac or len(task.forget) / task.num_train / _START_DIVISOR[cfg.variant]
    max_tries = cfg.max_tries or _TRIES[cfg.variant]
    tries, acc, selected, alpha = 0, acc_orig, 0, float("inf")
    while tries < max_tries:
        tries += 1
        alpha = imp.percentile(ratios, percentile_for(frac))
        selected = imp.dampen(model, original, imp_f, imp_r, alpha=alpha, lam=cfg.lam)
        acc = forget_accuracy(ctx, model, task.forget, gen)
        if acc <= target:
            break
        if tries < max_tries:
            frac *= cfg.growth
    ctx.stats.update(tries=tries, frac=round(frac, 8), alpha=alpha, selected=selected,
                     selected_share=round(selected / max(imp.num_scalars(imp_f), 1), 8),
                     forget_acc_before=round(acc_orig, 6), forget_acc_after=round(acc, 6),
                     neutralised=acc <= target)
    return model
