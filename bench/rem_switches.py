"""REM's switches against REM, paired cell by cell: over all cells, by region, and on the cells where REM loses.

    python bench/rem_switches.py RESULTS.csv [RESULTS.csv ...] [--switches rem_trusted,rem_disowned]
                                 [--metric score] [--loses-in medium,low]

Every file must hold `rem` and the switches, run from the same original (the same part or suite run): the pairs
are (regularity, rate, seed) cells. Without `retrain` in the files, give the regions with --loses-in (from
another run of the suite) and the cell-by-cell column is left out. "Where REM loses" is given two ways:
- by region (`--loses-in`, default: the regions whose REM - Retrain interval lies below 0 in these files).
  Regions picked from these very files favour the switches a little for the same reason as the next line: take
  them from another run of the suite where there is one;
- cell by cell (Retrain's score above REM's in that cell). This selection is biased towards any switch: a cell is
  picked because REM's run came out low there, so REM's noise is part of both the selection and the difference
  (regression to the mean). Read it as an upper bound, the rows by region as the test.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from remflow import report as R


def cells(rows: list[dict], run: str, metric: str) -> dict[tuple, float]:
    return {(r["regularity"], float(r["discovery_rate"]), int(r["seed"])): float(r[metric])
            for r in rows if r["run"] == run}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv", nargs="+")
    ap.add_argument("--switches", default="rem_trusted,rem_disowned")
    ap.add_argument("--metric", default="score")
    ap.add_argument("--loses-in", default=None, help="regions where REM loses, comma-separated")
    a = ap.parse_args()
    rows = R.read_results([Path(p) for p in a.csv])  # refuses a cell two files both hold
    rem, ret = cells(rows, "rem", a.metric), cells(rows, "retrain", a.metric)
    regs = R.regularities_of(rows)
    keys = sorted(rem)

    def interval(run: dict, base: dict, ks: list) -> str:
        ks = [k for k in ks if k in run and k in base]
        if not ks:
            return "—"
        return f"{R.paired_text(R.bootstrap_mean_diff([run[k] for k in ks], [base[k] for k in ks]))} ({len(ks)})"

    if not ret:
        if a.loses_in is None:
            raise SystemExit("no retrain rows in these files: give the regions where REM loses with --loses-in")
    else:
        print(f"REM - Retrain, {a.metric} (points, 95% paired interval, pairs):")
    losing = []
    for g in ["all"] + regs if ret else []:
        ks = [k for k in keys if (g == "all" or k[0] == g) and k in ret]
        if not ks:
            print(f"  {g:8s} —")
            continue
        p = R.bootstrap_mean_diff([rem[k] for k in ks], [ret[k] for k in ks])
        if g != "all" and p.high < 0:
            losing.append(g)
        print(f"  {g:8s} {interval(rem, ret, ks)}")
    if a.loses_in is not None:
        losing = [g for g in a.loses_in.split(",") if g]
    lost_cells = [k for k in keys if k in ret and ret[k] > rem[k]]
    print(f"regions where REM loses: {', '.join(losing) or 'none'}"
          + (f"; cells where Retrain beat REM: {len(lost_cells)} of {len(keys)}" if ret else ""))
    print()
    cols = ["all"] + regs + ["REM loses (regions)", "REM loses (cells, biased)"]
    print(f"| switch − rem, {a.metric} | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for s in [s for s in a.switches.split(",") if s]:
        mine = cells(rows, s, a.metric)
        if not mine:
            raise SystemExit(f"no run {s!r} in {', '.join(a.csv)}")
        out = [interval(mine, rem, [k for k in keys if g == "all" or k[0] == g]) for g in ["all"] + regs]
        out.append(interval(mine, rem, [k for k in keys if k[0] in losing]) if losing else "—")
        out.append(interval(mine, rem, lost_cells) if ret else "—")
        print(f"| {s} | " + " | ".join(out) + " |")
    print()
    print("Healed (%) by region and rate, mean over seeds:")
    rates = sorted({k[1] for k in keys})
    print("| run | region | " + " | ".join(f"{r:g}" for r in rates) + " |")
    print("|---|---|" + "---:|" * len(rates))
    for run in (["retrain"] if ret else []) + ["rem"] + [s for s in a.switches.split(",") if s]:
        h = cells(rows, run, "healed")
        for g in regs:
            vals = []
            for rate in rates:
                v = [h[k] for k in h if k[0] == g and k[1] == rate]
                vals.append(f"{100 * sum(v) / len(v):.1f}" if v else "—")
            print(f"| {run} | {g} | " + " | ".join(vals) + " |")


if __name__ == "__main__":
    main()
