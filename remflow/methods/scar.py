"""SCAR, Selective-distillation for Class and Architecture-agnostic unleaRning (Bonato, Cotogni & Sabetta, ECCV 2024,
"Is Retain Set All You Need in Machine Unlearning? Restoring Performance of Unlearned Models with
Out-Of-Distribution Images", arXiv 2404.12922). No retained data is used.

- Features: the input of the model's last linear layer (the embedding), L2-normalised.
- Class distributions: the original model's embeddings of surrogate images, grouped by the class the original
  predicts for them; one mean per class and a pooled covariance with shrinkage (`shrinkage` x its mean variance
  added to the diagonal), whose inverse gives the Mahalanobis distance d_M (remflow's reading of the paper's
  "modified" Mahalanobis distance: normalised features, shrunk pooled covariance).
- Forgetting: each forget sample's target is the nearest *wrong* class, the class other than its training label
  whose mean is nearest (by d_M) to the original's embedding of the sample; the loss is the mean d_M between the
  current embedding of each forget sample (as trained on: trigger pasted) and its target's mean.
- Retaining, the distillation trick: T^2 KL(softmax(original / T) || softmax(model / T)) on surrogate
  out-of-distribution images, so the model keeps the original's function away from D_f.

Loss per step: `lambda_forget` x d_M term on a D_f batch (cycled) + `lambda_retain` x distillation on a
surrogate batch. An epoch is `surrogate_batches` steps (default: as many as an epoch over D_tr has), the
`unlearn:` budget's optimizer and epochs, the epoch with the best validation accuracy kept.

What differs in remflow's setting: the paper distils on a real OOD dataset (e.g. CIFAR-100 or a subset of
ImageNet for CIFAR-10); none can be downloaded here, so remflow makes its own, offline, with a new batch every
step: `surrogate: patch_shuffle` (default) cuts random training images (no trigger pasted, labels unused) into a
`grid` x `grid` mosaic and shuffles the tiles of each image, which keeps local image statistics and destroys the
objects; `surrogate: gaussian` draws every pixel from a normal with the training images' per-pixel mean and
standard deviation. The images come from the training split, but no retained label and no retained image as
such is used. The paper's defaults for its lambdas and temperature are for its datasets; remflow's are stated
below. D_f is corrupted data, so "the nearest wrong class" is the nearest class other than the corrupted label
(for a backdoor or a flipped label: usually the sample's true class).
"""

from __future__ import annotations

from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt

from remflow.methods.base import MethodConfig, UnlearnContext, register
from remflow.methods.neggrad_plus import cycled
from remflow.methods.scrub import kl_t
from remflow.train import Data, Phase


class ScarConfig(MethodConfig):
    method: Literal["scar"] = "scar"
    lambda_forget: float = Field(1.0, ge=0, description="weight of the Mahalanobis forgetting term")
    lambda_retain: float = Field(3.0, ge=0, description="weight of the distillation on surrogate images")
    temperature: float = Field(4.0, gt=0, description="distillation temperature T; KL scaled by T^2")
    shrinkage: float = Field(0.1, ge=0, description="added to the pooled covariance's diagonal, times its mean "
                             "variance")
    surrogate: Literal["patch_shuffle", "gaussian"] = Field("patch_shuffle", description="offline stand-in for "
                                                            "the paper's OOD dataset")
    grid: PositiveInt = Field(4, description="patch_shuffle: tiles per side")
    prototype_images: PositiveInt = Field(4096, description="surrogate images the class distributions are "
                                          "estimated from")
    surrogate_batches: PositiveInt | None = Field(None, description="steps per epoch (default: an epoch over D_tr)")


def last_linear(model: torch.nn.Module) -> torch.nn.Module:
    for name in ("fc", "head"):
        m = getattr(model, name, None)
        if isinstance(m, torch.nn.Module):
            return m
    raise TypeError(f"{type(model).__name__} has no `fc` or `head` layer to read features from")


class Features:
    """Runs a model and keeps the input of its last linear layer (its embedding)."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.value = model, None
        self.handle = last_linear(model).register_forward_hook(self._keep)

    def _keep(self, module, args, out) -> None:
        self.value = args[0]

    def __call__(self, net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = net(x)
        return out, F.normalize(self.value.float().flatten(1), dim=1)


class Surrogate:
    """Batches of offline out-of-distribution images, a new one at every call (seeded)."""

    def __init__(self, ctx: UnlearnContext, cfg: ScarConfig, gen: torch.Generator):
        t = ctx.task
        self.ctx, self.cfg, self.gen, self.t = ctx, cfg, gen, t
        x = t.train_x.float()
        self.pix_mean, self.pix_std = x.mean(0, keepdim=True), x.std(0, keepdim=True)

    def __call__(self, n: int) -> torch.Tensor:
        t, g = self.t, self.gen
        if self.cfg.surrogate == "gaussian":
            raw = self.pix_mean + self.pix_std * torch.randn((n, *t.train_x.shape[1:]), generator=g, device=g.device)
            x_u8 = raw.clamp(0, 255).round().to(torch.uint8)
        else:
            idx = torch.randint(0, t.num_train, (n,), generator=g, device=g.device)
            x_u8 = shuffle_tiles(t.train_x[idx], self.cfg.grid, g)
        return t.inputs(x_u8, None, None)


def shuffle_tiles(x: torch.Tensor, grid: int, gen: torch.Generator) -> torch.Tensor:
    """Each image (B, C, H, W) cut into grid x grid tiles (the border cropped to a multiple), tiles permuted per
    image, then padded back to H x W with the cropped border left as it was."""
    b, c, h, w = x.shape
    g = max(1, min(grid, h, w))
    th, tw = h // g, w // g
    core = x[:, :, : th * g, : tw * g].reshape(b, c, g, th, g, tw).permute(0, 2, 4, 1, 3, 5)
    core = core.reshape(b, g * g, c, th, tw)
    perm = torch.argsort(torch.rand((b, g * g), generator=gen, device=gen.device), dim=1).to(x.device)
    core = core[torch.arange(b, device=x.device)[:, None], perm]
    core = core.reshape(b, g, g, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, th * g, tw * g)
    out = x.clone()
    out[:, :, : th * g, : tw * g] = core
    return out


@torch.no_grad()
def class_distributions(feats: Features, model: torch.nn.Module, images: Iterator[torch.Tensor], num_classes: int,
                        shrinkage: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(class means (C, D), which classes have any sample (C,), the shrunk pooled precision (D, D))."""
    es, ps = [], []
    for x in images:
        out, e = feats(model, x)
        es.append(e)
        ps.append(out.argmax(1))
    e, p = torch.cat(es), torch.cat(ps)
    counts = torch.bincount(p, minlength=num_classes)
    means = torch.zeros((num_classes, e.shape[1]), device=e.device).index_add_(0, p, e)
    means = means / counts.clamp_min(1).unsqueeze(1)
    centred = e - means[p]
    cov = centred.T @ centred / max(len(e) - 1, 1)
    cov = cov + shrinkage * cov.diagonal().mean().clamp_min(1e-8) * torch.eye(len(cov), device=cov.device)
    return means, counts > 0, torch.linalg.inv(cov)


def mahalanobis(e: torch.Tensor, mu: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Row-wise d_M(e_i, mu_i)."""
    d = e - mu
    return torch.sqrt(((d @ precision) * d).sum(1).clamp_min(1e-12))


@register("scar", ScarConfig, summary="retain-free: pull D_f's features to the nearest wrong class (Mahalanobis), "
          "distil the original on surrogate OOD images", reference="Bonato et al. 2024 (ECCV)")
def unlearn(ctx: UnlearnContext, cfg: ScarConfig) -> torch.nn.Module:
    task, model = ctx.task, ctx.model
    recipe = ctx.recipe(cfg)
    teacher = ctx.frozen_copy(model)
    ctx.note_params(model, teacher)
    feats, t_feats = Features(model), Features(teacher)
    surrogate = Surrogate(ctx, cfg, ctx.generator("scar-surrogate"))
    bs, eval_bs = recipe.batch_size, ctx.params.runtime.eval_batch_size
    n_cls = task.splits.num_classes

    # the class distributions and each forget sample's target: from the original, once
    proto_gen = Surrogate(ctx, cfg, ctx.generator("scar-prototypes"))
    sizes = [min(eval_bs, cfg.prototype_images - s) for s in range(0, cfg.prototype_images, eval_bs)]
    means, present, precision = class_distributions(t_feats, teacher, (proto_gen(n) for n in sizes), n_cls,
                                                    cfg.shrinkage)
    forget = task.forget
    with torch.no_grad():
        _, e_f = t_feats(teacher, task.inputs(task.train_x[forget], task.triggered[forget], None))
        d = torch.stack([mahalanobis(e_f, means[c].expand_as(e_f), precision) for c in range(n_cls)], 1)
        d[:, ~present] = float("inf")
        d[torch.arange(len(forget), device=d.device), task.train_y[forget]] = float("inf")
        target = torch.full((task.num_train,), -1, dtype=torch.long, device=d.device)
        target[forget] = d.argmin(1)

    steps = cfg.surrogate_batches or task.num_batches(len(task.retain) + len(forget), bs)
    forget_batches = cycled(ctx, forget, bs, ctx.generator("scar-forget"))

    def batches():
        for _ in range(steps):
            yield next(forget_batches), surrogate(bs)

    def loss(net, pair):
        f, x_s = pair
        _, e = feats(net, f.x)
        fgt = mahalanobis(e, means[target[f.idx]], precision).mean()
        out_s = net(x_s)
        with torch.no_grad():
            t_out = teacher(x_s)
        return cfg.lambda_forget * fgt + cfg.lambda_retain * kl_t(out_s, t_out, cfg.temperature)

    ctx.train(model, recipe, Phase("scar", loss, Data(steps, batches), recipe.epochs, recipe.schedule),
              select=ctx.by_validation())
    feats.handle.remove()
    t_feats.handle.remove()
    ctx.stats.update(prototype_classes=int(present.sum()),
                     targets=torch.bincount(target[forget], minlength=n_cls).tolist())
    return model
