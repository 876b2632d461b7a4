"""The one training loop: pretraining, retraining and every training-based unlearning method run through `train`.

SGD (momentum 0.9, weight decay 5e-4) or Adam, with the paper's schedule: linear warm-up over 1% of the steps,
then lr * (1 - (t - w) / (1.25 T)), which ends near 0.2 lr (Goel et al.'s LinearLR), or a constant rate.
On CUDA the forward/backward runs under bf16 autocast with channels_last inputs; losses are summed on the
device and read once per epoch, so the inner loop never waits for the host.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

import torch
from torch import nn

from remflow.config import Recipe, RuntimeCfg
from remflow.data.task import Batch, Task
from remflow.errors import RemflowError
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


def make_optimizer(params: Iterable[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    """torch.optim's SGD (momentum, L2 weight decay) or Adam (L2 added to the gradient), as the released code.

    remflow carried hand-written copies of both while every DVC stage was a process of its own (torch.optim's
    first step was thought to cost about a second a stage); `python bench/optimizers.py` measured the first
    step in a fresh process at about 0.15 s for both, the same step time, and byte-equal weights after 200
    steps of either, so torch.optim it is.
    """
    params = [p for p in params if p.requires_grad]
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def lr_factor(step: int, total: int, schedule: str) -> float:
    if schedule == "constant":
        return 1.0
    warm = max(1, total // 100)
    if step < warm:
        return (step + 1) / warm
    return max(0.0, 1.0 - (step - warm) / (1.25 * total))


# ---------------------------------------------------------------- the loop


@dataclass
class Data:
    """What a phase trains on: `batches()` yields one epoch's batches (anything its loss takes), `steps` of them."""

    steps: int
    batches: Callable[[], Iterable]


def shuffled(task: Task, indices: torch.Tensor, batch_size: int, gen: torch.Generator,
             labels: torch.Tensor | None = None) -> Data:
    """Epochs of `indices` in a new order each time, as augmented batches (labels: the training labels)."""
    return Data(task.num_batches(len(indices), batch_size),
                lambda: task.batches(indices, batch_size, gen, labels=labels))


@dataclass
class Phase:
    """Epochs of optimizer steps on one loss over one data source.

    `until(log)`, checked before each epoch with the run's TrainLog so far, ends the phase when True (a flush
    stops at Acc(D_f) <= gamma; SCRUB's max pass once msteps steps have run).
    `grad_hook(model)` runs between backward and step (SalUn's mask). A phase nested in another (run before
    each of its epochs: REM's flush, SCRUB's max pass) states whether it steps the outer phase's optimizer
    (`shares_optimizer`: its momentum, at the learning rate the outer schedule has reached, as REM's released
    code does) or its own, made once from `recipe`.
    """

    label: str
    loss: LossFn
    data: Data
    epochs: int
    schedule: str = "constant"
    max_steps: int | None = None
    until: Callable[["TrainLog"], bool] | None = None
    grad_hook: Callable[[nn.Module], None] | None = None
    shares_optimizer: bool = True
    recipe: Recipe | None = None  # the own optimizer's recipe (shares_optimizer=False)
    # a params key to blame when an epoch's mean loss is not finite: training stops there with that error
    # (pretraining: a model that diverged, or a plug-in that outputs nan, is no original to unlearn from); None:
    # the phase goes on (an unlearning method that diverges is scored as it ends)
    finite_key: str | None = None


Tie = Literal["earliest", "latest"]


@dataclass
class Selection:
    """Which epoch to keep: the best `score(model)` (never the test set), checked every `every` epochs and after
    the last epoch run (`every=None`: after the last only, i.e. the last epoch is kept); `start`: the model
    before training competes as epoch 0 (it can be returned unchanged). `tie`: which of equal scores wins,
    the earlier epoch (a later one must score strictly higher) or the later one."""

    name: str
    score: Callable[[nn.Module], float]
    every: int | None = 1
    start: bool = False
    # with `start`, when no epoch beats the starting model: "original" returns it unchanged (remflow's earlier
    # rule), "last" leaves the model at its last epoch (the released REM and NPO, whose kept model starts as an
    # alias of the live one); a kept epoch is always a copy, never an alias
    fallback: Literal["original", "last"] = "original"
    tie: Tie = "earliest"

    @property
    def rule(self) -> str:
        """The rule in words, for the run record: `last`, or `<name> every <k>, <tie> tie`."""
        if self.every is None:
            return "last"
        return f"{self.name} every {self.every}, {self.tie} tie"


@dataclass
class TrainLog:
    steps: int = 0  # optimizer steps of the main phase
    epochs: list[dict] = field(default_factory=list)  # one entry per main epoch run
    best_epoch: int = 0  # 0: the starting model (or no selection: the last epoch's model is kept)
    best_score: float = float("nan")
    fell_back: bool = False  # no epoch beat the starting model and the selection's fallback kept the last one
    rounds: dict[str, list[int]] = field(default_factory=dict)  # nested phase -> epochs it ran before each epoch
    nested_steps: dict[str, int] = field(default_factory=dict)

    def stats(self, select: Selection | None) -> dict:
        """The figures a method's run record keeps."""
        out: dict = {"steps": self.steps, "epochs": len(self.epochs)}
        if select is not None:
            out.update(best_epoch=self.best_epoch, **{select.name: round(self.best_score, 6)}, selection=select.rule)
            if select.start and select.fallback == "last":
                out["fell_back"] = self.fell_back
        for label, rounds in self.rounds.items():
            out.update({f"{label}_rounds": rounds, f"{label}_epochs": sum(rounds),
                        f"{label}_steps": self.nested_steps[label]})
        return out


def train(
    model: nn.Module,
    opt: SGD | Adam,
    main: Phase,
    *,
    nested: tuple[Phase, ...] | list[Phase] = (),
    select: Selection | None = None,
    net: nn.Module | None = None,
    device: torch.device | None = None,
) -> TrainLog:
    """Run `main` with `opt` under its schedule; before each of its epochs, each `nested` phase in turn; after
    each, the selection. Leaves `model` at the selected epoch's state. `net` (default `model`) is what the main
    phase's loss runs, e.g. the compiled model, sharing its parameters."""
    device = device or next(model.parameters()).device
    net = model if net is None else net  # not `or`: a compiled module refuses len()
    log = TrainLog()
    own = {p.label: make_optimizer(model.parameters(), p.recipe) for p in nested if not p.shares_optimizer}
    best = None
    if select is not None:
        if select.start and select.fallback == "original":
            best = KeepBest(model, select.score(model), tie=select.tie)
        else:  # no copy of the start: restoring without a better epoch keeps the last one
            best = KeepBest(model, tie=select.tie)
            if select.start:
                best.score = select.score(model)
    total = _total(main)
    base_lrs = [g["lr"] for g in opt.param_groups]
    with Progress(main.label, total=main.epochs) as bar:
        for epoch in range(main.epochs):
            if main.until is not None and main.until(log):
                break
            entry: dict = {}
            for phase in nested:
                epochs, steps = _run_nested(model, own.get(phase.label, opt), phase, log, device)
                log.rounds.setdefault(phase.label, []).append(epochs)
                log.nested_steps[phase.label] = log.nested_steps.get(phase.label, 0) + steps
                entry[phase.label] = epochs
            loss, log.steps = _epoch(net, opt, main, base_lrs, log.steps, total, device)
            if main.finite_key is not None and not math.isfinite(loss):
                raise RemflowError(f"{main.label}: the mean loss of epoch {epoch + 1} is {loss}: training diverged",
                                   key=main.finite_key, got=loss, hint="a lower learning rate; or a model whose "
                                   "forward gives nan or inf (a plug-in's)")
            entry = {"epoch": epoch + 1, "steps": log.steps, "loss": loss, **entry}
            final = epoch + 1 == main.epochs or log.steps >= total
            if best is not None and (final or (select.every is not None and (epoch + 1) % select.every == 0)):
                score = select.score(model)
                best.offer(model, score, epoch + 1)
                entry[select.name] = score
            log.epochs.append(entry)
            bar.advance(**{k: v for k, v in entry.items() if k not in ("epoch", "steps")})
            if log.steps >= total:
                break
    for g, lr in zip(opt.param_groups, base_lrs):
        g["lr"] = lr
    if best is not None and log.epochs and select.name not in log.epochs[-1]:
        # `until` ended the phase between checks: its last epoch is checked too (`every=None`: kept)
        score = select.score(model)
        best.offer(model, score, log.epochs[-1]["epoch"])
        log.epochs[-1][select.name] = score
    if best is not None:
        log.fell_back = best.state is None and bool(log.epochs) and select.start
        best.restore(model)
        if log.fell_back:
            last = log.epochs[-1]
            log.best_epoch, log.best_score = last["epoch"], float(last.get(select.name, best.score))
        else:
            log.best_epoch, log.best_score = best.epoch, best.score
    return log


def _total(phase: Phase) -> int:
    full = phase.epochs * phase.data.steps
    return min(phase.max_steps or full, full)


def _epoch(net: nn.Module, opt, phase: Phase, base_lrs: list[float], step: int, total: int,
           device: torch.device) -> tuple[float, int]:
    """One epoch of `phase` from optimizer step `step` of `total`; returns its mean loss and the new step count.
    Losses are summed on the device and read once, so the inner loop never waits for the host."""
    # REMFLOW_SYNC_CHECK=1 on CUDA: any host-device synchronisation inside the inner loop raises
    sync_check = device.type == "cuda" and os.environ.get("REMFLOW_SYNC_CHECK") == "1"
    net.train()
    loss_sum = torch.zeros((), device=device)
    n = 0
    if sync_check:
        torch.cuda.set_sync_debug_mode("error")
    for batch in phase.data.batches():
        f = lr_factor(step, total, phase.schedule)
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * f
        with autocast(device):
            loss = phase.loss(net, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if phase.grad_hook is not None:
            phase.grad_hook(net)
        opt.step()
        loss_sum += loss.detach().float()
        n += 1
        step += 1
        if step >= total:
            break
    if sync_check:
        torch.cuda.set_sync_debug_mode("default")
    return float(loss_sum) / max(n, 1), step


def _run_nested(model: nn.Module, opt, phase: Phase, log: TrainLog, device: torch.device) -> tuple[int, int]:
    """A nested phase, whole: its epochs until `until()` or its cap; returns (epochs, steps) run. Its schedule
    is relative to the optimizer's learning rate as it finds it, which it leaves as it was."""
    base_lrs = [g["lr"] for g in opt.param_groups]
    total, steps, epochs = _total(phase), 0, 0
    for _ in range(phase.epochs):
        if phase.until is not None and phase.until(log):
            break
        _, steps = _epoch(model, opt, phase, base_lrs, steps, total, device)
        epochs += 1
        if steps >= total:
            break
    for g, lr in zip(opt.param_groups, base_lrs):
        g["lr"] = lr
    return epochs, steps


def cross_entropy(model: nn.Module, batch: Batch) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch.x), batch.y)


class KeepBest:
    """Holds a copy of the best state seen so far (by a score that never looks at the test set); of equal
    scores the earliest is kept (`tie="earliest"`, a strict comparison) or the latest (`tie="latest"`)."""

    def __init__(self, model: nn.Module, score: float = float("-inf"), tie: Tie = "earliest"):
        self.score, self.tie = score, tie
        self.state = copy.deepcopy(model.state_dict()) if score > float("-inf") else None
        self.epoch = 0

    def offer(self, model: nn.Module, score: float, epoch: int) -> bool:
        if score > self.score or (self.tie == "latest" and score == self.score):
            self.score, self.epoch = score, epoch
            self.state = copy.deepcopy(model.state_dict())
            return True
        return False

    def restore(self, model: nn.Module) -> nn.Module:
        if self.state is not None:
            model.load_state_dict(self.state)
        return model


def val_accuracy(model: nn.Module, task: Task, batch_size: int = 2048) -> float:
    """Clean validation accuracy: the model-selection signal of pretraining and of training-based methods."""
    return float((predict(model, task, task.val_x, batch_size=batch_size) == task.val_y).float().mean())


def by_validation(task: Task, batch_size: int = 2048, every: int = 1, tie: Tie = "earliest",
                  select: Literal["best_val", "last"] = "best_val") -> Selection:
    """Keep the epoch with the best validation accuracy (the validation split, never the test set), checked
    every `every` epochs and after the last, `tie` deciding between equal scores; `select="last"`: keep the
    last epoch (its validation accuracy is still recorded)."""
    return Selection("val_acc", lambda m: val_accuracy(m, task, batch_size),
                     every=None if select == "last" else every, tie=tie)


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
) -> torch.Tensor:
    """Predicted classes (on the device) for uint8 `images`, in eval mode (a widened model: base mode)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for s in range(0, len(images), batch_size):
            sl = slice(s, s + batch_size)
            x = task.inputs(images[sl], None if triggered is None else triggered[sl], gen)
            with autocast(x.device):
                out.append(model(x).argmax(1))
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
