"""A worker's code is the code it imported: a stage whose code dependency was edited after that is not committed."""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ruamel.yaml import YAML

from remflow.executor.worker import ImportRecord, code_changed_message, stale_code

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp: Path) -> dict:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", RAY_ADDRESS="")  # a local Ray of this test's own
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rf-ray-", dir="/tmp")  # short: Ray's socket paths have a limit
    return env


def _sh(cwd: Path, env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, check=True)


def test_the_worker_hashes_what_it_imports_and_sees_a_later_edit(tmp_path, monkeypatch):
    pkg = tmp_path / "rfprobe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("VALUE = 1\n")
    (tmp_path / "elsewhere.py").write_text("OTHER = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    record = ImportRecord(packages=("rfprobe_pkg",)).install()
    try:
        mod = importlib.import_module("rfprobe_pkg.mod")
        importlib.import_module("elsewhere")  # not one of the recorded packages
    finally:
        record.uninstall()
        sys.modules.pop("elsewhere", None)
    assert mod.VALUE == 1
    real = str((pkg / "mod.py").resolve())
    assert record.hashes[real] == hashlib.md5(b"VALUE = 1\n").hexdigest()
    assert str((tmp_path / "elsewhere.py").resolve()) not in record.hashes

    deps = [str(pkg), str(tmp_path / "elsewhere.py")]  # a folder dependency is checked file by file
    assert stale_code(deps, record.hashes) == []
    (tmp_path / "elsewhere.py").write_text("OTHER = 2\n")  # not imported by the worker: not its business
    assert stale_code(deps, record.hashes) == []
    (pkg / "mod.py").write_text("VALUE = 2\n")  # the same size: size and mtime could not tell
    stale = stale_code(deps, record.hashes)
    assert [s[0] for s in stale] == [str(pkg / "mod.py")]
    msg = code_changed_message("unlearn@rem-high-0.1-0", stale, again=True)
    assert "not committed" in msg and "mod.py" in msg and "fresh worker" in msg
    assert stale_code(deps, {}) == [] and stale_code(deps, None) == []
    for name in ("rfprobe_pkg.mod", "rfprobe_pkg"):
        sys.modules.pop(name, None)


def test_a_code_fingerprint_dependency_stands_for_the_files_it_hashes(tmp_path):
    """Stages depend on the `check` stage's fingerprints (artifacts/code/*.json), not on source files: the
    commit-time check follows a fingerprint to the source files it hashes."""
    import json

    pkg = tmp_path / "code"
    pkg.mkdir()
    (pkg / "mod.py").write_text("VALUE = 1\n")
    (pkg / "other.py").write_text("OTHER = 1\n")
    fp = tmp_path / "project" / "artifacts" / "code" / "stage-x.json"
    fp.parent.mkdir(parents=True)
    fp.write_text(json.dumps({"code": "../code", "files": {"mod.py": "h", "mod.py:f": "h"}}))
    imported = {str((pkg / n).resolve()): hashlib.md5((pkg / n).read_bytes()).hexdigest()
                for n in ("mod.py", "other.py")}
    assert stale_code([str(fp)], imported) == []
    (pkg / "other.py").write_text("OTHER = 2\n")  # imported, but not behind this stage's fingerprint
    assert stale_code([str(fp)], imported) == []
    (pkg / "mod.py").write_text("VALUE = 2\n")
    assert [os.path.basename(s[0]) for s in stale_code([str(fp)], imported)] == ["mod.py"]


# `first` imports the code in the worker, `edit` changes a module it imported (someone editing during the run),
# `second` runs on that same worker (one worker), still with the old code: refused at commit, run again on a fresh
# worker with the new code, then committed.
PIPELINE = """\
stages:
  first:
    cmd:
      - remflow methods
      - python -c "open('first.txt', 'w').write('1')"
    deps:
      - pkg/remflow/methods/base.py
    outs:
      - first.txt
  edit:
    cmd: python -c "open('pkg/remflow/methods/base.py', 'a').write('# edited during the run\\n'); open('edited.txt', 'w').write('1')"
    deps:
      - first.txt
    outs:
      - edited.txt
  second:
    cmd:
      - remflow methods
      - python -c "open('second.txt', 'w').write('2'); open('../second-runs.txt', 'a').write('x')"
    deps:
      - edited.txt
      - pkg/remflow/methods/base.py
    outs:
      - second.txt
"""


def test_a_code_edit_during_a_run_is_refused_at_commit(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    # the worker imports this copy of remflow (PYTHONPATH), the one the stages depend on
    shutil.copytree(ROOT / "remflow", repo / "pkg" / "remflow", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (repo / "dvc.yaml").write_text(PIPELINE)
    (repo / "params.yaml").write_text("runtime:\n  cpus: 1\n  workers: 1\n")
    env = _env(tmp_path)
    env["PYTHONPATH"] = str(repo / "pkg")
    _sh(repo, env, "git", "init", "-q")
    _sh(repo, env, "dvc", "init", "-q")
    _sh(repo, env, "git", "add", "-A")
    _sh(repo, env, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "codechange")
    before = (repo / "pkg" / "remflow" / "methods" / "base.py").read_bytes()

    try:
        r = subprocess.run([sys.executable, "-m", "remflow", "run"], cwd=repo, env=env, capture_output=True, text=True,
                           timeout=600)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert r.returncode == 0, r.stdout + r.stderr
    after = (repo / "pkg" / "remflow" / "methods" / "base.py").read_bytes()
    assert after != before
    assert "second not committed" in r.stderr and "base.py" in r.stderr and "fresh worker" in r.stderr
    assert "first not committed" not in r.stderr  # it finished before the edit
    assert (tmp_path / "second-runs.txt").read_text() == "xx"  # refused once, then ran on a fresh worker

    lock = YAML(typ="safe", pure=True).load((repo / "dvc.lock").read_text())["stages"]
    dep = {d["path"]: d["md5"] for d in lock["second"]["deps"]}
    assert dep["pkg/remflow/methods/base.py"] == hashlib.md5(after).hexdigest()  # the code that made it
    first = {d["path"]: d["md5"] for d in lock["first"]["deps"]}
    assert first["pkg/remflow/methods/base.py"] == hashlib.md5(before).hexdigest()
    # `first` ran the old code and says so: DVC sees its dependency changed; `second` is up to date
    status = _sh(repo, env, "dvc", "status", "--json").stdout
    assert "first" in status and "second" not in status
