"""The evaluate stage's two speed choices, each against its alternative side by side:

1. The regularity probe's scikit-learn fits on one BLAS thread (remflow.detection.detectors.one_blas_thread,
   chosen so that the score does not depend on the process's thread count) against BLAS on every core the
   process has, on one corruption manifest of a suite's data: time and the score of each.
2. Scoring runs in spawned processes (remflow.evaluate.score_all: at most one process per RUNS_PER_PROCESS
   runs) against one process: `remflow evaluate` on a suite whose runs are present, REMFLOW_EVAL_PROCESSES=1
   against the default count, alternating; plus what one process costs to start and one run to score, the two
   figures RUNS_PER_PROCESS rests on.

    python bench/evaluate_cores.py --probe-only                     # no suite outputs needed
    (cd pipelines/digits-full && remflow run) && python bench/evaluate_cores.py --suite pipelines/digits-full
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def probe(params_path: Path, regularity: str, repeats: int) -> None:
    import torch  # noqa: F401  (before the probe module, as in the stage)

    import remflow.detection.probe as probe_mod
    from remflow.data.corruption import make_manifest
    from remflow.data.datasets import load_splits
    from remflow.data.task import make_task
    from remflow.detection.loader import load_params
    from remflow.train import setup_runtime

    os.chdir(params_path.parent)  # data paths in params.yaml are relative to its suite
    params = load_params(params_path.name)
    device = setup_runtime(params.runtime)
    splits = load_splits(params.data)
    task = make_task(params.data, splits, device, make_manifest(regularity, 0, params.corruption, splits))
    limited = probe_mod.one_blas_thread

    def timed(ctx) -> tuple[float, float]:
        probe_mod.one_blas_thread = ctx
        try:
            t = time.perf_counter()
            score = probe_mod.regularity_score(task, seed=0)
            return time.perf_counter() - t, score
        finally:
            probe_mod.one_blas_thread = limited

    one, every = [], []
    for _ in range(repeats):  # alternating, so that both see the same machine
        one.append(timed(limited))
        every.append(timed(contextlib.nullcontext))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"regularity probe, {params_path.parent.relative_to(ROOT)} {regularity} seed 0, |D_c| "
          f"{len(task.corrupted)}, {repeats} runs each, alternating, {cores} cores")
    for label, xs in (("one BLAS thread ", one), ("BLAS on every core", every)):
        print(f"  {label:18s} median {statistics.median(t for t, _ in xs):6.2f}s  "
              f"({', '.join(f'{t:.2f}' for t, _ in xs)})  score {', '.join(f'{s:.6f}' for _, s in xs)}")
    ratio = statistics.median(t for t, _ in every) / statistics.median(t for t, _ in one)
    print(f"  ratio every core / one thread: {ratio:.2f}x")
    sys.stdout.flush()


def evaluate_once(suite: Path, processes: str | None) -> tuple[float, dict]:
    env = dict(os.environ)
    env.pop("REMFLOW_EVAL_PROCESSES", None)
    if processes:
        env["REMFLOW_EVAL_PROCESSES"] = processes
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "remflow", "evaluate", "--runs", "runs", "--metrics",
                            f"{out}/metrics.json", "--reports", f"{out}/reports"], cwd=suite, env=env,
                           capture_output=True, text=True)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            raise SystemExit(f"{suite}: remflow evaluate failed (run the suite first):\n{(r.stdout + r.stderr)[-2000:]}")
        return wall, json.loads(Path(out, "metrics.json").read_text())


def costs(suite: Path) -> tuple[float, float, int]:
    """A spawned scorer's start (import torch, validate params, load the data) and one run's scoring, timed in
    a fresh process as the pool's initializer and task run them."""
    code = """
import time, json, sys
t = time.perf_counter()
import torch
from remflow.evaluate import _start_scorer, _score, collect_runs
from remflow.detection.loader import load_params
p = load_params("params.yaml")
_start_scorer(p.model_dump(mode="json"))
start = time.perf_counter() - t
runs = collect_runs(p, "runs")
jobs = []
for rec, folder in runs[:8]:
    jobs.append((str(folder), rec["inputs"]["manifest"], json.load(open(rec["inputs"]["discovery"]))["indices"]))
t = time.perf_counter()
for j in jobs:
    _score(j)
print(json.dumps({"start": start, "score": (time.perf_counter() - t) / len(jobs), "runs": len(runs)}))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=suite, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{suite}: timing a scorer failed:\n{(r.stdout + r.stderr)[-2000:]}")
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return d["start"], d["score"], d["runs"]


def pooled(suite: Path, repeats: int) -> None:
    import torch

    from remflow.evaluate import RUNS_PER_PROCESS, scoring_processes

    os.environ.pop("REMFLOW_EVAL_PROCESSES", None)  # the default count, as the default runs below get it
    start, score, runs = costs(suite)
    one, default = [], []
    for _ in range(repeats):
        one.append(evaluate_once(suite, "1"))
        default.append(evaluate_once(suite, None))
    same = all(m == one[0][1] for _, m in one + default)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = scoring_processes(runs, torch.device("cpu"))
    print(f"remflow evaluate, {suite.relative_to(ROOT)}: {runs} runs, {repeats} runs each, alternating, "
          f"{cores} cores")
    print(f"  a scorer's start {start:.2f}s, one run's scoring {score:.3f}s: a process pays for itself after "
          f"{start / score:.0f} runs (RUNS_PER_PROCESS = {RUNS_PER_PROCESS})")
    a, b = statistics.median(w for w, _ in one), statistics.median(w for w, _ in default)
    print(f"  REMFLOW_EVAL_PROCESSES=1   median {a:6.2f}s  ({', '.join(f'{w:.2f}' for w, _ in one)})")
    print(f"  default ({n} process{'es' if n > 1 else ''})     median {b:6.2f}s  "
          f"({', '.join(f'{w:.2f}' for w, _ in default)})")
    print(f"  ratio one / default: {a / b:.2f}x; metrics.json identical in all runs: {same}")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="pipelines/digits-full", help="a suite's folder whose runs are present")
    ap.add_argument("--probe-params", default="pipelines/fashion-mnist/params.yaml")
    ap.add_argument("--regularity", default="high")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--probe-only", action="store_true")
    args = ap.parse_args()
    suite = (ROOT / args.suite).resolve()
    if not args.probe_only:
        pooled(suite, args.repeats)
    probe((ROOT / args.probe_params).resolve(), args.regularity, args.repeats)


if __name__ == "__main__":
    main()
