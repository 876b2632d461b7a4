"""The evaluate stage before and after runs scored themselves, side by side on one suite's runs.

Before (an earlier commit, given by --before): evaluate loaded every run's checkpoint, scored it on the data and
fitted each manifest's regularity probe. After (this checkout): each unlearn cell scored its run while the model
was in memory and each manifest has its probe stage, so evaluate reads the JSON records. Both commands run on
the same runs (the records written by this checkout carry what both need), alternating, and the bench checks
that they write the same results.csv, byte for byte.

    (cd pipelines/digits-full && remflow run)
    python bench/evaluate_stage.py --suite pipelines/digits-full --before 0b80199
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", type=Path, default=ROOT, help="a suite folder whose runs are present")
    ap.add_argument("--before", required=True, help="commit of the evaluate that scored checkpoints")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    suite = a.suite.resolve()
    runs = sorted(suite.glob("runs/*/record.json"))
    if not runs:
        sys.exit(f"no runs under {suite}/runs: run the suite first (remflow run)")
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
