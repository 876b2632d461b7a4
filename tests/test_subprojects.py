"""Suites that do not weigh on each other: each is its own DVC project, and a stage depends only on the code it
runs (the fingerprints the `check` stage derives from imports: remflow/codedeps.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from remflow import codedeps
from remflow.params import load_params

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


STAGE_OF = {"corrupt": "corrupt", "pretrain": "pretrain", "probe": "probe", "discover": "discover",
            "unlearn": "unlearn", "unlearn_etd": "unlearn", "corrupt_x": "corrupt", "pretrain_x": "pretrain",
            "probe_x": "probe", "detect": "discover", "unlearn_x": "unlearn", "evaluate": "evaluate"}


def test_no_stage_lists_code_files_each_depends_on_its_commands_fingerprint():
    spec = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text())
    assert set(spec["stages"]) == {"check", *STAGE_OF}
    for name, cmd in STAGE_OF.items():
        deps = spec["stages"][name]["deps"]
        assert not [d for d in deps if d.startswith("${code}")], name
        assert f"artifacts/code/stage-{cmd}.json" in deps, name
        assert cmd in codedeps.STAGE_CODE
    assert spec["stages"]["check"]["deps"] == ["params.yaml", "${code}"]
    for stage in ("unlearn", "unlearn_etd", "unlearn_x"):
        assert "artifacts/code/${item.method}.json" in spec["stages"][stage]["deps"]


def _stage_files(cmd: str, root: Path = ROOT / "remflow") -> dict[str, str]:
    return codedeps.stage_code(root, codedeps.STAGE_CODE[cmd])


def test_stage_code_follows_imports_to_the_definitions_each_command_uses():
    pretrain = _stage_files("pretrain")
    files = codedeps.code_files({"files": pretrain})
    # pretraining reaches the data, the models (through the models registry) and the training loop ...
    for f in ("data/datasets.py", "data/task.py", "data/corruption.py", "models/cnn.py", "models/resnet9.py",
              "models/vit.py", "models/layers.py", "train.py", "stages.py", "seeds.py", "io.py", "params.py"):
        assert f in files, f
    assert "stages.py:pretrain" in pretrain and "train.py:train" in pretrain
    # ... and none of the unlearning code
    assert not [k for k in pretrain if k.startswith(("methods/", "losses.py", "metrics.py", "records.py"))]
    assert "stages.py:unlearn" not in pretrain and "stages.py:execute" not in pretrain
    unlearn = _stage_files("unlearn")
    assert {"stages.py:unlearn", "stages.py:execute", "metrics.py:evaluate_model", "records.py:run_label"} <= set(
        unlearn)
    evaluate = codedeps.code_files({"files": _stage_files("evaluate")})
    assert "evaluate.py" in evaluate and "report.py" in evaluate and "records.py" in evaluate
    assert not [f for f in evaluate if f.startswith(("train.py", "metrics.py", "data/", "stages.py"))]


def test_an_edit_changes_the_fingerprints_of_the_stages_that_run_it_only(tmp_path):
    code = tmp_path / "remflow"
    import shutil

    shutil.copytree(ROOT / "remflow", code, ignore=shutil.ignore_patterns("__pycache__"))
    before = {cmd: _stage_files(cmd, code) for cmd in ("pretrain", "unlearn", "evaluate")}

    def edit(rel, old, new):
        text = (code / rel).read_text()
        assert old in text
        (code / rel).write_text(text.replace(old, new, 1))
        return {cmd: _stage_files(cmd, code) for cmd in before}

    # a docstring, a comment and formatting: nothing changes
    after = edit("stages.py", '"""Run the prepared method,', '"""Reworded. Run the prepared method,')
    after = edit("train.py", "\ndef ", "\n# a new comment\n\n\ndef ")
    assert after == before
    # the unlearn stage's own code: unlearn only
    after = edit("stages.py", 'record["scoring_seconds"] = round(scoring.seconds, 4)',
                 'record["scoring_seconds"] = round(scoring.seconds, 3)')
    assert after["pretrain"] == before["pretrain"] and after["evaluate"] == before["evaluate"]
    assert after["unlearn"]["stages.py:execute"] != before["unlearn"]["stages.py:execute"]
    # the training loop: pretraining and every training method's run (through ctx.train), not evaluate
    params = load_params(ROOT / "params.yaml")
    runs = codedeps.fingerprints(params, code / "methods")
    again = edit("train.py", "def lr_factor(step: int, total: int, schedule: str) -> float:",
                 "def lr_factor(step: int, total: int, schedule: str, unused=None) -> float:")
    assert again["pretrain"] != after["pretrain"] and again["evaluate"] == after["evaluate"]
    runs_again = codedeps.fingerprints(params, code / "methods")
    assert runs_again["finetune"] != runs["finetune"]
    # an import the reached code does not read, added to a module that every stage reaches (for a function of
    # one stage, say): no fingerprint moves; the same import read by a reached definition moves that one's
    base = again
    after = edit("records.py", "import math\n", "import math\nimport statistics\nfrom json import dumps\n")
    assert after == base
    after = edit("records.py", "    points = 100.0 / corrupted", "    dumps(0)\n    points = 100.0 / corrupted")
    assert after["unlearn"] == base["unlearn"]  # resolution() is evaluate's, not the unlearn stage's
    assert after["evaluate"]["records.py:resolution"] != base["evaluate"]["records.py:resolution"]
    assert after["evaluate"]["records.py"] != base["evaluate"]["records.py"]  # its import now hashed
    moved = edit("records.py", "from json import dumps\n", "from pickle import dumps\n")
    assert moved["evaluate"]["records.py"] != after["evaluate"]["records.py"] and moved["unlearn"] == base["unlearn"]
    # a module-level constant is hashed whole, as before
    assert edit("records.py", "MIN_FORGET_IMAGES = 10", "MIN_FORGET_IMAGES = 11")["unlearn"] != base["unlearn"]


def test_no_project_carries_method_code_links():
    # the links of earlier versions: the `check` stage's fingerprints replaced them
    assert not [p for p in PROJECTS if (p / "method-code").exists()]


def test_a_cell_depends_on_its_own_method_modules_only(tmp_path):
    p = load_params(ROOT / "pipelines" / "digits-full" / "params.yaml")
    codedeps.record(ROOT, p, tmp_path)

    def method_files(run):
        fp = json.loads((tmp_path / f"{run}.json").read_text())
        assert fp["code"] == "remflow"
        return {f for f in codedeps.code_files(fp) if f.startswith("methods/")}

    rem = method_files("rem")
    assert {"methods/rem.py", "methods/forgetting.py", "methods/base.py"} <= rem and "methods/scrub.py" not in rem
    assert method_files("scrub") == {"methods/scrub.py", "methods/base.py"}
    assert method_files("finetune") == {"methods/finetune.py", "methods/base.py"}
    assert method_files("rem_ga") == rem  # an ablation runs rem.py's code
    assert "losses.py" in codedeps.code_files(json.loads((tmp_path / "rem.json").read_text()))  # beyond methods/


def _raw_root_params():
    return YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())


def test_a_renamed_run_gets_its_method_fingerprint_and_a_removed_run_loses_it(tmp_path):
    from remflow.params import validate

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


def test_a_docstring_comment_or_layout_edit_keeps_the_hash_and_a_code_edit_changes_it():
    src = (ROOT / "remflow" / "methods" / "scrub.py").read_text()
    h = codedeps.code_hash(src)
    tree_doc = src.index('"""') + 3
    assert codedeps.code_hash(src[:tree_doc] + "Reworded. " + src[tree_doc:]) == h
    assert codedeps.code_hash(src.replace("def ", "# a comment\ndef  ", 1)) == h
    assert codedeps.code_hash(src + "\nX = 1\n") != h
    fn = 'def f(x):\n    """Doc."""\n    return x\n'
    assert codedeps.code_hash(fn) == codedeps.code_hash(fn.replace("Doc.", "Other doc,\n    two lines."))
    assert codedeps.code_hash(fn) != codedeps.code_hash(fn.replace("return x", "return -x"))


def test_a_fingerprint_stands_for_its_source_files(tmp_path):
    (tmp_path / "dvc.yaml").write_text(f"vars:\n  - code: {ROOT / 'remflow'}\nstages: {{}}\n")
    out = tmp_path / "artifacts" / "code"
    codedeps.record(tmp_path, load_params(ROOT / "params.yaml"), out)
    files = codedeps.source_files(out / "stage-pretrain.json")
    assert Path(files[0]).resolve().is_file()
    assert str((ROOT / "remflow" / "train.py").resolve()) in {str(Path(f).resolve()) for f in files}
    assert codedeps.source_files(tmp_path / "dvc.yaml") is None


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.name)
def test_every_tracked_runtime_key_is_in_params(project):
    # DVC refuses to run a stage whose tracked params key is missing from params.yaml
    from remflow.pipeline_check import RUNTIME_RESULT_KEYS

    runtime = YAML(typ="safe", pure=True).load((project / "params.yaml").read_text())["runtime"]
    assert {k.split(".")[1] for k in RUNTIME_RESULT_KEYS} <= set(runtime)


def test_record_refuses_a_folder_that_holds_anything_but_its_own_files(tmp_path):
    """`check --record` prunes its folder: pointed at a folder of the user's it must refuse, not delete."""
    from remflow.errors import RemflowError
    from remflow.params import validate

    (tmp_path / "dvc.yaml").write_text(f"vars:\n  - code: {ROOT / 'remflow'}\nstages: {{}}\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("mine\n")
    (docs / "other.json").write_text('{"files": {}}\n')  # JSON, but not a fingerprint
    with pytest.raises(RemflowError, match="folder of its own") as e:
        codedeps.record(tmp_path, validate(_raw_root_params()), docs)
    assert e.value.key == "--record" and "notes.md" in str(e.value.got)
    assert sorted(p.name for p in docs.iterdir()) == ["notes.md", "other.json"]  # nothing written or removed
    with pytest.raises(RemflowError, match="takes a folder"):
        codedeps.record(tmp_path, validate(_raw_root_params()), docs / "notes.md")
    out = tmp_path / "artifacts" / "code"
    codedeps.record(tmp_path, validate(_raw_root_params()), out)
    assert codedeps.record(tmp_path, validate(_raw_root_params()), out) == []  # its own files: accepted
    (out / ".rem.json.k3j2h1.tmp").write_text("{")  # what an interrupted write leaves: its own, pruned
    assert codedeps.record(tmp_path, validate(_raw_root_params()), out) == [".rem.json.k3j2h1.tmp"]


def test_a_name_imported_through_a_module_that_re_exports_it_reaches_its_definition(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import helper\n\n\ndef entry():\n    return helper()\n")
    (pkg / "b.py").write_text("import json\nfrom pkg.c import helper\n")  # re-exports c's helper
    (pkg / "c.py").write_text("def helper():\n    return 1\n\n\ndef other():\n    return 2\n")
    files = codedeps.stage_code(pkg, ("pkg.a:entry",), package="pkg", skip=(), common=())
    assert {"a.py:entry", "b.py", "c.py:helper"} <= set(files) and "c.py:other" not in files
    (pkg / "c.py").write_text("def helper():\n    return 30\n\n\ndef other():\n    return 2\n")  # another size
    again = codedeps.stage_code(pkg, ("pkg.a:entry",), package="pkg", skip=(), common=())
    assert again["c.py:helper"] != files["c.py:helper"]
    (pkg / "b.py").write_text("import json\nimport os\nfrom pkg.c import helper\n")  # an import nothing reads
    assert codedeps.stage_code(pkg, ("pkg.a:entry",), package="pkg", skip=(), common=()) == again


def test_what_a_module_runs_at_import_counts_and_a_re_export_cycle_ends(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import run\n\n\ndef entry():\n    return run()\n")
    # b's registry is filled by a decorator of a function no stage reaches: the import it reads counts
    b = ("from math import sqrt as op\nREG = {}\n\n\ndef reg(f):\n    REG[f.__name__] = f\n    return f\n\n\n"
         "@reg\ndef helper(x=op(4)):\n    return x\n\n\ndef run():\n    return REG['helper']()\n")
    (pkg / "b.py").write_text(b)
    first = codedeps.stage_code(pkg, ("pkg.a:entry",), package="pkg", skip=(), common=())
    assert "b.py:helper" not in first  # reached only through the registry
    (pkg / "b.py").write_text(b.replace("from math import sqrt as op", "from cmath import sqrt as op"))
    assert codedeps.stage_code(pkg, ("pkg.a:entry",), package="pkg", skip=(), common=())["b.py"] != first["b.py"]
    # two modules that re-export a name from each other: the walk ends
    (pkg / "c.py").write_text("try:\n    from pkg.d import g\nexcept ImportError:\n    g = None\n")
    (pkg / "d.py").write_text("try:\n    from pkg.c import g\nexcept ImportError:\n    g = None\n")
    (pkg / "e.py").write_text("from pkg.c import g\n\n\ndef entry():\n    return g\n")
    assert "e.py:entry" in codedeps.stage_code(pkg, ("pkg.e:entry",), package="pkg", skip=(), common=())
