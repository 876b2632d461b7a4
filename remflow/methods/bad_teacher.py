"""Bad Teacher (Chundawat et al., AAAI 2023), as REM's code runs it (`BadT`).

The student (the original model) distils over shuffled epochs of the whole training set from a mixed
teacher: for a D_f sample the target is the softmax of a randomly initialised ("incompetent") model, for every
other sample the softmax of the frozen original ("competent") model. T = 1; the loss is
F.kl_div(log_softmax(student), teacher) with the code's default elementwise mean (`reduction: mean`; the
batch-mean KL proper is `batchmean`, C times larger). Like the other methods REM builds on its `Naive` trainer,
the schedule is warm-up + linear decay and, as its `Naive` trainer, the checkpoint is checked every 5 epochs
(`eval_every`; there on test accuracy, here on the validation split and after the last epoch too, the later
of equal scores winning: docs/protocol.md). The original paper distils on a 30% subset of D_r; REM's code uses
all of D_tr.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt

from remflow.methods.base import SelectedConfig, UnlearnContext, register
from remflow.train import Phase


class BadTeacherConfig(SelectedConfig):
    method: Literal["bad_teacher"] = "bad_teacher"
    schedule: Literal["warmup_linear", "constant"] | None = "warmup_linear"
    eval_every: PositiveInt | None = Field(5, description="epochs between validation checks (the released code's "
                                           "Naive trainer: every 5 epochs)")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of teachers and student (BadT: 1)")
    reduction: Literal["mean", "batchmean"] = Field(
        "mean", description="KL reduction: mean = elementwise (REM's code, F.kl_div's default); batchmean = the KL")


@register("bad_teacher", BadTeacherConfig, summary="distil from the original on D_r and from a random model on "
          "D_f, over the whole training set", reference="Chundawat et al. 2023 (AAAI)")
def unlearn(ctx: UnlearnContext, cfg: BadTeacherConfig) -> torch.nn.Module:
    task, model = ctx.task, ctx.model
    recipe = ctx.recipe(cfg)
    good = ctx.frozen_copy(model)
    bad = ctx.frozen_copy(ctx.fresh_model("bad-teacher"))
    ctx.note_params(model, good, bad)
    t = cfg.temperature

    def loss_fn(net, batch):
        out = net(batch.x)
        with torch.no_grad():
            target = torch.where(batch.forget[:, None], F.softmax(bad(batch.x).float() / t, 1),
                                 F.softmax(good(batch.x).float() / t, 1))
        kl = F.kl_div(F.log_softmax(out.float() / t, 1), target, reduction="sum")
        # "mean" spelled out: torch's own reduction="mean" is due to change meaning to "batchmean"
        return kl / (target.numel() if cfg.reduction == "mean" else target.shape[0])

    data = ctx.shuffled(task.everything, recipe.batch_size, "bad-teacher-data")
    return ctx.train(model, recipe, Phase("bad teacher", loss_fn, data, recipe.epochs, recipe.schedule),
                     select=ctx.by_validation(cfg))
