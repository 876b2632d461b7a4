"""The selection protocol (docs/protocol.md): each method's checkpoint rule comes from its config, ties are
decided as stated, Retrain is trained and selected as the original model, and REM's proxy sees the data as its
flush stop does. Small and fast: fresh models on digits, a few epochs, no pretrained cells."""

from __future__ import annotations

import pytest
import torch

from conftest import make_params
from remflow.data.corruption import make_discovery, make_manifest
from remflow.data.datasets import load_splits
from remflow.data.task import make_task
from remflow.methods import REGISTRY, UnlearnContext
from remflow.models import build_model
from remflow.train import Data, Phase, Selection, train

CPU = torch.device("cpu")


def context(params, regularity: str = "high", rate: float = 0.5) -> UnlearnContext:
    """A fresh (untrained) model on a corrupted digits task: enough to watch what a method selects."""
    splits = load_splits(params.data)
    manifest = make_manifest(regularity, 0, params.corruption, splits)
    task = make_task(params.data, splits, CPU, manifest, make_discovery(manifest, rate, 0)["indices"])
    torch.manual_seed(0)
    model = build_model(params.model, splits.in_channels, splits.num_classes, splits.image_size)
    return UnlearnContext(model, task, params, 0, CPU)


# ---------------------------------------------------------------- the selection loop and its tie rule


def scripted(scores, *, every=1, tie="earliest", epochs=4):
    """`epochs` epochs that set a weight to 1, 2, ...; the selection sees `scores` in turn."""
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(net.weight, 0.0)
    seen = iter(scores)

    def loss(model, _):  # one SGD step of lr 1 moves the weight by exactly +1
        return -model.weight.sum()

    log = train(net, torch.optim.SGD(net.parameters(), lr=1.0, momentum=0.0, weight_decay=0.0),
                Phase("t", loss, Data(1, lambda: [None]), epochs=epochs),
                select=Selection("val_acc", lambda m: next(seen), every=every, tie=tie))
    return float(net.weight.detach()[0, 0]), log


def test_the_tie_rule_decides_between_equal_scores():
    for tie, kept in (("earliest", 2), ("latest", 3)):
        w, log = scripted([0.5, 0.7, 0.7, 0.6], tie=tie)
        assert w == kept and log.best_epoch == kept, (tie, w, log.best_epoch)
        assert log.stats(Selection("val_acc", abs, tie=tie))["selection"] == f"val_acc every 1, {tie} tie"
    # a strictly better score wins under either rule
    for tie in ("earliest", "latest"):
        assert scripted([0.5, 0.7, 0.8, 0.6], tie=tie)[0] == 3


def test_checks_every_k_epochs_and_after_the_last():
    # every 3 of 4 epochs: epochs 3 and 4 are checked (two scores consumed), epoch 3 is the better
    w, log = scripted([0.9, 0.8], every=3)
    assert w == 3 and log.best_epoch == 3 and [("val_acc" in e) for e in log.epochs] == [False, False, True, True]
    # every=None (`select: last`): only the last epoch is checked, and kept whatever it scores
    w, log = scripted([0.1], every=None)
    assert w == 4 and log.best_epoch == 4


def test_a_phase_ended_by_its_stop_rule_still_checks_its_last_epoch():
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(net.weight, 0.0)
    phase = Phase("t", lambda m, _: -m.weight.sum(), Data(1, lambda: [None]), epochs=10,
                  until=lambda log: len(log.epochs) >= 3)
    log = train(net, torch.optim.SGD(net.parameters(), lr=1.0, momentum=0.0), phase,
                select=Selection("val_acc", lambda m: 0.0, every=None))
    assert float(net.weight.detach()[0, 0]) == 3 and log.best_epoch == 3


# ---------------------------------------------------------------- per-method rules from config


def test_each_method_states_its_rule_in_config():
    from remflow.params import validate
    from remflow.params import ParamsError

    defaults = {name: REGISTRY[name].config() for name in ("finetune", "bad_teacher", "salun", "scrub",
                                                          "neggrad_plus", "retrain")}
    assert {n: (c.select, c.eval_every, c.tie) for n, c in defaults.items()} == {
        "finetune": ("best_val", 5, "latest"), "bad_teacher": ("best_val", 5, "latest"),
        "salun": ("best_val", 1, "earliest"), "scrub": ("best_val", 1, "latest"),
        "neggrad_plus": ("best_val", 1, "earliest"), "retrain": (None, None, None)}  # None: as pretraining
    for key, bad in (("select", "best"), ("tie", "middle"), ("eval_every", 0)):
        with pytest.raises(ParamsError) as e:
            validate({"methods": {"finetune": {key: bad}}})
        assert f"methods.finetune.{key}" in [row[0] for row in e.value.problems]
    with pytest.raises(ParamsError):
        validate({"pretrain": {"tie": "first"}})


def test_by_validation_reads_the_methods_own_rule():
    from remflow.methods.base import MethodConfig

    params = make_params({"pretrain": {"select": "best_val", "eval_every": 4, "tie": "earliest"}})
    ctx = context(params)
    finetune = REGISTRY["finetune"].config(eval_every=2, tie="earliest")
    assert ctx.by_validation(finetune).rule == "val_acc every 2, earliest tie"
    ctx.recipe(REGISTRY["scrub"].config(select="last"))  # the config the method last asked a recipe for
    assert ctx.by_validation().rule == "last"
    assert ctx.by_validation(REGISTRY["retrain"].config()).rule == "val_acc every 4, earliest tie"  # pretraining's

    class Plain(MethodConfig):  # a method module whose config states no rule (a newer baseline)
        method: str = "plain"

    ctx.recipe(Plain())
    assert ctx.by_validation().rule == "val_acc every 1, latest tie"


# ---------------------------------------------------------------- Retrain: trained and selected as the original


def test_retrain_takes_the_pretraining_recipe_and_rule():
    params = make_params({"pretrain": {"epochs": 3, "lr": 0.07, "select": "last"}})
    ctx = context(params)
    recipe = ctx.recipe(REGISTRY["retrain"].config(), params.pretrain)
    assert (recipe.lr, recipe.epochs, recipe.batch_size, recipe.schedule) == (0.07, 3, 64, "warmup_linear")
    assert ctx.by_validation(REGISTRY["retrain"].config()).rule == "last"


def test_retrain_with_select_last_returns_the_last_epochs_weights(monkeypatch):
    import remflow.train as tr

    params = make_params({"data": {"train_size": 400}, "model": {"width": 8},
                          "pretrain": {"epochs": 3, "select": "best_val", "eval_every": 1},
                          "methods": {"retrain": {"select": "last"}}})
    ctx = context(params)
    scored = []
    score = tr.val_accuracy

    def spy(model, task, batch_size=2048):  # the state each check sees: after the last epoch, with `last`
        scored.append({k: v.clone() for k, v in model.state_dict().items()})
        return score(model, task, batch_size)

    monkeypatch.setattr(tr, "val_accuracy", spy)
    out = REGISTRY["retrain"].unlearn(ctx, params.methods["retrain"])
    assert len(scored) == 1 and ctx.stats["best_epoch"] == 3 == ctx.stats["epochs"]
    assert ctx.stats["selection"] == "last"
    assert all(torch.equal(v, scored[0][k]) for k, v in out.state_dict().items())


# ---------------------------------------------------------------- REM: the proxy sees the flush stop's view


def views(monkeypatch):
    """Record, for every accuracy the forgetting module takes, whether its images were augmented."""
    import remflow.methods.forgetting as fg

    seen = []
    predict = fg.predict

    def spy(model, task, images, triggered=None, *, batch_size=2048, gen=None):
        seen.append(gen is not None)
        return predict(model, task, images, triggered, batch_size=batch_size, gen=gen)

    monkeypatch.setattr(fg, "predict", spy)
    return seen


@pytest.mark.parametrize("crop", [0, 1])
def test_the_proxy_and_the_flush_stop_see_the_same_view(monkeypatch, crop):
    from remflow.losses import npo
    from remflow.methods.forgetting import ReferenceCE, by_proxy, forget_phase

    params = make_params({"data": {"augment": {"crop_padding": crop, "flip": False}}})
    ctx = context(params)
    t, model = ctx.task, ctx.model
    seen = views(monkeypatch)
    flush = forget_phase(ctx, model, t.forget, npo, ReferenceCE(ctx, ctx.frozen_copy(model)), beta=1.0, gamma=0.2,
                         epochs=1, batch_size=64, gen=ctx.generator("flush"), label="flush")
    flush.until(type("Log", (), {"epochs": []})())
    by_proxy(ctx, t.forget, t.retain, 0.2).score(model)
    assert len(seen) == 3 and seen == [bool(crop)] * 3  # the stop (D_f), the proxy (D_r, D_f): one view
    seen.clear()
    by_proxy(ctx, t.forget, t.retain, 0.2, view="clean").score(model)
    assert seen == [False, False]


def test_rem_scores_its_proxy_on_the_flush_view(monkeypatch):
    import remflow.methods.rem as rem

    params = make_params({"data": {"augment": {"crop_padding": 1, "flip": False}, "train_size": 400},
                          "model": {"width": 8}, "methods": {"rem": {"epochs": 1}}})
    asked = []

    class Stop(Exception):
        pass

    def spy(ctx, forget, retain, gamma, fallback="original", view="flush"):
        asked.append(view)
        raise Stop  # the selection is built before the first step: nothing needs to train

    monkeypatch.setattr(rem, "by_proxy", spy)
    for over, view in (({}, "flush"), ({"proxy_view": "clean"}, "clean")):
        with pytest.raises(Stop):
            rem.run_rem(context(params), params.methods["rem"].model_copy(update=over))
        assert asked[-1] == view
