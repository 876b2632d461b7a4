"""REM's cost against retraining from scratch, side by side on the same cells and model.

For every cell of the default suite's grid (digits, small CNN) it runs, each in its own process as
`dvc repro` does: Retrain, REM as the paper specifies it, and REM without the reuse of the reference's
outputs (the step-cost cut of this project, for a before/after). It prints per-cell figures and the ratios:
REM's unlearning time and peak memory as a fraction of Retrain's, and REM's peak parameter count (the widened
model and its frozen reference) relative to the deployed model. A fourth column runs REM with
`removal_pass: forget` (the repair's base-model pass on each batch's D_f samples only; a measured variant, not
the paper's default).

    python bench/rem_cost.py                 # all cells of the default grid
    python bench/rem_cost.py --cells high:0.5,low:1.0
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cells import ROOT, Bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--cells", default=None, help="regularity:rate,... (default: the params' grid)")
    args = ap.parse_args()
    methods = {"none": {}, "retrain": {}, "rem": {}}
    bench = Bench(Path(args.params), {"methods": methods, "grid": {"methods": list(methods), "etd_methods": []}})
    no_reuse = bench.variant("no-reuse", {"methods": {"rem": {"reuse_reference": False}}})
    forget_pass = bench.variant("forget-pass", {"methods": {"rem": {"removal_pass": "forget"}}})
    grid = bench.raw["grid"]
    cells = ([(c.split(":")[0], float(c.split(":")[1])) for c in args.cells.split(",")] if args.cells else
             [(r, float(d)) for r in grid["regularities"] for d in grid["discovery_rates"]])
    print(f"REM vs Retrain on {len(cells)} cells of {bench.raw['data']['dataset']} "
          f"({bench.raw['model']['name']} width {bench.raw['model']['width']}), one process per run")
    print(f"{'cell':>12} | {'retrain s':>9} {'rem s':>7} {'rem/ret':>7} | {'rem (no reuse) s':>16} {'rem (forget pass) s':>19} | "
          f"{'retrain MB':>10} {'rem MB':>7} | {'params peak/deployed':>20}")
    rows = []
    for reg, rate in cells:
        bench.unlearn("none", reg, rate)  # prepares the cell (pretraining is not timed)
        ret = bench.unlearn("retrain", reg, rate)
        rem = bench.unlearn("rem", reg, rate)
        rem0 = bench.unlearn("rem", reg, rate, params=no_reuse, tag="-noreuse")
        remf = bench.unlearn("rem", reg, rate, params=forget_pass, tag="-forgetpass")
        rows.append((ret, rem, rem0, remf))
        print(f"{reg + ' ' + str(rate):>12} | {ret['unlearn_seconds']:9.2f} {rem['unlearn_seconds']:7.2f} "
              f"{rem['unlearn_seconds'] / ret['unlearn_seconds']:7.2f} | {rem0['unlearn_seconds']:16.2f} "
              f"{remf['unlearn_seconds']:19.2f} | "
              f"{ret['peak_memory_mb']:10.1f} {rem['peak_memory_mb']:7.1f} | "
              f"{rem['params_peak'] / rem['params_deployed']:20.2f}")
    t_ret = sum(r[0]["unlearn_seconds"] for r in rows)
    t_rem = sum(r[1]["unlearn_seconds"] for r in rows)
    t_rem0 = sum(r[2]["unlearn_seconds"] for r in rows)
    t_remf = sum(r[3]["unlearn_seconds"] for r in rows)
    mem = statistics.median(r[1]["peak_memory_mb"] / max(r[0]["peak_memory_mb"], 1e-9) for r in rows)
    print(f"total seconds: retrain {t_ret:.1f}, rem {t_rem:.1f}, rem without reference reuse {t_rem0:.1f}")
    print(f"rem/retrain time: {t_rem / t_ret:.2f}")
    print(f"rem (removal_pass forget)/retrain time: {t_remf / t_ret:.2f}")
    print(f"rem reference reuse speedup: {t_rem0 / t_rem:.2f}")
    print(f"rem/retrain peak memory (median over cells): {mem:.2f}")
    print(f"rem peak parameters / deployed: {rows[0][1]['params_peak'] / rows[0][1]['params_deployed']:.2f} "
          f"(widened model {rows[0][1]['params_peak'] // 2} + frozen reference, deployed "
          f"{rows[0][1]['params_deployed']})")


if __name__ == "__main__":
    main()
