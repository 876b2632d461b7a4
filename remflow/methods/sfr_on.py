"""SFR-on, saliency forgetting on the remain-preserving manifold with the online fast-slow update (Huang et al.,
NeurIPS 2024, "Unified Gradient-Based Machine Unlearning with Remain Geometry Enhancement", arXiv 2409.19732).

The paper decomposes the steepest unlearning direction into a weighted forgetting ascent, a retaining descent
and a weight-saliency matrix, and measures its step in the geometry of the retained data's outputs (the KL on
D_r, whose Hessian modulates the forgetting step). It never forms that Hessian: a fast-slow update approximates
the modulated direction online. remflow's reading of that description:

- Each step pairs a D_r batch with the next batch of a cycled D_f loader (as NegGrad+). On every
  `forget_freq`-th step the forget gradient g_f = grad(-CE(D_f batch)) (ascent) is taken, masked to the up-to-date
  salient weights (the `keep` share of all scalar weights with the largest |g_f|, recomputed at every forget
  step: the saliency of the current model, not of the original) and added, times `forget_alpha`, to the
  gradient of CE(D_r batch); the optimizer steps the fast weights.
- Every `slow_every` steps the slow weights move `slow_rate` of the way to the fast weights and the fast weights
  restart from them (the slow weights follow the average of the fast trajectory, where the retaining descent
  has undone the part of each forgetting step that the retained data's curvature resists). The model scored
  and returned is the slow one, synchronised at every epoch's end.

`forget_alpha` is what the authors tune per task (their answer to "no unlearning effect": raise forget_alpha,
forget_freq); remflow tunes it over `forget_alpha_grid` on the validation split only
(l1_sparse.tune_on_validation: clean validation accuracy x (1 - max(Acc(D_f), 0.2)), never the test set) and
records the chosen value in `stats.forget_alpha`. The budget is the `unlearn:` section's (constant rate:
the paper's fast-slow runs are short, with no decay), the epoch with the best validation accuracy kept.

What differs in remflow's setting: D_f is corrupted data; the paper's classification runs forget random
or class subsets; the fast-slow update here is a Lookahead-style synchronisation of remflow's design from the
paper's description (its code carries no licence and was not read).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt

from remflow.data.task import Batch
from remflow.methods.base import MethodConfig, UnlearnContext, register
from remflow.methods.l1_sparse import tune_on_validation
from remflow.methods.neggrad_plus import paired
from remflow.train import Data, Phase


class SfrOnConfig(MethodConfig):
    method: Literal["sfr_on"] = "sfr_on"
    schedule: Literal["warmup_linear", "constant"] | None = "constant"
    forget_alpha: float = Field(0.1, gt=0, description="weight of the forgetting ascent; used alone when "
                                "forget_alpha_grid is empty")
    forget_alpha_grid: list[PositiveFloat] = Field([0.03, 0.1, 0.3], description="forget weights tried, each from "
                                                   "the original; the best on validation is kept; [] runs "
                                                   "`forget_alpha` alone")
    forget_freq: PositiveInt = Field(1, description="a forgetting step every forget_freq steps")
    keep: float = Field(0.5, gt=0, le=1, description="share of weights salient to the current forget gradient "
                        "that the forgetting step moves (SalUn's median threshold)")
    slow_every: PositiveInt = Field(5, description="fast steps between two slow updates")
    slow_rate: float = Field(0.5, gt=0, le=1, description="how far the slow weights move towards the fast ones")


def top_share_mask(grads: list[torch.Tensor], keep: float) -> list[torch.Tensor]:
    flat = torch.cat([g.abs().flatten() for g in grads])
    n = flat.numel()
    k = max(1, min(n, round(keep * n)))
    threshold = torch.kthvalue(flat.float(), n - k + 1).values
    return [g.abs() >= threshold for g in grads]


@register("sfr_on", SfrOnConfig, summary="salient forgetting ascent on D_f with retaining descent on D_r, fast-slow "
          "weights; forget weight tuned on validation", reference="Huang et al. 2024 (NeurIPS)")
def unlearn(ctx: UnlearnContext, cfg: SfrOnConfig) -> torch.nn.Module:
    task = ctx.task
    recipe = ctx.recipe(cfg)

    def run(model: torch.nn.Module, alpha: float) -> torch.nn.Module:
        params = [p for p in model.parameters() if p.requires_grad]
        slow = [p.detach().clone() for p in params]
        ctx.note_params(model, model)
        state = {"step": 0, "forget_grad": None}

        @torch.no_grad()
        def sync() -> None:
            for s, p in zip(slow, params):
                s.add_(p.detach() - s, alpha=cfg.slow_rate)
                p.copy_(s)

        def loss(net, pair: tuple[Batch, Batch | None]) -> torch.Tensor:
            r, f = pair
            if state["step"] and state["step"] % cfg.slow_every == 0:
                sync()
            state["forget_grad"] = None
            if f is not None and state["step"] % cfg.forget_freq == 0:
                g = torch.autograd.grad(-F.cross_entropy(net(f.x).float(), f.y), params)
                masks = top_share_mask(list(g), cfg.keep)
                state["forget_grad"] = [gi * m for gi, m in zip(g, masks)]
            state["step"] += 1
            return F.cross_entropy(net(r.x).float(), r.y)

        @torch.no_grad()
        def add_forget(net) -> None:
            if state["forget_grad"] is not None:
                for p, g in zip(params, state["forget_grad"]):
                    if p.grad is None:
                        p.grad = alpha * g
                    else:
                        p.grad.add_(g, alpha=alpha)

        select = ctx.by_validation()
        synced = dataclasses.replace(select, score=lambda m: (sync(), select.score(m))[1])
        gen, forget_gen = ctx.generator("sfr-retain"), ctx.generator("sfr-forget")
        data = Data(task.num_batches(len(task.retain), recipe.batch_size),
                    lambda: paired(ctx, task.retain, task.forget, recipe.batch_size, gen, forget_gen))
        return ctx.train(model, recipe, Phase("sfr_on", loss, data, recipe.epochs, recipe.schedule,
                                              grad_hook=add_forget), select=synced)

    return tune_on_validation(ctx, "forget_alpha", cfg.forget_alpha_grid or [cfg.forget_alpha], run)
