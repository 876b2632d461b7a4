"""Which stages of each DVC project resolve differently at a git revision and in the working tree.

    python bench/stage_diff.py <revision>

For the root project and every suite under pipelines/ that both sides have, DVC resolves dvc.yaml + params.yaml
of each side (in a scratch DVC project) and compares every stage's cmd, deps, outs and params: a stage that
resolves the same and whose code files are unchanged is not re-run by a change.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stages_of(dvc_text: str, params_text: str) -> dict[str, str]:
    from dvc.repo import Repo

    scratch = tempfile.mkdtemp()
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=scratch, check=True)
    Path(scratch, "dvc.yaml").write_text(dvc_text)
    Path(scratch, "params.yaml").write_text(params_text)
    with Repo(scratch) as repo:
        return {s.name: json.dumps({"cmd": s.cmd, "deps": sorted(str(d.def_path) for d in s.deps),
                                    "outs": sorted(str(o.def_path) for o in s.outs),
                                    "params": sorted((str(p.def_path), str(p.params)) for p in s.params)},
                                   sort_keys=True) for s in repo.index.stages}


def main(rev: str) -> None:
    projects = [""] + sorted(f"pipelines/{p.name}/" for p in (ROOT / "pipelines").iterdir() if (p / "dvc.yaml").is_file())
    for proj in projects:
        try:
            old = stages_of(*(subprocess.check_output(["git", "show", f"{rev}:{proj}{f}"], cwd=ROOT, text=True,
                                                      stderr=subprocess.DEVNULL) for f in ("dvc.yaml", "params.yaml")))
        except subprocess.CalledProcessError:
            print(f"{proj or '.'}: not at {rev}")
            continue
        new = stages_of((ROOT / proj / "dvc.yaml").read_text(), (ROOT / proj / "params.yaml").read_text())
        changed = sorted(k for k in old if old[k] != new.get(k))
        added = sorted(set(new) - set(old))
        print(f"{proj or '.'}: {len(old)} stages at {rev}, {len(new)} now; resolve differently: "
              f"{', '.join(changed) or 'none'}; new: {len(added)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "HEAD")
