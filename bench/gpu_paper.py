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

- stage_times.csv, written as stages end: one row a stage (kind, run, variant, regularity, rate, seed, seconds
  in the stage function, wall seconds of its process, when it started and ended, stages running when it
  started, status);
- results.csv: one row per unlearning run finished in this invocation, remflow evaluate's columns (pool such
  files with `remflow evaluate --from-csv`; not written when no run finished);
- params.yaml: the params that ran (the slice and the overrides applied), what bench/grid_time.py prices from;
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

STAGE_FIELDS = ["kind", "run", "variant", "regularity", "rate", "seed", "seconds", "wall_seconds", "started", "ended",
                "running_at_start", "status"]


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
    # only the originals the slice's runs need (a slice of ETD runs alone trains no standard original)
    g["pretrain_variants"] = [v for v, runs in (("standard", g.get("methods")), ("etd", g.get("etd_methods")))
                              if runs]
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
             log=print, sink=None) -> list[dict]:
    """Run `jobs` respecting their needs, `workers` at once, each in a fresh process; returns one row per job
    (in the plan's order), each also handed to `sink` as soon as it is final (stage_times.csv is written as the
    run goes, so a run killed from outside keeps what finished). `started`/`ended`: seconds from the start."""
    ctx = mp.get_context("spawn")  # CUDA cannot be re-initialised in a forked child
    queue = ctx.Queue()
    t_start = time.monotonic()
    done: dict[tuple, str] = {}
    running: dict[int, list] = {}  # order -> [job, process, started, running at start, Empty cycles seen dead]
    pending = sorted(jobs)
    rows: dict[int, dict] = {}

    def clock() -> float:
        return time.monotonic() - t_start

    def final(job, status, seconds=None, started=None, n=""):
        rows[job.order] = {"kind": job.kind, "run": job.run, "variant": job.variant, "regularity": job.regularity,
                           "rate": "" if job.rate is None else job.rate, "seed": job.seed,
                           "seconds": "" if seconds is None else f"{seconds:.2f}",
                           "wall_seconds": "" if started is None else f"{clock() - started:.2f}",
                           "started": "" if started is None else f"{started:.2f}",
                           "ended": "" if started is None else f"{clock():.2f}", "running_at_start": n,
                           "status": status}
        done[job.name] = "ok" if status == "ok" else status.split(":")[0]
        if sink is not None:
            sink(rows[job.order])

    def stop(proc) -> None:
        proc.join(10)  # a child that reported and hangs on its way out (a CUDA teardown) is not waited for
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def received(order, status, seconds) -> None:
        entry = running.pop(order, None)
        if entry is None:  # already counted as dead: its late message changes nothing
            return
        job, proc, started, n, _ = entry
        stop(proc)
        final(job, status, seconds, started, n)
        log(f"[{clock():7.1f}s] {status.split(':')[0]:>6} {job.kind} {job.run or job.variant} "
            f"{job.regularity} seed {job.seed}" + ("" if job.rate is None else f" rate {job.rate}")
            + ("" if seconds is None else f": {seconds:.1f} s ({n} running)") + ("" if status == "ok" else f" ({status})"))

    while pending or running:
        if clock() < budget:
            for job in list(pending):
                if len(running) >= workers:
                    break
                if any(done.get(n) not in (None, "ok") for n in job.needs):
                    pending.remove(job)
                    final(job, "skipped: a stage it needs did not finish")
                    continue
                if all(done.get(n) == "ok" for n in job.needs):
                    proc = ctx.Process(target=_child, args=(raw, str(work), job, queue), daemon=True)
                    proc.start()
                    running[job.order] = [job, proc, clock(), len(running) + 1, 0]
                    pending.remove(job)
        elif pending:
            for job in pending:
                final(job, "not started: budget spent")
            pending = []
        if not running:
            if pending and clock() < budget:  # nothing can start: a need is missing (a bug in plan())
                raise RuntimeError(f"stuck: {[j.name for j in pending][:3]}")
            continue
        if clock() > deadline:
            while True:  # what already reported counts as finished
                try:
                    received(*queue.get_nowait())
                except Empty:
                    break
            for job, proc, started, n, _ in list(running.values()):
                proc.terminate()
                final(job, "stopped at the deadline", None, started, n)
            for _, proc, *_ in running.values():
                stop(proc)
            running.clear()
            for job in pending:
                final(job, "not started: deadline")
            pending = []
            continue
        try:
            received(*queue.get(timeout=1.0))
        except Empty:
            for order, entry in list(running.items()):  # a child that died without reporting (killed for
                job, proc, started, n, seen = entry      # memory, say): dead through two quiet seconds
                if proc.is_alive():
                    continue
                if seen:
                    del running[order]
                    final(job, f"failed: exited with code {proc.exitcode} without reporting", None, started, n)
                else:
                    entry[4] = 1
    return [rows[k] for k in sorted(rows)]


def result_rows(work: Path, jobs: list[Job], stage_rows: list[dict]) -> list[dict]:
    """remflow evaluate's rows for the unlearning runs that finished in this invocation (a slice: no cell is
    required; a record left in --work by an earlier one is not read), in the plan's order. A run whose probe did
    not finish gets no measured regularity (NaN) rather than costing the other rows."""
    from remflow.errors import RemflowError
    from remflow.evaluate import _regularity
    from remflow.io import file_digest, read_json
    from remflow.records import row_of

    ok = {(r["kind"], r["run"], r["variant"], r["regularity"], str(r["rate"]), r["seed"])
          for r in stage_rows if r["status"] == "ok"}
    rows, probes = [], {}
    for job in jobs:
        if job.kind != "unlearn" or (job.kind, job.run, job.variant, job.regularity, str(job.rate), job.seed) not in ok:
            continue
        rec_path = paths(work, job)["run"] / "record.json"
        rec = read_json(rec_path, "run record")
        manifest = rec["inputs"]["manifest"]
        try:
            score = _regularity(work / "artifacts" / "probe", manifest, file_digest(manifest), probes)
        except RemflowError:
            score = float("nan")
        rows.append(row_of(rec, rec_path.parent, score))
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
    if args.workers < 1:
        raise SystemExit("--workers must be 1 or more")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out / "work"
    raw = load(args)
    from ruamel.yaml import YAML

    from remflow import report
    from remflow.params import validate

    p = validate(raw)  # bad params stop here, before any stage
    with open(out / "params.yaml", "w") as f:  # what ran, overrides and slice included (bench/grid_time.py)
        YAML(typ="safe", pure=True).dump(raw, f)
    jobs = plan(p)
    deadline = args.deadline if args.deadline is not None else args.budget + 120
    print(f"{len(jobs)} stages, {args.workers} at once, budget {args.budget:.0f} s, deadline {deadline:.0f} s",
          flush=True)
    with open(out / "stage_times.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=STAGE_FIELDS)
        w.writeheader()
        f.flush()

        def sink(row):
            w.writerow(row)
            f.flush()

        stage_rows = schedule(raw, jobs, work, args.workers, args.budget, deadline,
                              log=lambda s: print(s, flush=True), sink=sink)
    rows = result_rows(work, jobs, stage_rows)
    if rows:
        (out / "results.csv").write_text(report.csv_text(rows))
    text = summary_text(stage_rows, rows, args.workers)
    (out / "summary.txt").write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    main()
