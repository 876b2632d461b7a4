"""Errors that come from the user's own code: a model that only fails in training, outputs nan or a tuple, a
method module that does not import or takes a built-in's name, an exception raised inside a plug-in. Each is
named as what it is (exit 2 before anything runs where `check` can see it), never as a bug of remflow's."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

from conftest import ROOT, make_params, merge, root_params, write_yaml
from test_cli import assert_refused, invoke

NETS = """
import torch
from torch import nn


class Flat(nn.Module):
    def __init__(self, in_channels, num_classes, image_size):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 16))
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


class BatchStats(Flat):  # BatchNorm1d cannot train on a batch of one image
    def __init__(self, in_channels, num_classes, image_size):
        super().__init__(in_channels, num_classes, image_size)
        self.body.append(nn.BatchNorm1d(16))


class TrainingOnlyCrash(Flat):
    def forward(self, x):
        if self.training:
            raise RuntimeError("dropout mask has the wrong shape")
        return super().forward(x)


class NanOut(Flat):
    def forward(self, x):
        return super().forward(x) * float("nan")


class Pair(Flat):
    def forward(self, x):
        return super().forward(x), x


class PerImageStd(Flat):  # standardises each image without an epsilon: nan on a blank image, fine on real ones
    def forward(self, x):
        return super().forward(x / x.flatten(1).std(dim=1).view(-1, 1, 1, 1))
"""


@pytest.fixture
def nets(tmp_path, monkeypatch) -> str:
    name = f"own_nets_{uuid.uuid4().hex[:8]}"
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / f"{name}.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path / "plug"))
    return name


def plain_params(tmp_path: Path, model: str, **over) -> Path:
    """The default suite on a plain-module plug-in (methods that need no expansion)."""
    p = merge(root_params(), {"model": {"name": model}, "grid": {"methods": ["none", "finetune"]},
                              "methods": {"none": {}, "finetune": {}}, "evaluate": {"taxonomy_run": "finetune"},
                              **over})
    p["model"].pop("width", None)
    return write_yaml(tmp_path / "params.yaml", p)


def test_check_refuses_a_model_that_fails_in_training_mode_or_gives_no_scores(tmp_path, nets):
    dvc = str(ROOT / "dvc.yaml")
    ok = invoke("check", "--params", str(plain_params(tmp_path, f"{nets}:Flat")), "--dvc", dvc)
    assert ok.exit_code == 0, ok.output
    r = invoke("check", "--params", str(plain_params(tmp_path, f"{nets}:TrainingOnlyCrash")), "--dvc", dvc)
    assert_refused(r, "training mode", "dropout mask has the wrong shape")
    r = invoke("check", "--params", str(plain_params(tmp_path, f"{nets}:NanOut")), "--dvc", dvc)
    assert_refused(r, "not finite")
    r = invoke("check", "--params", str(plain_params(tmp_path, f"{nets}:Pair")), "--dvc", dvc)
    assert_refused(r, "returns a tuple of 2")
    # the check feeds two training images, not zeros: a model that is fine on real images passes
    r = invoke("check", "--params", str(plain_params(tmp_path, f"{nets}:PerImageStd")), "--dvc", dvc)
    assert r.exit_code == 0, r.output


def test_check_refuses_a_last_batch_of_one_image_for_a_model_with_batch_statistics(tmp_path, nets):
    """digits' training split holds 1294 images: a batch of 3 leaves one image in the last batch, on which
    BatchNorm1d cannot train; a batch of 4 leaves two. The model without batch statistics takes either."""
    dvc = str(ROOT / "dvc.yaml")
    one_left = {"pretrain": {"batch_size": 3}}
    r = invoke("check", "--params", str(plain_params(tmp_path, f"{nets}:BatchStats", **one_left)), "--dvc", dvc)
    assert_refused(r, "pretrain.batch_size", "single image", "1294 training images")
    two_left = {"pretrain": {"batch_size": 4}}
    r = invoke("check", "--params", str(plain_params(tmp_path, f"{nets}:BatchStats", **two_left)), "--dvc", dvc)
    assert r.exit_code == 0, r.output
    r = invoke("check", "--params", str(plain_params(tmp_path, f"{nets}:Flat", **one_left)), "--dvc", dvc)
    assert r.exit_code == 0, r.output


def test_pretraining_stops_at_the_first_epoch_whose_loss_is_not_finite(tmp_path):
    """A learning rate that blows the weights up: pretraining stops after that epoch, naming pretrain.lr, and
    writes no checkpoint (an original that diverged is nothing to unlearn from)."""
    from remflow import stages
    from remflow.errors import RemflowError

    p = make_params({"pretrain": {"epochs": 5, "lr": 1e12}})
    stages.corrupt(p, "high", 0, tmp_path / "m.json")
    with pytest.raises(RemflowError) as e:
        stages.pretrain(p, tmp_path / "m.json", tmp_path / "pre")
    assert e.value.key == "pretrain.lr" and "training diverged" in e.value.message
    assert "epoch 1 " in e.value.message or "epoch 2 " in e.value.message
    assert not (tmp_path / "pre" / "model.safetensors").exists()


def test_an_exception_in_a_plug_in_is_named_as_the_users_code(tmp_path, nets):
    """Outside `check` (a stage run by hand, say), an exception raised in the user's module is shown with the
    user's file and line, not as a bug of remflow's."""
    plug = tmp_path / "plug"
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(plug)!r})
        sys.argv = ["remflow", "methods"]
        import remflow.cli as cli
        import {nets} as nets
        def boom():
            nets.TrainingOnlyCrash(1, 10, 8).train()(__import__("torch").zeros(2, 1, 8, 8))
        cli.app = boom
        cli.main()
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "COLUMNS": "400"})
    assert res.returncode == 1, res.stderr
    assert "error in your code" in res.stderr and "Traceback" not in res.stderr
    assert f"{nets}.py" in res.stderr and "(forward)" in res.stderr and "dropout mask" in res.stderr
    assert "bug in remflow" not in res.stderr


@pytest.mark.parametrize("body,needles", [
    ("def broken(:\n    pass\n", ["zz_user_method.py", "cannot be imported", "SyntaxError"]),
    ("import package_that_is_not_installed\n", ["zz_user_method.py", "package_that_is_not_installed"]),
    (textwrap.dedent("""
        from typing import Literal
        from remflow.methods.base import MethodConfig, register

        class Cfg(MethodConfig):
            method: Literal["finetune"] = "finetune"

        @register("finetune", Cfg, summary="mine", reference="-")
        def unlearn(ctx, cfg):
            return ctx.model
    """), ["registered twice", "remflow.methods.finetune", "remflow.methods.zz_user_method"]),
    (textwrap.dedent("""
        from typing import Literal
        from remflow.methods.base import MethodConfig, register

        class Cfg(MethodConfig):
            method: Literal["zz_mine"] = "zz_mine"

        @register("zz_mine", Cfg, summary="mine", reference="-")
        def unlearn(ctx):
            return ctx.model
    """), ["cannot take (ctx, cfg)", "remflow.methods.zz_user_method.unlearn", "unlearn(ctx)"]),
])
def test_a_broken_method_module_is_named_with_exit_code_2(tmp_path, body, needles):
    """A method file added to remflow/methods that does not import, or takes a built-in method's name, stops
    every command with its file named (exit 2), in a copy of the package."""
    shutil.copytree(ROOT / "remflow", tmp_path / "remflow", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (tmp_path / "remflow" / "methods" / "zz_user_method.py").write_text(body)
    res = subprocess.run([sys.executable, "-c", "from remflow.cli import main; main()", "methods"],
                         capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path),
                                                                            "PATH": "/usr/bin:/bin",
                                                                            "COLUMNS": "200"})
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "Traceback" not in out and "bug in remflow" not in out
    for n in needles:
        assert n in out, (n, out)


def test_a_reader_failing_inside_numpy_points_at_the_users_line(tmp_path, monkeypatch):
    """The reader's exception is raised in numpy; the hint names the user's line that called it."""
    name = f"own_reader_{uuid.uuid4().hex[:8]}"
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / f"{name}.py").write_text("import numpy as np\n\ndef load(root=None):\n"
                                                   "    return np.load(root)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "plug"))
    p = merge(root_params(), {"data": {"dataset": f"{name}:load", "root": str(tmp_path / "missing.npz")}})
    r = invoke("check", "--params", str(write_yaml(tmp_path / "params.yaml", p)), "--dvc", str(ROOT / "dvc.yaml"))
    flat = "".join(r.output.replace("│", "").split())
    assert r.exit_code == 2 and f"{name}.py:4" in flat, r.output


def test_a_method_that_returns_no_model_or_another_architecture_is_named_not_a_remflow_bug(cells, monkeypatch):
    import dataclasses

    from remflow.errors import RemflowError
    from remflow.methods import REGISTRY

    cells.pretrained("high")
    for returned, needle in ((lambda ctx, cfg: None, "returned NoneType, not a model"),
                             (lambda ctx, cfg: torch.nn.Linear(2, 2), "not the deployed architecture")):
        monkeypatch.setitem(REGISTRY, "none", dataclasses.replace(REGISTRY["none"], unlearn=returned))
        with pytest.raises(RemflowError, match=needle) as e:
            cells.run("none", "high", 1.0)
        assert "test_plugin_errors.py" in e.value.key  # the module of the method's function


def test_an_exception_raised_in_a_method_module_is_named_as_the_methods(tmp_path):
    """A method added to remflow/methods is remflow's file by path, but not remflow's bug: an exception raised in
    it is shown as the method's, with its file and line, in a copy of the package."""
    shutil.copytree(ROOT / "remflow", tmp_path / "remflow", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (tmp_path / "remflow" / "methods" / "zz_raises.py").write_text(
        "def unlearn(ctx, cfg):\n    raise ValueError('my method broke')\n")
    code = ("from remflow import cli\nfrom remflow.methods import zz_raises\n"
            "cli.app = lambda: zz_raises.unlearn(None, None)\ncli.main()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "COLUMNS": "300"})
    assert res.returncode == 1, res.stderr
    assert "error in a method" in res.stderr and "zz_raises.py:2" in res.stderr, res.stderr
    assert "my method broke" in res.stderr and "bug in remflow" not in res.stderr and "Traceback" not in res.stderr
