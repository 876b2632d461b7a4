"""Two results.csv files of one suite, score by score: did a change of the code move any result?

    python bench/compare_results.py BEFORE.csv AFTER.csv

Then, per run, how far Utility x Healed moved (cells the same, mean and largest move): the cross-machine spread
when AFTER is the same suite re-run on another machine.

Rows are matched by (run, corruption, regularity, discovery rate, seed, view), reading an earlier file's labels
as today's (`rem_det` -> `rem@found`, remflow.report.read_results); the score columns must be equal as written
(seconds and memory are not compared). Exit 1 when a value differs or a row is in one file only.

Used for the refactor that made detection one more discovery source (docs/benchmarks.md): each side is the
suite run with `remflow run` from a worktree at that commit, on the same machine.
"""
from __future__ import annotations

import sys
from pathlib import Path

from remflow import report as R

SCORES = ["healed", "utility", "score", "healed_test", "forget_acc", "discovery_precision", "discovery_recall",
          "regularity_score", *(c for c in R.ROBUSTNESS if not c.endswith("_seconds"))]  # scores, not timings


def _value(v) -> bool:
    """A measured value: not missing, not empty, not NaN."""
    return v is not None and str(v).strip() not in ("", "nan", "NaN", "None")


def load(path: str) -> dict[tuple, dict]:
    return {(r["run"], r.get("corruption", ""), r["regularity"], float(r["discovery_rate"]), int(r["seed"]),
             r.get("view") or ""): r for r in R.read_results([Path(path)])}


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = load(sys.argv[1]), load(sys.argv[2])
    common = sorted(set(a) & set(b))
    pairs = [(k, c, a[k].get(c), b[k].get(c)) for k in common for c in SCORES]
    empty = [p for p in pairs if not _value(p[2]) and not _value(p[3])]  # a column neither side measured
    compared = [p for p in pairs if _value(p[2]) or _value(p[3])]
    diff = [p for p in compared if str(p[2]) != str(p[3])]
    print(f"rows: {len(a)} before, {len(b)} after, {len(common)} in both; {len(compared)} score values compared "
          f"({len({p[1] for p in compared})} columns), {len(diff)} differ; {len(empty)} empty on both sides")
    for d in diff[:10]:
        print("  differs:", d)
    moved(a, b, common)
    for name, only in (("before", set(a) - set(b)), ("after", set(b) - set(a))):
        if only:
            print(f"  only {name}: {len(only)}, e.g. {sorted(only)[:3]}")
    if diff or set(a) ^ set(b):
        sys.exit(1)


def moved(a: dict, b: dict, common: list) -> None:
    """How far Utility x Healed moved, per run: the cells whose score is the same as written, the mean and the
    largest move of a cell (points); for a suite re-run on another machine, the cross-machine spread."""
    by_run: dict[str, list[float]] = {}
    for k in common:
        by_run.setdefault(k[0], []).append(100 * (float(b[k]["score"]) - float(a[k]["score"])))
    moves = [m for ms in by_run.values() for m in ms]
    if not moves:
        return
    same = sum(1 for m in moves if m == 0)
    print(f"Utility x Healed: {same} of {len(moves)} cells the same; a cell moves {sorted(map(abs, moves))[len(moves) // 2]:.2f} "
          f"points at the median, {sum(map(abs, moves)) / len(moves):.2f} on average")
    print(f"{'run':22s} {'same':>7s} {'mean move':>10s} {'largest':>8s}")
    for run, ms in by_run.items():
        print(f"{run:22s} {sum(1 for m in ms if m == 0):3d}/{len(ms):<3d} {sum(ms) / len(ms):+10.2f} "
              f"{max(map(abs, ms)):8.2f}")


if __name__ == "__main__":
    main()
