"""Pool slices of a suite measured side by side by `bench/orchestration.py --skip-grid --regularities R
--seeds-only S`: a suite too long for one session (serial `dvc repro` of Fashion-MNIST takes hours on 2 cores)
is split by regularity x seed, each slice timed serial then through `remflow run` in one bench run, and the
slices' wall times summed here. Every unlearn row of results.csv belongs to exactly one (regularity, seed)
slice, so the slices' results.csv rows together are the whole suite's; each slice's evaluate stage (reports
of that slice only) is counted in both columns.

    python bench/orchestration_pool.py logs/fmnist-high-0.log logs/fmnist-medium-0.log ...

Reads the lines the bench prints (its log); refuses a log that lacks one of them (a slice that did not finish).
A file may also be an earlier output of this script (its table, as kept in bench/recorded/): its slice rows
are pooled with the new logs, so that slices measured in different sessions add up without their logs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SLICE = re.compile(r"^== (?P<params>\S+) \(grid (?P<regs>\[.*?\]) x seeds (?P<seeds>\[.*?\]);")
TIMING = re.compile(r"^(?P<label>dvc repro \(serial\)|remflow run \((?P<w>\d+) workers\))\s+(?P<stages>\d+) stages"
                    r"\s+wall\s+(?P<wall>[\d.]+)s\s+compute\s+(?P<compute>[\d.]+)s")
SAME = re.compile(r"^results identical to the serial run: (?P<a>\d+) of (?P<b>\d+) ")
ROWS = re.compile(r"^reports/results.csv identical to the serial run's: (?P<a>\d+) of (?P<b>\d+) rows")
# an earlier output of this script: its first line, then one table row per slice
POOLED = re.compile(r"^(?P<params>\S+): (?P<n>\d+) slices$")
ROW = re.compile(r"^(?P<slice>\[.*?\] x seeds \[.*?\])\s+(?P<stages>\d+)\s+(?P<serial>[\d.]+)\s+(?P<run>[\d.]+)"
                 r"\s+[\d.]+x\s+(?P<a>\d+)/(?P<b>\d+) outputs, (?P<ra>\d+)/(?P<rb>\d+) results.csv rows$")


def parse_pooled(path: Path, lines: list[str]) -> list[dict]:
    """The slice rows of an earlier pool output (wall times and counts only: a log's compute is not kept)."""
    params = POOLED.match(lines[0])["params"]
    rows = []
    for line in lines[1:]:
        if m := ROW.match(line):
            rows.append({"log": path.name, "params": params, "slice": m["slice"],
                         "serial": {"stages": int(m["stages"]), "wall": float(m["serial"])},
                         "run": {"stages": int(m["stages"]), "wall": float(m["run"])},
                         "same": (int(m["a"]), int(m["b"])), "rows": (int(m["ra"]), int(m["rb"]))})
    if len(rows) != int(POOLED.match(lines[0])["n"]):
        raise SystemExit(f"{path}: says {POOLED.match(lines[0])['n']} slices, holds {len(rows)} rows")
    return rows


def parse(path: Path) -> list[dict]:
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if lines and POOLED.match(lines[0]):
        return parse_pooled(path, lines)
    out: dict = {"log": path.name}
    for line in lines:
        if m := SLICE.match(line):
            out["slice"] = f"{m['regs']} x seeds {m['seeds']}"
            out["params"] = m["params"]
        elif m := TIMING.match(line):
            key = "serial" if m["label"].startswith("dvc") else "run"
            out[key] = {"stages": int(m["stages"]), "wall": float(m["wall"]), "compute": float(m["compute"])}
            if m["w"]:
                out["workers"] = int(m["w"])
        elif m := SAME.match(line):
            out["same"] = (int(m["a"]), int(m["b"]))
        elif m := ROWS.match(line):
            out["rows"] = (int(m["a"]), int(m["b"]))
    lacking = [k for k in ("slice", "serial", "run", "same", "rows") if k not in out]
    if lacking:
        raise SystemExit(f"{path}: not a finished slice (no {', '.join(lacking)} line)")
    return [out]


def main(paths: list[str]) -> None:
    if not paths:
        raise SystemExit(__doc__)
    slices = [s for p in paths for s in parse(Path(p))]
    if len({s["params"] for s in slices}) != 1:
        raise SystemExit("the logs are of different suites: " + ", ".join(sorted({s["params"] for s in slices})))
    names = [s["slice"] for s in slices]
    if len(set(names)) != len(names):
        raise SystemExit("a slice is given twice: " + ", ".join(names))
    print(f"{slices[0]['params']}: {len(slices)} slices")
    print(f"{'slice':34s} {'stages':>6s} {'serial s':>9s} {'run s':>8s} {'ratio':>6s}  identical")
    tot = {"stages": 0, "serial": 0.0, "run": 0.0, "same": [0, 0], "rows": [0, 0]}
    for s in slices:
        print(f"{s['slice']:34s} {s['serial']['stages']:6d} {s['serial']['wall']:9.1f} {s['run']['wall']:8.1f} "
              f"{s['serial']['wall'] / s['run']['wall']:5.2f}x  {s['same'][0]}/{s['same'][1]} outputs, "
              f"{s['rows'][0]}/{s['rows'][1]} results.csv rows")
        tot["stages"] += s["serial"]["stages"]
        tot["serial"] += s["serial"]["wall"]
        tot["run"] += s["run"]["wall"]
        for k in ("same", "rows"):
            tot[k][0] += s[k][0]
            tot[k][1] += s[k][1]
    print(f"{'pooled':34s} {tot['stages']:6d} {tot['serial']:9.1f} {tot['run']:8.1f} "
          f"{tot['serial'] / tot['run']:5.2f}x  {tot['same'][0]}/{tot['same'][1]} outputs, "
          f"{tot['rows'][0]}/{tot['rows'][1]} results.csv rows")
    print(f"pooled_speedup: {tot['serial'] / tot['run']:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
