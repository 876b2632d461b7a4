"""What remflow run's params memo saves: DVC's params-file reads, uncached against memoised by content.

DVC reads a stage's params file each time it checks the stage (`stage.changed()`, when `remflow run` plans)
and each time it hashes it (`stage.save()`, at commit). `cached_param_reads` (remflow/executor/dvcio.py)
still reads the bytes every time and reuses the parse for identical bytes. This prints, for each suite's
params.yaml, one read both ways (median of --repeats), the reads per stage counted on a small DVC project
(plan + commit), and what the parses cost a stage at the ~2000-stage grid without the memo.

    python bench/params_reads.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def reads_per_stage(n: int = 20) -> float:
    """Params-file reads DVC makes per stage for `stage.changed()` then `stage.save()`."""
    import logging

    import dvc.dependency.param as param
    from dvc.repo import Repo

    from lock_writes import make_project

    logging.getLogger("dvc").setLevel(logging.WARNING)
    calls = [0]
    original = param.load_path

    def counting(*a, **k):
        calls[0] += 1
        return original(*a, **k)

    with tempfile.TemporaryDirectory() as tmp:
        make_project(Path(tmp) / "p", n)
        repo = Repo(str(Path(tmp) / "p"))
        stages = [s for s in repo.index.stages if s.cmd]
        param.load_path = counting
        try:
            with repo.lock:
                for s in stages:
                    s.changed()
                    s.save(run_cache=False)
        finally:
            param.load_path = original
            repo.close()
    return calls[0] / len(stages)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--stages", type=int, default=1909, help="the grid's stage count, for the total")
    a = ap.parse_args()

    import dvc.dependency.param as param
    from dvc.fs import LocalFileSystem

    from remflow.executor.dvcio import cached_param_reads

    fs = LocalFileSystem()
    files = [ROOT / "params.yaml"] + sorted((ROOT / "pipelines").glob("*/params.yaml"))
    per = reads_per_stage()
    print(f"DVC reads the params file {per:.1f} times a stage (stage.changed + stage.save, counted)")
    print(f"{'params file':40s} {'KB':>5s} {'DVC read ms':>12s} {'memo hit ms':>12s} {'ratio':>6s}")
    worst = 0.0
    for f in files:
        path = str(f)
        plain = _median(lambda: param.load_path(path, fs), a.repeats)
        with cached_param_reads():
            param.load_path(path, fs)  # the first read parses
            hit = _median(lambda: param.load_path(path, fs), a.repeats)
        worst = max(worst, plain - hit)
        print(f"{str(f.relative_to(ROOT)):40s} {f.stat().st_size / 1e3:5.1f} {plain * 1e3:12.2f} {hit * 1e3:12.2f} "
              f"{plain / max(hit, 1e-9):6.1f}")
    print(f"without the memo, at most {per * worst * 1e3:.1f} ms more a stage "
          f"({per * worst * a.stages:.1f} s of coordinator time over {a.stages} stages)")


if __name__ == "__main__":
    main()
