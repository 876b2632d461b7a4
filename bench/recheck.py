"""Rerun a sample of a suite's stages with the code as it is now, in a scratch folder, and compare their outputs
with the suite's, byte for byte: the check to make before `remflow run --commit` records a code change as one
that leaves the outputs as they are.

    python bench/recheck.py pipelines/fashion-mnist corrupt@high-0 pretrain@high-0-standard \\
        unlearn@rem-high-0.5-0 unlearn@retrain-medium-0.1-1

Each stage's command runs as dvc.yaml states it, in a scratch copy holding the suite's params.yaml and the
stage's data dependencies (the suite's own files, not the code); the suite itself is not touched. Checkpoints
and manifests are compared as bytes; JSON outputs that hold timings (run records, training logs) are compared
with their timing and memory fields left out, and say so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TIMING = re.compile(r"seconds|time|peak_memory|wall|^device$|^torch$|^python$|^remflow$")


def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if not TIMING.search(k)}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def compare(ours: Path, theirs: Path) -> tuple[bool, str]:
    if not theirs.exists():
        return False, "missing in the suite"
    if ours.read_bytes() == theirs.read_bytes():
        return True, "same bytes"
    if ours.suffix == ".json":
        a, b = json.loads(ours.read_text()), json.loads(theirs.read_text())
        if strip(a) == strip(b):
            return True, "same, timings aside"
    return False, f"differs (md5 {hashlib.md5(ours.read_bytes()).hexdigest()[:8]} against " \
                  f"{hashlib.md5(theirs.read_bytes()).hexdigest()[:8]})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", help="the suite's folder (a DVC project)")
    ap.add_argument("stages", nargs="+", help="stage names as in `dvc stage list`")
    args = ap.parse_args()
    from dvc.repo import Repo

    suite = Path(args.suite).resolve()
    os.chdir(suite)  # DVC resolves stage names against the working directory
    repo = Repo(str(suite))
    all_equal = True
    rows = []
    for name in args.stages:
        (stage,) = repo.stage.collect(name)
        scratch = Path(tempfile.mkdtemp(prefix="recheck-"))
        shutil.copy(suite / "params.yaml", scratch / "params.yaml")
        for dep in stage.deps:
            p = Path(dep.fs_path)
            if not p.is_relative_to(suite) or p.is_relative_to(suite / "method-code") or not p.exists():
                continue  # code (the current code is what is checked) and params
            rel = p.relative_to(suite)
            (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if p.is_dir() else shutil.copy)(p, scratch / rel)
        cmds = stage.cmd if isinstance(stage.cmd, list) else [stage.cmd]
        env = dict(os.environ, REMFLOW_PROGRESS="off")
        for cmd in cmds:
            r = subprocess.run(cmd, shell=True, cwd=scratch, env=env, capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"{name}: `{cmd}` failed:\n{r.stderr[-2000:]}")
        for out in stage.outs:
            rel = Path(out.fs_path).relative_to(suite)
            for f in files(scratch / rel):
                equal, how = compare(f, suite / f.relative_to(scratch))
                all_equal &= equal
                rows.append((name, str(f.relative_to(scratch)), how))
        shutil.rmtree(scratch, ignore_errors=True)
    repo.close()
    width = max(len(r[1]) for r in rows)
    for name, path, how in rows:
        print(f"{path:<{width}}  {how}")
    print(f"all_equal: {all_equal}")
    sys.exit(0 if all_equal else 1)


if __name__ == "__main__":
    main()
