"""SCRUB (Kurmanji et al., NeurIPS 2023): a student, started from the original model, distils from the frozen
original (the teacher) on D_r while moving away from it on D_f.

    KL_T(t || s) = KL(softmax(t/T) || softmax(s/T)) summed over classes, averaged over the batch, x T^2
    min step, on a D_r batch:  gamma CE(s, y) + alpha KL_T(t || s)
    max step, on a D_f batch:  -KL_T(t || s)                      (`max_step: kl`, the original SCRUB)
                           or  -(gamma CE(s, y) + alpha KL_T(t || s))  (`max_step: full`, Goel et al.'s and
                                                                         REM's code: adds ascent on the labels)

Each epoch is a max pass over D_f (a nested phase), while fewer than `msteps` steps (max and min together) have run, then a
min pass over D_r. Defaults are the configuration REM reports: its code's full-loss max step, alpha 0.01,
gamma 1, T 4, msteps 100 (at CIFAR-10 scale, one or two max passes). The original SCRUB's large-scale
values are alpha 0.001, gamma 0.99, T 4 and msteps counted in epochs (2 of 3). The checkpoint is checked after
every epoch (`eval_every: 1`), on the validation split, the later of equal scores winning; REM's released code
checks test accuracy after every pass, max passes included (docs/protocol.md).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeInt

from remflow.methods.base import SelectedConfig, UnlearnContext, register
from remflow.train import Phase, shuffled


class ScrubConfig(SelectedConfig):
    method: Literal["scrub"] = "scrub"
    alpha: float = Field(0.01, ge=0, description="weight of the KL term (REM reports alpha 0.01 of its grid "
                         "0.001..10; original SCRUB large scale: 0.001)")
    gamma: float = Field(1.0, ge=0, description="weight of the CE term (REM's/Goel's code: 1; original SCRUB: 0.99)")
    temperature: float = Field(4.0, gt=0, description="distillation temperature T; KL scaled by T^2 (SCRUB: 4)")
    max_step: Literal["kl", "full"] = Field(
        "full", description="max step on D_f: kl = -KL only (original SCRUB); full = -(gamma CE + alpha KL) "
        "(Goel et al.'s and REM's code)")
    msteps: NonNegativeInt = Field(100, description="max passes run before each min epoch while fewer than msteps "
                                   "steps have run (REM's code: 100)")


def kl_t(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)), summed over classes, batch mean, times T^2."""
    return F.kl_div(F.log_softmax(student_logits.float() / t, 1), F.softmax(teacher_logits.float() / t, 1),
                    reduction="batchmean") * (t * t)


@register("scrub", ScrubConfig, summary="distil the original on D_r, move away from it on D_f (max-min), "
          "validation selection", reference="Kurmanji et al. 2023 (NeurIPS)")
def unlearn(ctx: UnlearnContext, cfg: ScrubConfig) -> torch.nn.Module:
    task, model = ctx.task, ctx.model
    recipe = ctx.recipe(cfg)
    teacher = ctx.frozen_copy(model)
    ctx.note_params(model, teacher)
    gen = ctx.generator("scrub-data")

    def terms(net, batch) -> tuple[torch.Tensor, torch.Tensor]:
        out = net(batch.x)
        with torch.no_grad():
            t_out = teacher(batch.x)
        return F.cross_entropy(out.float(), batch.y), kl_t(out, t_out, cfg.temperature)

    def min_loss(net, batch):
        ce, kl = terms(net, batch)
        return cfg.gamma * ce + cfg.alpha * kl

    def max_loss(net, batch):
        ce, kl = terms(net, batch)
        return -kl if cfg.max_step == "kl" else -(cfg.gamma * ce + cfg.alpha * kl)

    # one max pass over D_f before each min epoch while fewer than msteps steps (max and min) have run; it
    # steps the min phase's optimizer, at the learning rate its schedule has reached (REM's and Goel's code)
    max_pass = Phase("max", max_loss, shuffled(task, task.forget, recipe.batch_size, gen), epochs=1,
                     until=lambda log: log.steps + log.nested_steps.get("max", 0) >= cfg.msteps
                     or len(task.forget) == 0)
    min_phase = Phase("min", min_loss, shuffled(task, task.retain, recipe.batch_size, gen), recipe.epochs,
                      recipe.schedule)
    return ctx.train(model, recipe, min_phase, nested=(max_pass,), select=ctx.by_validation(cfg))
