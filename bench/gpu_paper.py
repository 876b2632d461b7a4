"""A slice of a suite's grid on one machine without DVC or Ray: the stages' own functions, several runs at once
(each stage its own process, so runs share one GPU as `runtime.gpus: 0.25` shares it under `remflow run`), each
stage timed, stopped at a time budget. For a lent GPU machine that has PyTorch but neither DVC nor Ray
(bench/gpu_paper.sh); on the CPU it is the same code path (tests/test_gpu_paper.py).

    python bench/gpu_paper.py --params pipelines/fashion-mnist-paper/params.yaml --root .fmnist \\
        --regularities high --seeds 0 --rates 0.1,1.0 --workers 4 --budget 420 --out OUT

Stages run in the order a reader wants them for a budget that may end early: each (regularity, seed) in the
order given, its corruption and probe, its original models, then its runs rate by rate, every method of a rate
before the next rate. When the budget is spent no new stage starts; the running ones finish, or are stopped at
`--deadline`. Written to --out:

- stage_times.csv: one row a stage (kind, run, variant, regularity, rate, seed, seconds in the stage function,
  wall seconds of its process, stages running when it started, status);
- results.csv: one row per finished unlearning run, remflow evaluate's columns (pool such files with
  `remflow evaluate --from-csv`);
- summary.txt: the stage times by kind and, where runs of a cell finished, the runs' Utility x Healed.
"""

from __future__ import annotations

import argparse
import csv
import io
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

STAGE_FIELDS = ["kind", "run", "variant", "regularity", "rate", "seed", "seconds", "wall_seconds", "running_at_start",
                "status"]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", required=True, help="a suite's params.yaml")
    p.add_argument("--root", default=None, help="data.root (relative to the current folder)")
    p.add_argument("--regularities", default=None, help="comma-separated; default: the grid's")
    p.add_argument("--seeds", default=None, help="comma-separated; default: the grid's")
    p.add_argument("--rates", default=None, help="comma-separated discovery rates; default: the grid's")
    p.add_argument("--methods", default=None, help="comma-separated runs of the standard model; default: the grid's")
    p.add_argument("--etd-methods", default=None, help="comma-separated runs of the ETD model; default: the grid's "
                   "('' for none: the ETD original is then not trained)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a params key (YAML value), e.g. --set robustness.enabled=false")
    p.add_argument("--workers", type=int, default=4, help="stages at once")
    p.add_argument("--budget", type=float, default=420.0, help="seconds after which no new stage starts")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds after which running stages are stopped (default: budget + 120)")
    p.add_argument("--work", default=None, help="folder for models and records (default: OUT/work)")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def load(args) -> dict:
    """The params as a plain dict, narrowed to the slice and with the overrides applied (validated later)."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    raw = yaml.load(Path(args.params).read_text())
    g = raw["grid"]

    def listed(text, cast):
        return [cast(v) for v in text.split(",") if v.strip()]

    if args.regularities is not None:
        g["regularities"] = listed(args.regularities, str)
    if args.seeds is not None:
        g["seeds"] = listed(args.seeds, int)
    if args.rates is not None:
        g["discovery_rates"] = listed(args.rates, float)
    if args.methods is not None:
        g["methods"] = listed(args.methods, str)
    if args.etd_methods is not None:
        g["etd_methods"] = listed(args.etd_methods, str)
    if not g.get("etd_methods"):
        g["pretrain_variants"] = ["standard"]
    if args.root is not None:
        raw["data"]["root"] = str(Path(args.root).resolve())
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: write KEY=VALUE")
        node = raw
        *parents, last = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = yaml.load(value)
    return raw


@dataclass(order=True)
class Job:
    order: int
    kind: str = field(compare=False)  # corrupt, probe, pretrain, discover, unlearn
    regularity: str = field(compare=False)
    seed: int = field(compare=False)
    variant: str = field(default="", compare=False)
    rate: float | None = field(default=None, compare=False)
    run: str = field(default="", compare=False)
    needs: tuple = field(default=(), compare=False)

    @property
    def name(self) -> tuple:
        return (self.kind, self.regularity, self.seed, self.variant, self.rate, self.run)


def plan(p) -> list[Job]:
    """Every stage of the slice, in the order a budget should take them."""
    g = p.grid
    jobs: list[Job] = []

    def add(**kw):
        jobs.append(Job(len(jobs), **kw))
        return jobs[-1].name

    for reg in g.regularities:
        for seed in g.seeds:
            c = add(kind="corrupt", regularity=reg, seed=seed)
            add(kind="probe", regularity=reg, seed=seed, needs=(c,))
            originals = {v: add(kind="pretrain", regularity=reg, seed=seed, variant=v, needs=(c,))
                         for v in g.pretrain_variants}
            for rate in g.discovery_rates:
                d = add(kind="discover", regularity=reg, seed=seed, rate=float(rate), needs=(c,))
                for runs, variant in ((g.methods, "standard"), (g.etd_methods, "etd")):
                    for run in runs:
                        add(kind="unlearn", regularity=reg, seed=seed, variant=variant, rate=float(rate), run=run,
                            needs=(d, originals[variant]))
    return jobs


def paths(work: Path, job: Job) -> dict:
    cell = f"{job.regularity}-{job.seed}"
    prefix = "etd-" if job.variant == "etd" else ""
    return {
        "manifest": work / "artifacts" / "corrupt" / f"{cell}.json",
        "probe": work / "artifacts" / "probe" / f"{cell}.json",
        "pretrain": work / "artifacts" / "pretrain" / f"{cell}-{job.variant}",
        "discover": work / "artifacts" / "discover" / f"{job.regularity}-{job.rate}-{job.seed}.json",
        "run": work / "runs" / f"{prefix}{job.run}-{job.regularity}-{job.rate}-{job.seed}",
    }


def execute(raw: dict, work: Path, job: Job) -> float:
    """One stage, in this process; returns the seconds its function took."""
    from remflow import stages
    from remflow.params import validate

    p = validate(raw)
    f = paths(work, job)
    t0 = time.perf_counter()
    if job.kind == "corrupt":
        stages.corrupt(p, job.regularity, job.seed, f["manifest"])
    elif job.kind == "probe":
        stages.probe(p, f["manifest"], f["probe"])
    elif job.kind == "pretrain":
        stages.pretrain(p, f["manifest"], f["pretrain"], job.variant)
    elif job.kind == "discover":
        stages.discover(p, f["manifest"], f["discover"], rate=job.rate)
    else:
        stages.unlearn(p, job.run, f["pretrain"] / "model.safetensors", f["manifest"], f["discover"], f["run"])
    return time.perf_counter() - t0


def _child(raw: dict, work: str, job: Job, queue) -> None:
    os.environ.setdefault("REMFLOW_PROGRESS", "off")
    try:
        queue.put((job.order, "ok", execute(raw, Path(work), job)))
    except BaseException as e:  # noqa: BLE001 - reported in stage_times.csv and summary.txt, the run goes on
        queue.put((job.order, f"failed: {type(e).__name__}: {e}"[:300], None))


def schedule(raw: dict, jobs: list[Job], work: Path, workers: int, budget: float, deadline: float,
             log=print) -> list[dict]:
    """Run `jobs` respecting their needs, `workers` at once, each in a fresh process; returns one row per stage
    that started (and one per stage that could not: status `not started`)."""
    ctx = mp.get_context("spawn")  # CUDA cannot be re-initialised in a forked child
    queue = ctx.Queue()
    t_start = time.monotonic()
    done: dict[tuple, str] = {}
    running: dict[int, tuple[Job, mp.Process, float, int]] = {}
    pending = sorted(jobs)
    rows: dict[int, dict] = {}

    def row(job, **kw):
        return {"kind": job.kind, "run": job.run, "variant": job.variant, "regularity": job.regularity,
                "rate": "" if job.rate is None else job.rate, "seed": job.seed, **kw}

    while pending or running:
        now = time.monotonic() - t_start
        if now < budget:
            for job in list(pending):
                if len(running) >= workers:
                    break
                if any(done.get(n) not in (None, "ok") for n in job.needs):
                    pending.remove(job)
                    done[job.name] = "skipped"
                    rows[job.order] = row(job, seconds="", wall_seconds="", running_at_start="",
                                          status="skipped: a stage it needs failed")
                    continue
                if all(done.get(n) == "ok" for n in job.needs):
                    proc = ctx.Process(target=_child, args=(raw, str(work), job, queue), daemon=True)
                    proc.start()
                    running[job.order] = (job, proc, time.monotonic(), len(running) + 1)
                    pending.remove(job)
        elif pending:
            for job in pending:
                rows[job.order] = row(job, seconds="", wall_seconds="", running_at_start="",
                                      status="not started: budget spent")
            pending = []
        if not running:
            if pending and now < budget:  # nothing can start: a need is missing (a bug in plan())
                raise RuntimeError(f"stuck: {[j.name for j in pending][:3]}")
            continue
        if time.monotonic() - t_start > deadline:
            for order, (job, proc, t0, n) in running.items():
                proc.terminate()
                rows[order] = row(job, seconds="", wall_seconds=f"{time.monotonic() - t0:.1f}",
                                  running_at_start=n, status="stopped at the deadline")
                done[job.name] = "stopped"
            running.clear()
            for job in pending:
                rows[job.order] = row(job, seconds="", wall_seconds="", running_at_start="",
                                      status="not started: deadline")
            pending = []
            continue
        try:
            order, status, seconds = queue.get(timeout=1.0)
        except Empty:
            for order, (job, proc, t0, n) in list(running.items()):  # a child that died without reporting
                if not proc.is_alive() and proc.exitcode not in (0, None):  # (killed for memory, say)
                    rows[order] = row(job, seconds="", wall_seconds=f"{time.monotonic() - t0:.1f}",
                                      running_at_start=n, status=f"failed: exit code {proc.exitcode}")
                    done[job.name] = "failed"
                    del running[order]
            continue
        job, proc, t0, n = running.pop(order)
        proc.join()
        wall = time.monotonic() - t0
        rows[order] = row(job, seconds="" if seconds is None else f"{seconds:.2f}", wall_seconds=f"{wall:.2f}",
                          running_at_start=n, status=status)
        done[job.name] = "ok" if status == "ok" else "failed"
        log(f"[{time.monotonic() - t_start:7.1f}s] {status:>6} {job.kind} {job.run or job.variant} "
            f"{job.regularity} seed {job.seed}" + ("" if job.rate is None else f" rate {job.rate}")
            + ("" if seconds is None else f": {seconds:.1f} s ({n} running)"))
    return [rows[k] for k in sorted(rows)]


def result_rows(work: Path, jobs: list[Job]) -> list[dict]:
    """remflow evaluate's rows for every finished unlearning run of `jobs` under `work` (a slice: no cell is
    required), in the plan's order."""
    from remflow.evaluate import _regularity
    from remflow.io import file_digest, read_json
    from remflow.records import row_of

    rows, probes = [], {}
    for job in jobs:
        rec_path = paths(work, job)["run"] / "record.json"
        if job.kind != "unlearn" or not rec_path.is_file():
            continue
        rec = read_json(rec_path, "run record")
        manifest = rec["inputs"]["manifest"]
        rows.append(row_of(rec, rec_path.parent, _regularity(work / "artifacts" / "probe", manifest,
                                                             file_digest(manifest), probes)))
    return rows


def summary_text(stage_rows: list[dict], rows: list[dict], workers: int) -> str:
    from remflow import report

    out = io.StringIO()
    by_kind: dict[str, list[float]] = {}
    for r in stage_rows:
        if r["status"] == "ok" and r["kind"] in ("pretrain", "unlearn"):
            key = f"pretrain {r['variant']}" if r["kind"] == "pretrain" else r["run"] + (
                " (etd)" if r["variant"] == "etd" else "")
            by_kind.setdefault(key, []).append(float(r["seconds"]))
    out.write(f"stage seconds (stage function, {workers} stages at once at most):\n")
    for key, secs in by_kind.items():
        out.write(f"  {key:24s} n={len(secs):3d}  mean {sum(secs) / len(secs):8.1f}  max {max(secs):8.1f}\n")
    counts: dict[str, int] = {}
    for r in stage_rows:
        counts[r["status"].split(":")[0]] = counts.get(r["status"].split(":")[0], 0) + 1
    out.write("stages: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "\n")
    if rows:
        out.write("\n" + report.to_markdown(report.summary_table(rows)) + "\n")
        runs = report.runs_in_order(rows)
        if "rem" in runs and len(runs) > 1:
            out.write("\n" + report.to_markdown(report.paired_table(rows, "rem")) + "\n")
    return out.getvalue()


def main(argv=None) -> None:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out / "work"
    raw = load(args)
    from remflow.params import validate

    p = validate(raw)  # bad params stop here, before any stage
    jobs = plan(p)
    deadline = args.deadline if args.deadline is not None else args.budget + 120
    print(f"{len(jobs)} stages, {args.workers} at once, budget {args.budget:.0f} s, deadline {deadline:.0f} s",
          flush=True)
    stage_rows = schedule(raw, jobs, work, args.workers, args.budget, deadline,
                          log=lambda s: print(s, flush=True))
    with open(out / "stage_times.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=STAGE_FIELDS)
        w.writeheader()
        w.writerows(stage_rows)
    from remflow import report

    rows = result_rows(work, jobs)
    (out / "results.csv").write_text(report.csv_text(rows) if rows else "")
    text = summary_text(stage_rows, rows, args.workers)
    (out / "summary.txt").write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    main()
