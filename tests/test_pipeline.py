"""The DVC pipeline end to end in a temporary git repository: caching, early cut-off, determinism, experiments."""

from __future__ import annotations

import json

import pytest

from conftest import TINY, make_dvc_repo, merge


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = make_dvc_repo(tmp_path_factory.mktemp("dvc") / "repo", TINY)
    first = repo.run("dvc", "repro")
    repo.first = first
    return repo


def test_repro_runs_every_stage_and_writes_results(repo):
    ran = repo.ran_stages(repo.first)
    assert "corrupt@high-0" in ran and "pretrain@high-0-standard" in ran
    assert {"unlearn@none-high-0.5-0", "unlearn@finetune-high-1.0-0", "evaluate"} <= set(ran)
    assert {"pretrain@high-0-etd", "unlearn_etd@none-high-0.5-0"} <= set(ran)
    metrics = json.loads((repo.path / "metrics.json").read_text())
    assert set(metrics["summary"]) == {"none", "finetune", "none_etd"}
    assert set(metrics["summary"]["none"]) == {"healed", "utility", "score"}
    assert set(metrics["cells"]["finetune"]["high"]) == {"r50", "r100"}
    assert all("." not in k for k in json.dumps(metrics["cells"]).split('"')[1::2])
    header = (repo.path / "reports" / "results.csv").read_text().splitlines()[0].split(",")
    for col in ("run", "method", "regularity", "discovery_rate", "seed", "healed", "utility", "score", "healed_test",
                "forget_acc", "unlearn_seconds", "peak_memory_mb", "params_deployed", "params_peak"):
        assert col in header
    assert (repo.path / "reports" / "heatmaps" / "finetune-score.png").is_file()
    record = json.loads((repo.path / "runs" / "finetune-high-1.0-0" / "record.json").read_text())
    assert record["unlearn_seconds"] > 0 and record["params_deployed"] > 0


def test_dvc_plots_show_returns_the_declared_plots(repo):
    shown = json.loads(repo.run("dvc", "plots", "show", "--json").stdout)
    text = json.dumps(shown)
    assert "reports/results.csv" in text  # the Vega-Lite heatmap of the per-run CSV
    assert "remflow_heatmap" in text or "utility_x_healed" in text
    assert "finetune-score.png" in text and "best-score.png" in text  # the PNG heatmaps as image plots


def test_second_repro_runs_nothing(repo):
    res = repo.run("dvc", "repro")
    assert repo.ran_stages(res) == []


def test_adding_a_discovery_rate_runs_only_the_new_cells(repo):
    p = repo.params()
    p["grid"]["discovery_rates"].append(0.2)
    repo.set_params(p)
    ran = set(repo.ran_stages(repo.run("dvc", "repro")))
    assert ran == {"discover@high-0.2-0", "unlearn@none-high-0.2-0", "unlearn@finetune-high-0.2-0",
                   "unlearn_etd@none-high-0.2-0", "evaluate"}
    metrics = json.loads((repo.path / "metrics.json").read_text())
    assert "r20" in metrics["cells"]["finetune"]["high"]


def test_same_params_same_bytes(repo):
    """A forced rerun of every stage gives byte-identical checkpoints and the same metrics (DVC's cut-off works)."""
    files = sorted(repo.path.glob("artifacts/**/*.safetensors")) + sorted(repo.path.glob("runs/*/model.safetensors"))
    before = {f: f.read_bytes() for f in files}
    metrics = (repo.path / "metrics.json").read_text()
    repo.run("dvc", "repro", "-f")
    assert len(files) >= 10
    for f in files:
        assert f.read_bytes() == before[f], f
    assert (repo.path / "metrics.json").read_text() == metrics


@pytest.mark.slow
def test_experiment_with_a_changed_param_shows_in_exp_show(repo):
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-q", "-m", "results")
    repo.run("dvc", "exp", "run", "-S", "unlearn.epochs=3", "-n", "longer")
    shown = json.loads(repo.run("dvc", "exp", "show", "--json").stdout)
    flat = json.dumps(shown)
    assert "longer" in flat and "unlearn" in flat
    exp = [e for rev in shown for e in (rev.get("experiments") or []) for r in e.get("revs", []) if r.get("name") == "longer"]
    assert exp, flat[:2000]
    data = exp[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["unlearn"]["epochs"] == 3
    assert "summary" in data["metrics"]["metrics.json"]["data"]
    compared = repo.run("remflow", "compare", "--method", "finetune")
    assert "longer" in compared.stdout and "unlearn.epochs" in compared.stdout and "finetune score" in compared.stdout


@pytest.mark.slow
def test_queued_experiments_run_in_parallel_workers(repo):
    import time

    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-q", "-m", "before queue", check=False)
    repo.run("dvc", "exp", "run", "--queue", "-S", "grid.seeds=[1]", "-n", "seed1")
    repo.run("dvc", "exp", "run", "--queue", "-S", "unlearn.lr=0.02", "-n", "lr02")
    repo.run("dvc", "queue", "start", "-j", "2")
    deadline = time.time() + 600
    while time.time() < deadline:
        status = repo.run("dvc", "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert "Failed" not in status, status + repo.run("dvc", "queue", "logs", "seed1", check=False).stdout
    repo.run("dvc", "queue", "stop", check=False)
    shown = json.dumps(json.loads(repo.run("dvc", "exp", "show", "--json").stdout))
    assert '"seed1"' in shown and '"lr02"' in shown
