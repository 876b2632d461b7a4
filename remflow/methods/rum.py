"""RUM, Refined-Unlearning Meta-algorithm (Zhao et al., NeurIPS 2024, "What makes unlearning hard and what to do
about it", arXiv 2406.01257).

A meta-method: (1) *refine*: split D_f into `subsets` homogeneous subsets by a memorisation score, equal-sized
by its quantiles; (2) *meta-unlearn*: run a base unlearning method on each subset in turn, each run starting from
the previous one's model, in the order the paper found best: the least memorised subset first, the most
memorised last (`order: low_to_high`). Every base run sees the subset as its forget set and D_tr \\ D_f (the
whole of D_f held out) as its retained set, so no forget sample is ever trained on as retained data.

Memorisation is estimated by a proxy, since the true score (Feldman & Zhang) needs thousands of retrainings:
- `proxy: holdout` (default): Carlini et al.'s holdout retraining, one of the proxies RUM's study uses: fine-tune
  a copy of the original model on retained data for `proxy_epochs` epochs and score each forget sample by how
  much its confidence in its training label drops, p_orig(y|x) - p_holdout(y|x). A sample the rest of the data
  does not explain (memorised) loses its confidence; a sample that follows the data keeps it.
- `proxy: confidence`: 1 - p_orig(y|x) under the original model (a confidence proxy; cheaper, weaker).

`base` names any registered method (not RUM itself, nor one that needs an ETD checkpoint) and `base_params` its
settings; recipe fields set on RUM itself (`epochs`, `lr`, ...) pass to the base (per subset) unless
`base_params` sets them; each base run's figures go to `stats.subsets[i]`. The paper runs NegGrad+ and others
as bases with their own hyperparameters, tuned per subset; remflow runs one base config for all subsets, with
the `unlearn:` budget per subset (RUM costs `subsets` times its base).

What differs in remflow's setting: D_f is corrupted data, and for random labels nearly all of it is memorised, so
the split mostly orders samples by how far each label is from what the data explains; the proxies are computed
from the given model, not from training checkpoints.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from remflow.methods.base import REGISTRY, MethodConfig, UnlearnContext, register
from remflow.seeds import derive_seed
from remflow.train import Phase, cross_entropy


class RumConfig(MethodConfig):
    method: Literal["rum"] = "rum"
    base: str = Field("neggrad_plus", description="the base unlearning method run on each subset (RUM's paper "
                      "pairs it with NegGrad+, SalUn, l1-sparse, ...)")
    base_params: dict[str, Any] = Field({}, description="the base method's settings (its defaults otherwise)")
    subsets: PositiveInt = Field(3, description="how many memorisation subsets D_f is split into (the paper: 3, "
                                 "low / medium / high)")
    order: Literal["low_to_high", "high_to_low"] = Field("low_to_high", description="the order the subsets are "
                                                         "unlearned in (the paper's best: low memorisation first)")
    proxy: Literal["holdout", "confidence"] = Field("holdout", description="memorisation proxy: holdout retraining "
                                                   "(Carlini et al.) or 1 - confidence")
    proxy_epochs: NonNegativeInt = Field(1, description="epochs of the holdout fine-tuning on retained data")

    @model_validator(mode="after")
    def _base_is_a_method(self):
        m = REGISTRY.get(self.base)
        if m is None:
            raise ValueError(f"base '{self.base}' is not a registered method ({', '.join(sorted(REGISTRY))})")
        if self.base == "rum" or m.uses_expansion:
            raise ValueError(f"base '{self.base}' cannot run under RUM (RUM itself, or it needs an ETD checkpoint)")
        m.config(**{"method": self.base, **self.base_params})  # the base's own validation
        return self


def probabilities(ctx: UnlearnContext, model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """p(y|x) of training samples for their training labels (as trained on, no augmentation), eval mode."""
    t = ctx.task
    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(idx), ctx.params.runtime.eval_batch_size):
            i = idx[s : s + ctx.params.runtime.eval_batch_size]
            p = F.softmax(model(t.inputs(t.train_x[i], t.triggered[i], None)).float(), 1)
            out.append(p.gather(1, t.train_y[i].view(-1, 1)).flatten())
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, device=idx.device)


def memorisation(ctx: UnlearnContext, cfg: RumConfig) -> torch.Tensor:
    """The proxy's score of every D_f sample (higher: more memorised)."""
    t = ctx.task
    p0 = probabilities(ctx, ctx.model, t.forget)
    if cfg.proxy == "confidence" or cfg.proxy_epochs == 0:
        return 1.0 - p0
    held = copy.deepcopy(ctx.model)
    ctx.note_params(ctx.model, held)
    recipe = ctx.recipe(cfg)
    data = ctx.shuffled(t.retain, recipe.batch_size, "rum-holdout")
    ctx.train(held, recipe.model_copy(update={"epochs": cfg.proxy_epochs}),
              Phase("rum-holdout", cross_entropy, data, cfg.proxy_epochs, "constant"))
    ctx.stats.clear()  # the holdout run's figures are not the method's
    return p0 - probabilities(ctx, held, t.forget)


def split(scores: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Positions of `scores` in k equal-sized groups, lowest scores first (stable for ties)."""
    order = torch.sort(scores, stable=True).indices
    return [g for g in torch.tensor_split(order, k) if len(g)]


@register("rum", RumConfig, summary="split D_f by a memorisation proxy, run a base method on each subset, low "
          "memorisation first", reference="Zhao et al. 2024 (NeurIPS)")
def unlearn(ctx: UnlearnContext, cfg: RumConfig) -> torch.nn.Module:
    task = ctx.task
    base = REGISTRY[cfg.base]
    # recipe fields set on RUM (epochs, lr, ...) are the base's per subset, unless base_params sets its own
    own = {k: getattr(cfg, k) for k in MethodConfig.model_fields if k != "method" and getattr(cfg, k) is not None}
    base_cfg = base.config(**{"method": cfg.base, **own, **cfg.base_params})
    scores = memorisation(ctx, cfg)
    groups = split(scores, cfg.subsets)
    if cfg.order == "high_to_low":
        groups = groups[::-1]
    model = ctx.model
    runs = []
    for i, g in enumerate(groups):
        sub_task = task.with_discovered(task.forget[g].tolist())
        sub_task.retain = task.retain  # D_tr \ D_f: the other subsets are never trained on as retained data
        sub = type(ctx)(model, sub_task, ctx.params, derive_seed(ctx.seed, "rum", i), ctx.device, route=None)
        model = base.unlearn(sub, base_cfg)
        ctx.peak_params = max(ctx.peak_params, sub.peak_params)
        runs.append({"size": len(g), "score_min": round(float(scores[g].min()), 6),
                     "score_max": round(float(scores[g].max()), 6), **sub.stats})
    ctx.stats.update(base=cfg.base, proxy=cfg.proxy, subsets=runs)
    return model
