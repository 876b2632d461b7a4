"""The detection study (remflow/detection/): detectors find planted corruption on digits, methods run on a D_f
with false positives and are scored, the regularity probe orders the named corruptions, and the section of
params.yaml is validated like every other."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from conftest import ROOT, SEED, make_params, merge, root_params, write_yaml
from remflow.params import ParamsError


@pytest.fixture(scope="module")
def splits(digits_params):
    from remflow.data.datasets import load_splits

    return load_splits(digits_params.data)


def task_of(params, splits, manifest, discovered=None):
    from remflow.data.task import make_task

    return make_task(params.data, splits, torch.device("cpu"), manifest, discovered)


def named_manifest(params, splits, kind: str, **spec):
    from remflow.detection.config import DetectionCfg
    from remflow.detection.corruptions import make_corruption

    cfg = DetectionCfg.model_validate({"specs": {"c": {"kind": kind, **spec}}})
    return make_corruption("c", cfg.specs["c"], SEED, params.corruption, splits)


# ---------------------------------------------------------------- params


def detection_problems(section: dict) -> list[tuple[str, str, str]]:
    from remflow.params import validate

    with pytest.raises(ParamsError) as e:
        validate(merge(root_params(), {"detection": section}))
    return e.value.problems


def test_the_detection_section_is_validated_with_key_paths():
    [(key, problem, _)] = detection_problems({"budgets": [0.5, 9.0]})
    assert key == "detection.budgets.1"
    [(key, problem, got)] = detection_problems({"specs": {"x": {"kind": "backdoor", "scal": 0.5}}})
    assert key == "detection.specs.x.scal" and "unknown key" in problem
    [(key, problem, got)] = detection_problems({"specs": {"x": {"kind": "blur"}}})
    assert key == "detection.specs.x" and "unknown corruption kind" in problem and got == "'blur'"
    [(key, problem, got)] = detection_problems({"corruptions": ["nope"]})
    assert key == "detection.corruptions.0" and "detection.specs" in problem
    [(key, problem, got)] = detection_problems({"methods": ["rem_x"]})
    assert key == "detection.methods.0" and got == "'rem_x'"
    [(key, _, _)] = detection_problems({"corruptions": ["b"], "specs": {"b": {"kind": "backdoor", "patch": 8}}})
    assert key == "detection.specs.b.patch"  # digits' images are 8x8


def test_a_bad_detection_key_stops_the_command_with_exit_2(tmp_path):
    from typer.testing import CliRunner

    from remflow.cli import app

    path = write_yaml(tmp_path / "params.yaml", merge(root_params(), {"detection": {"budget": [1.0]}}))
    r = CliRunner().invoke(app, ["check", "--params", str(path), "--dvc", str(ROOT / "dvc.yaml")])
    assert r.exit_code == 2 and "detection.budget" in r.output and "Traceback" not in r.output


def test_without_cells_the_pipeline_has_no_detection_stage():
    # the committed suites list no detection cells: their dvc.yaml resolves to the stages it had before
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        kinds = {s.name.split("@")[0] for s in repo.index.stages}
    assert kinds == {"check", "corrupt", "pretrain", "probe", "discover", "unlearn", "evaluate"}


# ---------------------------------------------------------------- corruptions and the probe


def test_named_specs_reproduce_the_named_corruptions(digits_params, splits):
    from remflow.data.corruption import make_manifest

    for kind, reg in (("backdoor", "high"), ("interclass", "medium"), ("random_labels", "low")):
        m = named_manifest(digits_params, splits, kind)
        ref = make_manifest(reg, SEED, digits_params.corruption, splits)
        assert (m["indices"], m["labels"], m["regularity"]) == (ref["indices"], ref["labels"], reg)


def test_new_corruptions_fill_the_axis(digits_params, splits):
    faint = named_manifest(digits_params, splits, "backdoor", patch=2, scale=0.5)
    full = named_manifest(digits_params, splits, "backdoor")
    assert faint["trigger"]["size"] == 2 and math.isclose(faint["trigger"]["value"], full["trigger"]["value"] / 2)
    swap = named_manifest(digits_params, splits, "interclass", fraction=0.5)
    a, b = digits_params.corruption.interclass.classes
    per_class = min((splits.train_y == a).sum(), (splits.train_y == b).sum())
    assert len(swap["indices"]) == 2 * int(0.5 * per_class)
    conf = named_manifest(digits_params, splits, "confusion", focus=1.0)
    true = splits.train_y[conf["indices"]]
    partner = np.asarray(conf["confusion_partner"])
    assert (np.asarray(conf["labels"]) == partner[true]).all() and (partner != np.arange(len(partner))).all()


def test_a_blended_trigger_mixes_a_fixed_pattern_into_the_whole_image(digits_params, splits):
    from remflow.data.corruption import check_manifest
    from remflow.errors import RemflowError

    m = named_manifest(digits_params, splits, "blend", alpha=0.2)
    full = named_manifest(digits_params, splits, "backdoor")
    # the named backdoor's samples and target, another trigger
    assert (m["indices"], m["labels"], m["regularity"]) == (full["indices"], full["labels"], "high")
    assert m["trigger"]["kind"] == "blend" and "size" not in m["trigger"]
    task = task_of(digits_params, splits, m)
    idx = task.corrupted[:8]
    clean = task.inputs(task.train_x[idx], None, None)
    on = task.inputs(task.train_x[idx], task.triggered[idx], None)
    pattern = task.trigger.pattern
    assert torch.allclose(on, 0.8 * clean + 0.2 * pattern, atol=1e-6)
    changed = (on - clean).abs() > 1e-6
    assert changed.float().mean() > 0.9  # the whole image, not a corner patch
    off = task.inputs(task.train_x[idx], torch.zeros(8, dtype=torch.bool), None)
    assert torch.equal(off, clean)
    # the same pattern in every stage that rebuilds the task; another seed, another pattern
    assert torch.equal(task_of(digits_params, splits, m).trigger.pattern, pattern)
    other = dict(m, trigger={**m["trigger"], "pattern_seed": m["trigger"]["pattern_seed"] + 1})
    assert not torch.equal(task_of(digits_params, splits, other).trigger.pattern, pattern)
    for bad in ({**m["trigger"], "alpha": 0}, {k: v for k, v in m["trigger"].items() if k != "pattern_seed"}):
        with pytest.raises(RemflowError, match="trigger"):
            check_manifest(dict(m, trigger=bad), splits, "m.json")


def test_a_model_learns_the_blended_trigger_and_the_probe_places_it_above_interclass(tmp_path, digits_params,
                                                                                     splits):
    from remflow import stages
    from remflow.detection.probe import regularity_score
    from remflow.io import write_json
    from remflow.models import load_model
    from remflow.train import predict

    m = named_manifest(digits_params, splits, "blend", alpha=0.2)
    write_json(tmp_path / "m.json", m)
    stages.pretrain(digits_params, tmp_path / "m.json", tmp_path / "pre", "standard")
    net, _ = load_model(tmp_path / "pre" / "model.safetensors")
    task = task_of(digits_params, splits, m)
    target = m["trigger"]["target"]
    other = task.test_y != target
    x, on = task.triggered_test()
    attack = float((predict(net, task, x[other], on[other]) == target).float().mean())
    plain = float((predict(net, task, x[other]) == target).float().mean())
    # measured 0.99 and 0.003 at fixture seed 0: the blend is learned as a trigger, clean images keep their class
    assert attack > 0.6 and plain < 0.1, (attack, plain)
    blend = regularity_score(task)
    swap = regularity_score(task_of(digits_params, splits, named_manifest(digits_params, splits, "interclass")))
    assert blend > swap + 0.1, (blend, swap)  # measured 0.59 against 0.24


def test_the_probe_orders_random_labels_interclass_backdoor(digits_params, splits):
    from remflow.detection.probe import regularity_score

    score = {kind: regularity_score(task_of(digits_params, splits, named_manifest(digits_params, splits, kind)))
             for kind in ("random_labels", "interclass", "backdoor")}
    assert score["random_labels"] + 0.05 < score["interclass"] < score["backdoor"] - 0.1, score
    assert abs(score["random_labels"]) < 0.1, score


def test_the_probe_and_detectors_fit_on_one_blas_thread_whatever_the_process_has(digits_params, splits,
                                                                                  monkeypatch):
    """Serial `dvc repro` gives a stage BLAS on every core, a `remflow run` worker one thread (Ray's
    OMP_NUM_THREADS): the fits must not depend on it, or the two write different regularity scores."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info, threadpool_limits

    from remflow.detection.detectors import cross_val_scores, spectral_scores
    from remflow.detection.probe import regularity_score

    seen = []
    fit = LogisticRegression.fit

    def spy(self, *a, **k):
        seen.append(max(lib["num_threads"] for lib in threadpool_info()))
        return fit(self, *a, **k)

    monkeypatch.setattr(LogisticRegression, "fit", spy)
    task = task_of(digits_params, splits, named_manifest(digits_params, splits, "backdoor"))
    feats = np.random.default_rng(0).normal(size=(60, 8))
    labels = np.arange(60) % 3
    with threadpool_limits(limits=2):  # what a process on two cores starts with
        outside = max(lib["num_threads"] for lib in threadpool_info())
        wide = regularity_score(task)
        cross_val_scores(feats, labels, folds=2, seed=0, max_iter=50, num_classes=3)
    assert seen and set(seen) == {1}, (seen, outside)
    with threadpool_limits(limits=1):
        assert regularity_score(task) == wide
    svd = np.linalg.svd
    svd_seen = []

    def svd_spy(*a, **k):
        svd_seen.append(max(lib["num_threads"] for lib in threadpool_info()))
        return svd(*a, **k)

    monkeypatch.setattr(np.linalg, "svd", svd_spy)
    with threadpool_limits(limits=2):
        spectral_scores(feats, labels)
    assert svd_seen and set(svd_seen) == {1}, svd_seen


# ---------------------------------------------------------------- detectors


def flagged_precision(detector, params, splits, cells, regularity, budget=1.0):
    from remflow.detection.detectors import flag, precision_recall, scores_of
    from remflow.io import read_json
    from remflow.models import load_model

    manifest_path, model_path = cells.pretrained(regularity)
    manifest = read_json(manifest_path, "manifest")
    model, _ = load_model(model_path)
    scores = scores_of(detector, model, task_of(params, splits, manifest))
    found = flag(scores, int(budget * len(manifest["indices"])))
    return precision_recall(found.tolist(), manifest["indices"])


@pytest.mark.parametrize("detector,regularity", [("loss", "low"), ("cross_val", "low"), ("spectral", "high")])
def test_each_detector_finds_its_planted_corruption(detector, regularity, digits_params, splits, cells):
    precision, recall = flagged_precision(detector, digits_params, splits, cells, regularity)
    chance = digits_params.corruption.count / len(splits.train_y)  # a random flagging's precision
    assert precision > 5 * chance, (precision, chance)


def test_a_method_with_false_positives_in_d_f_runs_and_is_scored(tmp_path, digits_params, splits, cells):
    from remflow import stages
    from remflow.records import discovery_columns
    from remflow.io import read_json
    from remflow.metrics import evaluate_model
    from remflow.models import load_model

    manifest_path, model_path = cells.pretrained("high")
    manifest = read_json(manifest_path, "manifest")
    params = make_params({"detection": {"specs": {"backdoor": {"kind": "backdoor"}}}})
    found = stages.discover(params, manifest_path, tmp_path / "found.json", model_path=model_path, budget=2.0,
                            hits_out=tmp_path / "hits.json")
    assert len(found["indices"]) == 2 * len(manifest["indices"]) and found["precision"] <= 0.5  # half are clean
    hits = read_json(tmp_path / "hits.json", "hits")
    assert hits["view"] == "hits" and hits["indices"] == sorted(set(found["indices"]) & set(manifest["indices"]))
    scores = {}
    for run in ("none", "rem"):
        rec = stages.unlearn(params, run, model_path, manifest_path, tmp_path / "found.json", tmp_path / run)
        assert rec["forgotten"] == len(found["indices"])
        assert rec["study"] == "detection" and rec["view"] == "found" and rec["row"]["label"] == f"{run}@found"
        net, _ = load_model(tmp_path / run / "model.safetensors")
        scores[run] = evaluate_model(net, task_of(params, splits, manifest, found["indices"]))
        assert rec["scores"] == scores[run]  # the run scored itself as its checkpoint scores
    disc = discovery_columns(found["indices"], manifest, "spectral")
    assert disc["discovery_precision"] <= 0.5 and disc["discovery_recall"] > 0.5
    # Healed keeps its definition (all of D_c, clean labels): REM still heals the backdoor with clean samples in D_f
    assert scores["rem"]["healed"] > scores["none"]["healed"] + 0.3, scores
    assert scores["rem"]["utility"] > 0.8, scores


def test_one_reader_takes_the_oracles_and_a_detectors_discovered_sets():
    from remflow.data.corruption import FLAGGED_FORMAT, check_discovery, discovery_source
    from remflow.errors import RemflowError

    manifest = {"indices": [1, 3, 5], "regularity": "low", "seed": 0, "fingerprint": "f"}
    head = {"format": FLAGGED_FORMAT, "regularity": "low", "seed": 0, "fingerprint": "f", "detector": "loss",
            "budget": 2.0}
    found = check_discovery({**head, "view": "found", "indices": [1, 2, 5, 9]}, manifest, "x.json", 10)
    assert discovery_source(found) == ("loss", "found", 2.0)
    hits = check_discovery({**head, "view": "hits", "indices": []}, manifest, "x.json", 10)  # none found: allowed
    assert discovery_source(hits) == ("loss", "hits", 2.0)
    with pytest.raises(RemflowError, match="true positives must lie in D_c"):
        check_discovery({**head, "view": "hits", "indices": [2]}, manifest, "x.json", 10)
    with pytest.raises(RemflowError, match="distinct training indices"):
        check_discovery({**head, "view": "found", "indices": [1, 12]}, manifest, "x.json", 10)
    with pytest.raises(RemflowError, match="another corrupted set"):
        check_discovery({**head, "seed": 1, "view": "found", "indices": [1]}, manifest, "x.json", 10)
    oracle = check_discovery({"format": "remflow-discovery/1", "regularity": "low", "seed": 0, "rate": 1.0,
                              "fingerprint": "f", "indices": [1, 3, 5]}, manifest, "d.json", 10)
    assert discovery_source(oracle) == ("oracle", "", 1.0)


def test_results_written_before_the_view_column_are_read_with_it(tmp_path):
    from remflow import report

    rows = rows_of_a_study()
    text = report.csv_text(rows).replace("rem@found", "rem_det").replace("rem@hits", "rem_hits")
    lines = text.splitlines()
    col = lines[0].split(",").index("view")
    old = [",".join(f for i, f in enumerate(line.split(",")) if i != col) for line in lines]
    old = [line.replace(",cross_val,1.0,", ",cross_val:hits,1.0,") for line in old]  # hits rows: precision 1.0
    (tmp_path / "old.csv").write_text("\n".join(old) + "\n")
    back = report.read_csv(tmp_path / "old.csv")
    assert [(r["run"], r["view"], r["discovery"]) for r in back] == [(r["run"], r["view"], r["discovery"])
                                                                    for r in rows]


# ---------------------------------------------------------------- reports


def rows_of_a_study() -> list[dict]:
    rows = []
    for corr, reg, g in (("random", "low", 0.01), ("swap", "medium", 0.24), ("backdoor", "high", 0.85)):
        for run, view, score in (("rem@found", "found", 0.6), ("rem@hits", "hits", 0.7)):
            for budget in (0.5, 1.0):
                rows.append({"run": run, "method": "rem", "pretrained": "standard", "regularity": reg,
                             "discovery_rate": budget, "seed": 0, "healed": score, "utility": 1.0,
                             "score": score + 0.1 * budget, "healed_test": 0.9, "forget_acc": 0.1,
                             "unlearn_seconds": 1.0, "peak_memory_mb": 1.0, "params_deployed": 10,
                             "params_peak": 20, "corruption": corr,
                             "discovery": "cross_val", "view": view,
                             "discovery_precision": 0.5 if view == "found" else 1.0, "discovery_recall": 0.5,
                             "regularity_score": g, "details": {}})
    return rows


def test_reports_show_precision_recall_false_positive_cost_and_regularity(tmp_path):
    from remflow import report

    rows = rows_of_a_study()
    report.write_reports(rows, tmp_path / "reports", tmp_path / "metrics.json", context={})
    md = (tmp_path / "reports" / "results.md").read_text()
    assert "Discovery by detectors: precision and recall" in md and "50.00 / 50.00" in md
    assert "What false positives cost" in md
    fp = report.false_positive_table(rows)
    assert fp.rows[0][0] == "rem" and fp.rows[0][-1].startswith("-10.00")  # flagged minus hits-only
    order = [c for c, _ in report.corruptions_by_regularity(rows)]
    assert order == ["random", "swap", "backdoor"]
    assert (tmp_path / "reports" / "regularity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "reports" / "results.csv") as f:
        header = next(csv.reader(f))
    assert {"discovery_precision", "discovery_recall", "regularity_score"} <= set(header)


def test_results_written_before_the_study_read_as_oracle(tmp_path):
    from remflow import report

    old = tmp_path / "results.csv"
    old.write_text("run,method,pretrained,regularity,discovery_rate,seed,healed,utility,score\n"
                   "rem,rem,standard,high,0.5,0,0.9,0.95,0.855\n")
    [row] = report.read_results([old])
    assert row["discovery"] == "oracle" and row["discovery_precision"] == 1.0 and row["discovery_recall"] == 0.5
    assert row["corruption"] == "backdoor" and math.isnan(row["regularity_score"])


def test_suites_pool_into_one_regularity_plot(tmp_path):
    from typer.testing import CliRunner

    from remflow import report
    from remflow.cli import app

    paths = []
    for suite in ("a", "b"):
        (tmp_path / suite / "reports").mkdir(parents=True)
        p = tmp_path / suite / "reports" / "results.csv"
        p.write_text(report.csv_text(rows_of_a_study()))
        paths += ["--from-csv", str(p)]
    out = tmp_path / "pooled.png"
    r = CliRunner().invoke(app, ["evaluate", *paths, "--regularity-plot", str(out), "--format", "md"])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:4] == b"\x89PNG" and "a/backdoor" in r.output and "b/backdoor" in r.output


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_the_study_runs_under_dvc_repro(tmp_path):
    import json

    from conftest import TINY, make_dvc_repo

    study = {"detection": {"corruptions": ["backdoor", "noise"], "budgets": [2.0], "methods": ["none", "finetune"],
                           "specs": {"backdoor": {"kind": "backdoor"}, "noise": {"kind": "confusion"}}},
             "grid": {"etd_methods": [], "pretrain_variants": ["standard"], "discovery_rates": [1.0]}}
    repo = make_dvc_repo(tmp_path / "repo", merge(TINY, study))
    ran = set(repo.ran_stages(repo.run("dvc", "repro")))
    assert {"corrupt_x@backdoor-0", "pretrain_x@noise-0", "detect@backdoor-2.0-0",
            "unlearn_x@finetune-noise-2.0-0-found", "unlearn_x@finetune-noise-2.0-0-hits", "evaluate"} <= ran
    with open(repo.path / "reports" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    det = [r for r in rows if r["run"] == "finetune@found"]
    assert {r["corruption"] for r in det} == {"backdoor", "noise"} and {r["view"] for r in det} == {"found"}
    hits = [r for r in rows if r["run"] == "finetune@hits"]
    assert hits and all(r["discovery_precision"] in ("1.0", "nan") for r in hits)  # no false positive left
    assert all(0 <= float(r["discovery_precision"]) <= 0.5 and r["regularity_score"] for r in det)  # budget 2
    oracle = [r for r in rows if r["run"] == "finetune"]
    assert all(float(r["discovery_precision"]) == 1.0 and r["discovery"] == "oracle" and r["view"] == ""
               for r in oracle)
    assert "What false positives cost" in (repo.path / "reports" / "results.md").read_text()
    assert (repo.path / "reports" / "regularity.png").is_file()
    assert json.loads(repo.run("dvc", "plots", "show", "--json").stdout)
    assert repo.ran_stages(repo.run("dvc", "repro")) == []
