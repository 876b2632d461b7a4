"""AMUN, Adversarial Machine UNlearning (Ebrahimpour-Boroojeny et al., ICML 2025).

1. For every forget sample x (as trained on: trigger pasted, no augmentation) find its nearest adversarial
   example with an untargeted L2 PGD attack on the original model against x's training label: `pgd_steps`
   steps of size 2.5 eps / steps, projected on the L2 ball of radius eps and on the valid pixel range, eps
   starting at `eps_init` and doubling (at most `max_doublings` times) until the prediction leaves the label;
   each sample keeps the adversarial example of the smallest radius that succeeded.
2. Label each adversarial example with the class the attack reached (the model's prediction there) and
   fine-tune the original model on D_r together with these adversarial examples (the paper's setting with
   access to the retained data), cross-entropy, the `unlearn:` budget, keeping the epoch with the best
   validation accuracy. The adversarial examples are made once, before fine-tuning, as in the paper.

Fine-tuning on wrongly labelled points right beside each forget sample moves the decision boundary locally,
so the model's confidence on the forget sample drops while the rest of the function barely changes.

What differs in remflow's setting: D_f is corrupted (its labels are the corruption), so the paper's
retain-free variant, which fine-tunes on D_f with its labels beside the adversarial examples, would train the
corruption in again: it is available (`with_forget: true`, `with_retain: false`) but not the default. The
attack's radii are in the network's normalised input units; remflow's defaults (10 steps per radius,
eps from 0.0625 doubling up to 10 times) are small-budget choices; the paper attacks with more PGD steps.
Samples the attack never moves (`stats.adv_failed`) get no adversarial example.
"""

from __future__ import annotations

from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from remflow.data.task import Batch
from remflow.methods.base import MethodConfig, UnlearnContext, register
from remflow.train import Data, Phase


class AmunConfig(MethodConfig):
    method: Literal["amun"] = "amun"
    schedule: Literal["warmup_linear", "constant"] | None = "warmup_linear"
    eps_init: float = Field(0.0625, gt=0, description="first L2 radius of the attack (normalised input units)")
    max_doublings: NonNegativeInt = Field(10, description="the radius doubles at most this many times until the "
                                          "attack succeeds")
    pgd_steps: PositiveInt = Field(10, description="PGD steps per radius")
    with_retain: bool = Field(True, description="fine-tune on D_r beside the adversarial examples (the paper's "
                              "setting with retained data)")
    with_forget: bool = Field(False, description="also fine-tune on D_f with its (corrupted) training labels (the "
                              "paper's retain-free variant)")

    @model_validator(mode="after")
    def _some_data(self):
        if not (self.with_retain or self.with_forget):
            raise ValueError("AMUN needs with_retain or with_forget: adversarial examples alone are no repair set")
        return self


def pixel_range(ctx: UnlearnContext) -> tuple[torch.Tensor, torch.Tensor]:
    t = ctx.task
    return (0.0 - t.mean) / t.std, (1.0 - t.mean) / t.std


def l2_pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, steps: int,
           lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Untargeted L2 PGD from x against labels y, per-sample radius eps (B,); returns x + delta."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    alpha = (2.5 * eps / steps).view(shape)
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(steps):
        loss = F.cross_entropy(model(x + delta).float(), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            d = delta + alpha * g
            d = d * (eps.view(shape) / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)).clamp(max=1.0)
            d = torch.max(torch.min(x + d, hi), lo) - x
        delta = d.requires_grad_(True)
    return (x + delta).detach()


def adversarial_neighbours(ctx: UnlearnContext, cfg: AmunConfig, model: torch.nn.Module,
                           x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                      torch.Tensor]:
    """(adversarial inputs, the labels the attack reached, radius used, success mask) for every sample."""
    lo, hi = pixel_range(ctx)
    was = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        adv, found = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        radius = torch.full((len(x),), float("nan"), device=x.device)
        eps = torch.full((len(x),), cfg.eps_init, device=x.device)
        for _ in range(cfg.max_doublings + 1):
            todo = ~found
            if not todo.any():
                break
            cand = l2_pgd(model, x[todo], y[todo], eps[todo], cfg.pgd_steps, lo, hi)
            with torch.no_grad():
                hit = model(cand).argmax(1) != y[todo]
            where = torch.nonzero(todo).flatten()[hit]
            adv[where], radius[where], found[where] = cand[hit], eps[where], True
            eps = eps * 2
        with torch.no_grad():
            labels = model(adv).argmax(1)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train(was)
    return adv, labels, radius, found


@register("amun", AmunConfig, summary="fine-tune on D_r plus the forget samples' nearest L2-PGD adversarial "
          "examples, labelled as the attack finds them", reference="Ebrahimpour-Boroojeny et al. 2025 (ICML)")
def unlearn(ctx: UnlearnContext, cfg: AmunConfig) -> torch.nn.Module:
    task, model = ctx.task, ctx.model
    recipe = ctx.recipe(cfg)
    forget = task.forget
    x_f = task.inputs(task.train_x[forget], task.triggered[forget], None)
    adv, adv_y, radius, found = adversarial_neighbours(ctx, cfg, model, x_f, task.train_y[forget])
    adv, adv_y, adv_idx = adv[found], adv_y[found], forget[found]

    real = torch.cat([task.retain if cfg.with_retain else forget[:0], forget if cfg.with_forget else forget[:0]])
    n_real, n = len(real), len(real) + len(adv)
    gen = ctx.generator("amun-data")

    def batches() -> Iterator[Batch]:
        order = torch.randperm(n, generator=gen, device=gen.device).to(real.device)
        for s in range(0, n, recipe.batch_size):
            pos = order[s : s + recipe.batch_size]
            r, a = real[pos[pos < n_real]], pos[pos >= n_real] - n_real
            b = task.batch(r, gen)
            yield Batch(torch.cat([b.x, adv[a].to(b.x.dtype)]), torch.cat([b.y, adv_y[a]]),
                        torch.cat([b.idx, adv_idx[a]]), torch.cat([b.forget, torch.ones_like(a, dtype=torch.bool)]))

    def loss(net, batch):
        return F.cross_entropy(net(batch.x).float(), batch.y)

    ctx.train(model, recipe, Phase("amun", loss, Data(task.num_batches(n, recipe.batch_size), batches),
                                   recipe.epochs, recipe.schedule), select=ctx.by_validation())
    ok = radius[found]
    ctx.stats.update(adversarial=int(found.sum()), adv_failed=int((~found).sum()),
                     adv_radius_median=round(float(ok.median()), 6) if len(ok) else None,
                     adv_label_changed=int((adv_y != task.train_y[forget][found]).sum()))
    return model
