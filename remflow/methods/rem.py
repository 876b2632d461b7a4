"""REM, Redirection for Erasing Memory (Schoepf et al., ICLR 2026), as specified in research/paper-rem.md §3.

1. Expand: add channels at the model's block outputs (the layout, see below; as many as the deployed width by
   default), starting as the dormant half of a full-width pretrained network.
   On an ETD-pretrained model the trained memorisation channels are used instead and nothing is added.
2. Remove ("flush"): NPO on D_f through the base (deployed) channels only, until Acc_base(D_f) <= gamma
   (at most `flush_max_epochs` epochs per round); the reference is a frozen copy of the expanded model taken
   before unlearning and run in full mode with D_f's shared mask (§3.2; `reference: base` as an option).
3. Repair + redirect: one epoch over the whole training set per round. Every sample routes through its own
   per-sample mask over the added channels, all of D_f through one shared mask; the loss is the redirect term
   (2/beta) log sigmoid(beta (CE_full - CE_ref)) on every sample plus the retained removal term (NPO through
   the base model) on the D_f samples of the batch, averaged over the whole batch as the released code does.
   Flush rounds do not count toward the repair budget (`epochs` of the training set, paper: 980 steps).
4. Select by the proxy Acc_base(D_r) * (1 - max(Acc_base(D_f), gamma)), evaluated before unlearning and after
   every repair epoch; drop the added channels.

Where the paper's text and the released code differ we follow the code (§3.2): the reference runs in full
mode, L_remove is averaged over the whole batch, the flush re-runs before every repair epoch, selection uses
the proxy. The released code's structure is the default, each earlier remflow choice a switch:

- layout (`model.layout`): channels are added and masked only at block outputs (ResNet-9's four mask pairs);
  `every_conv` widens every conv output;
- masks (`masks`): nested, seeded from the sample id alone, so layers of equal width share a sample's mask;
  `per_layer` salts them by layer;
- the added channels' starting state (`added_init`): `dormant`, as the unused half of a full-width network
  pretrained with that half masked off leaves them (default init shrunk by the decay pretraining's weight decay
  alone gives, conv biases 0, BN scale shrunk alike, BN running statistics from the training data); `fresh`:
  a default init with BN scale 1 and running statistics 0/1;
- selection (`fallback`): an epoch is kept only if its proxy beats the original's; when none does REM returns
  its last epoch, as the released code does; `original` returns the original model unchanged instead;
- the proxy's view (`proxy_view`): the flush stop's view of the data, augmented images when the suite augments
  (the released code scores both on its augmented training loader); `clean`: un-augmented images.

Kept fixes of the released code's bugs: the proxy never looks at the test set; the kept epoch is a copy, not
an alias of the live model (the released code's `best_model` alias is what makes it return the last epoch,
which remflow makes explicit with `fallback`); D_f shares a dedicated mask id (the released code reuses
training sample 0's mask, and gives the reference a different one), the same for the model and its reference.
The expansion is explicit (channels appended to a deployed-width model) and masks come from a hash of the
sample index (no mask cache).

Candidate fixes (issue 28, item 4; both off by default, REM's default stays the paper's). Both read the D_r
samples the flushed model disowns: after the first flush, before any repair step, the base model's prediction
(un-augmented images) differs from their training label. Undiscovered corrupted samples the flush generalised
to land there (with some hard clean samples):

- `proxy: trusted` scores the selection proxy's Acc(D_r) on the samples the flushed model still agrees with,
  so an epoch that re-learns the disowned samples (D_u among them) is not rewarded for it. The original model
  competes with the released proxy over all of D_r (its disowned set is not known before the first flush; its
  proxy is near 0 anyway while it still fits D_f);
- `disowned_weight: w` multiplies the repair's redirect term of the disowned samples by w (0: the repair does not
  fit them at all), so the repair does not re-teach them.

The run record keeps `disowned` (how many) and `disowned_corrupted` (how many of them are in D_c: for the record
only; the method never reads D_c). `rem_plus` (remflow/methods/rem_plus.py) is REM with both on, the weight at 0.5.

Ablations (paper §6.2, code names in brackets): `redirect: false` [REMGEN] fits the retained samples through
the base model and adds no capacity; `remove_in_repair: false` [NPOREMMOD]; `rem_ga` [REMMOD] flushes with
gradient ascent, then repairs with plain cross-entropy through the full model, no base pass and no removal term
(`forget_loss: ga` alone keeps the removal term, as gradient ascent); `rem_ideal` [REMIDEAL] uses all of D_c for
the shared mask and the removal term, flushing and scoring the proxy on the discovered set only
(`ideal_scope: everywhere` gives it all of D_c as D_f everywhere: remflow's earlier oracle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt

from remflow.losses import gradient_ascent, npo, npo_redirect, per_sample_ce
from remflow.methods.base import MethodConfig, UnlearnContext, derive_seed, register
from remflow.methods.forgetting import ReferenceCE, by_proxy, forget_phase, proxy
from remflow.models.layers import SHARED_ID, Route, Widenable, WidenableNet
from remflow.train import Data, Phase, Selection, autocast, predict


class RemConfig(MethodConfig):
    method: Literal["rem"] = "rem"
    beta: float = Field(1.0, gt=0, description="NPO temperature")
    gamma: float = Field(0.2, ge=0, lt=1, description="flush until Acc_base(D_f) <= gamma; proxy floor")
    flush_max_epochs: PositiveInt = Field(100, description="cap on flush epochs per round")
    expansion_ratio: float = Field(1.0, gt=0, le=4, description="added channels per deployed channel")
    keep: float = Field(0.2, gt=0, lt=1, description="per-sample keep probability of an added channel")
    cross_init: Literal["random", "zero"] = Field("random", description="added->deployed weights at expansion")
    reference: Literal["full", "base"] = Field("full", description="mode the frozen reference runs in")
    redirect: bool = Field(True, description="step 3.1: route re-emerging corruption into the added channels")
    remove_in_repair: bool = Field(True, description="step 3.2: keep L_remove on D_f during repair")
    forget_loss: Literal["npo", "ga"] = Field("npo", description="npo, or plain gradient ascent (REMMOD)")
    ideal: bool = Field(False, description="oracle: D_f := all of D_c (an upper bound, not a method)")
    reuse_reference: bool = Field(True, description="without augmentation, compute the frozen reference's "
                                  "outputs once instead of every step (same result, less time)")
    masks: Literal["nested", "per_layer"] = Field(
        "nested", description="nested: a sample's mask comes from its id alone, shared by layers of equal width "
        "(the released code); per_layer: salted by the layer")
    added_init: Literal["dormant", "fresh"] = Field(
        "dormant", description="dormant: added channels start as the masked-off half of a full-width pretrained "
        "network (decayed default init, biases 0, data BN statistics; the released code); fresh: default init")
    fallback: Literal["last", "original"] = Field(
        "last", description="when no epoch's proxy beats the original's: return the last epoch (the released "
        "code) or the original model unchanged")
    proxy_view: Literal["flush", "clean"] = Field(
        "flush", description="images the selection proxy is scored on: flush = the flush stop's view (augmented "
        "when the suite augments; the released code); clean = un-augmented (remflow's earlier rule)")
    proxy: Literal["released", "trusted"] = Field(
        "released", description="selection proxy: released = Acc(D_r) (1 - max(Acc(D_f), gamma)); trusted = "
        "Acc on the D_r samples the flushed model still agrees with (does not reward re-learning the disowned)")
    disowned_weight: float | None = Field(
        None, ge=0, le=1, description="weight of the repair's redirect term on the D_r samples the flushed model "
        "disowns (None: off, every sample weighs 1; 0: they are not fitted)")
    ideal_scope: Literal["mask_and_removal", "everywhere"] = Field(
        "mask_and_removal", description="with ideal: D_c takes the shared mask and the removal term, the flush "
        "and proxy stay on D_f (REMIDEAL); everywhere: D_c replaces D_f throughout")
    removal_pass: Literal["batch", "forget"] = Field(
        "batch", description="batch: the repair's base-model pass runs on the whole batch (the released code); "
        "forget: only on the batch's D_f samples (BatchNorm statistics from those; a third less work per step)")
    # -- the efficient mode's switches (issue: REM that costs less than retraining); `rem_fast` combines them
    expand_last: PositiveInt | None = Field(
        None, description="add channels only to the model's last k channel groups (in forward order: the "
        "blocks nearest the head, where the corruption is memorised); None: every group (the paper)")
    frozen_reference: bool = Field(
        True, description="keep a frozen copy of the expanded model as the reference (the paper); false: "
        "tabulate the reference's per-sample outputs from the model itself before the first step and keep no "
        "copy (exact without augmentation; with augmentation the table holds un-augmented views, an "
        "approximation not yet measured)")
    patience: PositiveInt | None = Field(
        None, description="end the repair once the proxy has not improved for this many epochs (None: the "
        "whole budget, the paper)")


class RemNoRedirectConfig(RemConfig):
    method: Literal["rem_noredirect"] = "rem_noredirect"
    redirect: bool = False


class RemNoRemoveConfig(RemConfig):
    method: Literal["rem_noremove"] = "rem_noremove"
    remove_in_repair: bool = False


class RemGaConfig(RemConfig):
    method: Literal["rem_ga"] = "rem_ga"
    forget_loss: Literal["npo", "ga"] = "ga"
    remove_in_repair: bool = False  # REMMOD: the repair is plain CE through the full model, no removal term


class RemIdealConfig(RemConfig):
    method: Literal["rem_ideal"] = "rem_ideal"
    ideal: bool = True


class RemFastConfig(RemConfig):
    """The efficient mode, chosen by measurement (bench/rem_cost.py, docs/benchmarks.md): added channels in the
    last channel group only, no frozen copy of the expanded model, the removal pass on D_f's samples only, and
    the repair stopped when the proxy stops improving."""

    method: Literal["rem_fast"] = "rem_fast"
    expand_last: PositiveInt | None = 1
    frozen_reference: bool = False
    removal_pass: Literal["batch", "forget"] = "forget"
    patience: PositiveInt | None = 2


@dataclass
class RemResult:
    model: WidenableNet  # still widened: `unlearn` drops the added channels
    keep: float  # the routing REM used: Route.for_batch(idx, is_forget[idx], keep=keep, seed=route_seed)
    route_seed: int
    is_forget: torch.Tensor  # the samples on the shared mask
    per_layer: bool = False

    def route_ids(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.where(self.is_forget[idx], torch.full_like(idx, SHARED_ID), idx)

    @torch.inference_mode()
    def full_accuracy(self, task, idx: torch.Tensor, batch_size: int = 2048) -> float:
        """Accuracy on training samples `idx` (their training labels) through the added channels too, each
        sample routed as REM trained it: how much of the corruption the added channels hold."""
        was_training = self.model.training
        self.model.eval()
        correct = []
        try:
            for s in range(0, len(idx), batch_size):
                i = idx[s : s + batch_size]
                x = task.inputs(task.train_x[i], task.triggered[i], None)
                with autocast(x.device):
                    out = self.model(x, Route(self.route_ids(i), keep=self.keep, seed=self.route_seed,
                                                  per_layer=self.per_layer))
                correct.append(out.argmax(1) == task.train_y[i])
        finally:
            self.model.train(was_training)
        return float(torch.cat(correct).float().mean())


def unlearn(ctx: UnlearnContext, cfg: RemConfig) -> torch.nn.Module:
    return run_rem(ctx, cfg).model.deploy_()


def run_rem(ctx: UnlearnContext, cfg: RemConfig) -> RemResult:
    """Steps 1-3 and the selection of step 4; returns the selected model with its added channels still on."""
    task, model = ctx.task, ctx.model
    recipe = ctx.recipe(cfg)
    # is_forget: the samples on the shared mask and in the removal term; forget/retain: flush and proxy sets
    if cfg.ideal:
        is_forget = torch.zeros(task.num_train, dtype=torch.bool, device=ctx.device)
        is_forget[task.corrupted] = True
    else:
        is_forget = task.is_forget
    scored = is_forget if cfg.ideal_scope == "everywhere" else task.is_forget
    forget = torch.nonzero(scored).flatten()
    retain = torch.nonzero(~scored).flatten()
    per_layer = cfg.masks == "per_layer"

    # -- step 1: expand (or use the ETD model's trained memorisation channels)
    if not cfg.redirect:
        if model.widened:
            model.deploy_()
        keep, route_seed = cfg.keep, 0
    elif model.widened:
        keep, route_seed = float(ctx.route["keep"]), int(ctx.route["seed"])
        per_layer = bool(ctx.route.get("per_layer", False))  # the masks the ETD model was trained with
    else:
        pre = ctx.params.pretrain
        steps = pre.epochs * task.num_batches(task.num_train, pre.batch_size)
        dormant = dormant_factor(pre, steps) if cfg.added_init == "dormant" else None
        model.widen_(added_channels(model, cfg.expansion_ratio, cfg.expand_last),
                     seed=derive_seed(ctx.seed, "rem-expand"), cross=cfg.cross_init, dormant=dormant)
        model.to(ctx.device)
        if ctx.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        if dormant is not None:
            gen_bn = ctx.generator("rem-bn-stats")
            model.calibrate_added_stats_(b.x for b in task.batches(task.everything, ctx.params.pretrain.batch_size,
                                                                    gen_bn))
            ctx.stats["dormant_factor"] = round(dormant, 6)
        keep, route_seed = cfg.keep, derive_seed(ctx.seed, "rem-masks")
    if cfg.frozen_reference:
        ref = ctx.frozen_copy(model)
        ctx.note_params(model, ref)
    else:  # the model as unlearning finds it is the reference: tabulated below, before any step; no copy
        ref = model
        ctx.note_params(model)
    full_ref = cfg.reference == "full" and model.widened

    def route(batch) -> Route:
        return Route.for_batch(batch.idx, is_forget[batch.idx], keep=keep, seed=route_seed, per_layer=per_layer)

    def route_ids(idx: torch.Tensor) -> torch.Tensor:
        return torch.where(is_forget[idx], torch.full_like(idx, SHARED_ID), idx)

    if cfg.frozen_reference:
        ref_ce = ReferenceCE(ctx, ref, keep=keep, seed=route_seed, ids=route_ids if full_ref else None,
                             reuse=cfg.reuse_reference, per_layer=per_layer)
    else:
        ref_ce = tabulated_reference(ctx, model, keep=keep, seed=route_seed, ids=route_ids if full_ref else None,
                                     per_layer=per_layer)

    forget_term = npo if cfg.forget_loss == "npo" else gradient_ascent
    gen = ctx.generator("rem-data")
    bs = recipe.batch_size
    # -- step 2, before every repair epoch; it steps the repair's optimizer, as the released code does
    flush = forget_phase(ctx, model, forget, forget_term, ref_ce, beta=cfg.beta, gamma=cfg.gamma,
                         epochs=cfg.flush_max_epochs, batch_size=bs, gen=gen, label="flush")

    # the D_r samples the flushed model disowns (the candidate fixes' signal), taken once, after the first flush
    track = cfg.proxy == "trusted" or cfg.disowned_weight is not None
    state: dict = {"disowned": None}

    def repair_batches():
        """One epoch of the training set: (batch, positions of its D_f samples, or None to run them all)."""
        if track and state["disowned"] is None:  # the first repair epoch: the flush has just run
            state["disowned"] = disowned_samples(ctx, model, retain)
            ctx.stats.update(disowned=int(state["disowned"].sum()),
                             disowned_corrupted=int(state["disowned"][task.corrupted].sum()))
        if cfg.removal_pass == "batch":
            for batch in task.batches(task.everything, bs, gen):
                yield batch, None
            return
        # where each batch's D_f samples sit, worked out once per epoch on the host, so the inner loop can
        # run the base model on just those samples without a host-device sync per step
        order = task.everything[torch.randperm(task.num_train, generator=gen, device=ctx.device)]
        flags = is_forget[order].cpu().numpy()
        pos = [np.flatnonzero(flags[s : s + bs]) for s in range(0, len(flags), bs)]
        flat = torch.as_tensor(np.concatenate(pos), device=ctx.device)
        ends = np.cumsum([len(p) for p in pos])
        for k, start in enumerate(range(0, task.num_train, bs)):
            yield task.batch(order[start : start + bs], gen), flat[ends[k] - len(pos[k]) : ends[k]]

    # -- step 3's per-batch loss: redirect on every sample, removal on the batch's D_f samples
    def repair_loss(net, item):
        batch, forget_pos = item
        r = route(batch)
        f = is_forget[batch.idx]
        ce_ref = ref_ce(batch)
        ce_base = None
        if not cfg.redirect or (cfg.remove_in_repair and cfg.removal_pass == "batch"):
            ce_base = per_sample_ce(net(batch.x), batch.y)
        if cfg.redirect:
            ce_full = per_sample_ce(net(batch.x, r), batch.y)
            fit_term = ce_full if cfg.forget_loss == "ga" else npo_redirect(ce_full, ce_ref, cfg.beta)
        else:  # no redirection: fit the retained samples through the base model; D_f only in the removal term
            fit_term = ce_base if cfg.forget_loss == "ga" else npo_redirect(ce_base, ce_ref, cfg.beta)
            fit_term = torch.where(f, torch.zeros_like(fit_term), fit_term)
        if cfg.disowned_weight is not None and state["disowned"] is not None:
            fit_term = down_weighted(fit_term, state["disowned"][batch.idx], cfg.disowned_weight)
        loss = fit_term.sum()
        if cfg.remove_in_repair and ce_base is not None:
            loss = loss + torch.where(f, forget_term(ce_base, ce_ref, cfg.beta), torch.zeros_like(ce_base)).sum()
        elif cfg.remove_in_repair and len(forget_pos):  # removal_pass: forget
            ce_f = per_sample_ce(net(batch.x[forget_pos]), batch.y[forget_pos])
            loss = loss + forget_term(ce_f, ce_ref[forget_pos], cfg.beta).sum()
        return loss / len(batch.idx)  # the mean over the whole batch, as the released code takes it

    repair = Phase("repair", repair_loss, Data(task.num_batches(task.num_train, bs), repair_batches),
                   recipe.epochs, recipe.schedule, until=None if cfg.patience is None else stalled("proxy", cfg.patience))
    # -- step 4's selection: an epoch must beat the original's proxy; otherwise `fallback` decides
    if cfg.proxy == "trusted":
        select = trusted_proxy(ctx, forget, retain, lambda: state["disowned"], cfg.gamma, cfg.fallback,
                               cfg.proxy_view)
    else:
        select = by_proxy(ctx, forget, retain, cfg.gamma, cfg.fallback, cfg.proxy_view)
    ctx.train(model, recipe, repair, nested=(flush,), select=select)
    ctx.stats.update(flushed=len(forget), forgotten=int(is_forget.sum()), added=dict(model.added))
    return RemResult(model, keep, route_seed, is_forget, per_layer)


def disowned_samples(ctx: UnlearnContext, model: torch.nn.Module, retain: torch.Tensor) -> torch.Tensor:
    """A mask over the training set: the samples of `retain` whose training label the model (base mode, eval,
    un-augmented images) does not predict."""
    t = ctx.task
    out = torch.zeros(t.num_train, dtype=torch.bool, device=t.train_y.device)
    if len(retain):
        pred = predict(model, t, t.train_x[retain], t.triggered[retain],
                       batch_size=ctx.params.runtime.eval_batch_size)
        out[retain] = pred != t.train_y[retain]
    return out


def down_weighted(term: torch.Tensor, disowned: torch.Tensor, weight: float) -> torch.Tensor:
    """A per-sample loss term with the disowned samples' entries multiplied by `weight`."""
    return torch.where(disowned, term * weight, term)


def trusted_proxy(ctx: UnlearnContext, forget: torch.Tensor, retain: torch.Tensor, disowned, gamma: float,
                  fallback: str, view: str) -> Selection:
    """REM's proxy with Acc(D_r) taken on the retained samples the flushed model still agrees with:
    `disowned()` is the mask once known (None before the first flush: then all of D_r, the released proxy)."""
    gen = ctx.generator("proxy-view") if view == "flush" else None

    def score(m) -> float:
        mask = disowned()
        trusted = retain if mask is None else retain[~mask[retain]]
        return proxy(ctx, m, forget, trusted, gamma, gen)

    return Selection("proxy", score, start=True, fallback=fallback)


def added_channels(model: WidenableNet, ratio: float, last: int | None) -> dict[str, int]:
    """Channels to add per group: `ratio` of its width, to every group or only the last `last` in forward order
    (the order in which the model's layers first write each group)."""
    added = model.added_for_ratio(ratio)
    if last is not None:
        order = list(dict.fromkeys(m.out_group for m in model.modules()
                                   if isinstance(m, Widenable) and m.out_group in added))
        added = {g: added[g] for g in order[-last:]}
    return added


def tabulated_reference(ctx: UnlearnContext, model: WidenableNet, **route) -> ReferenceCE:
    """The reference's per-sample CE for every training sample, computed from `model` itself (in eval mode, as
    the frozen copy would run) before unlearning changes it; no copy of the model is kept. With augmentation
    the table holds the un-augmented views (an approximation, not yet measured)."""
    t = ctx.task
    was_training = model.training
    model.eval()
    try:
        ref_ce = ReferenceCE(ctx, model, reuse=True, **route)
        if ref_ce.table is None:  # augmented training data: tabulate the clean views
            bs = ctx.params.runtime.eval_batch_size
            with torch.no_grad():
                ref_ce.table = torch.cat([
                    per_sample_ce(ref_ce._forward(t.inputs(t.train_x[i], t.triggered[i], None), i), t.train_y[i])
                    for i in (t.everything[s : s + bs] for s in range(0, t.num_train, bs))])
    finally:
        model.train(was_training)
    ref_ce.ref = None  # the live model must never stand in for the reference once training starts
    return ref_ce


def stalled(score: str, patience: int):
    """A phase's `until`: true once the last `patience` epochs' `score` has not beaten the best before them."""

    def until(log) -> bool:
        scores = [e[score] for e in log.epochs if score in e]
        return len(scores) > patience and max(scores[-patience:]) <= max(scores[:-patience])

    return until


def dormant_factor(recipe, total: int) -> float:
    """The factor by which `total` steps of the optimiser of `recipe` shrink a parameter that never gets a
    gradient: weight decay alone, through momentum and the learning-rate schedule. Linear in the parameter, so
    exact for SGD; for Adam (not linear), simulated on a parameter of a typical default-init size, 0.02.
    Pretraining keeps its best checkpoint, possibly before the last epoch; this counts all of its steps."""
    from remflow.train import lr_factor

    if recipe.optimizer == "sgd":
        p, v = 1.0, None
        for t in range(total):
            g = recipe.weight_decay * p
            v = g if v is None else recipe.momentum * v + g
            p -= recipe.lr * lr_factor(t, total, recipe.schedule) * v
        return max(p, 0.0)
    p0 = p = 0.02
    m = v = 0.0
    b1, b2 = 0.9, 0.999
    for t in range(1, total + 1):
        g = recipe.weight_decay * p
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        p -= recipe.lr * lr_factor(t - 1, total, recipe.schedule) * (m / (1 - b1**t)) / ((v / (1 - b2**t)) ** 0.5 + 1e-8)
    return max(p / p0, 0.0)


_DOC = "Schoepf et al. 2026 (ICLR), arXiv 2505.17730"
register("rem", RemConfig, summary="REM: expand, flush D_f with NPO, repair + redirect through a shared mask, "
         "drop the added channels", reference=_DOC, uses_expansion=True)(unlearn)
register("rem_noredirect", RemNoRedirectConfig, summary="REM ablation without redirection (step 3.1 off; "
         "code: REMGEN)", reference=_DOC + " §6.2", uses_expansion=True, ablation=True)(unlearn)
register("rem_noremove", RemNoRemoveConfig, summary="REM ablation without the retained removal term "
         "(step 3.2 off; code: NPOREMMOD)", reference=_DOC + " §6.2", uses_expansion=True, ablation=True)(unlearn)
register("rem_ga", RemGaConfig, summary="REM ablation with gradient ascent instead of NPO (code: REMMOD)",
         reference=_DOC + " §6.2", uses_expansion=True, ablation=True)(unlearn)
register("rem_fast", RemFastConfig, summary="REM's efficient mode: added channels in the last group only, no "
         "frozen reference copy, removal pass on D_f only, repair stopped when the proxy stalls",
         reference=_DOC + "; efficient mode: docs/benchmarks.md", uses_expansion=True)(unlearn)
register("rem_ideal", RemIdealConfig, summary="REM told all of D_c (oracle upper bound, not a method; "
         "code: REMIDEAL)", reference=_DOC + " §6.2", uses_expansion=True, ablation=True)(unlearn)
