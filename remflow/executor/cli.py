"""The `remflow run` command's body: options, the run, the summary (kept here so cli.py has one small hunk)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console

from remflow.errors import RemflowError


def run_command(root: Path, *, address, cpus, gpus, workers, batch, dry, sync, commit=False) -> int:
    from remflow.executor import codedeps, commit_only, options_from, run_suite
    from remflow.executor.view import View

    err = Console(stderr=True, highlight=False)
    root = Path(root).resolve()
    if not (root / "dvc.yaml").is_file():
        raise RemflowError("no dvc.yaml here", key=str(root), hint="run `remflow run` in a suite's folder")
    if gpus is not None and gpus > 1 and gpus != int(gpus):
        raise RemflowError("more than one GPU per run must be a whole number", key="--gpus", got=gpus)
    opts, params = options_from(root, cpus=cpus, gpus=gpus, workers=workers, address=address, batch=batch,
                                dry=dry)
    if sync:
        if params is None:
            raise RemflowError("no params.yaml here", key=str(root))
        changed = codedeps.sync(root, params)
        err.print(f"{codedeps.FOLDER}/ {'refreshed' if changed else 'already in sync'}")
        return 0
    if commit:
        n = commit_only(root)
        err.print(f"{n} stages committed as they are (nothing ran)" if n else "Data and pipelines are up to date.")
        return 0
    view = None if dry else View()
    report = run_suite(root, opts, params, view)
    if dry:
        for name in report.left:
            print(name)
        err.print(f"{report.planned} stages would run")
        return 0
    _summary(err, report)
    stats = os.environ.get("REMFLOW_RUN_STATS")
    if stats:  # for bench/orchestration.py
        Path(stats).write_text(json.dumps({
            "planned": report.planned, "done": len(report.done), "failed": len(report.failed),
            "workers": report.workers, "seconds": report.seconds, "stage_seconds": report.stage_seconds,
            "commits": report.commits, "rerun": report.rerun, "nodes": len(report.nodes),
            "stage_times": report.stage_times}))
    return report.exit_code


def _summary(err: Console, r) -> None:
    if r.planned == 0:
        err.print("Data and pipelines are up to date.")
        return
    s = r.seconds
    err.print(f"remflow run: {len(r.done)} of {r.planned} stages done on {r.workers} workers in "
              f"{s.get('wall', 0):.1f}s ({r.commits} lock writes; DVC status {s.get('status', 0):.1f}s, "
              f"commits {s.get('commit', 0) + s.get('lock write', 0):.1f}s)")
    if r.rerun:
        err.print(f"[yellow]ran again after a worker died:[/yellow] {', '.join(r.rerun)}")
    for name, log in r.failed.items():
        err.print(f"[red]failed:[/red] {name} (log: {log})")
    if r.skipped:
        err.print(f"[red]skipped[/red] (an upstream stage failed): {', '.join(sorted(r.skipped))}")
    if r.interrupted:
        err.print(f"[yellow]interrupted:[/yellow] {len(r.done)} committed, {len(r.left)} left for the next run")
