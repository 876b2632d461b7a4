"""retrain: re-initialise and train from scratch on D_r = D_tr \\ D_f (the paper's "Retrained", code name EU).

Faithful to the released code: the pretraining schedule and step count, but the unlearning learning rate
(0.005, not pretraining's 0.025), and the best checkpoint kept. We select on the validation split where the
code selected on test accuracy. D_r still holds the undiscovered corruption, so retraining re-learns it.
"""

from typing import Literal

from pydantic import Field

from remflow.methods.base import MethodConfig, UnlearnContext, register
from remflow.train import Phase, cross_entropy


class RetrainConfig(MethodConfig):
    method: Literal["retrain"] = "retrain"
    schedule: Literal["warmup_linear", "constant"] | None = "warmup_linear"
    epochs: int | None = Field(None, gt=0, description="default: the pretraining epochs")


@register("retrain", RetrainConfig, summary="retrain from scratch on D_tr \\ D_f (the paper's 'Retrained')",
          reference="Goel et al. 2024 (EU); Schoepf et al. 2026 §4")
def unlearn(ctx: UnlearnContext, cfg: RetrainConfig):
    recipe = ctx.recipe(cfg)
    model = ctx.fresh_model("retrain")
    ctx.note_params(model)
    data = ctx.shuffled(ctx.task.retain, recipe.batch_size, "retrain-data")
    epochs = cfg.epochs or ctx.params.pretrain.epochs
    return ctx.train(model, recipe, Phase("retrain", cross_entropy, data, epochs, recipe.schedule),
                     select=ctx.by_validation(), compile=True)
