"""The `remflow run` command's body: options, the run, the summary (kept here so cli.py has one small hunk)."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from remflow.errors import RemflowError


def run_command(root: Path, *, address, cpus, gpus, workers, batch, dry, commit=False) -> int:
    from remflow.executor import commit_only, options_from, run_suite
    from remflow.executor.view import View

    err = Console(stderr=True, highlight=False)
    root = Path(root).resolve()
    if not (root / "dvc.yaml").is_file():
        raise RemflowError("no dvc.yaml here", key=str(root), hint="run `remflow run` in a suite's folder")
    if gpus is not None and gpus > 1 and gpus != int(gpus):
        raise RemflowError("more than one GPU per run must be a whole number", key="--gpus", got=gpus)
    pipeline = "remflow check" in (root / "dvc.yaml").read_text()
    if pipeline and not (root / "params.yaml").is_file():
        raise RemflowError("params file not found", key=str(root / "params.yaml"),
                           hint="a remflow pipeline reads its params.yaml (copy the repository's to start from)")
    if address or os.environ.get("RAY_ADDRESS"):
        from remflow.pipeline_check import CUDA_ELSEWHERE

        os.environ[CUDA_ELSEWHERE] = "1"  # a cluster: its GPU nodes run the training stages
    opts, params = options_from(root, cpus=cpus, gpus=gpus, workers=workers, address=address, batch=batch,
                                dry=dry)
    opts.warm = pipeline  # a remflow pipeline's stages import torch and scikit-learn: workers import them early
    if params is not None and not commit and pipeline:
        from remflow.pipeline_check import check_suite

        # a remflow pipeline: missing dataset files, |D_c| beyond the data, a key dvc.yaml needs that params.yaml
        # does not write are refused before any stage's outputs are removed (its `check` stage runs only when
        # params.yaml or the code changed)
        check_suite(params, root)
    if commit:
        with dvc_errors(root):
            n = commit_only(root)
        err.print(f"{n} stages committed as they are (nothing ran)" if n else "Data and pipelines are up to date.")
        return 0
    view = None if dry else View()
    with dvc_errors(root):
        report = run_suite(root, opts, params, view)
    if dry:
        for name in report.left:
            print(name)
        later = report.planned - report.changed_now
        err.print(f"{report.planned} stages would run" + (
            f": {report.changed_now} changed now; the other {later} depend on them and run only if those write "
            "other outputs (decided once they have run, as dvc repro decides)" if later > 0 else ""))
        return 0
    _summary(err, report)
    _print_tables(root, report)
    stats = os.environ.get("REMFLOW_RUN_STATS")
    if stats:  # for bench/orchestration.py
        Path(stats).write_text(json.dumps({
            "planned": report.planned, "done": len(report.done), "failed": len(report.failed),
            "workers": report.workers, "seconds": report.seconds, "stage_seconds": report.stage_seconds,
            "commits": report.commits, "rerun": report.rerun, "nodes": len(report.nodes),
            "stage_times": report.stage_times}))
    return report.exit_code


@contextmanager
def dvc_errors(root: Path):
    """DVC's own errors about the project (a dvc.lock or dvc.yaml that does not parse, a `${...}` that does not
    resolve, a missing dependency) as remflow's one-screen message and exit code 2, not a traceback."""
    from dvc.exceptions import DvcException

    try:
        yield
    except DvcException as e:
        text = str(e).strip() or type(e).__name__
        cause = e.__cause__
        detail = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else None
        first = text.splitlines()[0]
        where = next((f for f in ("dvc.lock", "dvc.yaml", "params.yaml") if f in text), str(root))
        hint = {
            "dvc.lock": "restore it from git (`git checkout dvc.lock`), or delete it to record every stage anew",
            "dvc.yaml": "fix the file (`git diff dvc.yaml` shows what changed); `remflow check` checks it",
            "params.yaml": "`remflow check` says which key",
        }.get(where, "`dvc status` shows the same problem")
        raise RemflowError(f"DVC cannot read this project: {first}", key=where,
                           got=detail if detail and detail not in first else None, hint=hint) from None


def _last_error(log: str, limit: int = 6) -> list[str]:
    """The lines of a failed stage's log that say why: its last non-empty lines (a remflow error panel or a
    traceback's last line)."""
    try:
        lines = [line.rstrip() for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return []
    lines = [line for line in lines if not line.startswith("remflow run: command exited with code")]  # the worker's
    if lines and any(line.startswith("Traceback") for line in lines):
        return lines[-1:]
    return lines[-limit:]


def _print_tables(root: Path, report) -> None:
    """The evaluate stage's tables, which its log holds: what `dvc repro` would have shown at the end."""
    for name in report.done:
        if name.split(":")[-1] == "evaluate":
            log = Path(report.logs.get(name, ""))
            if log.is_file():
                print(log.read_text(errors="replace"), end="", flush=True)


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
    if r.restored or r.unchanged:
        err.print(f"{len(r.restored)} restored from DVC's run cache, {len(r.unchanged)} up to date once their "
                  "upstream stages ran (nothing ran for them)")
    for name, log in r.failed.items():
        err.print(f"[red]failed:[/red] {escape(name)} (log: {escape(log)})")
        for line in _last_error(log):
            err.print(f"    {escape(line)}", soft_wrap=True)
    if r.skipped:
        by: dict[str, list[str]] = {}
        for name, failed in r.skipped.items():
            by.setdefault(failed, []).append(name)
        for failed, names in by.items():
            shown = ", ".join(sorted(names)[:4]) + (f", ... ({len(names) - 4} more)" if len(names) > 4 else "")
            err.print(f"[red]skipped[/red] {len(names)} stage{'s' * (len(names) != 1)} that depend on "
                      f"{escape(failed)}: {escape(shown)}", soft_wrap=True)
    if r.interrupted:
        same = f", {len(r.unchanged)} up to date" if r.unchanged else ""
        err.print(f"[yellow]interrupted:[/yellow] {len(r.done)} committed{same}, {len(r.left)} left for the next run")
