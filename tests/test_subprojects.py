"""Suites that do not weigh on each other: each is its own DVC project, and a stage declares only the code it
runs (file dependencies; an unlearn cell's method modules through method-code/<run>/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from remflow.executor import codedeps
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


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.name)
def test_method_code_links_match_params(project):
    assert codedeps.check(project, load_params(project / "params.yaml")) == []


def test_a_cell_depends_on_its_own_method_modules_only():
    from dvc.repo import Repo

    with Repo(str(ROOT / "pipelines" / "digits-full")) as repo:
        stages = {s.name: s for s in repo.index.stages}

        def methods_files(addressing):
            found = set()
            for dep in stages[addressing].deps:
                path = Path(dep.fs_path)
                if path.is_dir():
                    found |= {Path(os.path.realpath(f)).name for f in path.iterdir()}
                elif "methods" in path.parts:
                    found.add(path.name)
            return found

        rem = methods_files("unlearn@rem-high-0.1-0")
        assert {"rem.py", "forgetting.py", "base.py"} <= rem and "scrub.py" not in rem
        assert methods_files("unlearn@scrub-high-0.1-0") == {"scrub.py", "base.py"}
        assert methods_files("unlearn@finetune-high-0.1-0") == {"finetune.py", "base.py"}
        assert methods_files("unlearn@rem_ga-high-0.1-0") == rem  # an ablation runs rem.py's code
        assert "rem.py" in methods_files("unlearn_etd@rem-high-0.1-0")


def test_a_renamed_run_links_its_method_module(tmp_path):
    (tmp_path / "dvc.yaml").write_text(f"vars:\n  - code: {ROOT / 'remflow'}\nstages: {{}}\n")
    p = load_params(ROOT / "params.yaml").model_copy()
    from remflow.detection.loader import validate

    raw = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())
    raw["methods"]["rem_keep05"] = {"method": "rem"}
    p = validate(raw)
    assert codedeps.check(tmp_path, p)  # nothing there yet
    assert codedeps.sync(tmp_path, p)
    assert codedeps.check(tmp_path, p) == []
    linked = {f.name: os.path.realpath(f) for f in (tmp_path / "method-code" / "rem_keep05").iterdir()}
    assert linked["rem.py"] == str((ROOT / "remflow" / "methods" / "rem.py").resolve())
    assert not codedeps.sync(tmp_path, p)  # in sync: nothing rewritten
    del raw["methods"]["rem_keep05"]
    codedeps.sync(tmp_path, validate(raw))
    assert not (tmp_path / "method-code" / "rem_keep05").exists()


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.name)
def test_every_tracked_runtime_key_is_in_params(project):
    # DVC refuses to run a stage whose tracked params key is missing from params.yaml
    from remflow.pipeline_check import RUNTIME_RESULT_KEYS

    runtime = YAML(typ="safe", pure=True).load((project / "params.yaml").read_text())["runtime"]
    assert {k.split(".")[1] for k in RUNTIME_RESULT_KEYS} <= set(runtime)
