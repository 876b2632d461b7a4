"""Suites that do not weigh on each other: each is its own DVC project, and a stage declares only the code it
runs (file dependencies; an unlearn cell's method modules through the fingerprint the `check` stage writes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from remflow import codedeps
from remflow.detection.loader import load_params

ROOT = Path(__file__).resolve().parents[1]
SUITES = sorted(p.name for p in (ROOT / "pipelines").iterdir() if (p / "dvc.yaml").is_file())
PROJECTS = [ROOT] + [ROOT / "pipelines" / s for s in SUITES]


@pytest.mark.parametrize("suite", SUITES)
def test_each_suite_is_its_own_dvc_project(suite):
    folder = ROOT / "pipelines" / suite
    assert (folder / ".dvc" / "config").is_file()
    assert (folder / ".dvc" / "plots" / "remflow_heatmap.json").read_bytes() == \
        (ROOT / ".dvc" / "plots" / "remflow_heatmap.json").read_bytes()
    assert (folder / ".dvcignore").read_text() == (ROOT / ".dvcignore").read_text()


def test_the_root_project_does_not_index_the_suites():
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        paths = {os.path.relpath(s.path, ROOT) for s in repo.index.stages}
    assert paths == {"dvc.yaml"}


def _stage_deps(name: str) -> list[str]:
    spec = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())
    return spec["stages"][name]["deps"]


@pytest.mark.parametrize("package", ["data", "models"])
def test_code_deps_are_files_and_name_every_module(package):
    # folders outside a suite's project would be hashed with their __pycache__ (its .dvcignore stops at it)
    modules = {f"${{code}}/{package}/{p.name}" for p in (ROOT / "remflow" / package).glob("*.py")}
    for stage in ("pretrain", "unlearn", "unlearn_etd"):
        deps = _stage_deps(stage)
        assert modules <= set(deps), f"{stage} lacks {sorted(modules - set(deps))}"
        assert not [d for d in deps if d.startswith("${code}") and not d.endswith(".py")]


def test_pretraining_does_not_depend_on_unlearning_code():
    deps = _stage_deps("pretrain")
    assert not [d for d in deps if "methods" in d or "method-code" in d or d.endswith("losses.py")]


def test_no_project_carries_method_code_links():
    # the links of earlier versions: the `check` stage's fingerprints replaced them
    assert not [p for p in PROJECTS if (p / "method-code").exists()]


def test_a_cell_depends_on_its_own_method_modules_only(tmp_path):
    p = load_params(ROOT / "pipelines" / "digits-full" / "params.yaml")
    codedeps.record(ROOT, p, tmp_path)

    def methods_files(run):
        return set(json.loads((tmp_path / f"{run}.json").read_text())["files"])

    rem = methods_files("rem")
    assert {"rem.py", "forgetting.py", "base.py"} <= rem and "scrub.py" not in rem
    assert methods_files("scrub") == {"scrub.py", "base.py"}
    assert methods_files("finetune") == {"finetune.py", "base.py"}
    assert methods_files("rem_ga") == rem  # an ablation runs rem.py's code
    spec = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())
    for stage in ("unlearn", "unlearn_etd", "unlearn_x"):
        assert "artifacts/code/${item.method}.json" in spec["stages"][stage]["deps"]
    for stage in ("corrupt", "corrupt_x"):  # every stage runs after `check`
        assert "artifacts/code/params-ok" in spec["stages"][stage]["deps"]


def _raw_root_params():
    return YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())


def test_a_renamed_run_gets_its_method_fingerprint_and_a_removed_run_loses_it(tmp_path):
    from remflow.detection.loader import validate

    (tmp_path / "dvc.yaml").write_text(f"vars:\n  - code: {ROOT / 'remflow'}\nstages: {{}}\n")
    raw = _raw_root_params()
    raw["methods"]["rem_keep05"] = {"method": "rem", "keep": 0.5}
    out = tmp_path / "artifacts" / "code"
    assert "rem_keep05.json" in codedeps.record(tmp_path, validate(raw), out)
    assert json.loads((out / "rem_keep05.json").read_text()) == json.loads((out / "rem.json").read_text())
    mtime = (out / "rem.json").stat().st_mtime_ns
    assert codedeps.record(tmp_path, validate(raw), out) == []  # nothing changed: nothing rewritten
    assert (out / "rem.json").stat().st_mtime_ns == mtime
    del raw["methods"]["rem_keep05"]
    assert codedeps.record(tmp_path, validate(raw), out) == ["rem_keep05.json"]
    assert not (out / "rem_keep05.json").exists()


def test_a_docstring_edit_keeps_the_fingerprint_and_a_code_edit_changes_it():
    src = (ROOT / "remflow" / "methods" / "scrub.py").read_text()
    h = codedeps.source_hash(src)
    tree_doc = src.index('"""') + 3
    assert codedeps.source_hash(src[:tree_doc] + "Reworded. " + src[tree_doc:]) == h
    assert codedeps.source_hash(src.replace("def ", "def  ", 1)) != h
    assert codedeps.source_hash(src + "\nX = 1\n") != h
    fn = 'def f(x):\n    """Doc."""\n    return x\n'
    assert codedeps.source_hash(fn) == codedeps.source_hash(fn.replace("Doc.", "Other doc,\n    two lines."))
    assert codedeps.source_hash(fn) != codedeps.source_hash(fn.replace("return x", "return -x"))


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.name)
def test_every_tracked_runtime_key_is_in_params(project):
    # DVC refuses to run a stage whose tracked params key is missing from params.yaml
    from remflow.pipeline_check import RUNTIME_RESULT_KEYS

    runtime = YAML(typ="safe", pure=True).load((project / "params.yaml").read_text())["runtime"]
    assert {k.split(".")[1] for k in RUNTIME_RESULT_KEYS} <= set(runtime)
