"""retrain: re-initialise and train from scratch on D_r = D_tr \\ D_f (the paper's "Retrained", code name EU).

Faithful to the released code: the pretraining schedule and step count, but the unlearning learning rate
(0.005, not pretraining's 0.025), and the best checkpoint kept. We select on the validation split where the
code selected on test accuracy. D_r still holds the undiscovered corruption, so retraining re-learns it.
"""

from typing import Literal

from pydantic import Field

from remflow.methods.base import MethodConfig, UnlearnContext, register
from remflow.train import KeepBest, compiled, cross_entropy, fit, make_optimizer


class RetrainConfig(MethodConfig):
    method: Literal["retrain"] = "retrain"
    schedule: Literal["warmup_linear", "constant"] | None = "warmup_linear"
    epochs: int | None = Field(None, gt=0, description="default: the pretraining epochs")


def train_on(ctx: UnlearnContext, model, indices, recipe, epochs: int, label: str, stream: str):
    """Cross-entropy training on `indices` with the recipe; keeps the best validation checkpoint."""
    task = ctx.task
    opt = make_optimizer(model.parameters(), recipe)
    gen = ctx.generator(stream)
    best = KeepBest(model)

    def after_epoch(epoch, steps):
        val = ctx.val_accuracy(model)
        best.offer(model, val, epoch + 1)
        return {"val_acc": val}

    log = fit(compiled(model, ctx.params.runtime), opt, cross_entropy,
              lambda e: task.batches(indices, recipe.batch_size, gen),
              epochs=epochs, steps_per_epoch=task.num_batches(len(indices), recipe.batch_size),
              schedule=recipe.schedule, after_epoch=after_epoch, label=label, device=ctx.device)
    ctx.stats.update(steps=log.steps, best_epoch=best.epoch)
    return best.restore(model)


@register("retrain", RetrainConfig, summary="retrain from scratch on D_tr \\ D_f (the paper's 'Retrained')",
          reference="Goel et al. 2024 (EU); Schoepf et al. 2026 §4")
def unlearn(ctx: UnlearnContext, cfg: RetrainConfig):
    recipe = ctx.recipe(cfg)
    model = ctx.fresh_model("retrain")
    ctx.note_params(model)
    epochs = cfg.epochs or ctx.params.pretrain.epochs
    return train_on(ctx, model, ctx.task.retain, recipe, epochs, "retrain", "retrain-data")
