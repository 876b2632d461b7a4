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
    switches = [s for s in a.switches.split(",") if s]
    rem, ret = cells(rows, "rem", a.metric), cells(rows, "retrain", a.metric)
    regs = R.regularities_of(rows)
    vs_rem = R.paired(rows, "rem", a.metric)  # all cells and each region, as the reports pair them

    def text(p: R.Paired) -> str:
        return f"{R.paired_text(p)} ({p.pairs})" if p.pairs else "—"

    def interval(run: dict, ks: list) -> str:  # a subset of cells against REM
        ks = [k for k in ks if k in run and k in rem]
        return text(R.bootstrap_mean_diff([run[k] for k in ks], [rem[k] for k in ks]))

    losing = []
    if ret:
        print(f"REM - Retrain, {a.metric} (points, 95% paired interval, pairs):")
        rem_vs_ret = R.paired(rows, "retrain", a.metric)["rem"]
        for g in ["all"] + regs:
            print(f"  {g:8s} {text(rem_vs_ret[g])}")
            if g != "all" and rem_vs_ret[g].pairs and rem_vs_ret[g].high < 0:
                losing.append(g)
    elif a.loses_in is None:
        raise SystemExit("no retrain rows in these files: give the regions where REM loses with --loses-in")
    if a.loses_in is not None:
        losing = [g for g in a.loses_in.split(",") if g]
    lost_cells = [k for k in sorted(rem) if k in ret and ret[k] > rem[k]]
    print(f"regions where REM loses: {', '.join(losing) or 'none'}"
          + (f"; cells where Retrain beat REM: {len(lost_cells)} of {len(rem)}" if ret else ""))
    print()
    cols = ["all"] + regs + ["REM loses (regions)", "REM loses (cells, biased)"]
    print(f"| switch − rem, {a.metric} | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for s in switches:
        mine = cells(rows, s, a.metric)
        if not mine:
            raise SystemExit(f"no run {s!r} in {', '.join(a.csv)}")
        out = [text(vs_rem[s][g]) for g in ["all"] + regs]
        out.append(interval(mine, [k for k in rem if k[0] in losing]) if losing else "—")
        out.append(interval(mine, lost_cells) if ret else "—")
        print(f"| {s} | " + " | ".join(out) + " |")
    print()
    print("Healed (%) by region and rate, mean over seeds:")
    rates = R.rates_of(rows)
    print("| run | region | " + " | ".join(f"{r:g}" for r in rates) + " |")
    print("|---|---|" + "---:|" * len(rates))
    for run in (["retrain"] if ret else []) + ["rem"] + switches:
        tab = R.taxonomy(rows, run, "healed")
        for g in regs:
            print(f"| {run} | {g} | " + " | ".join(R.pct(tab.get(g, {}).get(r, float("nan"))) for r in rates)
                  + " |")


if __name__ == "__main__":
    main()
