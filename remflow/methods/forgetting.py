"""Retain-set-free forgetting shared by REM's flush (step 2) and the NPO and Gradient Ascent baselines.

Epochs of a per-sample forget loss on D_f through the base model, until the model's accuracy on D_f
(corrupted labels, augmented images, as the released code measures it) is at most gamma, and REM's proxy
for model selection, Acc(D_r) * (1 - max(Acc(D_f), gamma)), which needs no test data and no knowledge of
the undiscovered corruption. The proxy sees the data as the flush stop does (`view: flush`, the released code:
augmented images when the suite augments, drawn from a stream of its own); `view: clean` scores it on
un-augmented images (remflow's earlier rule). Without augmentation the two are the same.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from remflow.losses import per_sample_ce
from remflow.methods.base import UnlearnContext
from remflow.models.layers import Route
from remflow.train import Phase, Selection, predict, shuffled

ForgetLoss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def augments(ctx: UnlearnContext) -> bool:
    return bool(ctx.task.augment.crop_padding or ctx.task.augment.flip)


def view_accuracy(ctx: UnlearnContext, model: nn.Module, idx: torch.Tensor, gen: torch.Generator | None) -> float:
    """Accuracy on training samples `idx` against their training (corrupted) labels, in eval mode: on augmented
    images drawn from `gen` when the suite augments and `gen` is given, else on the images as stored."""
    t = ctx.task
    if len(idx) == 0:
        return float("nan")
    pred = predict(model, t, t.train_x[idx], t.triggered[idx], gen=gen if augments(ctx) else None,
                   batch_size=ctx.params.runtime.eval_batch_size)
    return float((pred == t.train_y[idx]).float().mean())


def forget_accuracy(ctx: UnlearnContext, model: nn.Module, forget: torch.Tensor, gen: torch.Generator) -> float:
    """Acc(D_f) against the corrupted labels on augmented images (the flush's stopping signal)."""
    return view_accuracy(ctx, model, forget, gen)


def proxy(ctx: UnlearnContext, model: nn.Module, forget: torch.Tensor, retain: torch.Tensor, gamma: float,
          gen: torch.Generator | None = None) -> float:
    """Acc_base(D_r) * (1 - max(Acc_base(D_f), gamma)), both against the training (corrupted) labels, on
    augmented images drawn from `gen` when the suite augments and `gen` is given (the flush stop's view)."""
    return view_accuracy(ctx, model, retain, gen) * (1.0 - max(view_accuracy(ctx, model, forget, gen), gamma))


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
        return self.ref(x, Route(self.ids(idx), keep=self.keep, seed=self.seed,
                                 per_layer=self.per_layer))

    def __call__(self, batch) -> torch.Tensor:
        if self.table is not None:
            return self.table[batch.idx]
        with torch.no_grad():
            return per_sample_ce(self._forward(batch.x, batch.idx), batch.y)


def forget_phase(ctx: UnlearnContext, model: nn.Module, forget: torch.Tensor, loss: ForgetLoss,
                 ref_ce: Callable[[object], torch.Tensor], *, beta: float, gamma: float, epochs: int,
                 batch_size: int, gen: torch.Generator, label: str, min_epochs: int = 0) -> Phase:
    """Epochs of `loss` (per sample, against the reference's CE `ref_ce(batch)`) on D_f through the base model,
    at a constant rate, until Acc(D_f) <= gamma or `epochs`: REM's flush, and the NPO / Ascent baselines. The
    first `min_epochs` run whatever Acc(D_f) is (the released NPO runs at least one)."""

    def step_loss(net, batch):
        return loss(per_sample_ce(net(batch.x), batch.y), ref_ce(batch), beta).mean()

    return Phase(label, step_loss, shuffled(ctx.task, forget, batch_size, gen), epochs,
                 until=lambda log: len(log.epochs) >= min_epochs and forget_accuracy(ctx, model, forget, gen) <= gamma)


def by_proxy(ctx: UnlearnContext, forget: torch.Tensor, retain: torch.Tensor, gamma: float,
             fallback: str = "original", view: str = "flush") -> Selection:
    """REM's selection: the best proxy, the model before unlearning competing as epoch 0 (a later epoch must
    beat it strictly, as the released code compares); `fallback` says what is kept when no epoch beats it (see
    `Selection`). `view: flush`: the proxy sees the flush stop's view (augmented images when the suite augments,
    from a stream of its own, so the training streams stay as they were); `clean`: un-augmented images."""
    gen = ctx.generator("proxy-view") if view == "flush" else None
    return Selection("proxy", lambda m: proxy(ctx, m, forget, retain, gamma, gen), start=True, fallback=fallback)


def forget_with_proxy(ctx: UnlearnContext, cfg, loss: ForgetLoss, label: str) -> nn.Module:
    """The NPO / Gradient Ascent baselines: the forget phase on D_f against the frozen original (at least
    `cfg.min_epochs` epochs), proxy selection with `cfg.fallback` when no epoch beats the original."""
    task, model = ctx.task, ctx.model
    recipe = ctx.recipe(cfg)
    ref = ctx.frozen_copy(model)
    ctx.note_params(model, ref)
    phase = forget_phase(ctx, model, task.forget, loss, ReferenceCE(ctx, ref), beta=getattr(cfg, "beta", 1.0),
                         gamma=cfg.gamma, epochs=recipe.epochs, batch_size=recipe.batch_size,
                         gen=ctx.generator(label), label=label,
                         min_epochs=min(getattr(cfg, "min_epochs", 0), recipe.epochs))
    select = by_proxy(ctx, task.forget, task.retain, cfg.gamma, getattr(cfg, "fallback", "original"),
                      getattr(cfg, "proxy_view", "flush"))
    return ctx.train(model, recipe, phase, select=select)
