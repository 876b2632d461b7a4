"""`remflow compare`: DVC experiments side by side, for the common case of tuning one run.

Rows are the workspace, the baseline commit and every experiment (`dvc.api.exp_show`); columns are the params
that differ between them and the summary metrics (`summary.<run>.{healed,utility,score}` of metrics.json).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from rich.table import Table

from remflow.errors import RemflowError

_SUMMARY = re.compile(r"^(?:[^:]*:)?summary\.(?P<run>[^.]+)\.(?P<metric>healed|utility|score)$")
_HIDDEN = {"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"}


def experiment_rows(repo: str | Path) -> list[dict]:
    try:
        import dvc.api
        from dvc.exceptions import DvcException
    except ImportError:  # pragma: no cover - dvc is a dependency
        raise RemflowError("DVC is not installed", key="dvc") from None
    try:
        return dvc.api.exp_show(repo=str(repo))
    except DvcException as e:
        raise RemflowError(f"cannot read DVC experiments ({e})", key=str(repo),
                           hint="run inside a git + DVC repository with at least one commit") from None


def _is_dependency(key: str, repo: str | Path) -> bool:
    """A dependency's column is named by its path: it has a slash, or names a file or folder of the project."""
    path = key.split(":")[-1]
    return "/" in path or (Path(repo) / path).exists()


def compare_experiments(repo: str | Path, run: str | None = None) -> Table:
    rows = experiment_rows(repo)
    if not rows:
        raise RemflowError("no experiments found", key=str(repo), hint="run `dvc exp run` first")
    metric_cols: list[tuple[str, str, str]] = []  # (key, run, metric)
    for key in rows[0]:
        m = _SUMMARY.match(key)
        if m and (run is None or m["run"] == run):
            metric_cols.append((key, m["run"], m["metric"]))
    if not metric_cols:
        raise RemflowError("no summary metrics" + (f" for run '{run}'" if run else ""), key=str(repo),
                           hint="run `dvc repro` so metrics.json exists; check --run")
    metric_keys = {k for k, _, _ in metric_cols}
    # exp_show's other columns are params (dotted keys) and dependencies (their paths, hashes as values)
    param_keys = [k for k in rows[0] if k not in _HIDDEN and k not in metric_keys and not _SUMMARY.match(k)
                  and not k.split(":")[-1].startswith("cells.") and not _is_dependency(k, repo)]
    changed = [k for k in param_keys if len({repr(r.get(k)) for r in rows}) > 1]

    table = Table(title="DVC experiments" + (f": {run}" if run else "") + " (metrics in %)")
    table.add_column("experiment")
    for k in changed:
        table.add_column(k.split(":")[-1], style="blue")
    for _, name, metric in metric_cols:
        table.add_column(f"{name} {metric}", justify="right", style="yellow")
    best = {k: max((r[k] for r in rows if isinstance(r.get(k), (int, float))), default=None) for k in metric_keys}
    for r in rows:
        name = r.get("Experiment") or r.get("rev") or ""
        cells = [str(r.get(k, "")) for k in changed]
        for key, _, _ in metric_cols:
            v = r.get(key)
            text = "—" if not isinstance(v, (int, float)) or math.isnan(v) else f"{100 * v:.2f}"
            cells.append(f"[bold]{text}[/bold]" if v is not None and v == best[key] else text)
        table.add_row(name, *cells)
    return table
