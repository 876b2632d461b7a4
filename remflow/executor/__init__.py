"""`remflow run`: a suite's changed DVC stages, in parallel on Ray, committed to DVC in batches."""

from __future__ import annotations

from pathlib import Path

from remflow.executor.core import Options, Report, commit_only, execute, plan

__all__ = ["Options", "Report", "commit_only", "execute", "plan", "run_suite", "options_from"]


def options_from(root: Path, cpus=None, gpus=None, workers=None, address=None, **rest) -> tuple[Options, object]:
    """Options from params.yaml's `runtime:` (validated by the schema), then the command line's overrides."""
    from remflow.params import load_params

    root = Path(root)
    p = load_params(root / "params.yaml") if (root / "params.yaml").is_file() else None
    rt = p.runtime if p is not None else None
    opts = Options(address=address, **rest)
    if rt is not None:
        opts.cpus = rt.cpus if rt.cpus is not None else float(rt.threads or 1)
        opts.gpus = rt.gpus
        opts.workers = rt.workers
    if cpus is not None:
        opts.cpus = cpus
    if gpus is not None:
        opts.gpus = gpus
    if workers is not None:
        opts.workers = workers
    return opts, p


def run_suite(root: Path, opts: Options, params=None, view=None) -> Report:
    return execute(Path(root), opts, view)
