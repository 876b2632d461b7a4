"""retrain: re-initialise and train from scratch on D_r = D_tr \\ D_f (the paper's "Retrained", code name EU).

Trained and selected as the original model is (docs/protocol.md): pretraining's recipe (optimizer, learning
rate, batch, epochs, schedule) on a newly initialised model, and pretraining's checkpoint rule (`pretrain.select`,
`.eval_every`, `.tie`), each overridable here. D_r still holds the undiscovered corruption; trained as long as
the original, retraining re-learns it, as the paper's Retrained model does.

The released code trains EU for pretraining's 4000 steps with its schedule, checked every 5 epochs like
pretraining (on test accuracy), but at the unlearning learning rate (its main.py sets the rate of every
unlearning method to `unlearn_lr`, 0.005 against pretraining's 0.025): `lr: <the unlearn rate>` reproduces that.
remflow's default is pretraining's rate, so that the retrained model and the original are trained alike.
"""

from typing import Literal

from pydantic import Field, PositiveInt

from remflow.config import SelectRule, TieRule
from remflow.methods.base import SelectedConfig, UnlearnContext, register
from remflow.train import Phase, cross_entropy


class RetrainConfig(SelectedConfig):
    method: Literal["retrain"] = "retrain"
    schedule: Literal["warmup_linear", "constant"] | None = Field(None, description="default: pretraining's")
    epochs: PositiveInt | None = Field(None, description="default: the pretraining epochs")
    select: SelectRule | None = Field(None, description="default (None): pretraining's `select`")
    eval_every: PositiveInt | None = Field(None, description="default (None): pretraining's `eval_every`")
    tie: TieRule | None = Field(None, description="default (None): pretraining's `tie`")


@register("retrain", RetrainConfig, summary="retrain from scratch on D_tr \\ D_f, trained and selected as the "
          "original (the paper's 'Retrained')", reference="Goel et al. 2024 (EU); Schoepf et al. 2026 §4")
def unlearn(ctx: UnlearnContext, cfg: RetrainConfig):
    recipe = ctx.recipe(cfg, ctx.params.pretrain)
    model = ctx.fresh_model("retrain")
    ctx.note_params(model)
    data = ctx.shuffled(ctx.task.retain, recipe.batch_size, "retrain-data")
    return ctx.train(model, recipe, Phase("retrain", cross_entropy, data, recipe.epochs, recipe.schedule),
                     select=ctx.by_validation(cfg), compile=True)
