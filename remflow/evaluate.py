"""The evaluate stage: score every run of the grid (paper §5.1) and collect its cost figures; the tables and
files are remflow.report's."""

from __future__ import annotations

from pathlib import Path

from remflow.data.corruption import check_discovery, load_manifest
from remflow.data.datasets import Splits, load_splits
from remflow.data.task import Task, make_task
from remflow.errors import RemflowError
from remflow.io import file_digest, read_json
from remflow.metrics import evaluate_model
from remflow.models import load_model
from remflow.config import ParamsBase
from remflow.train import setup_runtime


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


def collect_runs(params: ParamsBase, runs_dir: str | Path) -> list[tuple[dict, Path]]:
    """The run records of the current grid; stale runs of removed cells are ignored, missing ones refused."""
    found: dict[tuple, tuple[dict, Path]] = {}
    for rec_path in sorted(Path(runs_dir).glob("*/record.json")):
        rec = read_json(rec_path, "run record")
        try:
            key = (rec["run"], rec["pretrained"], rec["regularity"], float(rec["discovery_rate"]), int(rec["seed"]))
        except (KeyError, TypeError, ValueError):
            raise RemflowError("run record lacks its cell identity", key=str(rec_path),
                               hint="delete the run folder and rerun dvc repro") from None
        found[key] = (rec, rec_path.parent)
    cells = expected_cells(params)
    missing = [c for c in cells if c not in found]
    if missing:
        run, var, reg, rate, seed = missing[0]
        raise RemflowError(f"{len(missing)} of {len(cells)} runs are missing, e.g. {run_label(run, var)} "
                           f"{reg} rate {rate} seed {seed}", key=str(runs_dir), hint="run `dvc repro` first")
    return [found[c] for c in cells]


def evaluate(params: ParamsBase, runs_dir: str | Path) -> tuple[list[dict], Splits]:
    """Score every run of the grid: one row per run with the metrics of paper §5.1 and its costs."""
    device = setup_runtime(params.runtime)
    splits = load_splits(params.data)
    runs = collect_runs(params, runs_dir)
    tasks: dict[str, Task] = {}
    rows = []
    for rec, folder in runs:
        inputs = rec["inputs"]
        for what in ("manifest", "discovery"):
            if file_digest(inputs[what]) != inputs[f"{what}_sha"]:
                raise RemflowError(f"run is stale: its {what} changed since it ran", key=str(folder),
                                   got=inputs[what], hint="run `dvc repro`")
        if inputs["manifest"] not in tasks:
            tasks[inputs["manifest"]] = make_task(params.data, splits, device, load_manifest(inputs["manifest"], splits))
        discovery = check_discovery(read_json(inputs["discovery"], "discovery file"),
                                    tasks[inputs["manifest"]].manifest, inputs["discovery"])
        task = tasks[inputs["manifest"]].with_discovered(discovery["indices"])
        model, _ = load_model(folder / "model.safetensors", device)
        scores = evaluate_model(model, task, params.runtime.eval_batch_size)
        rows.append({
            "run": run_label(rec["run"], rec["pretrained"]),
            "method": rec["method"],
            "pretrained": rec["pretrained"],
            "regularity": rec["regularity"],
            "discovery_rate": rec["discovery_rate"],
            "seed": rec["seed"],
            **{k: round(v, 6) for k, v in scores.items()},
            "unlearn_seconds": rec["unlearn_seconds"],
            "peak_memory_mb": rec["peak_memory_mb"],
            "params_deployed": rec["params_deployed"],
            "params_peak": rec["params_peak"],
            "details": rec.get("stats", {}),
        })
    return rows, splits
