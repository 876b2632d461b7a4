"""finetune: continue training the original model on D_r = D_tr \\ D_f (Goel et al.'s CF with k = -1).

Selection as the released code's `Naive` trainer (CF is commented out there, but runs through it): checked every
5 epochs; remflow checks the validation split (and the last epoch too), the later of equal scores winning.
"""

from typing import Literal

from pydantic import Field, PositiveInt

from remflow.methods.base import SelectedConfig, UnlearnContext, register
from remflow.train import Phase, cross_entropy


class FinetuneConfig(SelectedConfig):
    method: Literal["finetune"] = "finetune"
    schedule: Literal["warmup_linear", "constant"] | None = "warmup_linear"
    eval_every: PositiveInt | None = Field(5, description="epochs between validation checks (the released code's "
                                           "Naive trainer: every 5 epochs)")


@register("finetune", FinetuneConfig, summary="fine-tune the original model on D_tr \\ D_f",
          reference="Goel et al. 2024 (CF)")
def unlearn(ctx: UnlearnContext, cfg: FinetuneConfig):
    recipe = ctx.recipe(cfg)
    data = ctx.shuffled(ctx.task.retain, recipe.batch_size, "finetune-data")
    return ctx.train(ctx.model, recipe, Phase("finetune", cross_entropy, data, recipe.epochs, recipe.schedule),
                     select=ctx.by_validation(cfg), compile=True)
