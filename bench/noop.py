"""A no-op `dvc repro` of a suite, with ruamel's C parser against without it, side by side.

DVC reads dvc.yaml, dvc.lock and params.yaml with ruamel's YAML(typ="safe"), which uses the C parser of
ruamel.yaml.clib when it is importable (a remflow dependency). The pure-Python run hides it for the child
process only, so both read the same files in alternation:

    python bench/noop.py                       # the root suite (must be up to date: run it first)
    python bench/noop.py --suite pipelines/digits-full --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def once(suite: Path, env: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run(["dvc", "repro"], cwd=suite, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0 or "up to date" not in r.stdout + r.stderr:
        raise SystemExit(f"{suite}: not a no-op (run the suite first):\n{(r.stdout + r.stderr)[-2000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default=".", help="a suite's folder (default: the root suite)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    suite = (ROOT / args.suite).resolve()
    with tempfile.TemporaryDirectory() as hide:
        Path(hide, "_ruamel_yaml.py").write_text('raise ImportError("hidden by bench/noop.py")\n')
        with_c = dict(os.environ, DVC_NO_ANALYTICS="1")
        pure = dict(with_c, PYTHONPATH=hide + os.pathsep + os.environ.get("PYTHONPATH", ""))
        a, b = [], []
        for _ in range(args.repeats):
            a.append(once(suite, with_c))
            b.append(once(suite, pure))
    lock = suite / "dvc.lock"
    size = lock.stat().st_size / 1024 if lock.exists() else 0
    print(f"{suite.relative_to(ROOT) if suite != ROOT else 'root suite'}: dvc.lock {size:.0f} KB, "
          f"{args.repeats} runs each, alternating")
    print(f"  with ruamel's C parser  median {statistics.median(a):.2f}s  ({', '.join(f'{x:.2f}' for x in a)})")
    print(f"  pure-Python parser      median {statistics.median(b):.2f}s  ({', '.join(f'{x:.2f}' for x in b)})")
    print(f"  ratio pure / C: {statistics.median(b) / statistics.median(a):.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
