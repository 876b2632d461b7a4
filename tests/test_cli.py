"""Every bad input: exit code 2, a one-screen message naming the key or file, no traceback, nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ROOT, merge, root_params, write_yaml
from remflow.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_refused(result, *needles: str):
    text = result.output
    assert result.exit_code == 2, text
    assert "Traceback" not in text
    assert len(text.splitlines()) <= 25, text  # one screen
    # a long path wraps inside the panel (pytest-xdist's temporary folders are longer): also look in the lines
    # joined without their borders
    joined = "".join(line.strip().strip("│╭╮╰╯─").strip() for line in text.splitlines())
    for n in needles:
        assert n in text or n.replace(" ", "") in joined.replace(" ", ""), f"{n!r} not in:\n{text}"


def params_file(tmp_path: Path, over: dict) -> Path:
    return write_yaml(tmp_path / "params.yaml", merge(root_params(), over))


def test_methods_lists_every_registered_method():
    from remflow.methods import REGISTRY

    r = invoke("methods")
    assert r.exit_code == 0
    for name in REGISTRY:
        assert name in r.output


def test_check_accepts_the_shipped_pipeline():
    r = invoke("check", "--params", str(ROOT / "params.yaml"), "--dvc", str(ROOT / "dvc.yaml"))
    assert r.exit_code == 0, r.output


def test_check_says_when_a_suite_is_too_coarse_to_claim_an_ordering(tmp_path):
    """DESIGN §7: one image of D_c moves Healed by at most 1 point and D_f at the lowest rate holds at least 10
    images before a suite's tables may claim an ordering; `check` names a suite below that (a note, not an
    error: small suites are for smoke runs and first looks)."""
    from remflow.records import resolution

    r = invoke("check", "--params", str(ROOT / "params.yaml"), "--dvc", str(ROOT / "dvc.yaml"))
    assert r.exit_code == 0 and "Too coarse to claim an ordering" in r.output, r.output
    assert "|D_c| = 64" in r.output and "holds 6 images" in r.output
    fine = params_file(tmp_path, {"corruption": {"count": 100}, "grid": {"discovery_rates": [0.1, 1.0]}})
    r = invoke("check", "--params", str(fine), "--dvc", str(ROOT / "dvc.yaml"))
    assert r.exit_code == 0 and "Too coarse" not in r.output, r.output
    assert resolution(100, 10, 0.1)[1] and not resolution(99, 10, 0.1)[1] and not resolution(120, 9, 0.075)[1]
    assert "|D_c| >= 134 would do" in resolution(120, 9, 0.075)[0]  # 10 images at the lowest rate


def test_check_finds_an_undeclared_param(tmp_path):
    dvc = (ROOT / "dvc.yaml").read_text().replace("      - unlearn\n      - robustness\n",
                                                    "      - robustness\n", 1)
    assert dvc != (ROOT / "dvc.yaml").read_text()
    (tmp_path / "dvc.yaml").write_text(dvc)
    r = invoke("check", "--params", str(ROOT / "params.yaml"), "--dvc", str(tmp_path / "dvc.yaml"))
    assert_refused(r, "stages.unlearn.params", "lacks unlearn")


@pytest.mark.parametrize("over,needles", [
    ({"model": {"widht": 8}}, ["model.widht", "unknown key"]),
    ({"pretrain": {"epochs": "many"}}, ["pretrain.epochs", "'many'"]),
    ({"grid": {"discovery_rates": [0.5, 1.2]}}, ["grid.discovery_rates.1", "(0, 1]", "1.2"]),
    ({"methods": {"rem": {"method": "remm"}}}, ["methods.rem", "unknown method", "remm"]),
])
def test_bad_params_are_refused_before_any_work(tmp_path, over, needles):
    out = tmp_path / "m.json"
    r = invoke("corrupt", "--regularity", "high", "--seed", "0", "--out", str(out), "--params",
               str(params_file(tmp_path, over)))
    assert_refused(r, *needles)
    assert not out.exists()


@pytest.mark.parametrize("over,needles", [
    ({"corruption": {"count": 45}}, ["corruption.count", "even", "45"]),  # `medium` is in the grid
    ({"corruption": {"size": 64, "count": None}}, ["corruption.size", "renamed", "corruption.count", "10296"]),
    ({"model": {"name": "resnet9", "width": 8}}, ["model.name", "ResNet-9", "11x11", "8x8"]),
    ({"corruption": {"backdoor": {"patch": 8}}}, ["corruption.backdoor.patch", "8px"]),
    ({"corruption": {"interclass": {"classes": [3, 12]}}}, ["corruption.interclass.classes", "0..9"]),
    ({"methods": {"rem/x": {"method": "rem"}}}, ["methods.rem/x", "run name", "letters"]),
    ({"methods": {"rem x": {"method": "rem"}}}, ["methods.rem x", "run name"]),
])
@pytest.mark.parametrize("command", ["check", "corrupt", "pretrain"])
def test_cross_field_rules_are_refused_by_every_command(tmp_path, over, needles, command):
    raw = merge(root_params(), over)
    raw["corruption"] = {k: v for k, v in raw["corruption"].items() if v is not None}
    p = write_yaml(tmp_path / "params.yaml", raw)
    out = tmp_path / "out"
    args = {"check": ["--dvc", str(ROOT / "dvc.yaml")],
            "corrupt": ["--regularity", "high", "--seed", "0", "--out", str(out)],
            "pretrain": ["--manifest", str(tmp_path / "m.json"), "--out", str(out)]}[command]
    r = invoke(command, *args, "--params", str(p))
    assert_refused(r, *needles)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


def test_check_refuses_a_corrupted_set_the_training_set_cannot_hold(tmp_path):
    """A rule that needs the data (600 interclass samples need 300 of class 3 and of class 5): `remflow check`
    finds it before any stage runs."""
    p = params_file(tmp_path, {"corruption": {"count": 600}})
    r = invoke("check", "--params", str(p), "--dvc", str(ROOT / "dvc.yaml"))
    assert_refused(r, "corruption.count", "300 each")
    p = params_file(tmp_path, {"corruption": {"count": 10**6}})
    r = invoke("check", "--params", str(p), "--dvc", str(ROOT / "dvc.yaml"))
    assert_refused(r, "corruption.count", "outside")


@pytest.fixture(scope="module")
def made(tmp_path_factory, cells):
    """A manifest, a discovered set and a checkpoint to break."""
    manifest, model = cells.pretrained("high")
    return manifest, cells.discovered("high", 0.5), model


def unlearn_args(tmp_path, made, **kw):
    manifest, disc, model = made
    args = {"method": "none", "model": model, "manifest": manifest, "discovered": disc, "out": tmp_path / "run",
            "params": ROOT / "params.yaml", **kw}
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def test_unknown_method_flag(tmp_path, made):
    r = invoke("unlearn", *unlearn_args(tmp_path, made, method="nope"))
    assert_refused(r, "methods.nope", "nope")
    assert not (tmp_path / "run").exists()


def test_rate_flag_outside_unit_interval(tmp_path, made):
    r = invoke("discover", "--manifest", str(made[0]), "--rate", "1.5", "--out", str(tmp_path / "d.json"),
               "--params", str(ROOT / "params.yaml"))
    assert_refused(r, "--rate", "1.5")
    assert not (tmp_path / "d.json").exists()


def test_truncated_checkpoint(tmp_path, made):
    broken = tmp_path / "model.safetensors"
    broken.write_bytes(Path(made[2]).read_bytes()[:1000])
    r = invoke("unlearn", *unlearn_args(tmp_path, made, model=broken))
    assert_refused(r, "truncated", "model.safetensors")
    assert not (tmp_path / "run").exists()


def test_corrupted_manifest(tmp_path, made):
    m = json.loads(Path(made[0]).read_text())
    m["labels"] = m["labels"][:-3]
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps(m))
    r = invoke("unlearn", *unlearn_args(tmp_path, made, manifest=bad))
    assert_refused(r, "corrupted manifest", "m.json")
    truncated = tmp_path / "t.json"
    truncated.write_text(Path(made[0]).read_text()[:50])
    r = invoke("unlearn", *unlearn_args(tmp_path, made, manifest=truncated))
    assert_refused(r, "not valid JSON", "t.json")
    assert not (tmp_path / "run").exists()


def test_discovered_index_outside_the_corrupted_set(tmp_path, made):
    d = json.loads(Path(made[1]).read_text())
    m = json.loads(Path(made[0]).read_text())
    d["indices"].append(next(i for i in range(10**5) if i not in set(m["indices"])))
    bad = tmp_path / "d.json"
    bad.write_text(json.dumps(d))
    r = invoke("unlearn", *unlearn_args(tmp_path, made, discovered=bad))
    assert_refused(r, "not in the corrupted set", "d.json")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("edit,needles", [
    (lambda d, m: d.update(rate=0.1), ["rate 0.1", "lists"]),
    (lambda d, m: d.update(rate=1.5), ["rate", "(0, 1]", "1.5"]),
    (lambda d, m: d.update(rate="half"), ["rate", "'half'"]),
    (lambda d, m: d.update(seed=d["seed"] + 1), ["another corrupted set", "seed"]),
    (lambda d, m: d.update(indices=d["indices"][:-1] + [d["indices"][0]]), ["repeat"]),
])
def test_hand_edited_discovery_file(tmp_path, made, edit, needles):
    d = json.loads(Path(made[1]).read_text())
    edit(d, json.loads(Path(made[0]).read_text()))
    bad = tmp_path / "d.json"
    bad.write_text(json.dumps(d))
    r = invoke("unlearn", *unlearn_args(tmp_path, made, discovered=bad))
    assert_refused(r, "d.json", *needles)
    assert not (tmp_path / "run").exists()


def test_missing_dataset(tmp_path):
    p = params_file(tmp_path, {"data": {"dataset": "cifar10", "root": str(tmp_path / "nowhere")}})
    r = invoke("corrupt", "--regularity", "low", "--seed", "0", "--out", str(tmp_path / "m.json"), "--params", str(p))
    assert_refused(r, "CIFAR-10 files not found", "data.root", "data_batch_1")
    assert not (tmp_path / "m.json").exists()


def test_the_installed_command_exits_2_without_traceback(tmp_path):
    """The real console script, as DVC runs it."""
    res = subprocess.run([sys.executable, "-m", "remflow", "corrupt", "--regularity", "sideways", "--seed", "0",
                          "--out", str(tmp_path / "m.json"), "--params", str(ROOT / "params.yaml")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "--regularity" in res.stderr
    assert not (tmp_path / "m.json").exists()


def test_recheck_names_bad_params_before_anything_runs(tmp_path, monkeypatch):
    # as every command: the key and the value, not the check stage's panel border; nothing written
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params_file(tmp_path, {"grid": {"discovery_rates": [0.1, 0.5, 1.5]}})
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_refused(invoke("recheck"), "grid.discovery_rates.2", "1.5")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_check_stage_refusal_is_read_from_its_panel():
    from remflow.executor.recheck import _reason

    panel = ("╭─ remflow: error ────╮\n│ grid.discovery_rates.2: must be in (0, 1] │\n│ given: 1.5 │\n"
             "╰─────────────────────╯\n")
    assert _reason(panel) == "grid.discovery_rates.2: must be in (0, 1] / given: 1.5"
    assert _reason("UserWarning: one\nanother warning line\n" + panel) == _reason(panel)  # warnings left out
    assert _reason("Killed\n") == "Killed" and _reason("") is None
