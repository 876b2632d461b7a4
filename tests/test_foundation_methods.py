"""The starting point and the retain-set baselines on a small real problem (digits, shipped defaults)."""

from __future__ import annotations

import pytest


def test_the_backdoor_works_and_retraining_on_full_discovery_heals_it(cells):
    original = cells.original("high")
    assert original["healed"] < 0.3  # the trigger flips the model to the target class
    assert original["forget_acc"] > 0.95
    record, healed, _ = cells.run("retrain", "high", 1.0)
    assert healed["healed"] > original["healed"] + 0.4
    assert healed["forget_acc"] < 0.3
    assert healed["utility"] > 0.9
    assert record["params_peak"] == record["params_deployed"]


def test_retraining_relearns_undiscovered_backdoor(cells):
    """The paper's point: retraining is no gold standard when discovery is partial and regularity high."""
    _, partial, _ = cells.run("retrain", "high", 0.1)
    assert partial["healed"] < 0.4


def test_the_original_model_has_memorised_every_corruption(cells):
    for reg in ("medium", "low"):
        m = cells.original(reg)
        assert m["healed"] < 0.3 and m["utility"] > 0.9, (reg, m)


def test_finetune_keeps_utility(cells):
    record, m, _ = cells.run("finetune", "medium", 1.0)
    assert m["utility"] > 0.9 and record["stats"]["steps"] > 0


@pytest.mark.slow
def test_compiled_training_gives_a_working_model(cells):
    """runtime.compile routes the plain training step through torch.compile (meant for CUDA; checked on CPU)."""
    from conftest import make_params

    params = make_params({"runtime": {"compile": True}, "methods": {"finetune": {"epochs": 2}}})
    record, m, _ = cells.run("finetune", "low", 1.0, params=params)
    assert m["utility"] > 0.9 and record["stats"]["steps"] > 0
