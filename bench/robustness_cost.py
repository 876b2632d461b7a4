"""What the robustness measurements (remflow/robustness.py) cost each unlearning run, from a suite's run records.

Every unlearn cell run with `robustness.enabled` records the wall-clock seconds of the measurements
(`measures.robustness_seconds`) beside the method's own (`unlearn_seconds`) and the scoring's
(`scoring_seconds`), all timed in the same process on the same model. This prints, per method and overall, the
median of each and the ratio of the measurements to the unlearning run, so the cost of the switch is read off
the suite's own runs (no separate timing loop).

    remflow run                                   # a suite with robustness.enabled: true
    python bench/robustness_cost.py runs          # or pipelines/<suite>/runs
    python bench/robustness_cost.py reports/results.csv   # a committed report: the same columns, no scoring time
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path


def from_records(runs: Path) -> dict[str, list[tuple[float, float, float]]]:
    """(unlearn, scoring, robustness) seconds per run label, from the run records under a runs folder."""
    by: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for path in sorted(runs.glob("*/record.json")):
        rec = json.loads(path.read_text())
        rob = (rec.get("measures") or {}).get("robustness_seconds")
        if rob is None:
            continue
        label = rec.get("row", {}).get("label", rec["run"])
        by[label].append((rec["unlearn_seconds"], rec.get("scoring_seconds", 0.0), rob))
    return by


def from_csv(path: Path) -> dict[str, list[tuple[float, float, float]]]:
    """The same from a results.csv: its unlearn_seconds and robustness_seconds columns (scoring counted 0)."""
    by: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"run", "unlearn_seconds", "robustness_seconds"} - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(f"{path} has no column {', '.join(sorted(missing))}: not a remflow results.csv")
        for row in reader:
            if row.get("robustness_seconds") not in (None, ""):
                by[row["run"]].append((float(row["unlearn_seconds"]), 0.0, float(row["robustness_seconds"])))
    return by


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="?", default="runs",
                    help="a suite's runs folder, or its reports/results.csv (which has no scoring time)")
    args = ap.parse_args()
    source = Path(args.runs)
    if source.suffix == ".csv" and not source.is_file():
        raise SystemExit(f"no such file: {source}")
    if not source.is_file() and not source.is_dir():
        raise SystemExit(f"no such folder: {source} (a suite's runs folder or its reports/results.csv)")
    csv_mode = source.is_file()
    by = from_csv(source) if csv_mode else from_records(source)
    if not by:
        raise SystemExit(f"no run under {args.runs} has robustness measurements (robustness.enabled)")
    print(f"{'run':>18} {'cells':>5} {'unlearn s':>10} {'scoring s':>10} {'robustness s':>13} {'robust/unlearn':>15}")
    every = []
    for label, rows in by.items():
        every += rows
        u, s, r = (statistics.median(c) for c in zip(*rows))
        ratio = f"{r / u:>15.2f}" if u > 0 else f"{'-':>15}"  # `none` trains nothing: no ratio
        print(f"{label:>18} {len(rows):>5} {u:>10.2f} {s:>10.3f} {r:>13.2f} {ratio}")
    u, s, r = (sum(c) for c in zip(*every))
    print(f"{'all (sums)':>18} {len(every):>5} {u:>10.1f} {s:>10.2f} {r:>13.1f} {r / u:>15.2f}")
    counted = "the method alone: a results.csv has no scoring time" if csv_mode else "method + scoring"
    print(f"the measurements add {r / (u + s):.0%} to the time of the unlearn stages ({counted})")


if __name__ == "__main__":
    main()
