"""How much a suite's summary table moves with the seed alone: Utility x Healed of every run, per seed.

The seed sets which samples are corrupted, the wrong labels, initialisation, data order and discovery, so the
spread over seeds on one machine bounds the differences a reader should call noise (another CPU's float
rounding sends training down another trajectory in the same way):

    # the default suite at seeds 0-2 (a copy of the repository with grid.seeds: [0, 1, 2], then remflow run)
    python bench/seed_spread.py reports/results.csv
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from statistics import mean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", help="a results.csv holding several seeds")
    args = ap.parse_args()
    rows = list(csv.DictReader(open(args.csv)))
    score: dict = defaultdict(list)  # (run, seed) -> scores of its cells
    cells: dict = defaultdict(list)  # (run, regularity, seed) -> scores
    for r in rows:
        score[(r["run"], int(r["seed"]))].append(float(r["score"]))
        cells[(r["run"], r["regularity"], int(r["seed"]))].append(float(r["score"]))
    runs = list(dict.fromkeys(r["run"] for r in rows))
    seeds = sorted({int(r["seed"]) for r in rows})
    regs = list(dict.fromkeys(r["regularity"] for r in rows))
    head = " | ".join(f"seed {s}" for s in seeds)
    print(f"| run | {head} | all seeds | spread (max - min) |")
    print("|---|" + "---:|" * (len(seeds) + 2))
    for run in runs:
        per = [100 * mean(score[(run, s)]) for s in seeds]
        allv = 100 * mean(v for s in seeds for v in score[(run, s)])
        print(f"| {run} | " + " | ".join(f"{v:.2f}" for v in per) + f" | {allv:.2f} | {max(per) - min(per):.2f} |")
    print()
    print("Utility x Healed (%) by regularity, per seed:")
    print(f"| run | regularity | {head} | spread |")
    print("|---|---|" + "---:|" * (len(seeds) + 1))
    for run in runs:
        for reg in regs:
            per = [100 * mean(cells[(run, reg, s)]) for s in seeds]
            print(f"| {run} | {reg} | " + " | ".join(f"{v:.2f}" for v in per) + f" | {max(per) - min(per):.2f} |")


if __name__ == "__main__":
    main()
