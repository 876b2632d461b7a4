"""Is the corruption gone or only hidden? Robustness measurements of one deployed model (issue 30).

Four measurements, each on a copy of the deployed model (the model passed in is never changed):

1. Clean relearning attack (`relearn_*`): the user's next routine fine-tune. SGD on the clean training data outside
   D_c (clean labels, no trigger, the suite's augmentation), constant learning rate, no weight decay, for
   `budget` x pretraining's optimizer steps; then Healed again. `relearn_drop` = Healed before - Healed after
   (positive: corruption came back).
2. Few-shot relearning attack (`fewshot_*`): the same fine-tune with `k` samples of D_f (their corrupted labels,
   triggers on; drawn once, seeded) appended to every batch. Healed is measured on D_c without those k samples
   (what comes back beyond the samples it is shown) every `budget / checks` steps. The corruption is *back* at
   the first check where that Healed is at or below the original model's Healed on the same samples plus
   `margin`. `fewshot_steps` is the steps run by then (0: back before any step), or budget + 1 when it never
   comes back within the budget (`fewshot_back` 0), so means stay finite and order the runs.
3. Feature probes (`probe_*`) on the penultimate features (the input of the last linear layer the forward pass
   runs: the classifier head of every remflow model), multinomial logistic regressions on standardised features.
   - `probe_clean`: a readout fitted on `probe.reference` clean training samples from outside D_c with their
     labels only, never shown D_c; the share of D_c it assigns the corrupted label. It asks whether the features
     still place D_c where its corrupted labels live, whatever the head now says: a backdoor suppressed at the
     head alone keeps the original's value (about 1), a model that never learnt it sits at about chance (a
     backdoor's corrupted labels are one class: about 1 / classes, plus what the model gets wrong anyway).
   - `probe_acc` (the issue's probe): D_c split in two seeded halves, fitted on one half with its corrupted
     labels plus the same clean reference, scored on the other half (share given its corrupted label; both
     ways, averaged). The clean reference is needed: a backdoor's corrupted labels are all one class, and a
     probe fitted on D_c alone would call everything that class. This one learns the corrupted label itself,
     so it also decodes what the *input* makes separable: a visible trigger patch is separable in the features
     of a model that never saw it (digits, seed 0: 0.80 for Retrain, 1.0 for the original). Read it against
     the none and retrain runs of the same cell, not against chance.
4. Weight-space distance (`weight_dist`, `weight_dist_rel`) from the original: L2 norm of the difference over
   every parameter (not the BatchNorm running statistics), and that over the original's norm. An original with
   memorisation channels (ETD) is compared by its deployed slice.

`measure` runs all four and returns one flat dict of floats with stable column names (COLUMNS), deterministic for
a given seed on one machine, and its own wall-clock seconds (`robustness_seconds`).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Iterator

import numpy as np
import torch
from torch import nn

from remflow.config import ProbeCfg, Recipe, RobustnessCfg
from remflow.data.task import Task
from remflow.seeds import derive_seed
from remflow.train import accuracy, autocast, make_optimizer

RELEARN = ("relearn_healed", "relearn_drop", "relearn_utility", "relearn_steps")
FEWSHOT = ("fewshot_steps", "fewshot_back", "fewshot_k", "fewshot_threshold")
PROBE = ("probe_clean", "probe_acc")
DISTANCE = ("weight_dist", "weight_dist_rel")
COLUMNS = (*RELEARN, *FEWSHOT, *PROBE, *DISTANCE, "robustness_seconds")


_STREAM = "robustness"


def attack_recipe(cfg: RobustnessCfg, pretrain: Recipe) -> Recipe:
    """The attacks' optimiser settings, scaled to the suite's pretraining recipe."""
    return Recipe(optimizer="sgd", lr=cfg.lr_share * pretrain.lr, momentum=cfg.momentum,
                  weight_decay=cfg.weight_decay, batch_size=cfg.batch_size or pretrain.batch_size, epochs=1,
                  schedule="constant")


def attack_steps(cfg: RobustnessCfg, pretrain: Recipe, task: Task) -> int:
    """`budget` x pretraining's optimizer steps (pretraining runs over the whole training split)."""
    total = pretrain.epochs * task.num_batches(task.num_train, pretrain.batch_size)
    return max(1, int(math.ceil(cfg.budget * total)))


def _clean_indices(task: Task) -> torch.Tensor:
    """The training split outside D_c: clean labels (train_y equals the clean label there), no trigger."""
    keep = torch.ones(task.num_train, dtype=torch.bool, device=task.device)
    keep[task.corrupted] = False
    return torch.nonzero(keep).flatten()


def _endless(task: Task, indices: torch.Tensor, batch_size: int, gen: torch.Generator) -> Iterator:
    while True:
        yield from task.batches(indices, batch_size, gen)


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    with autocast(x.device):
        loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _healed(model: nn.Module, task: Task, idx: torch.Tensor, batch_size: int) -> float:
    return accuracy(model, task, idx, labels=task.train_clean_y, batch_size=batch_size)


def _attack_copy(model: nn.Module) -> nn.Module:
    net = copy.deepcopy(model)
    for p in net.parameters():
        p.requires_grad_(True)
    net.train()
    return net


def relearned_copy(model: nn.Module, task: Task, recipe: Recipe, steps: int, seed: int) -> nn.Module:
    """A copy of `model` after the clean relearning attack: `steps` steps of `recipe` on the clean training data
    outside D_c (`model` itself is left as it was)."""
    net = _attack_copy(model)
    opt = make_optimizer(net.parameters(), recipe)
    gen = task.generator(derive_seed(seed, _STREAM, "relearn-data"))
    batches = _endless(task, _clean_indices(task), recipe.batch_size, gen)
    for _ in range(steps):
        b = next(batches)
        _step(net, opt, b.x, b.y)
    return net


def clean_relearning(model: nn.Module, task: Task, recipe: Recipe, steps: int, seed: int,
                     eval_batch_size: int = 2048) -> dict[str, float]:
    """Healed and Utility of `model` after the clean relearning attack (relearned_copy)."""
    from remflow.metrics import evaluate_model

    before = _healed(model, task, task.corrupted, eval_batch_size)
    net = relearned_copy(model, task, recipe, steps, seed)
    after = evaluate_model(net, task, eval_batch_size)
    return {"relearn_healed": after["healed"], "relearn_drop": before - after["healed"],
            "relearn_utility": after["utility"], "relearn_steps": float(steps)}


def fewshot_relearning(model: nn.Module, original: nn.Module, task: Task, recipe: Recipe, steps: int, k: int,
                       margin: float, checks: int, seed: int, eval_batch_size: int = 2048) -> dict[str, float]:
    """The clean fine-tune with `k` samples of D_f in every batch: steps until the corruption is back."""
    forget = task.forget.cpu().numpy()
    if len(forget) == 0:
        return {"fewshot_steps": float("nan"), "fewshot_back": float("nan"), "fewshot_k": 0.0,
                "fewshot_threshold": float("nan")}
    rng = np.random.default_rng([derive_seed(seed, _STREAM, "fewshot-pick")])
    shots = np.sort(rng.choice(forget, size=min(k, len(forget)), replace=False))
    held = np.setdiff1d(task.corrupted.cpu().numpy(), shots)
    shots_t = torch.as_tensor(shots, device=task.device)
    held_t = torch.as_tensor(held, device=task.device)
    threshold = _healed(original, task, held_t, eval_batch_size) + margin
    every = max(1, int(math.ceil(steps / checks)))
    result = {"fewshot_steps": float(steps + 1), "fewshot_back": 0.0, "fewshot_k": float(len(shots)),
              "fewshot_threshold": threshold}
    if len(held) == 0:  # all of D_c is shown: nothing is left to come back on its own
        result.update(fewshot_steps=float("nan"), fewshot_back=float("nan"))
        return result
    if _healed(model, task, held_t, eval_batch_size) <= threshold:
        result.update(fewshot_steps=0.0, fewshot_back=1.0)
        return result
    net = _attack_copy(model)
    opt = make_optimizer(net.parameters(), recipe)
    gen = task.generator(derive_seed(seed, _STREAM, "fewshot-data"))
    batches = _endless(task, _clean_indices(task), recipe.batch_size, gen)
    for step in range(1, steps + 1):
        b = next(batches)
        extra = task.batch(shots_t, gen)  # the suite's augmentation on the shots too
        _step(net, opt, torch.cat([b.x, extra.x]), torch.cat([b.y, extra.y]))
        if step % every == 0 or step == steps:
            if _healed(net, task, held_t, eval_batch_size) <= threshold:
                result.update(fewshot_steps=float(step), fewshot_back=1.0)
                break
    return result


@torch.no_grad()  # not inference mode: callers may fit on the features with autograd
def penultimate(model: nn.Module, task: Task, idx: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """(n, d) float32 features of training samples `idx` (triggers as trained on) at the input of the last linear
    layer the forward pass runs (the classifier head of every remflow model), in eval mode, on the CPU."""
    from remflow.models.layers import WLinear

    seen: dict[str, torch.Tensor] = {}

    def grab(_module, args):
        seen["x"] = args[0]

    hooks = [m.register_forward_pre_hook(grab) for m in model.modules() if isinstance(m, (nn.Linear, WLinear))]
    if not hooks:
        raise ValueError("the model has no linear layer: no penultimate features to probe")
    was_training = model.training
    model.eval()
    out = []
    try:
        for s in range(0, len(idx), batch_size):
            part = idx[s:s + batch_size]
            x = task.inputs(task.train_x[part], task.triggered[part], None)
            with autocast(x.device):
                model(x)
            out.append(seen.pop("x").float().reshape(len(part), -1).cpu())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def feature_probe(model: nn.Module, task: Task, seed: int, cfg: ProbeCfg = ProbeCfg(),
                  eval_batch_size: int = 2048) -> dict[str, float]:
    """How much of the corruption a linear probe decodes from the penultimate features (module docstring)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from remflow.detection.detectors import one_blas_thread

    corrupted = task.corrupted.cpu().numpy()
    if len(corrupted) < 2:
        return {"probe_clean": float("nan"), "probe_acc": float("nan")}
    rng = np.random.default_rng([derive_seed(seed, _STREAM, "probe")])
    rest = _clean_indices(task).cpu().numpy()
    ref = np.sort(rng.choice(rest, size=min(cfg.reference, len(rest)), replace=False))
    perm = rng.permutation(corrupted)
    halves = (np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2:]))
    y = task.train_y.cpu().numpy()
    both = np.concatenate([ref, corrupted])
    feats = penultimate(model, task, torch.as_tensor(both, device=task.device), eval_batch_size).double().numpy()
    row = {int(i): n for n, i in enumerate(both)}
    f = lambda idx: feats[[row[int(i)] for i in idx]]  # noqa: E731

    def fit(idx):
        scaler = StandardScaler().fit(f(idx))
        clf = LogisticRegression(C=cfg.c, max_iter=cfg.max_iter).fit(scaler.transform(f(idx)), y[idx])
        return lambda held: float(np.mean(clf.predict(scaler.transform(f(held))) == y[held]))

    with one_blas_thread():
        clean = fit(ref)(corrupted)
        decoded = [fit(np.concatenate([ref, taught]))(held) for taught, held in (halves, halves[::-1])]
    return {"probe_clean": clean, "probe_acc": float(np.mean(decoded))}


@torch.no_grad()
def weight_distance(model: nn.Module, original: nn.Module) -> dict[str, float]:
    """L2 distance over every parameter between `model` and `original`, and that over the original's norm."""
    if getattr(original, "widened", False):
        original = copy.deepcopy(original).deploy_()
    ref = dict(original.named_parameters())
    own = dict(model.named_parameters())
    if own.keys() != ref.keys() or any(own[n].shape != ref[n].shape for n in own):
        return {"weight_dist": float("nan"), "weight_dist_rel": float("nan")}
    sq = sum(float((own[n].double() - ref[n].double().to(own[n].device)).pow(2).sum()) for n in own)
    norm = sum(float(ref[n].double().pow(2).sum()) for n in ref)
    dist = math.sqrt(sq)
    return {"weight_dist": dist, "weight_dist_rel": dist / math.sqrt(norm) if norm > 0 else float("nan")}


def measure(model: nn.Module, original: nn.Module, task: Task, cfg: RobustnessCfg, seed: int,
            eval_batch_size: int = 2048, *, pretrain: Recipe) -> dict[str, float]:
    """Every robustness column (COLUMNS) of one deployed `model` against the `original` (corrupted) model.

    `pretrain` is the suite's pretraining recipe (params.pretrain): the attacks' budget and learning rate are
    shares of its steps and rate. Neither model is changed; same seed, same machine: same numbers.
    With `cfg.enabled` false: an empty dict."""
    if not cfg.enabled:
        return {}
    t0 = time.perf_counter()
    recipe = attack_recipe(cfg, pretrain)
    steps = attack_steps(cfg, pretrain, task)
    out: dict[str, float] = {}
    out.update(clean_relearning(model, task, recipe, steps, seed, eval_batch_size))
    out.update(fewshot_relearning(model, original, task, recipe, steps, cfg.k, cfg.margin, cfg.checks, seed,
                                  eval_batch_size))
    out.update(feature_probe(model, task, seed, cfg.probe, eval_batch_size))
    out.update(weight_distance(model, original))
    if task.device.type == "cuda":
        torch.cuda.synchronize()
    out["robustness_seconds"] = time.perf_counter() - t0
    return {k: float(out[k]) for k in COLUMNS}
