"""REM's switches against REM, paired cell by cell: over all cells, by region, and on the cells where REM loses.

    python bench/rem_switches.py RESULTS.csv [RESULTS.csv ...] [--switches rem_trusted,rem_disowned]
                                 [--metric score] [--loses-in medium,low]

Every file must hold `rem`, `retrain` and the switches, run from the same original (the same part or suite run):
the pairs are (regularity, rate, seed) cells. "Where REM loses" is given two ways:
- by region, fixed before looking at the switches (`--loses-in`, default: the regions whose REM - Retrain
  interval lies below 0 in these files);
- cell by cell (Retrain's score above REM's in that cell). This selection is biased towards any switch: a cell is
  picked because REM's run came out low there, so REM's noise is part of both the selection and the difference
  (regression to the mean). Read it as an upper bound, the region rows as the test.
"""
from __future__ import annotations

import argparse

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
    rows = [r for p in a.csv for r in R.read_csv(p)]
    rem, ret = cells(rows, "rem", a.metric), cells(rows, "retrain", a.metric)
    regs = R.regularities_of(rows)
    keys = sorted(k for k in rem if k in ret)

    def interval(run: dict, base: dict, ks: list) -> str:
        ks = [k for k in ks if k in run and k in base]
        if not ks:
            return "—"
        return f"{R.paired_text(R.bootstrap_mean_diff([run[k] for k in ks], [base[k] for k in ks]))} ({len(ks)})"

    print(f"REM - Retrain, {a.metric} (points, 95% paired interval, pairs):")
    losing = []
    for g in ["all"] + regs:
        ks = [k for k in keys if g == "all" or k[0] == g]
        p = R.bootstrap_mean_diff([rem[k] for k in ks], [ret[k] for k in ks])
        if g != "all" and p.high < 0:
            losing.append(g)
        print(f"  {g:8s} {interval(rem, ret, ks)}")
    if a.loses_in is not None:
        losing = [g for g in a.loses_in.split(",") if g]
    lost_cells = [k for k in keys if ret[k] > rem[k]]
    print(f"regions where REM loses: {', '.join(losing) or 'none'}; cells where Retrain beat REM: "
          f"{len(lost_cells)} of {len(keys)}")
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
        out.append(interval(mine, rem, lost_cells))
        print(f"| {s} | " + " | ".join(out) + " |")
    print()
    print("Healed (%) by region and rate, mean over seeds:")
    rates = sorted({k[1] for k in keys})
    print("| run | region | " + " | ".join(f"{r:g}" for r in rates) + " |")
    print("|---|---|" + "---:|" * len(rates))
    for run in ["retrain", "rem"] + [s for s in a.switches.split(",") if s]:
        h = cells(rows, run, "healed")
        for g in regs:
            vals = []
            for rate in rates:
                v = [h[k] for k in h if k[0] == g and k[1] == rate]
                vals.append(f"{100 * sum(v) / len(v):.1f}" if v else "—")
            print(f"| {run} | {g} | " + " | ".join(vals) + " |")


if __name__ == "__main__":
    main()
