"""Parameter importances and selective dampening, shared by SSD (Foster et al. 2024) and Potion (Schoepf et al.
2024).

An importance is, for every scalar parameter, the mean over batches of a transform of the gradient of one
batch-level loss: SSD squares the gradient of the cross-entropy (a diagonal Fisher with the training labels),
Potion takes the absolute gradient of the logits' L2 norm (label-free). Gradients are accumulated into one
running sum per parameter tensor, one batch at a time, in eval mode (BatchNorm uses and keeps its running
statistics): memory is two copies of the parameters whatever the data size, and per-sample gradients are
never formed.

Dampening then scales each selected parameter by min(1, lambda * imp_ref / imp_forget).
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from remflow.data.task import Batch
from remflow.methods.base import UnlearnContext
from remflow.train import autocast

Importance = dict[str, torch.Tensor]
BatchLoss = Callable[[nn.Module, Batch], torch.Tensor]


def ce_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """SSD's importance loss: mean cross-entropy against the labels the model was trained on."""
    return F.cross_entropy(model(batch.x).float(), batch.y)


def logit_norm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Potion's label-free importance loss: the batch mean of each sample's logit L2 norm (not squared)."""
    return torch.linalg.vector_norm(model(batch.x).float(), ord=2, dim=1).mean()


def estimate(
    ctx: UnlearnContext,
    model: nn.Module,
    indices: torch.Tensor,
    loss: BatchLoss,
    *,
    transform: Literal["square", "abs", "none"],
    batch_size: int,
    stream: str,
) -> Importance:
    """Mean over batches of transform(grad loss) for every trainable parameter, over training samples `indices`.

    `none` gives the mean gradient itself (SalUn's saliency takes its absolute value afterwards).
    Batches are built as training builds them (augmented when the task augments; triggers as trained on).
    The model is left in the mode it was in and its parameters unchanged; its .grad fields are cleared.
    """
    task = ctx.task
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()
    batches = 0
    try:
        for batch in task.batches(indices, batch_size, ctx.generator("importance", stream)):
            model.zero_grad(set_to_none=True)
            with autocast(ctx.device):
                value = loss(model, batch)
            value.backward()
            for n, p in params.items():
                if p.grad is not None:
                    g = p.grad.float()
                    sums[n].add_(g.square() if transform == "square" else g.abs() if transform == "abs" else g)
            batches += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    for s in sums.values():
        s.div_(max(batches, 1))
    return sums


def percentile(values: torch.Tensor, q: float) -> float:
    """numpy's default (linear) percentile of a 1-D tensor, for tensors of any size (torch.quantile caps at 2^24)."""
    n = values.numel()
    if n == 0:
        return float("inf")
    pos = min(max(q, 0.0), 100.0) / 100.0 * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    a = float(torch.kthvalue(values, lo + 1).values)
    if hi == lo:
        return a
    b = float(torch.kthvalue(values, hi + 1).values)
    return a + (b - a) * (pos - lo)


def finite_ratios(imp_f: Importance, imp_r: Importance) -> torch.Tensor:
    """imp_f / imp_r over every scalar parameter, NaN and Inf dropped (Potion's / ASSD's adaptive alpha)."""
    parts = []
    for n, f in imp_f.items():
        r = (f / imp_r[n]).flatten()
        parts.append(r[torch.isfinite(r)])
    return torch.cat(parts) if parts else torch.zeros(0)


@torch.no_grad()
def dampen(
    model: nn.Module,
    original: nn.Module,
    imp_f: Importance,
    imp_r: Importance,
    *,
    alpha: float,
    lam: float,
) -> int:
    """Set model's parameters to the original's, each scaled by min(1, lam*imp_r/imp_f) where imp_f > alpha*imp_r.

    Returns how many scalar parameters were selected.
    """
    selected = 0
    src = dict(original.named_parameters())
    for n, p in model.named_parameters():
        p.copy_(src[n])
        if n not in imp_f:
            continue
        f, r = imp_f[n], imp_r[n]
        sel = f > alpha * r
        # sel implies f > 0, so the division is safe where it is used
        factor = torch.where(sel, (lam * r / torch.where(sel, f, torch.ones_like(f))).clamp(max=1.0),
                             torch.ones_like(f))
        p.mul_(factor.to(p.dtype))
        selected += int(sel.sum())
    return selected


def num_scalars(imp: Importance) -> int:
    return sum(t.numel() for t in imp.values())
