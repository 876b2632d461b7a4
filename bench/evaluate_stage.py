"""The evaluate stage before and after runs scored themselves, side by side on one suite's runs.

Before (an earlier commit, given by --before): evaluate loaded every run's checkpoint, scored it on the data and
fitted each manifest's regularity probe. After (this checkout): each unlearn cell scored its run while the model
was in memory and each manifest has its probe stage, so evaluate reads the JSON records. Both commands run on
the same runs (the records written by this checkout carry what both need), alternating, and the bench checks
that they write the same results.csv, byte for byte.

    (cd pipelines/digits-full && remflow run)
    python bench/evaluate_stage.py --suite pipelines/digits-full --before 0b80199

A suite whose params the earlier commit cannot read (sections or runs added since: fashion-mnist-large) is
measured with --replay instead: the "before" side is what that evaluate did, replayed with this checkout's code
(every run's checkpoint loaded and scored on its cell's data, every manifest's regularity probe fitted, on a
process pool of one process a CPU as the earlier stage had), and its scores must equal the runs' own.

    python bench/evaluate_stage.py --suite pipelines/fashion-mnist-large --replay
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path, pythonpath: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "REMFLOW_PROGRESS": "plain"}
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return seconds


def _score_run(suite: str, record_path: str) -> tuple[str, dict, dict]:
    """What the earlier evaluate did for one run: rebuild its cell's data, load its checkpoint, score it."""
    import torch

    from remflow.data.corruption import check_discovery, load_manifest
    from remflow.data.datasets import load_splits
    from remflow.data.task import make_task
    from remflow.io import read_json
    from remflow.metrics import evaluate_model
    from remflow.models import load_model
    from remflow.params import load_params

    torch.set_num_threads(1)
    os.chdir(suite)
    params = load_params("params.yaml")
    record = read_json(record_path, "record")
    splits = load_splits(params.data)
    manifest = load_manifest(record["inputs"]["manifest"], splits)
    discovery = check_discovery(read_json(record["inputs"]["discovery"], "discovery"), manifest,
                                record["inputs"]["discovery"], len(splits.train_y))
    task = make_task(params.data, splits, torch.device("cpu"), manifest, list(discovery["indices"]))
    model, _ = load_model(Path(record_path).parent / "model.safetensors", torch.device("cpu"))
    return record_path, evaluate_model(model, task, params.runtime.eval_batch_size), record["scores"]


def _probe(suite: str, manifest_path: str) -> float:
    import torch

    from remflow.data.corruption import load_manifest
    from remflow.data.datasets import load_splits
    from remflow.data.task import make_task
    from remflow.detection.probe import regularity_score
    from remflow.params import load_params

    os.chdir(suite)
    params = load_params("params.yaml")
    splits = load_splits(params.data)
    task = make_task(params.data, splits, torch.device("cpu"), load_manifest(manifest_path, splits))
    return regularity_score(task, seed=params.detection.seed)


def replay(suite: Path, runs: list[Path], repeats: int) -> None:
    from concurrent.futures import ProcessPoolExecutor

    manifests = sorted(str(p.relative_to(suite)) for p in suite.glob("artifacts/corrupt/*.json"))
    before, after = [], []
    for i in range(repeats):
        t = time.perf_counter()
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            scored = list(pool.map(_score_run, [str(suite)] * len(runs), [str(r) for r in runs]))
            probes = list(pool.map(_probe, [str(suite)] * len(manifests), manifests))
        before.append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as tmp:
            after.append(timed([sys.executable, "-m", "remflow", "evaluate", "--runs", "runs", "--probes",
                                "artifacts/probe", "--metrics", str(Path(tmp) / "metrics.json"), "--reports", tmp,
                                "--format", "csv"], suite, ROOT))
    def same(x, y) -> bool:  # equal, NaN (no validation split) on both sides counting as equal
        return (x != x and y != y) or x == y

    differ = [p for p, mine, theirs in scored if set(mine) != set(theirs)
              or not all(same(mine[k], theirs[k]) for k in theirs)]
    stage_probes = [json.loads((suite / "artifacts" / "probe" / Path(m).name).read_text())["regularity_score"]
                    for m in manifests]
    differ += [m for m, mine, theirs in zip(manifests, probes, stage_probes) if round(float(mine), 6) != theirs]
    mb, ma = statistics.median(before), statistics.median(after)
    print(f"suite {suite.name}: {len(runs)} runs, {len(manifests)} manifests, {os.cpu_count()} CPUs")
    print(f"  before (replayed: every checkpoint scored, every probe fitted, {os.cpu_count()} processes)  "
          f"median {mb:7.2f}s  ({', '.join(f'{t:.2f}' for t in before)})")
    print(f"  after  (remflow evaluate: gathers the runs' own scores)  "
          f"median {ma:7.2f}s  ({', '.join(f'{t:.2f}' for t in after)})")
    print(f"  ratio before/after {mb / ma:.1f}x; replayed scores and probes equal the stages' own: {not differ}")
    if differ:
        sys.exit(f"{len(differ)} runs or manifests score otherwise than their stage, first {differ[0]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", type=Path, default=ROOT, help="a suite folder whose runs are present")
    side = ap.add_mutually_exclusive_group(required=True)
    side.add_argument("--before", help="commit of the evaluate that scored checkpoints")
    side.add_argument("--replay", action="store_true", help="replay that evaluate's work with this checkout")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    suite = a.suite.resolve()
    runs = sorted(suite.glob("runs/*/record.json"))
    if not runs:
        sys.exit(f"no runs under {suite}/runs: run the suite first (remflow run)")
    if a.replay:
        return replay(suite, runs, a.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = tmp / "before"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), a.before], cwd=ROOT, check=True)
        try:
            before, after = [], []
            for i in range(a.repeats):  # alternating, so that both see the same machine
                out_b, out_a = tmp / f"b{i}", tmp / f"a{i}"
                before.append(timed([sys.executable, "-m", "remflow", "evaluate", "--runs", "runs", "--metrics",
                                     str(out_b / "metrics.json"), "--reports", str(out_b), "--format", "csv"],
                                    suite, old))
                after.append(timed([sys.executable, "-m", "remflow", "evaluate", "--runs", "runs", "--probes",
                                    "artifacts/probe", "--metrics", str(out_a / "metrics.json"), "--reports",
                                    str(out_a), "--format", "csv"], suite, ROOT))
            same = (tmp / "b0" / "results.csv").read_bytes() == (tmp / "a0" / "results.csv").read_bytes()
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    mb, ma = statistics.median(before), statistics.median(after)
    print(f"suite {suite.name}: {len(runs)} runs, {os.cpu_count()} CPUs")
    print(f"  before ({a.before}: scores every checkpoint)  median {mb:7.2f}s  "
          f"({', '.join(f'{t:.2f}' for t in before)})")
    print(f"  after  (gathers the runs' own scores)     median {ma:7.2f}s  "
          f"({', '.join(f'{t:.2f}' for t in after)})")
    print(f"  ratio before/after {mb / ma:.1f}x; results.csv identical: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
