"""Figures a method writes into its run records (`stats`), cell by cell, for the runs of a suite.

    python bench/run_stats.py RUNS_FOLDER KEY [KEY ...] [--run NAME ...]

One line per (run, regularity, rate) with each key's values over the seeds, in seed order: for instance REM's
disowned samples (`disowned disowned_corrupted`) or a selection's kept epoch (`best_epoch`).
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path)
    ap.add_argument("keys", nargs="+")
    ap.add_argument("--run", action="append", help="only these runs (repeatable)")
    a = ap.parse_args()
    cells: dict[tuple, list[tuple[int, list]]] = defaultdict(list)
    for path in sorted(a.runs.glob("*/record.json")):
        rec = json.loads(path.read_text())
        if a.run and rec["run"] not in a.run:
            continue
        key = (rec["run"], rec["regularity"], float(rec["discovery_rate"]))
        cells[key].append((int(rec["seed"]), [rec["stats"].get(k) for k in a.keys]))
    if not cells:
        raise SystemExit(f"no run records under {a.runs}")
    print("run | regularity | rate | " + " | ".join(f"{k} (by seed)" for k in a.keys))
    for (run, reg, rate), by_seed in sorted(cells.items()):
        by_seed.sort()
        cols = [" ".join(str(v[i]) for _, v in by_seed) for i in range(len(a.keys))]
        print(f"{run} | {reg} | {rate:g} | " + " | ".join(cols))


if __name__ == "__main__":
    main()
