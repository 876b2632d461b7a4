"""NegGrad+ (Kurmanji et al., NeurIPS 2023, as SCRUB's repository runs it in `train_negrad`).

One epoch = one shuffled pass over D_r; every retain batch is paired with the next batch of a D_f loader that
is cycled (reshuffled on every pass) for as long as the epoch lasts. The loss of a pair is

    alpha CE(retain batch) - (1 - alpha) CE(forget batch)

in train mode, without an L2 anchor to the original weights (the notebook variant's extra). The learning-rate
budget is the `unlearn:` section's; the checkpoint is checked after every epoch on the validation split, the
earlier of equal scores kept (`tie: earliest`, remflow's rule for it so far: REM's released code has no NegGrad+,
so there is no released protocol to follow; with `tie: latest` digits fixture seed 1 kept epoch 7, whose
validation accuracy equals an earlier epoch's, with test utility 7 points below the original's; docs/protocol.md).
"""

from __future__ import annotations

from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from remflow.data.task import Batch
from remflow.config import TIE_HELP, TieRule
from remflow.methods.base import SelectedConfig, UnlearnContext, register
from remflow.train import Data, Phase


class NegGradPlusConfig(SelectedConfig):
    method: Literal["neggrad_plus"] = "neggrad_plus"
    tie: TieRule | None = Field("earliest", description=TIE_HELP + " (no released protocol: remflow's rule)")
    alpha: float = Field(0.9999, gt=0, lt=1, description="weight of the retain CE; 1 - alpha weighs the forget "
                         "ascent (SCRUB's large-scale interclass-confusion runs: 0.9999; small scale: 0.95)")


def cycled(ctx: UnlearnContext, indices: torch.Tensor, batch_size: int,
           gen: torch.Generator) -> Iterator[Batch | None]:
    """Batches of `indices` forever, a new shuffle on every pass (None forever when `indices` is empty)."""
    while True:
        if len(indices) == 0:
            yield None
        else:
            yield from ctx.task.batches(indices, batch_size, gen)


def paired(ctx: UnlearnContext, retain: torch.Tensor, forget: torch.Tensor, batch_size: int,
           gen: torch.Generator, forget_gen: torch.Generator) -> Iterator[tuple[Batch, Batch | None]]:
    """One pass over `retain`, each batch with the next batch of a cycled loader over `forget`."""
    return zip(ctx.task.batches(retain, batch_size, gen), cycled(ctx, forget, batch_size, forget_gen))


@register("neggrad_plus", NegGradPlusConfig, summary="descend CE on D_r while ascending CE on paired D_f batches, "
          "validation selection", reference="Kurmanji et al. 2023 (NeurIPS)")
def unlearn(ctx: UnlearnContext, cfg: NegGradPlusConfig) -> torch.nn.Module:
    task, model = ctx.task, ctx.model
    recipe = ctx.recipe(cfg)
    gen, forget_gen = ctx.generator("neggrad-retain"), ctx.generator("neggrad-forget")

    def loss_fn(net, pair: tuple[Batch, Batch | None]) -> torch.Tensor:
        r, f = pair
        loss = cfg.alpha * F.cross_entropy(net(r.x).float(), r.y)
        if f is not None:
            loss = loss - (1.0 - cfg.alpha) * F.cross_entropy(net(f.x).float(), f.y)
        return loss

    data = Data(task.num_batches(len(task.retain), recipe.batch_size),
                lambda: paired(ctx, task.retain, task.forget, recipe.batch_size, gen, forget_gen))
    return ctx.train(model, recipe, Phase("neggrad+", loss_fn, data, recipe.epochs, recipe.schedule),
                     select=ctx.by_validation(cfg))
