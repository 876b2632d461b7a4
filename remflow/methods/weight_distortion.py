"""Weight distortion and weight-distance regularisation (Siddiqui et al. 2025, arXiv 2505.22310, "From Dormant to
Deleted: Tamper-Resistant Unlearning Through Weight-Space Regularization").

The paper finds that how far an unlearned model's weights lie from the original's (L2 distance, linear mode
connectivity) predicts how well it resists relearning, and proposes methods that push the weights away from the
original while repairing on the retained data:

- `variant: distortion` (Weight Distortion, the default): add Gaussian noise to every weight of the original
  model, then fine-tune on D_r = D_tr \\ D_f. The noise is relative: each tensor gets sigma x (its own RMS) x
  N(0, 1), so one sigma means the same for every layer and architecture (seeded; BatchNorm statistics are kept).
- `variant: dist_reg` (Weight Dist Reg): fine-tune on D_r while rewarding distance from the original,
  CE(D_r batch) - lam ||theta - theta_0||_2, the distance capped at `max_distance` x ||theta_0||_2 so the reward
  cannot run away once the model has left the original's basin.

Both fine-tune with the `unlearn:` budget (warm-up + linear decay, like `finetune`) and keep the epoch with the best
validation accuracy; the run record gets the final L2 distance from the original (`stats.distance`,
`stats.relative_distance`). The paper sweeps the noise scale; remflow tunes sigma over `sigma_grid` on the
validation split only (l1_sparse.tune_on_validation: clean validation accuracy x (1 - max(Acc(D_f), 0.2)), never
the test set) and records the chosen value in `stats.sigma`.

What differs in remflow's setting: the paper forgets random examples of CIFAR-10 with ResNet-18 and tunes for
relearning resistance; here D_f is corrupted data and the tuning score is the validation rule above. The sigma
defaults are remflow's (relative noise), chosen so the distorted model is broken before the repair, as the
paper's noise is.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat

from remflow.methods.base import MethodConfig, UnlearnContext, register
from remflow.methods.l1_sparse import tune_on_validation
from remflow.train import Phase, cross_entropy


class WeightDistortionConfig(MethodConfig):
    method: Literal["weight_distortion"] = "weight_distortion"
    schedule: Literal["warmup_linear", "constant"] | None = "warmup_linear"
    variant: Literal["distortion", "dist_reg"] = Field("distortion", description="distortion: noise then repair "
                                                       "on D_r; dist_reg: repair on D_r rewarding L2 distance")
    sigma: float = Field(0.5, ge=0, description="noise std relative to each tensor's RMS (distortion); used alone "
                         "when sigma_grid is empty")
    sigma_grid: list[PositiveFloat] = Field([0.25, 0.5, 1.0], description="noise scales tried, each from the "
                                            "original; the best on validation is kept; [] runs `sigma` alone")
    lam: float = Field(0.1, ge=0, description="weight of the distance reward (dist_reg)")
    max_distance: float = Field(0.5, gt=0, description="distance reward capped at this share of ||theta_0|| "
                                "(dist_reg)")


def distance(model: torch.nn.Module, ref: dict[str, torch.Tensor]) -> torch.Tensor:
    """||theta - theta_0||_2 over the trainable parameters (differentiable)."""
    return torch.sqrt(sum(((p - ref[n]) ** 2).sum() for n, p in model.named_parameters() if p.requires_grad))


@torch.no_grad()
def distort_(model: torch.nn.Module, sigma: float, gen: torch.Generator) -> None:
    """theta += sigma * RMS(theta) * N(0, 1), per parameter tensor."""
    for p in model.parameters():
        rms = p.float().square().mean().sqrt()
        noise = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
        p.add_((sigma * rms * noise).to(p.dtype))


@register("weight_distortion", WeightDistortionConfig, summary="push the weights away from the original (noise, "
          "or a distance reward) while repairing on D_r; noise tuned on validation",
          reference="Siddiqui et al. 2025 (arXiv 2505.22310)")
def unlearn(ctx: UnlearnContext, cfg: WeightDistortionConfig) -> torch.nn.Module:
    task = ctx.task
    recipe = ctx.recipe(cfg)
    origin = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    norm0 = float(torch.sqrt(sum((p.float() ** 2).sum() for p in origin.values())))
    ctx.note_params(ctx.model, ctx.model)  # the original weights are kept beside the trained ones

    def loss_reg(net, batch):
        d = distance(net, origin)
        return F.cross_entropy(net(batch.x).float(), batch.y) - cfg.lam * torch.clamp(d, max=cfg.max_distance * norm0)

    def repair(model: torch.nn.Module, sigma: float) -> torch.nn.Module:
        if cfg.variant == "distortion":
            distort_(model, sigma, ctx.generator("weight-distortion", sigma))
        data = ctx.shuffled(task.retain, recipe.batch_size, "weight-distortion-data")
        loss = cross_entropy if cfg.variant == "distortion" else loss_reg
        return ctx.train(model, recipe, Phase(cfg.variant, loss, data, recipe.epochs, recipe.schedule),
                         select=ctx.by_validation())

    if cfg.variant == "distortion":
        model = tune_on_validation(ctx, "sigma", cfg.sigma_grid or [cfg.sigma], repair)
    else:
        model = repair(ctx.model, 0.0)
    with torch.no_grad():
        d = float(distance(model, origin))
    ctx.stats.update(distance=round(d, 6), relative_distance=round(d / max(norm0, 1e-12), 6))
    return model
