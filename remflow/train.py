"""The one training loop: pretraining, retraining and every training-based unlearning method run through `fit`.

SGD (momentum 0.9, weight decay 5e-4) or Adam, with the paper's schedule: linear warm-up over 1% of the steps,
then lr * (1 - (t - w) / (1.25 T)), which ends near 0.2 lr (Goel et al.'s LinearLR), or a constant rate.
On CUDA the forward/backward runs under bf16 autocast with channels_last inputs; losses are summed on the
device and read once per epoch, so the inner loop never waits for the host.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from remflow.data.task import Batch, Task
from remflow.models.layers import Route
from remflow.config import Recipe, RuntimeCfg
from remflow.progress import Progress

LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def setup_runtime(rt: RuntimeCfg) -> torch.device:
    """Pick the device and thread count. CPU runs are bit-reproducible (same params + seed -> same bytes)."""
    if rt.device == "cuda" or (rt.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from remflow.errors import RemflowError

            raise RemflowError("CUDA was asked for but is not available", key="runtime.device", got=rt.device)
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        device = torch.device("cuda")
    else:
        # CPU kernels are deterministic for a fixed thread count; the determinism test checks the bytes.
        # (torch.use_deterministic_algorithms would import the compiler stack: 1.5 s per stage.)
        device = torch.device("cpu")
    if rt.threads:
        torch.set_num_threads(rt.threads)
    return device


def compiled(model: nn.Module, rt: RuntimeCfg) -> nn.Module:
    """`torch.compile(model)` when `runtime.compile` is set, for plain training steps (no channel routing);
    the parameters are shared, so checkpoints are taken from `model` itself."""
    return torch.compile(model) if rt.compile else model


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class SGD:
    """SGD with momentum and L2 weight decay, the update of torch.optim.SGD (dampening 0, no Nesterov).

    remflow's own because torch.optim's first step imports the compiler stack (about 1 s per stage process).
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.param_groups = [{"params": [p for p in params if p.requires_grad], "lr": lr}]
        self.momentum, self.weight_decay = momentum, weight_decay
        self.state: dict[nn.Parameter, torch.Tensor] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        lr = self.param_groups[0]["lr"]
        params = [p for p in self.param_groups[0]["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        if self.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        if self.momentum:
            bufs = []
            for p, g in zip(params, grads):
                buf = self.state.get(p)
                if buf is None:
                    self.state[p] = buf = g.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(g)
                bufs.append(buf)
            grads = bufs
        torch._foreach_add_(params, grads, alpha=-lr)


class Adam:
    """Adam with L2 weight decay added to the gradient, the update of torch.optim.Adam (no amsgrad)."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param_groups = [{"params": [p for p in params if p.requires_grad], "lr": lr}]
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps
        self.state: dict[nn.Parameter, tuple[torch.Tensor, torch.Tensor]] = {}
        self.t = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        lr = self.param_groups[0]["lr"]
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p in self.param_groups[0]["params"]:
            if p.grad is None:
                continue
            g = p.grad.add(p, alpha=self.weight_decay) if self.weight_decay else p.grad
            m, v = self.state.setdefault(p, (torch.zeros_like(p), torch.zeros_like(p)))
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m, (v.sqrt() / c2**0.5).add_(self.eps), value=-lr / c1)


def make_optimizer(params: Iterable[nn.Parameter], recipe: Recipe) -> SGD | Adam:
    if recipe.optimizer == "adam":
        return Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def lr_factor(step: int, total: int, schedule: str) -> float:
    if schedule == "constant":
        return 1.0
    warm = max(1, total // 100)
    if step < warm:
        return (step + 1) / warm
    return max(0.0, 1.0 - (step - warm) / (1.25 * total))


@dataclass
class FitLog:
    steps: int = 0
    epochs: list[dict] = field(default_factory=list)


def fit(
    model: nn.Module,
    opt: SGD | Adam,
    loss_fn: LossFn,
    epoch_batches: Callable[[int], Iterable[Batch]],
    *,
    epochs: int,
    steps_per_epoch: int,
    schedule: str = "constant",
    max_steps: int | None = None,
    after_epoch: Callable[[int, int], dict | None] | None = None,
    before_epoch: Callable[[int], None] | None = None,
    until: Callable[[int], bool] | None = None,
    grad_hook: Callable[[nn.Module], None] | None = None,
    label: str = "train",
    device: torch.device | None = None,
) -> FitLog:
    """Minimise `loss_fn` over `epochs` epochs of `epoch_batches(epoch)`.

    `before_epoch(epoch)` runs first in each epoch (REM's flush); `until(epoch)`, checked before each epoch,
    ends training early when it returns True (forgetting methods stop at Acc(D_f) <= gamma).
    `after_epoch(epoch, steps)` may return a dict of figures for the log (e.g. a validation score); it is also
    where callers keep their best checkpoint. `grad_hook` runs between backward and step (SalUn's mask).
    """
    device = device or next(model.parameters()).device
    total = min(max_steps or epochs * steps_per_epoch, epochs * steps_per_epoch)
    # REMFLOW_SYNC_CHECK=1 on CUDA: any host-device synchronisation inside the inner loop raises
    sync_check = device.type == "cuda" and os.environ.get("REMFLOW_SYNC_CHECK") == "1"
    base_lrs = [g["lr"] for g in opt.param_groups]
    log = FitLog()
    with Progress(label, total=epochs) as bar:
        for epoch in range(epochs):
            if until is not None and until(epoch):
                break
            if before_epoch is not None:
                before_epoch(epoch)
            model.train()
            loss_sum = torch.zeros((), device=device)
            n = 0
            if sync_check:
                torch.cuda.set_sync_debug_mode("error")
            for batch in epoch_batches(epoch):
                f = lr_factor(log.steps, total, schedule)
                for g, lr in zip(opt.param_groups, base_lrs):
                    g["lr"] = lr * f
                with autocast(device):
                    loss = loss_fn(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_hook is not None:
                    grad_hook(model)
                opt.step()
                loss_sum += loss.detach().float()
                n += 1
                log.steps += 1
                if log.steps >= total:
                    break
            if sync_check:
                torch.cuda.set_sync_debug_mode("default")
            entry = {"epoch": epoch + 1, "steps": log.steps, "loss": float(loss_sum) / max(n, 1)}
            if after_epoch is not None:
                entry.update(after_epoch(epoch, log.steps) or {})
            log.epochs.append(entry)
            bar.advance(**{k: v for k, v in entry.items() if k not in ("epoch", "steps")})
            if log.steps >= total:
                break
    for g, lr in zip(opt.param_groups, base_lrs):
        g["lr"] = lr
    return log


def cross_entropy(model: nn.Module, batch: Batch) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch.x), batch.y)


class KeepBest:
    """Holds a copy of the best state seen so far (by a score that never looks at the test set)."""

    def __init__(self, model: nn.Module, score: float = float("-inf")):
        self.score = score
        self.state = copy.deepcopy(model.state_dict()) if score > float("-inf") else None
        self.epoch = 0

    def offer(self, model: nn.Module, score: float, epoch: int) -> bool:
        if score > self.score:
            self.score, self.epoch = score, epoch
            self.state = copy.deepcopy(model.state_dict())
            return True
        return False

    def restore(self, model: nn.Module) -> nn.Module:
        if self.state is not None:
            model.load_state_dict(self.state)
        return model


# ---------------------------------------------------------------- evaluation


@torch.inference_mode()
def predict(
    model: nn.Module,
    task: Task,
    images: torch.Tensor,
    triggered: torch.Tensor | None = None,
    *,
    batch_size: int = 2048,
    gen: torch.Generator | None = None,
    route_ids: torch.Tensor | None = None,
    keep: float = 0.2,
    seed: int = 0,
) -> torch.Tensor:
    """Predicted classes (on the device) for uint8 `images`; eval mode; base mode unless `route_ids` given."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for s in range(0, len(images), batch_size):
            sl = slice(s, s + batch_size)
            x = task.inputs(images[sl], None if triggered is None else triggered[sl], gen)
            route = None if route_ids is None else Route(route_ids[sl], keep=keep, seed=seed)
            with autocast(x.device):
                out.append(model(x, route).argmax(1) if route is not None else model(x).argmax(1))
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=images.device)


def accuracy(model: nn.Module, task: Task, idx: torch.Tensor, labels: torch.Tensor | None = None, **kw) -> float:
    """Accuracy on training-set samples `idx` (triggers as trained on) against `labels` (default: training labels)."""
    if len(idx) == 0:
        return float("nan")
    y = (task.train_y if labels is None else labels)[idx]
    pred = predict(model, task, task.train_x[idx], task.triggered[idx], **kw)
    return float((pred == y).float().mean())
