"""DVC's own cost per stage: rewriting `dvc.lock` after every stage it runs.

After each stage, `dvc repro` reads the whole lock file with a round-trip YAML parser and writes it back
(DVC 3.x, `Lockfile.dump` -> `modify_yaml`; upstream issue treeverse/dvc#10629). That cost grows with the
number of stages already in the lock, so a whole suite pays for it quadratically. This benchmark times that
exact call, through DVC's own function, on each committed lock file, against the default suite's lock side
by side, and estimates what one full `dvc repro` spends on it (the average stage sees half the final lock).

    python bench/lockfile.py
    python bench/lockfile.py --repeats 5 pipelines/fashion-mnist/dvc.lock
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from dvc.utils.serialize import modify_yaml

ROOT = os.path.join(os.path.dirname(__file__), "..")
LOCKS = ["dvc.lock", "pipelines/digits-full/dvc.lock", "pipelines/fashion-mnist/dvc.lock"]


def one_rewrite(path: str) -> tuple[float, int]:
    """Seconds for DVC to re-save one stage of the lock at `path` (the file is left as it was); stage count."""
    t = time.perf_counter()
    with modify_yaml(path) as data:
        stages = data["stages"]
        name = next(iter(stages))
        stages[name] = stages[name]
    return time.perf_counter() - t, len(stages)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("locks", nargs="*", default=LOCKS, help="lock files (default: the committed suites')")
    p.add_argument("--repeats", type=int, default=3, help="median of this many rewrites per file")
    a = p.parse_args()
    rows = []
    missing = [lock for lock in a.locks if not os.path.isfile(os.path.join(ROOT, lock))]
    for lock in missing:
        print(f"{lock}: not in this checkout (a suite run in parts commits no lock), skipped")
    with tempfile.TemporaryDirectory() as tmp:
        for i, lock in enumerate(x for x in a.locks if x not in missing):
            copy = os.path.join(tmp, f"{i}.lock")
            shutil.copy(os.path.join(ROOT, lock), copy)
            times = []
            for _ in range(a.repeats):
                s, n = one_rewrite(copy)
                times.append(s)
            rows.append((lock, n, os.path.getsize(copy) / 1e6, statistics.median(times)))
    if not rows:
        raise SystemExit("no lock file to time")
    base = rows[0][3]
    print(f"{'lock file':>34} | stages |   MB | rewrite s | x first | whole repro, est. s")
    for lock, n, mb, s in rows:
        print(f"{lock:>34} | {n:6d} | {mb:4.2f} | {s:9.2f} | {s / base:7.2f} | {n * s / 2:10.0f}")
    print(f"medians of {a.repeats} rewrites; estimate: stages x (last rewrite / 2)")


if __name__ == "__main__":
    main()
