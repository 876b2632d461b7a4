"""`remflow recheck`: editing the core as a normal step.

A refactor of a module that every stage depends on (data/task.py, config.py, ...) makes every stage of a suite
changed to DVC although no output would change. Re-running the suite to prove it takes an hour on
Fashion-MNIST. Instead:

1. re-run a sample of the changed stages with the code as it is now, each in a scratch folder that holds the
   suite's params.yaml and the stage's own data dependencies (the suite is not touched), and compare every
   output with the suite's, byte for byte (JSON records and logs with their timing and memory fields left out,
   and said so);
2. when every output is the same and `--record` is given, record the changed stages' present outputs under
   their new code hashes (`remflow run --commit`: one lock write, nothing runs).

The default sample is the first changed stage of each stage definition, and of each run for the unlearn
definitions (a method's own module is one of its cells' dependencies). The pipeline's `check` stage is run for
command first, in place (it writes only the method-code fingerprints), so that they are the current code's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from remflow.errors import RemflowError

TIMING = re.compile(r"seconds|time|peak_memory|wall|^device$|^torch$|^python$|^remflow$")


@dataclass
class Recheck:
    stages: list[str] = field(default_factory=list)  # the sample, as run
    rows: list[tuple[str, str, str, bool]] = field(default_factory=list)  # stage, output file, how, equal
    changed: int = 0  # stages changed to DVC
    recorded: int = 0  # stages committed with --record

    @property
    def all_equal(self) -> bool:
        return bool(self.rows) and all(r[3] for r in self.rows)


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not TIMING.search(k)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def compare(ours: Path, theirs: Path) -> tuple[bool, str]:
    if not theirs.exists():
        return False, "missing in the suite"
    if ours.read_bytes() == theirs.read_bytes():
        return True, "same bytes"
    if ours.suffix == ".json":
        try:
            a, b = json.loads(ours.read_text()), json.loads(theirs.read_text())
        except ValueError:
            a, b = None, True
        if a is not None and _strip(a) == _strip(b):
            return True, "same, timings aside"
    return False, (f"differs (md5 {hashlib.md5(ours.read_bytes()).hexdigest()[:8]} against "
                   f"{hashlib.md5(theirs.read_bytes()).hexdigest()[:8]})")


def _group(name: str) -> str:
    """The sample's key: the stage definition, and the run for unlearn cells (`unlearn@rem-high-0.1-0`)."""
    head, _, item = name.partition("@")
    return f"{head}@{item.split('-')[0]}" if head.startswith("unlearn") else head


def sample(changed: list[str]) -> list[str]:
    seen: set[str] = set()
    picked = []
    for name in changed:
        key = _group(name)
        if key not in seen and name != "check" and not name.endswith("evaluate"):
            seen.add(key)
            picked.append(name)
    return picked


def _run_check_stage(root: Path, stage) -> None:
    """Run the pipeline's `check` stage's command in place (it writes only artifacts/code; its lock entry is
    recorded with the rest, by --record)."""
    cmds = stage.cmd if isinstance(stage.cmd, list) else [stage.cmd]
    for cmd in cmds:
        r = subprocess.run(cmd, shell=True, cwd=root, capture_output=True, text=True)
        if r.returncode:
            raise RemflowError("the pipeline's check stage refused the suite", key=str(root / "params.yaml"),
                               got=_reason(r.stderr or r.stdout), hint="`remflow check` in the suite says what is wrong")


def _reason(text: str) -> str | None:
    """The lines of the last remflow error panel in `text` (its message, where, given, fix) without its borders,
    joined (warnings printed before it left out); the last line when there is no panel."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    tops = [i for i, ln in enumerate(lines) if ln.startswith("╭")]
    if not tops:
        return lines[-1] if lines else None
    inner = []
    for ln in lines[tops[-1] + 1:]:
        if ln.startswith("╰"):
            break
        inner.append(ln.strip("│").strip())
    return " / ".join(x for x in inner if x) or None


def recheck(root: Path, stages: list[str] | None = None, record: bool = False, echo=print) -> Recheck:
    from dvc.repo import Repo

    from remflow.executor import commit_only, plan

    root = Path(root).resolve()
    if not (root / "dvc.yaml").is_file():
        raise RemflowError("no dvc.yaml here", key=str(root), hint="run `remflow recheck` in a suite's folder")
    result = Recheck()
    previous = os.getcwd()
    os.chdir(root)  # DVC resolves stage names against the working directory
    try:
        with Repo(str(root)) as repo, repo.lock:
            known = {s.addressing for s in repo.index.stages}
            # a name as `dvc stage list` prints it, or qualified by its file (`dvc.yaml:pretrain@high-0-standard`)
            unknown = [n for n in stages or [] if n not in known and n.rpartition(":")[2] not in known]
            if unknown:  # before the check stage runs: a mistyped name writes nothing
                raise RemflowError("no such stage", key=unknown[0], got=unknown,
                                   hint="`dvc stage list` names them (e.g. pretrain@high-0-standard)")
            check = [s for s in repo.index.stages if s.addressing == "check"]
            if check and check[0].changed():
                _run_check_stage(root, check[0])
            # the stages whose own deps changed: once `check` has rewritten artifacts/code in place it counts as
            # changed itself, and plan() would pick every stage below it (all of them) without asking
            changed = [s.addressing for s in plan(repo)[0] if s.addressing != "check" and s.changed()]
            result.changed = len(changed)
            names = stages or sample(changed)
            for name in names:
                try:
                    (stage,) = repo.stage.collect(name)
                except Exception as e:  # noqa: BLE001  an unknown name
                    raise RemflowError(f"no such stage: {e}", key=name, hint="`dvc stage list` names them") from None
                missing = [o.def_path for o in stage.outs if not o.exists]
                if missing:
                    raise RemflowError("the suite lacks this stage's outputs: there is nothing to compare with",
                                       key=name, got=missing[0], hint="run the suite first (remflow run)")
                echo(f"recheck: running {name}")
                result.stages.append(name)
                result.rows.extend(_rerun(root, stage, name))
    finally:
        os.chdir(previous)
    if record and result.all_equal:
        result.recorded = commit_only(root)
    return result


def _rerun(root: Path, stage, name: str) -> list[tuple[str, str, str, bool]]:
    scratch = Path(tempfile.mkdtemp(prefix="remflow-recheck-"))
    try:
        shutil.copy(root / "params.yaml", scratch / "params.yaml")
        for dep in stage.deps:
            p = Path(dep.fs_path)
            if not p.is_relative_to(root) or not p.exists() or p.name == "params.yaml":
                continue  # the code (the current code is what is checked) and params
            rel = p.relative_to(root)
            (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if p.is_dir() else shutil.copy)(p, scratch / rel)
        cmds = stage.cmd if isinstance(stage.cmd, list) else [stage.cmd]
        env = dict(os.environ, REMFLOW_PROGRESS="off")
        for cmd in cmds:
            r = subprocess.run(cmd, shell=True, cwd=scratch, env=env, capture_output=True, text=True)
            if r.returncode:
                tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
                raise RemflowError(f"{name}: its command failed with the current code", key=name, got=tail)
        rows = []
        for out in stage.outs:
            rel = Path(out.fs_path).relative_to(root)
            for f in _files(scratch / rel):
                equal, how = compare(f, root / f.relative_to(scratch))
                rows.append((name, str(f.relative_to(scratch)), how, equal))
        return rows
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
