"""The same runs under two settings, paired cell by cell: B - A for each run both results.csv files hold.

    python bench/paired_files.py A.csv B.csv [--metric score] [--regularity low]

For a setting that changes the corruption or the data (a second run of the suite, not a run beside the others),
so that both files hold rows of the same names: each run's (regularity, rate, seed) cells are paired across the
files, and B - A is printed with its 95% paired bootstrap interval (remflow.report.bootstrap_mean_diff), with
REM - Retrain in each file where both are there.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from remflow import report as R


def cells(rows: list[dict], run: str, metric: str, regularity: str | None) -> dict[tuple, float]:
    return {(r["regularity"], float(r["discovery_rate"]), int(r["seed"])): float(r[metric]) for r in rows
            if r["run"] == run and (regularity is None or r["regularity"] == regularity)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--metric", default="score")
    ap.add_argument("--regularity", default=None)
    args = ap.parse_args()
    rows_a, rows_b = R.read_results([args.a]), R.read_results([args.b])
    print(f"{args.metric}: B = {args.b.name}, A = {args.a.name} (points, 95% paired interval, pairs)")
    for run in [r for r in R.runs_in_order(rows_b) if r in set(R.runs_in_order(rows_a))]:
        a, b = (cells(x, run, args.metric, args.regularity) for x in (rows_a, rows_b))
        ks = sorted(set(a) & set(b))
        if not ks:
            continue
        p = R.bootstrap_mean_diff([b[k] for k in ks], [a[k] for k in ks])
        mean_a, mean_b = (100 * sum(x[k] for k in ks) / len(ks) for x in (a, b))
        print(f"  {run:16s} A {mean_a:6.2f}  B {mean_b:6.2f}  B - A {R.paired_text(p)} ({p.pairs})")
    for name, rows in (("A", rows_a), ("B", rows_b)):
        rem, ret = (cells(rows, r, args.metric, args.regularity) for r in ("rem", "retrain"))
        ks = sorted(set(rem) & set(ret))
        if ks:
            p = R.bootstrap_mean_diff([rem[k] for k in ks], [ret[k] for k in ks])
            print(f"  REM - Retrain in {name}: {R.paired_text(p)} ({p.pairs})")


if __name__ == "__main__":
    main()
