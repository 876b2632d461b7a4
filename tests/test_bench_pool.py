"""bench/orchestration_pool.py: slices measured in different sessions pool into one figure."""

from __future__ import annotations

import runpy
import sys

import pytest

from conftest import ROOT


def _log(regs: str, seed: int, serial: float, run: float, same: int = 83, rows: int = 75) -> str:
    return "\n".join([
        f"== pipelines/fashion-mnist/params.yaml (grid {regs} x seeds [{seed}]; threads 1 per run in both)",
        f"dvc repro (serial)      84 stages  wall {serial}s  compute 700.0s",
        f"remflow run (2 workers) 84 stages  wall {run}s  compute 720.0s",
        f"results identical to the serial run: {same} of 83 outputs",
        f"reports/results.csv identical to the serial run's: {rows} of 75 rows",
    ]) + "\n"


def _pool(capsys, *paths) -> str:
    argv = sys.argv
    sys.argv = ["orchestration_pool.py", *map(str, paths)]
    try:
        runpy.run_path(str(ROOT / "bench" / "orchestration_pool.py"), run_name="__main__")
    finally:
        sys.argv = argv
    return capsys.readouterr().out


def test_logs_and_an_earlier_pool_add_up(tmp_path, capsys):
    (tmp_path / "low-0.log").write_text(_log("['low']", 0, 1000.0, 400.0))
    (tmp_path / "low-1.log").write_text(_log("['low']", 1, 1100.0, 500.0, same=82, rows=74))
    first = _pool(capsys, tmp_path / "low-0.log")
    (tmp_path / "earlier.txt").write_text("# kept output\n" + first)
    out = _pool(capsys, tmp_path / "earlier.txt", tmp_path / "low-1.log")
    pooled = [line for line in out.splitlines() if line.startswith("pooled ")][0].split()
    assert pooled[1:4] == ["168", "2100.0", "900.0"]
    assert "165/166 outputs, 149/150 results.csv rows" in out
    assert out.splitlines()[-1] == "pooled_speedup: 2.33"


def test_refuses_an_unfinished_slice_and_a_slice_given_twice(tmp_path, capsys):
    (tmp_path / "cut.log").write_text("\n".join(_log("['high']", 0, 1.0, 1.0).splitlines()[:2]) + "\n")
    with pytest.raises(SystemExit, match="not a finished slice"):
        _pool(capsys, tmp_path / "cut.log")
    (tmp_path / "a.log").write_text(_log("['high']", 0, 10.0, 5.0))
    (tmp_path / "earlier.txt").write_text(_pool(capsys, tmp_path / "a.log"))
    with pytest.raises(SystemExit, match="given twice"):
        _pool(capsys, tmp_path / "earlier.txt", tmp_path / "a.log")


def test_robustness_cost_reads_a_committed_report_as_it_reads_run_records(tmp_path, capsys):
    """bench/robustness_cost.py: a results.csv gives the same ratio as the records it was gathered from."""
    import json

    rows = [("rem", 10.0, 4.0), ("rem", 30.0, 6.0), ("retrain", 20.0, 2.0), ("none", 0.0, 1.0)]
    header = "run,method,unlearn_seconds,robustness_seconds\n"
    (tmp_path / "results.csv").write_text(header + "".join(f"{r},{r},{u},{x}\n" for r, u, x in rows))
    runs = tmp_path / "runs"
    for i, (r, u, x) in enumerate(rows):
        (runs / f"{r}-{i}").mkdir(parents=True)
        (runs / f"{r}-{i}" / "record.json").write_text(json.dumps(
            {"run": r, "row": {"label": r}, "unlearn_seconds": u, "measures": {"robustness_seconds": x}}))
    outs = []
    for source in (tmp_path / "results.csv", runs):
        argv = sys.argv
        sys.argv = ["robustness_cost.py", str(source)]
        try:
            runpy.run_path(str(ROOT / "bench" / "robustness_cost.py"), run_name="__main__")
        finally:
            sys.argv = argv
        outs.append(capsys.readouterr().out)
    # the same rows (each mode in its own order) and the same ratio; the CSV says it counts no scoring time
    assert sorted(outs[0].splitlines()[:-1]) == sorted(outs[1].splitlines()[:-1])
    assert "add 22% to the time" in outs[0] and "add 22% to the time" in outs[1]   # 13 s over 60 s of unlearning
    assert "no scoring time" in outs[0] and "method + scoring" in outs[1]
    (tmp_path / "empty.csv").write_text(header)
    (tmp_path / "other.csv").write_text("run,score\nrem,0.5\n")
    for bad, says in ((tmp_path / "empty.csv", "no run"), (tmp_path / "other.csv", "no column"),
                      (tmp_path / "typo.csv", "no such file"), (tmp_path / "nowhere", "no such folder")):
        sys.argv, argv = ["robustness_cost.py", str(bad)], sys.argv
        try:
            with pytest.raises(SystemExit, match=says):
                runpy.run_path(str(ROOT / "bench" / "robustness_cost.py"), run_name="__main__")
        finally:
            sys.argv = argv


def test_rem_cost_reads_the_three_targets_from_results_files(tmp_path, capsys):
    """bench/rem_cost.py --from-csv: DESIGN 5's efficient-mode targets from committed reports, cells paired within
    each file (two files of the same cell and seed are two cells, not one)."""
    header = "run,regularity,discovery_rate,seed,unlearn_seconds,peak_memory_mb,params_peak,params_deployed,score,view\n"
    runs = {"retrain": (100.0, 10.0, 1000, 0.40), "rem": (110.0, 30.0, 7880, 0.50), "rem_fast": (30.0, 20.0, 1450, 0.55)}
    for name, bump in (("a.csv", 0.0), ("b.csv", 0.1)):
        lines = [f"{r},high,0.5,0,{t},{m},{pp},1000,{s + bump},\n" for r, (t, m, pp, s) in runs.items()]
        lines.append("rem,high,0.5,0,1,1,1000,1000,0.9,found\n")  # a detection-study row: not the oracle's cell
        (tmp_path / name).write_text(header + "".join(lines))
    argv, sys.argv = sys.argv, ["rem_cost.py", "--from-csv", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    try:
        runpy.run_path(str(ROOT / "bench" / "rem_cost.py"), run_name="__main__")
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    assert "on 2 cells of 2 results file(s)" in out
    assert "efficient/retrain time: 0.30" in out and "efficient peak params / deployed: 1.45" in out
    assert "efficient score / rem score: 1.09" in out  # (0.55 + 0.65) / (0.50 + 0.60)
    assert "rem_fast 2.00" in out  # peak memory over Retrain's, median of the cells
