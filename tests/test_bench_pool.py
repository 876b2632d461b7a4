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
