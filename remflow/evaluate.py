"""The evaluate stage: score every run of the grid (paper §5.1) and collect its cost figures; the tables and
files are remflow.report's."""

from __future__ import annotations

import os
from pathlib import Path

from remflow.data.corruption import check_discovery, load_manifest
from remflow.data.datasets import Splits, load_splits
from remflow.data.task import Task, make_task
from remflow.detection.probe import regularity_score
from remflow.detection.stages import check_detection, view_indices
from remflow.errors import RemflowError
from remflow.io import file_digest, read_json
from remflow.metrics import evaluate_model
from remflow.models import load_model
from remflow.config import CORRUPTION_OF, ParamsBase
from remflow.train import setup_runtime

# a detection-study row's run label: `<run>_det` on D_f as the detector flagged it, `<run>_hits` on its true
# positives alone (remflow/detection/)
VIEW_SUFFIX = {"found": "_det", "hits": "_hits"}


def run_label(run: str, pretrained: str) -> str:
    return run if pretrained == "standard" else f"{run}_etd"


def expected_cells(params: ParamsBase) -> list[tuple[str, str, str, float, int]]:
    """(run, pretrained, regularity, rate, seed) for every cell the grid asks for, in table order."""
    g = params.grid
    cells = []
    for runs, variant in ((g.methods, "standard"), (g.etd_methods, "etd")):
        for run in runs:
            for reg in g.regularities:
                for rate in g.discovery_rates:
                    for seed in g.seeds:
                        cells.append((run, variant, reg, float(rate), int(seed)))
    return cells


def _collect(runs_dir: str | Path, cells: list[tuple], key, describe) -> list[tuple[dict, Path]]:
    """The run records of `cells` under `runs_dir`, in their order: `key(rec)` names a record's cell (None: not
    of this grid); stale records of removed cells are ignored, a missing one is refused (`describe(cell)`)."""
    found: dict[tuple, tuple[dict, Path]] = {}
    for rec_path in sorted(Path(runs_dir).glob("*/record.json")):
        rec = read_json(rec_path, "run record")
        k = key(rec, rec_path)
        if k is not None:
            found[k] = (rec, rec_path.parent)
    missing = [c for c in cells if c not in found]
    if missing:
        raise RemflowError(f"{len(missing)} of {len(cells)} {describe(missing[0])}", key=str(runs_dir),
                           hint="run `dvc repro` first")
    return [found[c] for c in cells]


def collect_runs(params: ParamsBase, runs_dir: str | Path) -> list[tuple[dict, Path]]:
    """The run records of the current grid; stale runs of removed cells are ignored, missing ones refused."""

    def key(rec, rec_path):
        if rec.get("study") == "detection":
            return None
        try:
            return (rec["run"], rec["pretrained"], rec["regularity"], float(rec["discovery_rate"]), int(rec["seed"]))
        except (KeyError, TypeError, ValueError):
            raise RemflowError("run record lacks its cell identity", key=str(rec_path),
                               hint="delete the run folder and rerun dvc repro") from None

    def describe(cell):
        run, var, reg, rate, seed = cell
        return f"runs are missing, e.g. {run_label(run, var)} {reg} rate {rate} seed {seed}"

    return _collect(runs_dir, expected_cells(params), key, describe)


def expected_detection_cells(params) -> list[tuple[str, str, float, int, str]]:
    """(run, corruption, budget, seed, view) for every cell of the detection study, in table order."""
    d = getattr(params, "detection", None)
    if d is None:
        return []
    return [(run, corr, float(b), int(seed), view) for run in d.methods for view in d.views
            for corr in d.corruptions for b in d.budgets for seed in params.grid.seeds]


def collect_detection_runs(params, runs_dir: str | Path) -> list[tuple[dict, Path]]:
    def key(rec, _):
        if rec.get("study") != "detection":
            return None
        return (rec["run"], rec["corruption"], float(rec["discovery_rate"]), int(rec["seed"]), rec["view"])

    def describe(cell):
        run, corr, b, seed, view = cell
        return f"detection-study runs are missing, e.g. {run} on {corr} budget {b:g} seed {seed} ({view})"

    return _collect(runs_dir, expected_detection_cells(params), key, describe)


def discovery_columns(discovered: list[int], manifest: dict, label: str) -> dict:
    """How D_f stands against D_c: precision (share of D_f in D_c) and recall (share of D_c in D_f)."""
    corrupted = set(manifest["indices"])
    hits = len(set(discovered) & corrupted)
    return {"discovery": label, "discovery_precision": round(hits / len(discovered), 6) if discovered else float("nan"),
            "discovery_recall": round(hits / len(corrupted), 6)}


# runs a scoring process must have before a pool pays for its start (a spawned process imports torch and
# reloads the data: about 5 s on 2 cores; scoring a run takes about 0.7 s there on Fashion-MNIST)
RUNS_PER_PROCESS = 32

_SCORER: dict = {}  # the process's scoring state: params, device, splits, tasks by manifest path


def scoring_processes(runs: int, device) -> int:
    """How many processes score the runs: the CPU cores this process may use, at most one per
    RUNS_PER_PROCESS runs; 1 (in this process) on a GPU or for a small grid. REMFLOW_EVAL_PROCESSES
    overrides it. Each process scores whole runs on `runtime.threads`, as this one would, so the scores are
    the same whatever the count."""
    want = os.environ.get("REMFLOW_EVAL_PROCESSES")
    if want:
        try:
            n = int(want)
        except ValueError:
            raise RemflowError("not a number of processes", key="REMFLOW_EVAL_PROCESSES", got=want) from None
        if n < 1:
            raise RemflowError("at least one process scores the runs", key="REMFLOW_EVAL_PROCESSES", got=want)
        return min(n, max(1, runs))
    if device.type != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, runs // RUNS_PER_PROCESS))


def _start_scorer(raw_params: dict | None, params=None, splits: Splits | None = None,
                  tasks: dict | None = None) -> None:
    """Set up this process to score runs (a pool's initializer gets the params as a mapping)."""
    if params is None:
        from remflow.detection.loader import validate

        params = validate(raw_params)
    device = setup_runtime(params.runtime)
    _SCORER.update(params=params, device=device, splits=splits or load_splits(params.data), tasks=tasks or {})


def _score(job: tuple[str, str, list[int]]) -> dict[str, float]:
    """§5.1's metrics of one run: (run folder, manifest path, discovered indices)."""
    folder, manifest_path, discovered = job
    s = _SCORER
    if manifest_path not in s["tasks"]:
        s["tasks"][manifest_path] = make_task(s["params"].data, s["splits"], s["device"],
                                              load_manifest(manifest_path, s["splits"]))
    model, _ = load_model(Path(folder) / "model.safetensors", s["device"])
    return evaluate_model(model, s["tasks"][manifest_path].with_discovered(discovered),
                          s["params"].runtime.eval_batch_size)


def score_all(params: ParamsBase, splits: Splits, tasks: dict[str, Task], jobs: list[tuple[str, str, list[int]]],
              device, side=None) -> list[dict[str, float]]:
    """Score every job, in order, across `scoring_processes` processes; `side()` runs here meanwhile."""
    n = scoring_processes(len(jobs), device)
    if n == 1:
        _start_scorer(None, params, splits, tasks)
        out = [_score(j) for j in jobs]
        if side is not None:
            side()
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a forked child of a process that has run torch's thread pools can hang
    with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_start_scorer,
                             initargs=(params.model_dump(mode="json"),)) as pool:
        futures = [pool.submit(_score, j) for j in jobs]
        if side is not None:
            side()
        return [f.result() for f in futures]


def evaluate(params: ParamsBase, runs_dir: str | Path) -> tuple[list[dict], Splits]:
    """Score every run of the grid: one row per run with the metrics of paper §5.1 and its costs."""
    device = setup_runtime(params.runtime)
    splits = load_splits(params.data)
    runs = collect_runs(params, runs_dir)
    detection_runs = collect_detection_runs(params, runs_dir)
    tasks: dict[str, Task] = {}
    probe_seed = params.detection.seed if hasattr(params, "detection") else 0
    rows, jobs = [], []
    for rec, folder in runs + detection_runs:
        inputs = rec["inputs"]
        for what in ("manifest", "discovery"):
            if file_digest(inputs[what]) != inputs[f"{what}_sha"]:
                raise RemflowError(f"run is stale: its {what} changed since it ran", key=str(folder),
                                   got=inputs[what], hint="run `dvc repro`")
        if inputs["manifest"] not in tasks:
            tasks[inputs["manifest"]] = make_task(params.data, splits, device, load_manifest(inputs["manifest"], splits))
        manifest = tasks[inputs["manifest"]].manifest
        if rec.get("study") == "detection":
            found = check_detection(read_json(inputs["discovery"], "detection file"), manifest, len(splits.train_y),
                                    inputs["discovery"])
            discovered = view_indices(found["indices"], manifest, rec["view"])
            label = run_label(rec["run"], "standard") + VIEW_SUFFIX[rec["view"]]
            disc = discovery_columns(discovered, manifest,
                                     found["detector"] + (":hits" if rec["view"] == "hits" else ""))
        else:
            discovered = check_discovery(read_json(inputs["discovery"], "discovery file"), manifest,
                                         inputs["discovery"])["indices"]
            label = run_label(rec["run"], rec["pretrained"])
            disc = discovery_columns(discovered, manifest, "oracle")
        jobs.append((str(folder), inputs["manifest"], [int(i) for i in discovered]))
        head = {"run": label, "method": rec["method"], "pretrained": rec["pretrained"],
                "regularity": rec["regularity"], "discovery_rate": rec["discovery_rate"], "seed": rec["seed"]}
        tail = {
            "unlearn_seconds": rec["unlearn_seconds"],
            "peak_memory_mb": rec["peak_memory_mb"],
            "params_deployed": rec["params_deployed"],
            "params_peak": rec["params_peak"],
            "corruption": manifest.get("corruption", CORRUPTION_OF[rec["regularity"]]),
            **disc,
        }
        rows.append((head, tail, inputs["manifest"], rec.get("stats", {})))
    # one probe per manifest, here, while the runs are scored (in other processes when there are several)
    regularity: dict[str, float] = {}

    def probes():
        for path, task in tasks.items():
            regularity[path] = regularity_score(task, seed=probe_seed)

    scores = score_all(params, splits, tasks, jobs, device, side=probes)
    out = [{**head, **{k: round(v, 6) for k, v in sc.items()}, **tail,
            "regularity_score": round(regularity[manifest_path], 6), "details": details}
           for (head, tail, manifest_path, details), sc in zip(rows, scores)]
    return out, splits
