"""finetune: continue training the original model on D_r = D_tr \\ D_f (Goel et al.'s CF with k = -1)."""

from typing import Literal

from remflow.methods.base import MethodConfig, UnlearnContext, register
from remflow.train import Phase, cross_entropy


class FinetuneConfig(MethodConfig):
    method: Literal["finetune"] = "finetune"
    schedule: Literal["warmup_linear", "constant"] | None = "warmup_linear"


@register("finetune", FinetuneConfig, summary="fine-tune the original model on D_tr \\ D_f",
          reference="Goel et al. 2024 (CF)")
def unlearn(ctx: UnlearnContext, cfg: FinetuneConfig):
    recipe = ctx.recipe(cfg)
    data = ctx.shuffled(ctx.task.retain, recipe.batch_size, "finetune-data")
    return ctx.train(ctx.model, recipe, Phase("finetune", cross_entropy, data, recipe.epochs, recipe.schedule),
                     select=ctx.by_validation(), compile=True)
