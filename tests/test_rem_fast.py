"""REM's efficient mode (`rem_fast`): each switch does what it says, and together they still heal."""

from __future__ import annotations

import torch

from conftest import make_params
from remflow.io import load_checkpoint
from remflow.methods.rem import added_channels, stalled
from remflow.models import build_model
from remflow.config import CnnCfg


def test_no_frozen_copy_same_model_fewer_parameters(cells):
    # without augmentation the reference's outputs never change, so tabulating them from the model before the
    # first step must give the very model a frozen copy gives (same bytes), holding half the parameters
    copy = make_params({"methods": {"rem": {"frozen_reference": True}}})
    table = make_params({"methods": {"rem": {"frozen_reference": False}}})
    rec_copy, m_copy, _ = cells.run("rem", "medium", 0.5, params=copy)
    rec_table, m_table, _ = cells.run("rem", "medium", 0.5, params=table)
    a, _ = load_checkpoint(cells.root / "runs" / f"{cells._runs - 1}-rem-standard-medium-0.5" / "model.safetensors")
    b, _ = load_checkpoint(cells.root / "runs" / f"{cells._runs}-rem-standard-medium-0.5" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the tabulated reference changed the run"
    widened = rec_copy["params_peak"] // 2  # the widened model and its frozen copy
    assert rec_table["params_peak"] == widened < rec_copy["params_peak"]


def test_channels_are_added_to_the_last_groups_only():
    net = build_model(CnnCfg(name="cnn", width=8), 1, 10, 8)
    assert list(added_channels(net, 1.0, None)) == list(net.group_widths)
    last = added_channels(net, 0.5, 1)
    assert last == {"c3": 16}  # the group nearest the head (forward order), half its width
    deployed = sum(p.numel() for p in net.parameters())
    net.widen_(last)
    widened = sum(p.numel() for p in net.parameters())
    assert net.conv1.conv.weight.shape[0] == 8 and net.conv3.conv.weight.shape[0] == 48
    assert widened < 1.5 * deployed


def test_the_repair_stops_once_the_proxy_stalls():
    class Log:
        def __init__(self, scores):
            self.epochs = [{"proxy": s} for s in scores]

    until = stalled("proxy", 2)
    assert not until(Log([0.1, 0.2]))  # too few epochs to judge
    assert not until(Log([0.1, 0.3, 0.2]))  # the best is recent
    assert until(Log([0.1, 0.3, 0.2, 0.3]))  # two epochs without beating 0.3 (a tie is no improvement)
    assert not until(Log([0.1, 0.3, 0.2, 0.4]))


def test_rem_fast_heals_the_backdoor_at_a_fraction_of_the_parameters(cells):
    p = make_params({"methods": {"rem_fast": {}}})
    rec, after, _ = cells.run("rem_fast", "high", 0.5, params=p)
    original = cells.original("high")
    assert rec["params_peak"] <= 1.5 * rec["params_deployed"], rec
    assert rec["stats"]["added"] == {"c3": 64} and rec["stats"]["steps"] > 0
    assert after["healed"] > original["healed"] + 0.3, (after, original)
    assert after["utility"] > original["utility"] - 0.05, (after, original)


def test_rem_heals_a_backdoor_on_a_small_vit(tmp_path):
    # REM's expansion on a ViT adds attention heads and MLP units (models/vit.py). A one-block ViT on digits
    # (patch 2, 16 tokens) learns the 3x3 trigger in 12 epochs; REM at discovery rate 0.5 must heal part of it.
    # Measured (fixture seeds 0/1/2): Healed 0.16/0.08/0.08 -> 0.45/0.28/0.27, utility within 0.01; the margin
    # asserted is half the smallest gain. The ViT heals less than the CNN here (docs/benchmarks.md).
    from conftest import THREADS, Cells, merge, root_params
    from remflow.params import validate

    raw = root_params()
    raw["model"] = {"name": "vit", "patch": 2, "dim": 32, "depth": 1, "heads": 2, "dim_head": 16, "mlp_dim": 64}
    p = validate(merge(raw, {
        "pretrain": {"optimizer": "adam", "lr": 0.003, "epochs": 12, "schedule": "constant", "select": "last",
                     "weight_decay": 0.0},
        "unlearn": {"optimizer": "adam", "lr": 0.002, "schedule": "constant", "weight_decay": 0.0},
        "methods": {"rem": {}}, "runtime": {"threads": THREADS}}))
    vit = Cells(tmp_path, p)
    original = vit.original("high")
    assert original["forget_acc"] > 0.9, original  # the trigger was learned
    rec, after, _ = vit.run("rem", "high", 0.5, params=p)
    assert rec["stats"]["added"] == {"attn0": 2, "mlp0": 64}
    assert after["healed"] > original["healed"] + 0.1, (after, original)
    assert after["utility"] > original["utility"] - 0.05, (after, original)
