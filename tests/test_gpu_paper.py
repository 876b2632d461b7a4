"""bench/gpu_paper.py, the runner of a suite's slice on a machine without DVC or Ray (bench/gpu_paper.sh): on
the CPU, with DVC and Ray made unimportable (the GPU image has neither), on small Fashion-MNIST files through the paper suite's
params (padding, ResNet-9) shrunk by pipelines/smoke.yaml."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from conftest import ROOT, write_yaml
from test_suites import smoke_params

BLOCK = '''
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("dvc", "ray"):
            raise ImportError(f"{name} is not on the GPU machine")
sys.meta_path.insert(0, _Block())
'''


def _run(tmp_path, *args):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCK)  # in every process the runner starts, too
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_paper.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def paper_params(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper")
    params = smoke_params("fashion-mnist-paper", tmp / "data")
    params["runtime"]["threads"] = 1
    params["grid"].update(methods=["none", "retrain", "rem"], etd_methods=["rem"])
    write_yaml(tmp / "params.yaml", params)
    return tmp / "params.yaml"


@pytest.mark.slow
def test_a_slice_runs_its_stages_in_parallel_and_writes_rows_and_times(tmp_path, paper_params):
    r = _run(tmp_path, "--params", str(paper_params), "--workers", "2", "--budget", "500", "--out", "out")
    assert r.returncode == 0, r.stderr[-3000:]
    with open(tmp_path / "out" / "stage_times.csv") as f:
        stages = list(csv.DictReader(f))
    # one regularity x one rate x one seed: corrupt, probe, two originals, discover, three runs and REM (ETD)
    assert sorted(s["kind"] for s in stages) == sorted(["corrupt", "probe", "pretrain", "pretrain", "discover"]
                                                        + ["unlearn"] * 4)
    assert all(s["status"] == "ok" and float(s["seconds"]) > 0 for s in stages)
    assert max(int(s["running_at_start"]) for s in stages) == 2  # two stages ran at once
    with open(tmp_path / "out" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["run"] for r in rows) == ["none", "rem", "rem_etd", "retrain"]
    assert all(0 <= float(r["healed"]) <= 1 and 0 <= float(r["utility"]) <= 1 for r in rows)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "pretrain standard" in summary and "rem_etd" in summary
    # the stage times price the paper's grid: each stage's share of the card, from when it started and ended
    priced = subprocess.run([sys.executable, str(ROOT / "bench" / "grid_time.py"), "out/stage_times.csv",
                             "--measured", "out/params.yaml", "--target",
                             str(ROOT / "pipelines" / "cifar10-resnet9" / "params.yaml"), "--train-images", "360",
                             "49000"], cwd=tmp_path, capture_output=True, text=True)
    assert priced.returncode == 0, priced.stderr
    assert "2628 stages" in priced.stdout and "share of the card" in priced.stdout


def test_a_spent_budget_starts_nothing_and_says_so(tmp_path, paper_params):
    r = _run(tmp_path, "--params", str(paper_params), "--budget", "0", "--out", "out")
    assert r.returncode == 0, r.stderr[-3000:]
    with open(tmp_path / "out" / "stage_times.csv") as f:
        stages = list(csv.DictReader(f))
    assert len(stages) == 9 and {s["status"] for s in stages} == {"not started: budget spent"}
    assert not (tmp_path / "out" / "results.csv").exists()  # no run finished: no rows to pool
    assert not (tmp_path / "out" / "work" / "runs").exists()


def test_the_gpu_script_runs_its_steps_and_leaves_its_files_in_out(tmp_path, paper_params):
    """bench/gpu_paper.sh's plumbing on the CPU (each device call costs minutes of a short lease): no wheels
    carried, its steps in order, the runner's files in $OUT, the log beside them."""
    import os
    import shutil

    data = tmp_path / "fmnist"
    shutil.copytree(paper_params.parent / "data", data)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "DATA": str(data), "PARAMS": str(paper_params),
           "WORK": str(tmp_path / "work"), "SLICE": "--budget 0", "WHEELS": str(tmp_path / "no-wheels"),
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           "THROUGHPUT": "--train-size 300 --width 4 --batch-size 32 --steps 2 --warmup 1 --device cpu"}
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_paper.sh")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    log = (tmp_path / "out" / "log.txt").read_text()
    steps = ["== card", "== CUDA path", "== throughput", "== pipelines/fashion-mnist-paper", "== the paper's",
             "== done"]
    assert [log.index(s) for s in steps] == sorted(log.index(s) for s in steps)
    assert "images/s" in log and "9 stages" in log
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"log.txt", "stage_times.csv", "params.yaml",
                                                             "summary.txt"}  # and results.csv when runs finish
    missing = subprocess.run(["bash", str(ROOT / "bench" / "gpu_paper.sh")], capture_output=True, text=True,
                             env={**env, "DATA": str(tmp_path / "nowhere")})
    assert missing.returncode == 2 and "gpu_prepare.sh" in missing.stderr


STAGE_TIMES = """kind,run,variant,regularity,rate,seed,seconds,wall_seconds,running_at_start,status
pretrain,,standard,high,,0,100,101,2,ok
pretrain,,etd,high,,0,120,121,2,ok
unlearn,retrain,standard,high,0.1,0,100,101,4,ok
unlearn,rem,standard,high,0.1,0,60,61,4,ok
unlearn,npo,standard,high,0.1,0,20,21,4,ok
unlearn,scrub,standard,high,0.1,0,,,4,failed: out of memory
"""


def test_grid_time_prices_every_stage_of_the_target_grid(tmp_path):
    """bench/grid_time.py: the paper's CIFAR-10 grid priced from a slice's stage times, every stage kind
    counted, each unmeasured kind priced as its nearest measured one and named so."""
    (tmp_path / "st.csv").write_text(STAGE_TIMES)
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "grid_time.py"), str(tmp_path / "st.csv"),
                        "--measured", str(ROOT / "pipelines" / "fashion-mnist-paper" / "params.yaml"),
                        "--target", str(ROOT / "pipelines" / "cifar10-resnet9" / "params.yaml"),
                        "--train-images", "50000", "50000"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    table = {}
    for ln in r.stdout.splitlines()[3:-1]:
        n, each, basis = ln[28:].split(maxsplit=2)
        table[ln[:28].strip()] = (int(n), float(each), basis)
    # 3 regularities x 3 seeds originals per variant; 10 rates of them per run: 24 runs and 5 ETD runs
    assert len(table) == 2 + 24 + 5 and "2628 stages" in r.stdout.splitlines()[-1]
    assert table["pretrain standard"][0] == 9 and table["rem (etd)"][0] == 90
    # no started/ended columns: a stage's card time is its seconds over the 4 that ran at once
    scale_p, scale_u = 41 / 35, 10 / 9  # the same images: the recipes' epochs
    assert table["retrain"][1] == pytest.approx(100 / 4 * scale_p, abs=0.06)
    assert table["rem"][1] == pytest.approx(60 / 4 * scale_u, abs=0.06) and table["rem"][2] == "measured"
    assert table["npo (etd)"][1] == pytest.approx(20 / 4 * scale_u, abs=0.06) and "as npo" in table["npo (etd)"][2]
    assert table["scrub"][1] == pytest.approx(40 / 4 * scale_u, abs=0.06) and "mean of the measured" in table["scrub"][2]
    total = sum(n * each for n, each, _ in table.values())
    hours = float(r.stdout.splitlines()[-1].split(":")[1].split()[0])
    assert hours == pytest.approx(total / 3600, abs=0.02)


def test_overlapping_stages_split_the_card():
    import importlib.util

    spec = importlib.util.spec_from_file_location("grid_time", ROOT / "bench" / "grid_time.py")
    grid_time = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid_time)
    rows = [{"started": "0", "ended": "10"}, {"started": "5", "ended": "15"}, {"started": "", "ended": ""},
            {"started": "20", "ended": "24"}]
    # 0-5 alone, 5-10 shared by two, 10-15 alone; the last alone; one row without times
    assert grid_time.card_shares(rows) == [7.5, 7.5, None, 4.0]
