"""The same runs under two settings, paired cell by cell: B - A for each run both results.csv files hold.

    python bench/paired_files.py A.csv B.csv [--metric score] [--regularity low]

For a setting that changes the corruption or the data (a second run of the suite, not a run beside the others),
so that both files hold rows of the same names: each run's (regularity, rate, seed) cells are paired across the
files, and B - A is printed with its 95% paired bootstrap interval (remflow.report.bootstrap_mean_diff), with
REM - Retrain in each file where both are there. Each run's line says `settings differ` where the run name
stands for other method settings in B, and a line names what the originals' settings differ in (results.csv's
`setup`: data, model, pretrain, corruption), where both files carry those columns.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from remflow import report as R
from remflow.provenance import SETUP_PARTS, originals_key, setup_parts


def cells(rows: list[dict], run: str, metric: str, regularity: str | None) -> dict[tuple, float]:
    return {(r["regularity"], float(r["discovery_rate"]), int(r["seed"])): float(r[metric]) for r in rows
            if r["run"] == run and (regularity is None or r["regularity"] == regularity)}


def settings(rows: list[dict], run: str) -> set[str]:
    return {str(r.get("settings") or "") for r in rows if r["run"] == run} - {""}


def setup_differences(rows_a: list[dict], rows_b: list[dict]) -> str:
    """What the originals' settings differ in between the files, over the corruptions both hold."""
    def of(rows):
        return {originals_key(r): setup_parts(r.get("setup")) for r in rows}

    a, b = of(rows_a), of(rows_b)
    shared = [k for k in a if k in b and a[k] and b[k]]
    if not shared:
        return "not recorded in both files"
    differ = [p for p in SETUP_PARTS if any(a[k][p] != b[k][p] for k in shared)]
    return ("B differs from A in " + ", ".join(differ)) if differ else "the same in both files"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--metric", default="score")
    ap.add_argument("--regularity", default=None)
    args = ap.parse_args()
    rows_a, rows_b = R.read_results([args.a]), R.read_results([args.b])
    print(f"{args.metric}: B = {args.b.name}, A = {args.a.name} (points, 95% paired interval, pairs)")
    print(f"  the originals' settings: {setup_differences(rows_a, rows_b)}")
    for run in [r for r in R.runs_in_order(rows_b) if r in set(R.runs_in_order(rows_a))]:
        a, b = (cells(x, run, args.metric, args.regularity) for x in (rows_a, rows_b))
        ks = sorted(set(a) & set(b))
        if not ks:
            continue
        p = R.bootstrap_mean_diff([b[k] for k in ks], [a[k] for k in ks])
        mean_a, mean_b = (100 * sum(x[k] for k in ks) / len(ks) for x in (a, b))
        sa, sb = settings(rows_a, run), settings(rows_b, run)
        flag = "  settings differ" if sa and sb and sa != sb else ""
        print(f"  {run:16s} A {mean_a:6.2f}  B {mean_b:6.2f}  B - A {R.paired_text(p)} ({p.pairs}){flag}")
    for name, rows in (("A", rows_a), ("B", rows_b)):
        rem, ret = (cells(rows, r, args.metric, args.regularity) for r in ("rem", "retrain"))
        ks = sorted(set(rem) & set(ret))
        if ks:
            p = R.bootstrap_mean_diff([rem[k] for k in ks], [ret[k] for k in ks])
            print(f"  REM - Retrain in {name}: {R.paired_text(p)} ({p.pairs})")


if __name__ == "__main__":
    main()
