"""Retain-set-free forgetting shared by REM's flush (step 2) and the NPO and Gradient Ascent baselines.

Epochs of a per-sample forget loss on D_f through the base model, until the model's accuracy on D_f
(corrupted labels, augmented images, as the released code measures it) is at most gamma, and REM's proxy
for model selection, Acc(D_r) * (1 - max(Acc(D_f), gamma)), which needs no test data and no knowledge of
the undiscovered corruption.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from remflow.losses import per_sample_ce
from remflow.methods.base import UnlearnContext
from remflow.models.layers import Route
from remflow.train import KeepBest, fit, predict

ForgetLoss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def forget_accuracy(ctx: UnlearnContext, model: nn.Module, forget: torch.Tensor, gen: torch.Generator) -> float:
    """Acc(D_f) against the corrupted labels on augmented images (the flush's stopping signal)."""
    t = ctx.task
    pred = predict(model, t, t.train_x[forget], t.triggered[forget], gen=gen if t.augment.crop_padding or
                   t.augment.flip else None, batch_size=ctx.params.runtime.eval_batch_size)
    return float((pred == t.train_y[forget]).float().mean())


def proxy(ctx: UnlearnContext, model: nn.Module, forget: torch.Tensor, retain: torch.Tensor, gamma: float) -> float:
    """Acc_base(D_r) * (1 - max(Acc_base(D_f), gamma)), both against the training (corrupted) labels."""
    return ctx.acc(model, retain) * (1.0 - max(ctx.acc(model, forget), gamma))


def reference_ce(ref: nn.Module, batch, route: Route | None) -> torch.Tensor:
    with torch.no_grad():
        return per_sample_ce(ref(batch.x, route) if route is not None else ref(batch.x), batch.y)


class ReferenceCE:
    """The frozen reference's per-sample cross-entropy for a batch.

    The reference runs in eval mode, so without augmentation its output for a sample never changes: then it is
    computed once for the whole training set (in large batches) and looked up, instead of once per step.
    `ids(idx)` gives the routing ids of samples (D_f's shared id) when the reference runs in full mode.
    """

    def __init__(self, ctx: UnlearnContext, ref: nn.Module, *, keep: float = 0.2, seed: int = 0,
                 ids: Callable[[torch.Tensor], torch.Tensor] | None = None, reuse: bool = True,
                 per_layer: bool = False):
        t = ctx.task
        self.ref, self.keep, self.seed, self.ids, self.per_layer = ref, keep, seed, ids, per_layer
        self.table: torch.Tensor | None = None
        if reuse and not (t.augment.crop_padding or t.augment.flip):
            out = []
            bs = ctx.params.runtime.eval_batch_size
            with torch.no_grad():
                for s in range(0, t.num_train, bs):
                    idx = t.everything[s : s + bs]
                    out.append(per_sample_ce(self._forward(t.inputs(t.train_x[idx], t.triggered[idx], None), idx),
                                             t.train_y[idx]))
            self.table = torch.cat(out)

    def _forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if self.ids is None:
            return self.ref(x)
        return self.ref(x, Route(self.ids(idx), keep=self.keep, seed=self.seed, per_layer=self.per_layer))

    def __call__(self, batch) -> torch.Tensor:
        if self.table is not None:
            return self.table[batch.idx]
        with torch.no_grad():
            return per_sample_ce(self._forward(batch.x, batch.idx), batch.y)


def flush(
    ctx: UnlearnContext,
    model: nn.Module,
    ref: nn.Module,
    opt,
    forget: torch.Tensor,
    loss: ForgetLoss,
    *,
    beta: float,
    gamma: float,
    max_epochs: int,
    batch_size: int,
    gen: torch.Generator,
    ref_ce: Callable[[object], torch.Tensor] | None = None,
    after_epoch=None,
    label: str = "flush",
    min_epochs: int = 0,
) -> int:
    """Epochs of `loss` on D_f through the base model until Acc(D_f) <= gamma or `max_epochs`; returns epochs run.
    `ref_ce(batch)` gives the reference's per-sample CE (default: `ref` in base mode); the first `min_epochs`
    epochs run whatever Acc(D_f) is (the released NPO runs at least one)."""
    task = ctx.task
    ref_ce = ref_ce or (lambda batch: reference_ce(ref, batch, None))

    def step_loss(net, batch):
        ce = per_sample_ce(net(batch.x), batch.y)
        return loss(ce, ref_ce(batch), beta).mean()

    log = fit(model, opt, step_loss, lambda e: task.batches(forget, batch_size, gen), epochs=max_epochs,
              steps_per_epoch=task.num_batches(len(forget), batch_size), schedule="constant",
              until=lambda e: e >= min_epochs and forget_accuracy(ctx, model, forget, gen) <= gamma,
              after_epoch=after_epoch,
              label=label, device=ctx.device)
    return len(log.epochs)


def proxy_selection(model: nn.Module, original: float, fallback: str = "original") -> KeepBest:
    """Selection by the proxy: an epoch is kept when its proxy beats the best so far, starting from the original
    model's `original` score. When no epoch beats it, `fallback` "original" returns the original model unchanged
    (remflow's earlier rule), "last" leaves the model at its last epoch (the released code, where the kept model
    starts as an alias of the live one). The kept epoch is always a copy of the state, never an alias."""
    if fallback == "original":
        return KeepBest(model, original)
    best = KeepBest(model)  # holds no copy of the original: restoring without a better epoch keeps the last one
    best.score = original
    return best


def selected_epoch(best: KeepBest, log) -> int:
    """The epoch `best.restore` leaves the model at (0: the original)."""
    if best.state is None:
        return log.epochs[-1]["epoch"] if log.epochs else 0
    return best.epoch


def forget_with_proxy(ctx: UnlearnContext, cfg, loss: ForgetLoss, label: str) -> nn.Module:
    """The NPO / Gradient Ascent baselines: epochs of `loss` on D_f until Acc(D_f) <= gamma (at most `epochs`,
    at least `cfg.min_epochs`), keeping the epoch with the best proxy (the original model counts as epoch 0;
    `cfg.fallback` says what happens when no epoch beats it, see `proxy_selection`)."""
    task, model = ctx.task, ctx.model
    recipe = ctx.recipe(cfg)
    ref = ctx.frozen_copy(model)
    ctx.note_params(model, ref)
    from remflow.train import make_optimizer

    opt = make_optimizer(model.parameters(), recipe)
    fallback = getattr(cfg, "fallback", "original")
    best = proxy_selection(model, proxy(ctx, model, task.forget, task.retain, cfg.gamma), fallback)
    scores: list[float] = []

    def after_epoch(epoch, steps):
        score = proxy(ctx, model, task.forget, task.retain, cfg.gamma)
        best.offer(model, score, epoch + 1)
        scores.append(score)
        return {"proxy": score}

    epochs = flush(ctx, model, ref, opt, task.forget, loss, beta=getattr(cfg, "beta", 1.0), gamma=cfg.gamma,
                   max_epochs=recipe.epochs, batch_size=recipe.batch_size, gen=ctx.generator(label),
                   ref_ce=ReferenceCE(ctx, ref), after_epoch=after_epoch, label=label,
                   min_epochs=min(getattr(cfg, "min_epochs", 0), recipe.epochs))
    fell_back = best.state is None and epochs > 0
    ctx.stats.update(forget_epochs=epochs, best_epoch=epochs if fell_back else best.epoch,
                     proxy=round(scores[-1] if fell_back else best.score, 6), fell_back=fell_back)
    return best.restore(model)
