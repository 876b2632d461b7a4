"""REM's cost against retraining from scratch, and REM's efficient mode, side by side on the same cells.

For every cell (regularity x discovery rate x seed) of a suite's grid it prepares the cell (corruption,
pretraining, discovery; not timed), then runs, each in its own process as `dvc repro` does: Retrain, REM as the
paper specifies it (`rem`) and REM's efficient mode (`rem_fast`, or the method named by --efficient). It prints
per-cell unlearning time, peak memory above the process's starting level, peak parameters held at once over
the deployed model's, and Utility x Healed (scored as the evaluate stage scores it), then the totals, the paired
difference efficient - REM of Utility x Healed with a 95% bootstrap interval, and three closing lines:

    efficient/retrain time: X               (summed unlearning seconds; target <= 0.5)
    efficient peak params / deployed: Y     (the largest over the cells; target <= 1.5)
    efficient score / rem score: Z          (mean Utility x Healed over the cells; target >= 0.95)

    python bench/rem_cost.py                                   # digits-full's cells, seeds 0 and 1
    python bench/rem_cost.py --params pipelines/fashion-mnist/params.yaml --seeds 0,1
    python bench/rem_cost.py --cells high:0.5,low:1.0 --seeds 0
    python bench/rem_cost.py --set expand_last=2 --set patience=3   # a variant of the efficient mode
    python bench/rem_cost.py --from-csv pipelines/fashion-mnist-large/reports/parts/*.csv   # committed runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cells import ROOT, Bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "pipelines/digits-full/params.yaml"))
    ap.add_argument("--cells", default=None, help="regularity:rate,... (default: the params' grid)")
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    ap.add_argument("--efficient", default="rem_fast", help="the efficient method (default rem_fast)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the efficient method's config (YAML value), repeatable")
    ap.add_argument("--from-csv", nargs="+", default=None, metavar="RESULTS_CSV",
                    help="read the runs from results.csv files instead of running them")
    args = ap.parse_args()
    eff = args.efficient
    if args.from_csv:
        return from_csv(args.from_csv, eff)
    eff_cfg = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    methods = {"none": {}, "retrain": {}, "rem": {}, eff: eff_cfg}
    bench = Bench(Path(args.params), {"methods": methods, "grid": {"methods": list(methods), "etd_methods": []}})
    grid = bench.raw["grid"]
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = ([(c.split(":")[0], float(c.split(":")[1])) for c in args.cells.split(",")] if args.cells else
             [(r, float(d)) for r in grid["regularities"] for d in grid["discovery_rates"]])
    cells = [(r, d, s) for s in seeds for r, d in cells]
    over = f" ({', '.join(args.set)})" if args.set else ""
    print(f"Retrain, REM and {eff}{over} on {len(cells)} cells of {bench.raw['data']['dataset']} "
          f"({bench.raw['model']['name']} width {bench.raw['model']['width']}), one process per run")
    names = ("retrain", "rem", eff)
    print(f"{'cell':>16} | " + " | ".join(f"{n:>8} s {'MB':>6} {'P/dep':>5} {'UxH':>6}" for n in names))
    rows = []
    for reg, rate, seed in cells:
        bench.unlearn("none", reg, rate, seed)  # prepares the cell: pretraining is not timed
        row = {}
        for n in names:
            rec = bench.unlearn(n, reg, rate, seed)
            row[n] = {**rec, "score": bench.score(Path(rec["dir"]))["score"]}
        rows.append(row)
        print(f"{f'{reg} {rate} s{seed}':>16} | " + " | ".join(
            f"{row[n]['unlearn_seconds']:10.2f} {row[n]['peak_memory_mb']:6.1f} "
            f"{row[n]['params_peak'] / row[n]['params_deployed']:5.2f} {100 * row[n]['score']:6.2f}" for n in names),
            flush=True)
    summarise(rows, cells, names)


def summarise(rows: list[dict], cells: list[tuple], names: tuple[str, str, str]) -> None:
    """The totals, the paired differences and the three target lines, from per-cell rows
    ({run: {unlearn_seconds, peak_memory_mb, params_peak, params_deployed, score}}) of Retrain, REM and the
    efficient method (`names`, in that order)."""
    eff = names[2]
    t = {n: sum(r[n]["unlearn_seconds"] for r in rows) for n in names}
    sc = {n: statistics.mean(r[n]["score"] for r in rows) for n in names}
    low_base = sum(r["retrain"]["peak_memory_mb"] < 1.0 for r in rows)
    mem = {n: statistics.median(r[n]["peak_memory_mb"] / max(r["retrain"]["peak_memory_mb"], 1e-9) for r in rows)
           for n in names}
    pp = {n: max(r[n]["params_peak"] / r[n]["params_deployed"] for r in rows) for n in names}
    print(f"total seconds: " + ", ".join(f"{n} {t[n]:.1f}" for n in names))
    print(f"mean Utility x Healed: " + ", ".join(f"{n} {100 * sc[n]:.2f}" for n in names))
    if low_base:  # the high-water mark above the process's start: a worker that trained before has its peak
        print(f"peak memory / retrain's: not comparable here (Retrain's peak above its process's start is under "
              f"1 MB in {low_base} of {len(rows)} cells)")
    else:
        print(f"peak memory / retrain's (median over cells): " + ", ".join(f"{n} {mem[n]:.2f}" for n in names))
    from remflow.report import bootstrap_mean_diff

    for a, b in ((eff, "rem"), (eff, "retrain"), ("rem", "retrain")):
        d = bootstrap_mean_diff([100 * r[a]["score"] for r in rows], [100 * r[b]["score"] for r in rows])
        print(f"Utility x Healed {a} - {b}: {d.diff:+.2f} [{d.low:+.2f}, {d.high:+.2f}] over {d.pairs} pairs")
    for reg in dict.fromkeys(r for r, _, _ in cells):
        sub = [r for r, (rg, _, _) in zip(rows, cells) if rg == reg]
        d = bootstrap_mean_diff([100 * r[eff]["score"] for r in sub], [100 * r["rem"]["score"] for r in sub])
        print(f"  {reg}: {eff} - rem {d.diff:+.2f} [{d.low:+.2f}, {d.high:+.2f}] ({d.pairs} pairs)")
    print(f"rem/retrain time: {t['rem'] / t['retrain']:.2f}")
    print(f"rem peak params / deployed: {pp['rem']:.2f}")
    print(f"efficient/retrain time: {t[eff] / t['retrain']:.2f}")
    print(f"efficient peak params / deployed: {pp[eff]:.2f}")
    print(f"efficient score / rem score: {sc[eff] / sc['rem']:.2f}")


def from_csv(paths: list[str], eff: str) -> None:
    """The same summary from results.csv files that hold Retrain, REM and the efficient method on the same
    cells (a suite's committed report, or the parts of a split one: cells pair within a file only)."""
    from remflow.report import read_csv

    names = ("retrain", "rem", eff)
    fields = ("unlearn_seconds", "peak_memory_mb", "params_peak", "params_deployed", "score")
    by_cell: dict[tuple, dict] = {}
    for i, path in enumerate(paths):
        for r in read_csv(path):
            if r["run"] not in names or r["view"]:
                continue
            cell = (i, r["regularity"], float(r["discovery_rate"]), r["seed"])
            by_cell.setdefault(cell, {})[r["run"]] = {k: float(r[k]) for k in fields}
    keys = sorted((k for k, v in by_cell.items() if all(n in v for n in names)), key=lambda k: (*k[1:], k[0]))
    if not keys:
        raise SystemExit(f"no cell of {', '.join(paths)} has all of {', '.join(names)}")
    print(f"Retrain, REM and {eff} on {len(keys)} cells of {len(paths)} results file(s) (their own timings: "
          "the runs of one file ran in one suite run)")
    summarise([by_cell[k] for k in keys], [k[1:] for k in keys], names)


if __name__ == "__main__":
    main()
