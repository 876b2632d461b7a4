"""The DVC pipeline end to end in a temporary git repository: caching, early cut-off, determinism, experiments."""

from __future__ import annotations

import copy
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
    # the report says how finely Healed tells runs apart, from the manifests and the runs' D_f
    n = len(json.loads((repo.path / "artifacts" / "corrupt" / "high-0.json").read_text())["indices"])
    assert f"- resolution: |D_c| = {n}: one image moves Healed by {100 / n:.2f} points" in (
        repo.path / "reports" / "results.md").read_text()


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
    assert ran == {"check", "discover@high-0.2-0", "unlearn@none-high-0.2-0", "unlearn@finetune-high-0.2-0",
                   "unlearn_etd@none-high-0.2-0", "evaluate"}
    metrics = json.loads((repo.path / "metrics.json").read_text())
    assert "r20" in metrics["cells"]["finetune"]["high"]


def test_same_params_same_bytes(repo):
    """A forced rerun gives byte-identical outputs and the same metrics (DVC's cut-off works): one stage of each
    kind that trains or scores (both pretraining variants, an unlearn cell of each, evaluate), run again."""
    stages = ["pretrain@high-0-standard", "pretrain@high-0-etd", "unlearn@finetune-high-1.0-0",
              "unlearn_etd@none-high-0.5-0", "probe@high-0", "evaluate"]
    files = [repo.path / f for f in ("artifacts/pretrain/high-0-standard/model.safetensors",
                                      "artifacts/pretrain/high-0-etd/model.safetensors",
                                      "runs/finetune-high-1.0-0/model.safetensors",
                                      "runs/etd-none-high-0.5-0/model.safetensors", "artifacts/probe/high-0.json")]
    # the records, logs and table carry the run's own seconds and peak memory: every other byte is the same
    timed = [repo.path / f for f in ("artifacts/pretrain/high-0-standard/log.json",
                                      "artifacts/pretrain/high-0-etd/log.json",
                                      "runs/finetune-high-1.0-0/record.json", "runs/etd-none-high-0.5-0/record.json",
                                      "reports/results.csv")]
    before = {f: f.read_bytes() for f in files}
    before_timed = {f: _untimed(f) for f in timed}
    metrics = (repo.path / "metrics.json").read_text()
    ran = repo.ran_stages(repo.run("dvc", "repro", "-f", "-s", *stages))
    assert sorted(ran) == sorted(stages)
    for f in files:
        assert f.read_bytes() == before[f], f
    for f in timed:
        assert _untimed(f) == before_timed[f], f
    assert (repo.path / "metrics.json").read_text() == metrics


def _is_cost(key: str) -> bool:
    return key.endswith("seconds") or key == "peak_memory_mb"


def _untimed(path):
    """A JSON record or log, or results.csv, with the fields that measure the run's own cost (wall seconds, peak
    memory) blanked: the only fields a rerun on the same machine may change."""
    import csv
    import io
    import json

    def blank(node):
        if isinstance(node, dict):
            return {k: None if _is_cost(k) else blank(v) for k, v in node.items()}
        if isinstance(node, list):
            return [blank(v) for v in node]
        return node

    if path.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        assert rows and any(_is_cost(k) for k in rows[0])
        return [blank(r) for r in rows]
    text = path.read_text()
    assert "seconds" in text
    return blank(json.loads(text))


def _outputs(repo) -> dict:
    files = [f for pattern in ("artifacts/corrupt/*.json", "artifacts/discover/*.json", "artifacts/pretrain/**/*",
                               "runs/**/*") for f in repo.path.glob(pattern) if f.is_file()]
    return {f: f.read_bytes() for f in files}


def test_bad_input_under_dvc_repro_removes_no_output(repo):
    """The `check` stage runs first and refuses what a stage would refuse, so DVC stops before it removes the
    outputs of the stages the change makes stale."""
    before = _outputs(repo)
    assert len(before) >= 20
    good = repo.params()
    bad = copy.deepcopy(good)
    bad["corruption"]["count"] = 100000  # valid YAML and schema, more than digits' training set
    repo.set_params(bad)
    res = repo.run("dvc", "repro", check=False)
    assert res.returncode != 0
    assert "corruption.count" in res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert repo.ran_stages(res) == ["check"]
    assert _outputs(repo) == before  # every manifest, checkpoint and run as it was
    repo.set_params(good)
    assert set(repo.ran_stages(repo.run("dvc", "repro"))) <= {"check"}
    assert _outputs(repo) == before


@pytest.mark.slow
def test_the_readme_example_runs_under_dvc_repro(repo):
    """README: a new entry under `methods:` and in the grid runs with plain `dvc repro`, nothing to sync first;
    only its own cells (and the scoring) run."""
    good = repo.params()
    p = copy.deepcopy(good)
    p["methods"]["rem_keep05"] = {"method": "rem", "keep": 0.5}
    p["grid"]["methods"].append("rem_keep05")
    repo.set_params(p)
    ran = set(repo.ran_stages(repo.run("dvc", "repro")))
    rates = p["grid"]["discovery_rates"]
    assert ran == {"check", "evaluate"} | {f"unlearn@rem_keep05-high-{r}-0" for r in rates}
    assert "rem_keep05" in json.loads((repo.path / "metrics.json").read_text())["summary"]
    assert (repo.path / "artifacts" / "code" / "rem_keep05.json").is_file()
    repo.set_params(good)
    ran = set(repo.ran_stages(repo.run("dvc", "repro")))
    assert ran == {"check", "evaluate"}
    assert not (repo.path / "artifacts" / "code" / "rem_keep05.json").exists()


def test_dry_and_refused_params_leave_the_worktree_as_it_was(repo):
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-q", "-m", "state", check=False)
    before = repo.run("git", "status", "--porcelain").stdout
    res = repo.run("remflow", "run", "--dry")
    assert res.stdout.strip() == "", res.stdout  # nothing changed, nothing listed
    assert repo.run("git", "status", "--porcelain").stdout == before
    params = repo.path / "params.yaml"
    text = params.read_text()
    params.write_text("")
    for args in (["run"], ["run", "--dry"], ["check"]):
        res = repo.run("remflow", *args, check=False)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "empty" in res.stderr and "Traceback" not in res.stderr
    # dataset files that are not there: refused before any stage's outputs are removed
    outputs = _outputs(repo)
    params.write_text(text.replace("dataset: digits", f"dataset: fashion_mnist\n  root: {repo.path / 'nowhere'}"))
    assert "fashion_mnist" in params.read_text()
    for args in (["run"], ["run", "--dry"], ["check"]):
        res = repo.run("remflow", *args, check=False)
        assert res.returncode == 2 and "nowhere" in res.stderr, res.stdout + res.stderr
    assert _outputs(repo) == outputs
    params.write_text(text)
    assert repo.run("git", "status", "--porcelain").stdout == before


@pytest.mark.slow
def test_recheck_records_a_refactor_and_refuses_a_change_of_results(repo):
    """Editing the core as a normal step: a refactor of data/task.py (every pretrain and unlearn stage reaches
    it) is re-run on a sample, compared byte for byte and recorded; a change that moves an output is refused."""
    task = repo.path / "remflow" / "data" / "task.py"
    text = task.read_text()
    # a comment re-runs nothing: the code fingerprints hash syntax trees (only `check` runs, to see that)
    task.write_text(text + "\n# a comment\n")
    assert repo.ran_stages(repo.run("dvc", "repro")) == ["check"]
    anchor = '    """The task of one cell: channels_last inputs on CUDA, the params\' augmentation."""\n'
    assert anchor in text
    task.write_text(text.replace(anchor, anchor + "    unused = None  # a refactor that changes no output\n"))
    # a mistyped stage name is refused before the check stage records the new code: nothing is written
    code = {f: f.read_bytes() for f in (repo.path / "artifacts" / "code").iterdir()}
    res = repo.run("remflow", "recheck", "nosuch@stage", check=False)
    assert res.returncode == 2 and "no such stage" in res.stderr, res.stdout + res.stderr
    assert {f: f.read_bytes() for f in (repo.path / "artifacts" / "code").iterdir()} == code
    repo.run("remflow", "check", "--record", "artifacts/code")
    assert "changed deps" in repo.run("dvc", "status").stdout
    res = repo.run("remflow", "recheck", "--record")
    assert "same outputs" in res.stdout and "differs" not in res.stdout, res.stdout + res.stderr
    assert "pretrain@high-0-standard" in res.stdout and "unlearn@finetune-" in res.stdout
    # only stages whose own code changed are sampled: the check stage that recorded the new code in place does not
    # make every stage below it "changed" (the corrupt stage's command does not reach data/task.py)
    assert "artifacts/corrupt/" not in res.stdout, res.stdout
    assert "up to date" in repo.run("dvc", "status").stdout
    assert repo.ran_stages(repo.run("dvc", "repro")) == []
    # an edit that changes results: the finetune cells' learning rate
    good = repo.params()
    p = copy.deepcopy(good)
    p["methods"]["finetune"] = {"lr": 0.5}
    repo.set_params(p)
    lock = (repo.path / "dvc.lock").read_text()
    res = repo.run("remflow", "recheck", "--record", check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "differs" in res.stdout and "nothing was recorded" in res.stdout
    assert (repo.path / "dvc.lock").read_text() == lock
    repo.set_params(good)


@pytest.mark.slow
def test_remflow_run_takes_from_the_run_cache_what_dvc_repro_would(repo):
    """unlearn.epochs 2 -> 1 -> 2: the third run re-trains nothing (DVC's run cache holds every stage)."""
    good = repo.params()
    p = copy.deepcopy(good)
    p["unlearn"]["epochs"] = 1
    repo.set_params(p)
    first = repo.run("remflow", "run")
    assert "Utility×Healed" in first.stdout  # the evaluate stage's tables, as `dvc repro` shows them
    repo.set_params(good)
    back = repo.run("remflow", "run")
    lines = [line for line in back.stderr.splitlines() if line.startswith("[") and "unlearn" in line]
    assert lines and all("restored from DVC's run cache" in line for line in lines), back.stderr
    assert "up to date" in repo.run("dvc", "status").stdout


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
