"""REM on a small real problem: it heals, keeps utility, and the corruption really is redirected."""

from __future__ import annotations

import pytest

from conftest import make_params
from remflow import stages
from remflow.methods.rem import run_rem
from remflow.metrics import evaluate_model
from remflow.train import accuracy

REM_METHODS = {"rem": {}, "rem_noredirect": {}, "rem_noremove": {}, "rem_ga": {}, "rem_ideal": {}}


@pytest.fixture(scope="module")
def rem_params():
    return make_params({"methods": REM_METHODS})


def test_rem_heals_the_backdoor_and_redirects_it(cells, rem_params):
    manifest, model = cells.pretrained("high")
    prep = stages.prepare_unlearn(rem_params, "rem", model, manifest, cells.discovered("high", 0.5))
    result = run_rem(prep.ctx, prep.cfg)
    task, net = prep.ctx.task, result.model
    assert net.widened and prep.ctx.stats["flush_epochs"] > 0 and prep.ctx.stats["repair_steps"] > 0

    corrupted = task.corrupted
    base_fit = accuracy(net, task, corrupted)  # corrupted labels, deployed channels only
    full_fit = accuracy(net, task, corrupted, route_ids=result.route_ids(corrupted), keep=result.keep,
                        seed=result.route_seed)
    # the added channels carry what the deployed ones lost: the corruption was redirected, not erased
    assert full_fit > 0.9, full_fit
    assert base_fit < full_fit - 0.4, (base_fit, full_fit)

    healed = evaluate_model(net.deploy_(), task)
    original = cells.original("high")
    assert healed["healed"] > original["healed"] + 0.3, (healed, original)
    assert healed["utility"] > original["utility"] - 0.03
