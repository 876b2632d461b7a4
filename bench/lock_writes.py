"""Writing dvc.lock in batches: DVC's own batched write against remflow's LockText, side by side.

`remflow run` commits finished stages in batches (at most `Options.batch`, 64, a write; the 1909-stage grid of
bench/orchestration.py took 33 writes). DVC can write several stages' lock entries at once itself:
`ProjectFile.dump_stages(stages, update_pipeline=False)` (what `dvc commit` calls, one call per dvc.yaml) goes
to `Lockfile.dump_stages`, which parses the whole lock with ruamel's round-trip parser, updates the entries and
dumps the whole file again, once per call. LockText (remflow/executor/dvcio.py) keeps the lock as text blocks
between batches and serialises only the batch's stages, with DVC's own `to_lockfile` and YAML dumper.

The benchmark builds a DVC project of --stages stages (a `matrix`; each stage 30 code files, three params and
two outputs, about the lock entry size of a real unlearn cell), saves every stage (hashes), then writes the
lock batch by batch both ways:
  * LockText: every batch, timed (the whole run);
  * DVC: the batches at --samples points of the run (the lock before each is LockText's, byte-equal to DVC's
    own, checked), the total estimated by linear interpolation between them (a write's cost is linear in the
    lock's size), or every batch with --dvc-all.

    python bench/lock_writes.py                  # 2000 stages, batches of 64
    python bench/lock_writes.py --stages 500 --dvc-all
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_project(path: Path, n: int) -> None:
    (path / "code").mkdir(parents=True)
    for j in range(30):
        (path / "code" / f"m{j:02d}.py").write_text(f"# module {j}\n" + "x = 1\n" * (j + 1))
    (path / "params.yaml").write_text("seed: 0\nunlearn:\n  epochs: 2\n  lr: 0.001\nmethod: none\n")
    items = "\n".join(f"      - {i}" for i in range(n))
    deps = "\n".join(f"      - code/m{j:02d}.py" for j in range(30))
    (path / "dvc.yaml").write_text(f"""\
stages:
  cell:
    matrix:
      i:
{items}
    cmd: remflow unlearn --cell ${{item.i}} --out out/${{item.i}}
    deps:
{deps}
    params:
      - seed
      - unlearn
      - method
    outs:
      - out/${{item.i}}/model.safetensors
      - out/${{item.i}}/record.json
""")
    for i in range(n):
        (path / "out" / str(i)).mkdir(parents=True)
        (path / "out" / str(i) / "model.safetensors").write_bytes(os.urandom(256))
        (path / "out" / str(i) / "record.json").write_text(f'{{"cell": {i}}}\n')
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(args, cwd=path, env=env, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64, help="stages a lock write (remflow run's Options.batch)")
    ap.add_argument("--samples", type=int, default=4, help="batches at which DVC's write is timed")
    ap.add_argument("--dvc-all", action="store_true", help="time DVC's write of every batch (slow)")
    args = ap.parse_args()

    import logging

    from dvc.repo import Repo

    from remflow.executor.dvcio import LockText, lock_path

    with tempfile.TemporaryDirectory(prefix="remflow-lock-") as tmp:
        proj = Path(tmp) / "p"
        make_project(proj, args.stages)
        logging.getLogger("dvc").setLevel(logging.WARNING)  # no "Updating lock file" per write
        repo = Repo(str(proj))
        stages = [s for s in repo.index.stages if s.cmd]
        stages.sort(key=lambda s: int(s.name.split("@")[1]))
        t = time.perf_counter()
        for s in stages:
            s.save(run_cache=False)
        print(f"{len(stages)} stages saved (hashed) in {time.perf_counter() - t:.1f}s", flush=True)
        batches = [stages[i:i + args.batch] for i in range(0, len(stages), args.batch)]
        lock = lock_path(stages[0].dvcfile)
        order = [s.name for s in stages]

        # LockText writes every batch (timed); at the picked batches DVC writes the same batch onto the same
        # lock right after it (interleaved, so that both see the same load on a shared machine)
        if args.dvc_all:
            picks = list(range(len(batches)))
        else:
            k = max(2, args.samples)
            picks = sorted({round(j * (len(batches) - 1) / (k - 1)) for j in range(k)})
        ours: list[float] = []
        theirs: dict[int, float] = {}
        same = 0
        text = LockText(lock, order=order)
        for b, group in enumerate(batches):
            before = Path(lock).read_bytes() if os.path.exists(lock) else None
            t = time.perf_counter()
            text.update(group)
            text.write()
            ours.append(time.perf_counter() - t)
            if b not in picks:
                continue
            after = Path(lock).read_bytes()
            if before is None:
                os.unlink(lock)
            else:
                Path(lock).write_bytes(before)
            t = time.perf_counter()
            group[0].dvcfile.dump_stages(group, update_pipeline=False)
            theirs[b] = time.perf_counter() - t
            same += Path(lock).read_bytes() == after
            Path(lock).write_bytes(after)
            print(f"  batch {b + 1:3d}/{len(batches)} (lock of {b * args.batch + len(group):5d} stages): "
                  f"DVC {theirs[b]:7.3f}s  LockText {ours[b]:6.3f}s", flush=True)
        final_size = os.path.getsize(lock) / 1e6
        repo.close()

    # DVC's total: measured at the picks, linear in between
    est = 0.0
    for b in range(len(batches)):
        lo = max((p for p in picks if p <= b), default=picks[0])
        hi = min((p for p in picks if p >= b), default=picks[-1])
        est += theirs[lo] if hi == lo else theirs[lo] + (theirs[hi] - theirs[lo]) * (b - lo) / (hi - lo)
    kind = "measured" if args.dvc_all else f"estimated from {len(picks)} timed batches"
    total = sum(ours)
    print(f"{len(stages)} stages in {len(batches)} batches of {args.batch}, final lock {final_size:.2f} MB")
    print(f"{'writer':44s} {'total s':>9s} {'per stage s':>12s}")
    print(f"{'DVC ProjectFile.dump_stages (' + kind + ')':44s} {est:9.2f} {est / len(stages):12.4f}")
    print(f"{'remflow LockText (measured)':44s} {total:9.2f} {total / len(stages):12.4f}")
    print(f"same bytes as DVC's write at the timed batches: {same} of {len(picks)}")
    print(f"ratio DVC / LockText: {est / max(total, 1e-9):.1f}x")


if __name__ == "__main__":
    main()
