"""`remflow`: one typer command per pipeline stage, plus `methods` and `check`.

Each command validates the whole params file first, then calls the library (stages.py) and writes its
artifacts atomically. Bad input exits with code 2 and a one-screen message naming the key or file.
"""

from __future__ import annotations

import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from remflow.errors import RemflowError

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
    help="Corrupted-data unlearning (REM and baselines) as a DVC pipeline: corrupt -> pretrain -> discover -> "
         "unlearn -> evaluate.",
)
err = Console(stderr=True)
out = Console()


def _no_type_for_flags() -> None:
    """typer's help shows a type beside every option, flags included (`--dry <bool>`, `--help <bool>`), though
    a flag takes no value: show none for them."""
    option = getattr(getattr(typer, "core", None), "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "_remflow", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich._remflow = True
    option.display_type_rich = display_type_rich


_no_type_for_flags()


def _wide() -> Console:
    """The console for tables: piped or captured output has no terminal width, so do not cut tables at 80 columns
    (a COLUMNS that a shell or a test harness exports is not taken: tables would wrap in a file)."""
    return out if out.is_terminal else Console(width=400)


def _print_table(table) -> None:
    _wide().print(table)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params file", show_default=True)]


def _report_error(e: RemflowError) -> None:
    from remflow.params import ParamsError

    if isinstance(e, ParamsError):
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        table.add_column("key")
        table.add_column("problem")
        table.add_column("given")
        for key, problem, got in e.problems[:12]:
            table.add_row(escape(str(key)), escape(str(problem)), escape(str(got)))
        if len(e.problems) > 12:
            table.add_row("...", f"{len(e.problems) - 12} more", "")
        err.print(Panel(table, title=f"[red]invalid parameters[/red] in {escape(str(e.path))}", title_align="left"))
        return
    # user text (paths, values, messages quoting them) is escaped: "[x]" in a file name must print as itself
    lines = [f"[bold]{escape(e.message)}[/bold]"]
    if e.key is not None:
        lines.append(f"where: {escape(str(e.key))}")
    if e.got is not None:
        lines.append(f"given: {escape(repr(e.got))}")
    if e.hint:
        lines.append(f"fix:   {escape(e.hint)}")
    err.print(Panel("\n".join(lines), title="[red]remflow: error[/red]", title_align="left"), markup=True)


def _writable(out: Path | None, *, folder: bool) -> None:
    """Refuse an output path the stage could not write, before it runs (a file where its folder goes, a folder
    where its file goes, a file among its parents): the error would otherwise come after training."""
    if out is None:
        return
    if out.exists() and out.is_dir() != folder:
        raise RemflowError(f"--out is a {'file' if folder else 'folder'}; the stage writes a "
                           f"{'folder' if folder else 'file'} there", key="--out", got=str(out),
                           hint="name a path that is absent or of that kind")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise RemflowError("a parent of --out is a file", key="--out", got=str(out), hint=f"{parent} is "
                                   "not a folder")
            break


def guarded(fn: Callable) -> Callable:
    """Turn RemflowError into the one-screen message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RemflowError as e:
            _report_error(e)
            raise typer.Exit(2) from None
        except (IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError) as e:  # a path given
            _report_error(RemflowError(f"cannot use this path: {e.strerror}", key=e.filename2 or e.filename,
                                       hint="check the paths passed to the command and in params"))
            raise typer.Exit(2) from None

    return wrapper


def _params(path: Path, light: bool = False):
    # the one loader: remflow.params (its schema includes the detection study's section); `light`: without the
    # method registry (and so without torch), for commands that read the grid only
    from remflow.params import load_params

    return load_params(path, light=light)


@app.command()
@guarded
def corrupt(
    corruption: Annotated[str, typer.Option("--corruption", "--regularity",
                          help="high (backdoor) | medium (interclass) | low (random labels) | a name under "
                               "detection.specs")],
    seed: Annotated[int, typer.Option(min=0, help="cell seed")],
    out: Annotated[Path, typer.Option(help="manifest to write (JSON)")],
    params: ParamsOpt = Path("params.yaml"),
):
    """Write the corruption manifest of one (corruption, seed): D_c's indices, new labels, trigger."""
    from remflow import stages

    _writable(out, folder=False)
    stages.corrupt(_params(params), corruption, seed, out)


@app.command()
@guarded
def pretrain(
    manifest: Annotated[Path, typer.Option(help="corruption manifest")],
    out: Annotated[Path, typer.Option(help="folder for model.safetensors and log.json")],
    variant: Annotated[str, typer.Option(help="standard | etd (example-tied dropout channels)")] = "standard",
    params: ParamsOpt = Path("params.yaml"),
):
    """Train the original model on the corrupted training set."""
    from remflow import stages

    _writable(out, folder=True)
    stages.pretrain(_params(params), manifest, out, variant)


@app.command()
@guarded
def discover(
    manifest: Annotated[Path, typer.Option(help="corruption manifest")],
    out: Annotated[Path, typer.Option(help="discovered set to write (JSON)")],
    rate: Annotated[float | None, typer.Option(help="the oracle: discovery rate |D_f| / |D_c| in (0, 1]")] = None,
    budget: Annotated[float | None, typer.Option(help="a detector: samples to flag, as a multiple of |D_c|, in "
                                                 "(0, 4]")] = None,
    model: Annotated[Path | None, typer.Option(help="with --budget: the pretrained model the detector reads")] = None,
    hits_out: Annotated[Path | None, typer.Option(help="with --budget: also write the flagged set's true "
                                                  "positives here")] = None,
    params: ParamsOpt = Path("params.yaml"),
):
    """Write the discovered set D_f: a seeded subset of D_c at --rate (nested across rates), or the samples the
    cell's detector (loss, cross_val or spectral; detection.specs) flags on the pretrained model at --budget."""
    from remflow import stages

    for path in (out, hits_out):
        _writable(path, folder=False)
    stages.discover(_params(params), manifest, out, rate=rate, model_path=model, budget=budget, hits_out=hits_out)


@app.command()
@guarded
def probe(
    manifest: Annotated[Path, typer.Option(help="corruption manifest")],
    out: Annotated[Path, typer.Option(help="probe file to write (JSON)")],
    params: ParamsOpt = Path("params.yaml"),
):
    """Measure a corruption's regularity: how much a linear model on pixels transfers from half of D_c to the
    other half (0: random labels, 1: a trigger it picks up); read by evaluate."""
    from remflow import stages

    _writable(out, folder=False)
    stages.probe(_params(params), manifest, out)


@app.command()
@guarded
def unlearn(
    run: Annotated[str, typer.Option("--run", "--method", help="the run: an entry of `methods:` in params")],
    model: Annotated[Path, typer.Option(help="original model checkpoint")],
    manifest: Annotated[Path, typer.Option(help="corruption manifest")],
    discovered: Annotated[Path, typer.Option(help="discovered set D_f: the discover stage's file (the "
                                             "oracle's or a detector's)")],
    out: Annotated[Path, typer.Option(help="run folder for model.safetensors and record.json")],
    params: ParamsOpt = Path("params.yaml"),
):
    """Run one unlearning method on one cell; write the deployable model and its run record."""
    from remflow import stages

    _writable(out, folder=True)
    stages.unlearn(_params(params), run, model, manifest, discovered, out)


class Format(str, Enum):
    table = "table"
    md = "md"
    csv = "csv"
    json = "json"


@app.command()
@guarded
def evaluate(
    runs: Annotated[Path, typer.Option(help="folder of run folders")] = Path("runs"),
    metrics: Annotated[Path, typer.Option(help="nested metrics file for dvc exp show")] = Path("metrics.json"),
    reports: Annotated[Path, typer.Option(help="folder for results.csv, results.md, heatmaps")] = Path("reports"),
    probes: Annotated[Path, typer.Option(help="folder of the probe stage's files (the regularity of each "
                                          "corruption manifest)")] = Path("artifacts/probe"),
    run: Annotated[str | None, typer.Option("--run", "--method", help="run of the taxonomy table (default: "
                   "evaluate.taxonomy_run, else rem, else the first run)")] = None,
    metric: Annotated[str, typer.Option(help="metric of the taxonomy table (healed | utility | score); healed or utility also adds its own paired table")] = "score",
    reference: Annotated[str | None, typer.Option(help="run the others are compared with, paired over the same "
                         "cells and seeds (default: evaluate.reference, else rem, else the first run)")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="how to print the tables")] = Format.table,
    from_csv: Annotated[list[Path] | None, typer.Option("--from-csv", metavar="<path>",
                        help="print the tables of existing "
                        "results.csv files (no scoring; nothing written unless --write); repeat it to pool "
                        "several runs of a split grid")] = None,
    write: Annotated[bool, typer.Option("--write", help="with --from-csv: write the pooled rows' results.csv, "
                     "results.md, heatmaps (into --reports) and metrics (--metrics), as the evaluate stage "
                     "writes a whole grid's")] = False,
    mixed: Annotated[bool, typer.Option("--mixed", help="with several --from-csv: pool them even where a run "
                     "name stands for other settings in two files, or a corruption's originals were made under "
                     "other settings (results.csv's settings and setup columns; refused by default)")] = False,
    regularity_plot: Annotated[Path | None, typer.Option(help="also write the PNG of every run's Utility x Healed "
                               "against measured regularity, of these rows (with --from-csv: pooled over the "
                               "files)")] = None,
    params: ParamsOpt = Path("params.yaml"),
):
    """Gather every run's record (each scored itself); write results.csv, metrics.json, tables and heatmaps;
    print the tables."""
    import remflow
    from remflow import report

    if metric not in report.HEADLINE:
        raise RemflowError("unknown metric", key="--metric", got=metric, hint="one of " + ", ".join(report.HEADLINE))
    if write and not from_csv:
        raise RemflowError("--write pools existing results files", key="--write",
                           hint="name them with --from-csv (the evaluate stage writes a grid's own reports)")
    if mixed and not from_csv:
        raise RemflowError("--mixed pools existing results files", key="--mixed", hint="name them with --from-csv")
    if from_csv and regularity_plot is not None and len(from_csv) > 1:
        rows = report.read_suites(from_csv)  # pooled over suites: each file's corruptions named by its suite
        p = None
    elif from_csv:
        rows = report.read_results(from_csv, mixed=mixed)
        p = None
    else:
        from remflow.evaluate import evaluate as gather

        p = _params(params, light=True)
        from remflow.params import read_yaml

        rows, dataset = gather(p, runs, probes, raw=read_yaml(params))  # the rates as written name the folders
    if not rows:
        raise RemflowError("the grid has no runs", key="grid.methods", hint="list methods to run under grid:")
    names = report.runs_in_order(rows)
    settings = p.evaluate if p is not None else None
    if p is None and write and params.is_file():  # pooled parts: the report as the evaluate stage would write it
        settings = _params(params, light=True).evaluate
    present = lambda name: name if name in names else None  # noqa: E731 - a pooled set may lack the params' run
    # the taxonomy table's run: the params' (a pooled set may lack it), else REM as the paired tables' default
    # reference (not the first run, which is the original model: `none`)
    chosen = run or (settings.taxonomy_run if p is not None else present(settings and settings.taxonomy_run)) \
        or present(report.DEFAULT_REFERENCE) or names[0]
    if chosen not in names:
        raise RemflowError("no such run in the results", key="--run", got=chosen, hint="one of " + ", ".join(names))
    reference = report.pick_reference(rows, reference or (
        settings.reference if p is not None else present(settings and settings.reference)))
    if p is not None:
        context = {"remflow": remflow.__version__,
                   "dataset": f"{dataset.get('about')}; fingerprint {dataset.get('fingerprint')}",
                   "runs": len(rows)}
        if dataset.get("resolution"):
            context["resolution"] = dataset["resolution"]
        context["params"] = Path(params).read_text()
        report.write_reports(rows, reports, metrics, context=context, taxonomy_run=chosen, reference=reference)
    elif write:  # a split grid's parts pooled into the one report of the whole grid
        context = {"remflow": remflow.__version__, "pooled from": ", ".join(str(f) for f in from_csv),
                   "runs": len(rows)}
        if params.is_file():
            context["parameters below"] = (f"{params} as it was when the files were pooled (the pooled runs may "
                                           "have been made with other grids)")
            context["params"] = params.read_text()
        report.write_reports(rows, reports, metrics, context=context, taxonomy_run=chosen, reference=reference)
    report.render(rows, fmt.value, chosen, metric, _wide(), reference)
    if regularity_plot is not None:
        from remflow.io import atomic_write_bytes

        png = report.regularity_png(rows)
        if png is None:
            raise RemflowError("no row has a measured regularity (results.csv files written before the probe)",
                               key="--regularity-plot", hint="rerun their evaluate stage")
        atomic_write_bytes(regularity_plot, png)


@app.command()
@guarded
def compare(
    run: Annotated[str | None, typer.Option("--run", "--method", help="only this run's summary metrics")] = None,
    repo: Annotated[Path, typer.Option(help="the DVC repository")] = Path("."),
):
    """DVC experiments side by side: the params that differ and the summary metrics of each run."""
    from remflow.compare import compare_experiments

    _print_table(compare_experiments(repo, run))


@app.command()
@guarded
def methods():
    """List every registered method with its defaults."""
    from remflow.methods import REGISTRY
    from remflow.methods.base import MethodConfig

    base_fields = set(MethodConfig.model_fields)
    table = Table(title="remflow methods (defaults: the paper's; recipe fields left empty use `unlearn:`)")
    table.add_column("method", style="bold", overflow="fold")
    table.add_column("what it does", overflow="fold", ratio=3)
    table.add_column("reference", overflow="fold", ratio=2)
    table.add_column("defaults", overflow="fold", ratio=3)  # wrapped, never cut: every default is shown
    for name, m in REGISTRY.items():
        cfg = m.config()
        own = {k: v for k, v in cfg.model_dump().items() if k != "method" and (k not in base_fields or v is not None)}
        table.add_row(name, m.summary, m.reference, ", ".join(f"{k}={v}" for k, v in own.items()) or "-")
    _print_table(table)


@app.command()
@guarded
def check(
    params: ParamsOpt = Path("params.yaml"),
    dvc: Annotated[Path, typer.Option(help="the pipeline file to check against the schema")] = Path("dvc.yaml"),
    record: Annotated[Path | None, typer.Option(help="the pipeline's `check` stage: when everything is valid, "
                                                "write the code fingerprints of each command and run "
                                                "(remflow/codedeps.py) to this folder")] = None,
):
    """Validate params (every rule a stage would enforce, the dataset files included) and check that dvc.yaml's
    per-stage `params:` lists match what each stage reads. Exit 2 on anything a run would refuse."""
    from remflow.params import read_yaml
    from remflow.pipeline_check import check_data, check_pipeline

    p = _params(params)
    notes = check_data(p)
    n = check_pipeline(p, dvc, raw=read_yaml(params), params_path=params)
    notes += _code_path_notes(dvc)
    if record is not None:
        from remflow.codedeps import record as record_code

        record_code(dvc.parent, p, record)
    for note in notes:
        err.print(f"[yellow]note[/yellow]: {escape(note)}")
    out.print(f"[green]ok[/green]: {params} is valid; {dvc} declares the params of its {n} stage definitions")


@app.command()
@guarded
def run(
    address: Annotated[str | None, typer.Option(help="Ray cluster to join, `auto` for the one `ray start` "
                                                     "started here (default: RAY_ADDRESS, else a Ray of this "
                                                     "run's own)")] = None,
    cpus: Annotated[float | None, typer.Option(min=0.01, help="CPUs per run (default: runtime.cpus)")] = None,
    gpus: Annotated[float | None, typer.Option(min=0, help="GPUs per run, fractions share a card "
                                                           "(default: runtime.gpus)")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="parallel runs (default: runtime.workers, else as "
                                                            "many as the resources allow)")] = None,
    batch: Annotated[int, typer.Option(min=1, help="most finished stages per lock-file write")] = 64,
    dry: Annotated[bool, typer.Option("--dry", help="list the changed stages, run nothing")] = False,
    commit: Annotated[bool, typer.Option("--commit", help="run nothing: record the changed stages' present outputs "
                                         "under their current deps (`dvc commit`, one lock write); only for a "
                                         "change known to leave the outputs as they are")] = False,
):
    """Run the suite's changed DVC stages in parallel on Ray workers; commit them to DVC in batches."""
    from remflow.executor.cli import run_command

    raise typer.Exit(run_command(Path("."), address=address, cpus=cpus, gpus=gpus, workers=workers, batch=batch,
                                 dry=dry, commit=commit))


@app.command()
@guarded
def recheck(
    stages: Annotated[list[str] | None, typer.Argument(help="stages to re-run (default: the first changed stage "
                                                         "of each stage definition, and of each unlearn run)")] = None,
    record: Annotated[bool, typer.Option("--record", help="when every output is the same, record the changed "
                                         "stages under the new code (`remflow run --commit`)")] = False,
):
    """After an edit of the code: re-run a sample of the changed stages in a scratch folder and compare their
    outputs with the suite's, byte for byte; with --record, record the new code hashes when all are the same."""
    from remflow.executor.recheck import recheck as run_recheck

    if Path("dvc.yaml").is_file() and Path("params.yaml").is_file():  # as `remflow run`: bad input named first
        from remflow.pipeline_check import check_suite

        check_suite(_params(Path("params.yaml")), Path("."))
    result = run_recheck(Path("."), stages, record=record, echo=lambda text: err.print(escape(text)))
    if not result.stages:
        out.print("Data and pipelines are up to date." if not result.changed else "nothing to re-run")
        raise typer.Exit(0)
    table = Table(box=None, show_header=True, header_style="bold")
    for col in ("stage", "output", "against the suite's"):
        table.add_column(col, overflow="fold")
    for stage, path, how, equal in result.rows:
        table.add_row(escape(stage), escape(path), escape(how) if equal else f"[red]{escape(how)}[/red]")
    _print_table(table)
    if not result.all_equal:
        out.print(f"[red]outputs differ[/red]: the edit changes results; re-run the suite (remflow run) — nothing "
                  "was recorded")
        raise typer.Exit(1)
    if record:
        out.print(f"[green]same outputs[/green] in {len(result.stages)} re-run stages; {result.recorded} changed "
                  "stages recorded under the new code (nothing else ran)")
    else:
        out.print(f"[green]same outputs[/green] in {len(result.stages)} re-run stages of {result.changed} changed; "
                  "`remflow recheck --record` records them")


def _code_path_notes(dvc: Path) -> list[str]:
    """dvc.yaml's `code` folder (what DVC hashes, and what the stages' code fingerprints should describe) against
    the remflow package this command imported: an install from another checkout runs other code than DVC tracks."""
    import remflow
    from remflow.codedeps import code_var

    code = code_var(dvc.parent, dvc.name)
    if code is None:
        return []
    tracked, running = (dvc.parent / code).resolve(), Path(remflow.__file__).parent.resolve()
    if tracked == running:
        return []
    return [f"the stages run the remflow package at {running}, but {dvc.name} tracks the code at {tracked} "
            "(`vars: code`): DVC would not see an edit of the code that runs. Install this checkout (pip install -e "
            ".) or point `code` at the package that runs"]


@app.command()
@guarded
def clean(
    model: Annotated[Path, typer.Option(help="your trained model: a remflow checkpoint, or a state dict of params' "
                                             "`model:` (.pt/.pth/.safetensors)")],
    flagged: Annotated[Path, typer.Option(help="flagged training samples: one index (folder: or image path) a "
                                               "line, or a JSON list")],
    out: Annotated[Path, typer.Option(help="folder for the cleaned model.safetensors and record.json")],
    method: Annotated[str, typer.Option(help="a registered method, or a run under `methods:`")] = "rem",
    seed: Annotated[int, typer.Option(min=0, help="seed of the method's randomness")] = 0,
    params: ParamsOpt = Path("params.yaml"),
):
    """Outside the grid: unlearn flagged samples from your own model on your own data (params' `data:`)."""
    from remflow.clean import clean_command

    clean_command(_params(params), method, model, flagged, out, seed)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)
    except Exception as e:  # a bug in remflow, not bad input (that is a RemflowError): one screen, not 100 lines
        import os
        import traceback

        if os.environ.get("REMFLOW_DEBUG"):
            raise
        frames = traceback.extract_tb(e.__traceback__)
        from remflow.errors import users_frame

        user = users_frame(e)
        if user is not None:  # raised in a plug-in (the user's model, reader or other code remflow called)
            where = f"{user.filename}:{user.lineno} ({user.name})"
            err.print(Panel(f"[bold]{escape(type(e).__name__)}: {escape(str(e))}[/bold]\nwhere: {escape(where)}\n"
                            "raised in your code, which remflow called (a plug-in); REMFLOW_DEBUG=1 shows the "
                            "whole traceback", title="[red]remflow: error in your code[/red]", title_align="left"))
            sys.exit(1)
        ours = [f for f in frames if "remflow" in f.filename] or frames
        where = f"{ours[-1].filename}:{ours[-1].lineno} ({ours[-1].name})" if ours else "?"
        methods = os.path.join("remflow", "methods") + os.sep
        in_method = [f for f in frames if methods in f.filename]
        if in_method:  # raised in a method module: the user's own method, or one of remflow's
            f = in_method[-1]
            inner = f"\nraised at: {escape(where)}" if ours and ours[-1] is not f else ""
            err.print(Panel(f"[bold]{escape(type(e).__name__)}: {escape(str(e))}[/bold]\n"
                            f"where: {escape(f'{f.filename}:{f.lineno} ({f.name})')}{inner}\n"
                            "raised in a method module: if it is a method you added, the error is in its code "
                            "(docs/adding-a-method.md); if it is one of remflow's, please report it. "
                            "REMFLOW_DEBUG=1 shows the whole traceback",
                            title="[red]remflow: error in a method[/red]", title_align="left"))
            sys.exit(1)
        err.print(Panel(f"[bold]{escape(type(e).__name__)}: {escape(str(e))}[/bold]\nwhere: {escape(where)}\n"
                        "this is a bug in remflow, not a problem with your input; REMFLOW_DEBUG=1 shows the "
                        "whole traceback (please include it in a report)",
                        title="[red]remflow: unexpected error[/red]", title_align="left"))
        sys.exit(1)
