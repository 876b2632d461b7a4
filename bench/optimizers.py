"""remflow's SGD/Adam against torch.optim's: first-step cost in a fresh process, step time, and whether the
weights agree, side by side in one run.

remflow's train loop carried its own SGD and Adam (kept below, as they were) because, when every DVC stage
was a new process, torch.optim's first step was thought to cost about a second more per stage. With
`remflow run`'s long-lived workers that would be paid once per worker anyway. This measured the decision
(remflow now uses torch.optim; docs/benchmarks.md has the figures):

    python bench/optimizers.py            # small CNN (width 16) on 8x8 digits-shaped batches, 200 steps
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


class SGD:
    """SGD with momentum and L2 weight decay, the update of torch.optim.SGD (dampening 0, no Nesterov).

    remflow's own until this benchmark, because torch.optim's first step was thought to cost ~1 s a process.
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


FIRST_STEP = r"""
import sys, time, json
t0 = time.perf_counter()
import torch
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from remflow.models import build_model
from remflow.config import CnnCfg
t1 = time.perf_counter()
torch.manual_seed(0)
net = build_model(CnnCfg(name="cnn", width=16), num_classes=10, in_channels=1, image_size=8)
x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
if {which!r} == "torch":
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
else:
    from optimizers import SGD
    opt = SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
t2 = time.perf_counter()
torch.nn.functional.cross_entropy(net(x), y).backward()
opt.step()
t3 = time.perf_counter()
print(json.dumps({{"import": t1 - t0, "first_step": t3 - t2}}))
"""


def first_step(which: str) -> dict:
    out = subprocess.run([sys.executable, "-c", FIRST_STEP.format(root=str(ROOT), bench=str(ROOT / "bench"), which=which)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def steady(steps: int = 200) -> None:
    sys.path.insert(0, str(ROOT))
    from remflow.config import CnnCfg
    from remflow.models import build_model

    torch.set_num_threads(1)
    cases = [("SGD", lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
              lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4)),
             ("Adam", lambda p: Adam(p, lr=1e-3, weight_decay=5e-4),
              lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=5e-4))]
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g))
               for _ in range(steps)]
    print(f"{'optimizer':9s} {'former s/step':>15s} {'torch.optim s/step':>19s} {'ratio':>6s} "
          f"{'max |dw| after ' + str(steps):>20s} {'bytes equal':>11s}")
    for name, ours, theirs in cases:
        results = {}
        for label, make in (("remflow", ours), ("torch", theirs)):
            torch.manual_seed(0)
            net = build_model(CnnCfg(name="cnn", width=16), num_classes=10, in_channels=1, image_size=8)
            opt = make(list(net.parameters()))
            t = time.perf_counter()
            for x, y in batches:
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(net(x), y).backward()
                opt.step()
            results[label] = ((time.perf_counter() - t) / steps, [p.detach().clone() for p in net.parameters()])
        (a, wa), (b, wb) = results["remflow"], results["torch"]
        diff = max(float((p - q).abs().max()) for p, q in zip(wa, wb))
        same = all(torch.equal(p, q) for p, q in zip(wa, wb))
        print(f"{name:9s} {a:15.5f} {b:19.5f} {b / a:6.2f} {diff:20.2e} {str(same):>11s}", flush=True)


def main() -> None:
    print("fresh process, one SGD step (medians of 3):")
    for which in ("former", "torch"):
        runs = sorted((first_step(which) for _ in range(3)), key=lambda r: r["first_step"])
        r = runs[1]
        print(f"  {which:8s} import torch+remflow {r['import']:.2f}s  first step {r['first_step']:.3f}s", flush=True)
    steady()


if __name__ == "__main__":
    main()
