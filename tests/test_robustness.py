"""Robustness measurements (issue 30) on the session's backdoored digits model: is the corruption gone or hidden?

Three models of the high-regularity cell, all of D_c discovered:
- the original (backdoored) model;
- a head-only suppression: the original with its last layer (the linear head) fitted by plain gradient descent
  on D_f with its true labels until Healed reaches 0.9, the features untouched: the backdoor hidden, not gone;
- Retrain on D_tr \\ D_f = D_tr \\ D_c: a model that never saw the trigger.

Margins (measured for REMFLOW_TEST_SEED 0, 1, 2 at 2 threads; written beside each assertion).
"""

from __future__ import annotations

import copy

import pytest
import torch

from remflow import robustness as R


def _state_bytes(model: torch.nn.Module) -> dict[str, bytes]:
    return {k: v.detach().cpu().numpy().tobytes() for k, v in model.state_dict().items()}


def _head_only(model, task, *, target: float = 0.9, lr: float = 1e-3, max_steps: int = 2000):
    """The original with only its linear head moved: gradient descent (full batch, no momentum) on D_f's
    penultimate features with their clean labels, until Healed on D_c reaches `target`. The features are
    frozen, so they are computed once."""
    net = copy.deepcopy(model)
    feats = R.penultimate(net, task, task.forget)
    y_f = task.train_clean_y[task.forget]
    idx = {int(i): n for n, i in enumerate(task.forget.tolist())}
    on_dc = torch.tensor([idx[int(i)] for i in task.corrupted.tolist()])  # D_f = D_c here
    w = net.fc.weight.detach().clone().requires_grad_(True)
    for step in range(max_steps):
        logits = feats @ w.T
        if float((logits[on_dc].argmax(1) == task.train_clean_y[task.corrupted]).float().mean()) >= target:
            break
        loss = torch.nn.functional.cross_entropy(logits, y_f)
        (g,) = torch.autograd.grad(loss, w)
        with torch.no_grad():
            w -= lr * g
    with torch.no_grad():
        net.fc.weight.copy_(w)
    return net, step


@pytest.fixture(scope="module")
def high(cells, digits_params):
    from remflow.data.datasets import load_splits
    from remflow.data.task import make_task
    from remflow.io import read_json
    from remflow.metrics import evaluate_model
    from remflow.models import load_model

    manifest, model_path = cells.pretrained("high")
    discovered = read_json(cells.discovered("high", 1.0), "d")["indices"]
    task = make_task(digits_params.data, load_splits(digits_params.data), torch.device("cpu"),
                     read_json(manifest, "m"), discovered)
    original, _ = load_model(model_path)
    cells.run("retrain", "high", 1.0)
    retrain, _ = load_model(next(cells.root.glob("runs/*-retrain-standard-high-1.0")) / "model.safetensors")
    head, _ = _head_only(original, task)
    cfg = R.RobustnessCfg()
    models = {"original": original, "head": head, "retrain": retrain}
    before = {name: (_state_bytes(m), m.training) for name, m in models.items()}
    out = {name: R.measure(m, original, task, cfg, 0, pretrain=digits_params.pretrain) for name, m in models.items()}
    for name, o in out.items():  # the figures docs/robustness.md quotes: pytest tests/test_robustness.py -s
        print(f"robustness {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in o.items()))
    return {"task": task, "models": models, "before": before, "out": out, "cfg": cfg,
            "pretrain": digits_params.pretrain, "eval": {name: evaluate_model(m, task) for name, m in models.items()}}


def test_the_head_only_suppression_hides_the_backdoor(high):
    ev = high["eval"]
    assert ev["original"]["healed"] < 0.3  # seeds 0-2: 0.16-0.2
    assert ev["head"]["healed"] >= 0.9 and ev["retrain"]["healed"] > 0.85  # by construction / 0.92-0.95


def test_clean_relearning_brings_back_a_head_only_suppression_but_not_retrain(high):
    head, retrain = high["out"]["head"], high["out"]["retrain"]
    # seed 0: head 0.91 -> 0.45 (drop 0.45), Retrain 0.92 -> 0.92 (drop 0)
    assert head["relearn_drop"] > 0.25 and head["relearn_healed"] < 0.7, head
    assert retrain["relearn_drop"] < 0.1 and retrain["relearn_healed"] > 0.85, retrain
    assert retrain["relearn_healed"] - head["relearn_healed"] > 0.25
    for out in (head, retrain):  # a routine fine-tune: it does not damage the model
        assert out["relearn_utility"] > 0.95
        assert out["relearn_steps"] == R.attack_steps(high["cfg"], high["pretrain"], high["task"])


def test_fewshot_relearning_returns_sooner_for_a_hidden_backdoor(high):
    out = high["out"]
    assert out["original"]["fewshot_steps"] == 0 and out["original"]["fewshot_back"] == 1  # already back
    budget = out["head"]["relearn_steps"]
    assert out["head"]["fewshot_back"] == 1 and out["head"]["fewshot_steps"] <= budget  # seed 0: 10 of 84
    assert out["retrain"]["fewshot_steps"] > out["head"]["fewshot_steps"]  # seed 0: never (85)
    assert out["head"]["fewshot_k"] == high["cfg"].k


def test_the_clean_probe_reads_the_backdoor_from_the_features_only_where_it_was_learnt(high):
    out = high["out"]
    # the share of D_c a readout fitted on clean data alone assigns the target class (chance: about 0.1)
    assert out["original"]["probe_clean"] > 0.8  # seed 0: 1.0
    assert out["head"]["probe_clean"] > 0.8  # the same features as the original: seed 0: 1.0
    assert out["retrain"]["probe_clean"] < 0.35  # seed 0: 0.16
    # the probe taught half of D_c decodes the other half from the original's features
    assert out["original"]["probe_acc"] > 0.9  # seed 0: 1.0


def test_weight_distance(high):
    out = high["out"]
    assert out["original"]["weight_dist"] == 0 and out["original"]["weight_dist_rel"] == 0
    assert 0 < out["head"]["weight_dist"] < out["retrain"]["weight_dist"]  # head only vs everything anew
    assert 0 < out["head"]["weight_dist_rel"] < out["retrain"]["weight_dist_rel"]


def test_measure_leaves_the_models_unchanged_and_has_stable_columns(high):
    for name, model in high["models"].items():
        assert (_state_bytes(model), model.training) == high["before"][name], name  # weights, buffers, mode
    for out in high["out"].values():
        assert tuple(out) == R.COLUMNS and all(isinstance(v, float) for v in out.values())
        assert out["robustness_seconds"] > 0


def test_measure_is_deterministic_and_can_be_switched_off(high):
    task, original = high["task"], high["models"]["original"]
    head = high["models"]["head"]
    short = R.RobustnessCfg(budget=0.02)  # 17 steps: the same code path, less time
    a = R.measure(head, original, task, short, 3, pretrain=high["pretrain"])
    b = R.measure(head, original, task, short, 3, pretrain=high["pretrain"])
    a.pop("robustness_seconds"), b.pop("robustness_seconds")
    assert a == b
    assert R.measure(head, original, task, R.RobustnessCfg(enabled=False), 3, pretrain=high["pretrain"]) == {}



def test_each_unlearning_run_records_the_measurements_and_the_report_shows_them(cells, tmp_path):
    """Switched on in params (`robustness.enabled`), the unlearn stage measures its deployed model and its record
    carries the columns; results.csv, results.md and a heatmap of Healed after relearning show them."""
    import csv

    from conftest import make_params
    from remflow import report
    from remflow.records import row_of

    on = make_params({"robustness": {"enabled": True, "budget": 0.02}})
    rows = []
    for name in ("none", "retrain"):
        record, metrics, _ = cells.run(name, "high", 1.0, params=on)
        assert set(record["measures"]) == set(R.COLUMNS), record["measures"]
        assert record["scores"]["healed"] == pytest.approx(metrics["healed"])
        rows.append(row_of(record, tmp_path, 0.5))
    none, retrain = rows
    assert none["weight_dist"] == 0 and retrain["weight_dist"] > 0  # the original, against itself
    assert none["fewshot_steps"] == 0  # the original's backdoor is there before any step
    written = report.write_reports(rows, tmp_path / "reports", tmp_path / "metrics.json", context={},
                                    reference="retrain")
    md = (tmp_path / "reports" / "results.md").read_text()
    assert "## Is the corruption gone or only hidden?" in md and "Healed after relearning" in md
    assert "heatmap:retrain:relearn_healed" in written
    with open(tmp_path / "reports" / "results.csv") as f:
        got = list(csv.DictReader(f))
    assert float(got[1]["weight_dist"]) == pytest.approx(retrain["weight_dist"], rel=1e-5)
    off = cells.run("none", "high", 1.0)[0]
    assert "measures" not in off  # the switch: off in the session's params


def test_the_reports_columns_are_the_measurements():
    """report.py keeps its own list (the evaluate stage imports no torch, robustness.py does): the same columns."""
    from remflow import report

    assert tuple(report.ROBUSTNESS) == R.COLUMNS
    assert set(report.ROBUSTNESS) <= set(report.COLUMNS) and set(report.ROBUSTNESS) <= report._NUMERIC
