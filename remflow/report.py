"""Evaluation results in one place: the rows of results.csv, the tables built from them once, and each table
rendered to the terminal (rich), markdown (reports/results.md, `--format md`), csv and json; heatmaps.

Words: a *run* is a named entry under `methods:` (a row label of the results: `rem`, `rem_keep05`, `rem_etd`
for a run on the ETD-pretrained model); a *method* is the registered algorithm a run runs (`rem`).

Tables (paper §5.2): Table-1 style mean ± standard error per run over every cell and seed, the same per
regularity, taxonomy tables (rows: regularity high/medium/low, columns: discovery rate), and paired
comparisons: for every run against a reference run, the mean over the same cells and seeds of the difference
of Utility x Healed with a 95% bootstrap interval (scipy.stats.bootstrap, paired resampling, BCa).
Utility x Healed is computed per run and then averaged (never the product of the means), as the paper does.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from remflow.config import CORRUPTION_OF, REGULARITIES
from remflow.errors import RemflowError
from remflow.io import atomic_write_bytes, atomic_write_text, dumps_json
from remflow.provenance import originals_key, setup_parts
from remflow.records import base_run

# the robustness measurements of each run (remflow/robustness.py; empty where a suite turns them off)
ROBUSTNESS = ["relearn_healed", "relearn_drop", "relearn_utility", "relearn_steps", "fewshot_steps", "fewshot_back",
              "fewshot_k", "fewshot_threshold", "probe_clean", "probe_acc", "weight_dist", "weight_dist_rel",
              "robustness_seconds"]
COLUMNS = ["run", "method", "pretrained", "regularity", "discovery_rate", "seed", "healed", "utility",
           "score", "healed_test", "forget_acc", "unlearn_seconds", "peak_memory_mb", "params_deployed",
           "params_peak", "corruption", "discovery", "view", "discovery_precision", "discovery_recall", "regularity_score",
           *ROBUSTNESS, "setup", "settings", "details"]
HEADLINE = ("healed", "utility", "score")
TITLES = {"healed": "Healed", "utility": "Utility", "score": "Utility×Healed", "healed_test": "Healed (test)",
          "forget_acc": "Acc(D_f)", "unlearn_seconds": "seconds", "relearn_healed": "Healed after relearning",
          "relearn_drop": "Healed lost to relearning", "probe_acc": "Probe decodes D_c",
          "probe_clean": "Clean readout finds D_c's labels", "fewshot_steps": "Few-shot steps until back",
          "weight_dist_rel": "Relative distance from the original"}
# the robustness tables of results.md: (column, shown as a percentage)
ROBUSTNESS_TABLES = (("relearn_healed", True), ("relearn_drop", True), ("fewshot_steps", False),
                     ("probe_acc", True), ("probe_clean", True), ("weight_dist_rel", False))
DEFAULT_REFERENCE = "rem"
CONFIDENCE = 0.95
RESAMPLES = 9999
_NUMERIC = {"discovery_rate", "healed", "utility", "score", "healed_test", "forget_acc", "unlearn_seconds",
            "peak_memory_mb", "params_deployed", "params_peak", "seed", "discovery_precision", "discovery_recall",
            "regularity_score", *ROBUSTNESS}


def rate_key(rate: float) -> str:
    """0.1 -> r10, 1.0 -> r100, 0.125 -> r12p5: a rate as a dot-free key for metrics.json."""
    pct = round(float(rate) * 100, 6)
    return f"r{int(pct)}" if pct == int(pct) else "r" + f"{pct:g}".replace(".", "p")


# ---------------------------------------------------------------- aggregates of the rows


def mean_sem(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); 0 for one value), NaNs ignored."""
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, 0.0
    var = sum((x - m) ** 2 for x in v) / (len(v) - 1)
    return m, math.sqrt(var / len(v))


def runs_in_order(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.setdefault(r["run"], None)
    return list(seen)


def summary(rows: list[dict], metric: str) -> dict[str, tuple[float, float, int]]:
    """run -> (mean, standard error, number of rows) of `metric` over every cell and seed."""
    by: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by[r["run"]].append(float(r[metric]))
    return {m: (*mean_sem(by[m]), len(by[m])) for m in runs_in_order(rows)}


def taxonomy(rows: list[dict], run: str, metric: str) -> dict[str, dict[float, float]]:
    """regularity -> rate -> mean over seeds of `metric` for one run."""
    cells: dict[tuple[str, float], list[float]] = defaultdict(list)
    for r in rows:
        if r["run"] == run:
            cells[(r["regularity"], float(r["discovery_rate"]))].append(float(r[metric]))
    out: dict[str, dict[float, float]] = {}
    for (reg, rate), vals in cells.items():
        out.setdefault(reg, {})[rate] = mean_sem(vals)[0]
    return out


def regularities_of(rows: list[dict]) -> list[str]:
    present = {r["regularity"] for r in rows}
    return [g for g in REGULARITIES if g in present]


def rates_of(rows: list[dict]) -> list[float]:
    return sorted({float(r["discovery_rate"]) for r in rows})


def summary_by_regularity(rows: list[dict], metric: str) -> dict[str, dict[str, tuple[float, float, int]]]:
    """run -> {"all" | regularity -> (mean, standard error, rows)} of `metric`."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {m: {} for m in runs_in_order(rows)}
    for m, v in summary(rows, metric).items():
        out[m]["all"] = v
    for reg in regularities_of(rows):
        for m, v in summary([r for r in rows if r["regularity"] == reg], metric).items():
            out[m][reg] = v
    return out


def metrics_tree(rows: list[dict]) -> dict[str, Any]:
    """The nested metrics.json: summary.<run>.{healed,utility,score} and cells.<run>.<reg>.<rXX>.<metric>."""
    tree: dict[str, Any] = {"summary": {}, "cells": {}}
    for metric in HEADLINE:
        for m, (mean, _, _) in summary(rows, metric).items():
            tree["summary"].setdefault(m, {})[metric] = round(mean, 6)
    for m in runs_in_order(rows):
        for metric in HEADLINE:
            for reg, by_rate in taxonomy(rows, m, metric).items():
                for rate, v in by_rate.items():
                    tree["cells"].setdefault(m, {}).setdefault(reg, {}).setdefault(rate_key(rate), {})[metric] = round(v, 6)
    return tree


# ---------------------------------------------------------------- paired comparisons


@dataclass(frozen=True)
class Paired:
    """mean(run - reference) over `pairs` matched (regularity, rate, seed) rows, with its bootstrap interval."""

    diff: float
    low: float
    high: float
    pairs: int

    @property
    def excludes_zero(self) -> bool:
        return not math.isnan(self.low) and (self.low > 0 or self.high < 0)


def bootstrap_mean_diff(a: list[float], b: list[float], seed: int = 0) -> Paired:
    """The mean of a - b with a 95% interval from scipy's bootstrap, resampling the pairs together (BCa; the
    percentile interval where BCa is undefined). Seeded, so a report is reproducible."""
    import numpy as np
    from scipy.stats import bootstrap

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = x - y
    n = len(d)
    if n == 0:
        return Paired(float("nan"), float("nan"), float("nan"), 0)
    diff = float(d.mean())
    if n < 3:  # a bootstrap of two pairs only spans them: no interval to claim anything with
        return Paired(diff, float("nan"), float("nan"), n)
    if np.allclose(d, d[0]):  # every pair differs by the same amount: the interval is that point
        return Paired(diff, diff, diff, n)
    seed_kw = "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = bootstrap((x, y), lambda p, q, axis=-1: np.mean(p - q, axis=axis), paired=True, vectorized=True,
                            confidence_level=CONFIDENCE, n_resamples=RESAMPLES, method=method,
                            **{seed_kw: np.random.default_rng(seed)})
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isnan(low) or math.isnan(high)):
            return Paired(diff, low, high, n)
    return Paired(diff, float("nan"), float("nan"), n)


def by_original_interval(d: list[float], groups: list) -> Paired:
    """The differences `d` averaged per group (one original model: a regularity and a seed, whose rates share its
    D_c and its checkpoint, so its cells move together), and a 95% t interval over those group means (n - 1
    degrees of freedom): with the few originals a suite has (3 to 9), resampling them (a cluster bootstrap) gives
    too narrow an interval; the t interval widens with fewer. `pairs` of the result counts the groups; `diff` is
    the mean of the group means."""
    import numpy as np
    from scipy.stats import t as student

    x = np.asarray(d, dtype=float)
    keys = list(dict.fromkeys(groups))
    if len(x) == 0:
        return Paired(float("nan"), float("nan"), float("nan"), 0)
    where = {k: i for i, k in enumerate(keys)}
    at = np.array([where[g] for g in groups])
    means = np.bincount(at, weights=x, minlength=len(keys)) / np.bincount(at, minlength=len(keys))
    diff = float(means.mean())
    if len(keys) < 2:
        return Paired(diff, float("nan"), float("nan"), len(keys))
    half = float(student.ppf(0.5 + CONFIDENCE / 2, len(keys) - 1) * means.std(ddof=1) / math.sqrt(len(keys)))
    return Paired(diff, diff - half, diff + half, len(keys))


def pick_reference(rows: list[dict], wanted: str | None = None) -> str:
    """The reference run: `wanted` (it must be in the results), else rem, else the first run of the results."""
    runs = runs_in_order(rows)
    if wanted is not None:
        if wanted not in runs:
            raise RemflowError("the reference run is not in the results", key="--reference", got=wanted,
                               hint="one of " + ", ".join(runs))
        return wanted
    return DEFAULT_REFERENCE if DEFAULT_REFERENCE in runs else runs[0]


def paired(rows: list[dict], reference: str, metric: str = "score") -> dict[str, dict[str, Paired]]:
    """run -> {"all" | regularity -> Paired} of `metric` against `reference` over the same cells and seeds."""
    def cells(run: str) -> dict[tuple, float]:
        return {(r["regularity"], float(r["discovery_rate"]), int(r["seed"]), r.get("corruption", "")):
                float(r[metric]) for r in rows if r["run"] == run}

    def detected(run: str) -> bool:  # a detection-study run (D_f from a detector), not the oracle grid's
        return any(r.get("view") for r in rows if r["run"] == run)

    ref = cells(reference)
    out: dict[str, dict[str, Paired]] = {}
    for run in runs_in_order(rows):
        if run == reference or detected(run) != detected(reference):
            continue
        mine = cells(run)
        keys = sorted(k for k in mine if k in ref)
        out[run] = {}
        for col in ["all"] + regularities_of(rows):
            ks = [k for k in keys if col == "all" or k[0] == col]
            out[run][col] = bootstrap_mean_diff([mine[k] for k in ks], [ref[k] for k in ks])
        # the same cells, counted by original model: (regularity, seed, corruption)
        out[run][BY_ORIGINAL] = by_original_interval([mine[k] - ref[k] for k in keys],
                                                     [(k[0], k[2], k[3]) for k in keys])
    return out


BY_ORIGINAL = "by original"  # paired()'s column of the interval over original models, not cells


# ---------------------------------------------------------------- tables, built once and rendered to each format


@dataclass
class Table:
    title: str  # the terminal title; markdown puts its own heading above
    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column) cells to emphasise
    right: bool = True  # numeric columns (all but the first) right-aligned
    note: str = ""
    mark: str = ""  # written after each bold cell too, for readers without bold (the paired table's "*")


def pct(v: float) -> str:
    return "—" if v is None or math.isnan(v) else f"{100 * v:.2f}"


def pm(mean: float, err: float) -> str:
    return "—" if math.isnan(mean) else f"{100 * mean:.2f} ± {100 * err:.2f}"


def _best_cells(values: list[list[float]]) -> set[tuple[int, int]]:
    """The (row, column) cells holding each column's largest value."""
    out = set()
    for j in range(len(values[0]) if values else 0):
        col = [v[j] for v in values if not math.isnan(v[j])]
        if col:
            out |= {(i, j) for i, v in enumerate(values) if v[j] == max(col)}
    return out


def summary_table(rows: list[dict], metrics: Iterable[str] = HEADLINE) -> Table:
    """Runs x headline metrics, mean ± standard error over every cell and seed, the best in bold."""
    metrics = list(metrics)
    sums = {m: summary(rows, m) for m in metrics}
    runs = runs_in_order(rows)
    body = [[run, str(sums[metrics[0]][run][2])] + [pm(*sums[m][run][:2]) for m in metrics] for run in runs]
    bold = {(i, j + 2) for i, j in _best_cells([[sums[m][run][0] for m in metrics] for run in runs])}
    return Table("mean ± standard error over every cell and seed (%)",
                 ["run", "runs"] + [TITLES.get(m, m) + " (%)" for m in metrics], body, bold)


def metric_table(rows: list[dict], metric: str, percent: bool = True, best: bool = True) -> Table:
    """One metric: runs x (all cells, then each regularity), mean ± standard error, the best (largest) in bold
    (`best`); `percent`: shown as a percentage."""
    by = summary_by_regularity(rows, metric)
    cols = ["all"] + regularities_of(rows)
    nan = (float("nan"), float("nan"), 0)
    def show(mean, err):
        return pm(mean, err) if percent or math.isnan(mean) else f"{mean:.3g} ± {err:.2g}"

    body = [[run, str(v["all"][2])] + [show(*v.get(c, nan)[:2]) for c in cols] for run, v in by.items()]
    bold = {(i, j + 2) for i, j in _best_cells([[v.get(c, nan)[0] for c in cols] for v in by.values()])} if best \
        else set()
    unit = " (%)" if percent else ""
    return Table(f"{TITLES.get(metric, metric)}{unit}: mean ± standard error over cells and seeds",
                 [f"{TITLES.get(metric, metric)}{unit}", "runs"] + cols, body, bold)


def taxonomy_table(rows: list[dict], run: str, metric: str) -> Table:
    tab = taxonomy(rows, run, metric)
    rates = rates_of(rows)
    body = [[reg] + [pct(tab.get(reg, {}).get(r, float("nan"))) for r in rates] for reg in regularities_of(rows)]
    return Table(f"{TITLES.get(metric, metric)} of {run} (%): regularity x discovery rate",
                 [f"{TITLES.get(metric, metric)} of {run}"] + [f"{r:g}" for r in rates], body, right=False)


def signed(v: float) -> str:
    return "—" if math.isnan(v) else f"{100 * v:+.2f}"


def paired_text(p: Paired) -> str:
    if p.pairs == 0:
        return "—"
    interval = "" if math.isnan(p.low) else f" [{signed(p.low)}, {signed(p.high)}]"
    return f"{signed(p.diff)}{interval}"


def paired_table(rows: list[dict], reference: str, metric: str = "score") -> Table:
    """Every run against the reference: mean difference [95% interval] of `metric`, over matched rows."""
    cmp = paired(rows, reference, metric)
    cols = ["all", BY_ORIGINAL] + regularities_of(rows)

    def text(p: Paired, col: str) -> str:
        if col != BY_ORIGINAL or p.pairs == 0:
            return paired_text(p)
        return ("—" if math.isnan(p.low) else f"[{signed(p.low)}, {signed(p.high)}]") + f" ({p.pairs})"

    body = [[run, str(by["all"].pairs)] + [text(by[c], c) for c in cols] for run, by in cmp.items()]
    bold = {(i, j + 2) for i, by in enumerate(cmp.values()) for j, c in enumerate(cols) if by[c].excludes_zero}
    name = TITLES.get(metric, metric)
    fewest = min((p.pairs for by in cmp.values() for c, p in by.items() if c != BY_ORIGINAL), default=0)
    rough = f" With {fewest} pairs an interval is rough." if 0 < fewest < 6 else ""
    originals = max((by[BY_ORIGINAL].pairs for by in cmp.values()), default=0)
    few = f" With {originals} originals the by-original interval is wide." if 0 < originals < 6 else ""
    return Table(f"{name} (%) minus {reference}'s over the same cells and seeds: mean [95% bootstrap interval]",
                 [f"{name} − {reference} (points)", "pairs"] + cols, body, bold, mark="*",
                 note=f"*, bold: the 95% interval excludes 0 (scipy.stats.bootstrap, paired, BCa, {RESAMPLES} "
                      f"resamples, seed 0); pairs: the (regularity, rate, seed) rows both runs have. {BY_ORIGINAL}: "
                      "a 95% t interval over the original models' mean differences (an original: a regularity "
                      "and a seed, with all their rates, whose cells move together), in brackets the originals."
                      f"{rough}{few}")


def terminal_tables(rows: list[dict], run: str, metric: str, reference: str) -> list[Table]:
    """What `remflow evaluate` prints: each headline metric by regularity, the paired comparison (of Utility x
    Healed, and of `metric` too when it is Healed or Utility), a taxonomy."""
    also = [paired_table(rows, reference, metric)] if metric != "score" else []
    return ([metric_table(rows, m) for m in HEADLINE] + [paired_table(rows, reference)] + also
            + [taxonomy_table(rows, run, metric)] + detection_tables(rows))


def detection_tables(rows: list[dict]) -> list[Table]:
    """Measured regularity, and the detection study's tables where a detector flagged D_f (none otherwise)."""
    out = [regularity_table(rows)] if corruptions_by_regularity(rows) else []
    if any(r.get("view") for r in rows):
        out += [discovery_table(rows), false_positive_table(rows)]
    return out


def to_markdown(t: Table) -> str:
    align = "|---|" + ("---:|" if t.right else "---|") * (len(t.header) - 1)
    lines = ["| " + " | ".join(t.header) + " |", align]
    for i, row in enumerate(t.rows):
        cells = [f"**{c}**{' ' + t.mark if t.mark else ''}" if (i, j) in t.bold else c for j, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + (f"\n{t.note}\n" if t.note else "")


def to_rich(t: Table):
    from rich.markup import escape
    from rich.table import Table as RichTable

    out = RichTable(title=escape(t.title), caption=escape(t.note) if t.note else None)
    out.add_column(escape(t.header[0]))
    for h in t.header[1:]:
        out.add_column(escape(h), justify="right" if t.right else "left")
    for i, row in enumerate(t.rows):
        mark = f" {escape(t.mark)}" if t.mark else ""
        out.add_row(*(f"[bold]{escape(c)}{mark}[/bold]" if (i, j) in t.bold else escape(c)
                      for j, c in enumerate(row)))
    return out


def summary_json(rows: list[dict], run: str, metric: str, reference: str) -> dict[str, Any]:
    """Machine-readable form of the terminal tables (`remflow evaluate --format json`)."""
    out: dict[str, Any] = {"summary": {}, "taxonomy": {"run": run, "metric": metric, "cells": {}},
                           "paired": {"reference": reference, "metric": "score", "confidence": CONFIDENCE,
                                      "runs": {}}}
    for m in HEADLINE:
        for name, by in summary_by_regularity(rows, m).items():
            for col, (mean, err, n) in by.items():
                out["summary"].setdefault(name, {}).setdefault(m, {})[col] = {"mean": mean, "sem": err, "runs": n}
    for reg, by_rate in taxonomy(rows, run, metric).items():
        out["taxonomy"]["cells"][reg] = {f"{r:g}": v for r, v in sorted(by_rate.items())}
    metrics = ["score"] + ([metric] if metric != "score" else [])
    for m in metrics:  # `paired`: Utility x Healed; `paired_<metric>`: the --metric's, when it is another
        key = "paired" if m == "score" else f"paired_{m}"
        out.setdefault(key, {"reference": reference, "metric": m, "confidence": CONFIDENCE, "runs": {}})
        for name, by in paired(rows, reference, m).items():
            out[key]["runs"][name] = {col: {"diff": p.diff, "low": p.low, "high": p.high, "pairs": p.pairs,
                                            "excludes_zero": p.excludes_zero} for col, p in by.items()}
    return out


def render(rows: list[dict], fmt: str, run: str, metric: str, console, reference: str | None = None) -> None:
    """Print the evaluation tables in one of the formats of `remflow evaluate --format`."""
    reference = pick_reference(rows, reference)
    if fmt == "table":
        for t in terminal_tables(rows, run, metric, reference):
            console.print(to_rich(t))
    elif fmt == "md":
        text = "\n".join(to_markdown(t) for t in [summary_table(rows)] + terminal_tables(rows, run, metric, reference))
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    elif fmt == "csv":
        console.print(csv_text(rows), markup=False, highlight=False, soft_wrap=True, end="")
    elif fmt == "json":
        console.print(json.dumps(summary_json(rows, run, metric, reference), indent=2, sort_keys=True),
                      markup=False, highlight=False, soft_wrap=True)
    else:  # pragma: no cover - the CLI restricts the choices
        raise ValueError(fmt)


# ---------------------------------------------------------------- files


_INTEGER = {"seed", "params_deployed", "params_peak"}  # written as integers from the records


class _Empty(float):
    """The nan `read_csv` gives an empty cell: any nan to the tables, written back empty by `csv_text`. A nan a
    run measured (`nan` in the file: a few-shot attack with nothing to attack) stays a plain nan, written `nan`."""

    __slots__ = ()

    def __new__(cls, *_):  # copy and pickle pass the value back
        return super().__new__(cls, "nan")


EMPTY = _Empty()


def _csv_value(key: str, v):
    """A value as results.csv holds it: rows read back (`read_csv`) carry floats for every number and EMPTY for an
    empty cell, and `--write` writes the text the records gave (empty, `42784`; not `nan`, `42784.0`)."""
    if isinstance(v, _Empty):
        return ""
    if isinstance(v, float) and key in _INTEGER and v.is_integer():
        return int(v)
    return v


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**{k: _csv_value(k, v) for k, v in r.items()},
                    "details": json.dumps(r.get("details", {}), sort_keys=True)})
    return buf.getvalue()


def read_csv(path: str | Path) -> list[dict]:
    """The rows of a results.csv (files written before the run/method rename, with `method` naming the run and
    `base_method` the method, are read too)."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = dict(r)
            if "base_method" in row and "run" not in row:
                row["run"], row["method"] = row.pop("method"), row.pop("base_method")
            for k in _NUMERIC & set(row):
                row[k] = float(row[k]) if row[k] not in ("", None) else EMPTY
            row["seed"] = int(row["seed"])
            row["details"] = json.loads(row["details"]) if row.get("details") else {}
            if not row.get("discovery"):  # written before the detection study: oracle discovery, nothing measured
                row.update(corruption=CORRUPTION_OF.get(row["regularity"], row["regularity"]), discovery="oracle",
                           discovery_precision=1.0, discovery_recall=row["discovery_rate"],
                           regularity_score=EMPTY)
            if "view" not in row:  # written before the view column: `<run>_det` / `<run>_hits`, `<detector>:hits`
                _old_view(row)
            row["view"] = row.get("view") or ""
            rows.append(row)
    return rows


def _old_view(row: dict) -> None:
    if row["discovery"] in ("oracle", ""):
        row["view"] = ""
        return
    row["view"] = "hits" if row["discovery"].endswith(":hits") else "found"
    row["discovery"] = row["discovery"].removesuffix(":hits")
    for suffix, view in (("_det", "found"), ("_hits", "hits")):
        if row["run"].endswith(suffix) and view == row["view"]:
            row["run"] = row["run"][: -len(suffix)] + "@" + view


def read_results(paths: list[Path], mixed: bool = False) -> list[dict]:
    """The rows of one or more results.csv files; a run's (cell, seed) may appear in only one of them, and pooled
    files must agree on each run's settings and each corruption's originals (`SettingsCheck`) unless `mixed`."""
    rows: list[dict] = []
    seen: dict[tuple, Path] = {}
    same = SettingsCheck()
    needed = {"run", "regularity", "discovery_rate", "seed", "healed", "utility", "score"}
    for path in paths:
        if path.is_dir():
            inside = path / "results.csv"
            raise RemflowError("--from-csv takes a results.csv file; this is a folder", key=str(path),
                               hint=f"--from-csv {inside}" if inside.is_file() else "name the results.csv file")
        if not path.is_file():
            raise RemflowError("results file not found", key=str(path), hint="run `dvc repro` first")
        try:
            _check_csv_shape(path)
            with open(path, newline="") as f:
                header = set(next(csv.reader(f), []))
            if "base_method" in header:  # written before the run/method rename: `method` names the run
                header.add("run")
            missing = needed - header
            if missing:
                raise KeyError("missing columns " + ", ".join(sorted(missing)))
            part = read_csv(path)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, csv.Error) as e:
            raise RemflowError(f"cannot read the results file ({type(e).__name__}: {e})", key=str(path),
                               hint="pass a reports/results.csv written by `remflow evaluate`") from None
        if not part:
            raise RemflowError("the results file has no rows", key=str(path),
                               hint="pass a reports/results.csv written by `remflow evaluate`")
        for n, r in enumerate(part, 2):  # line numbers: the header is line 1
            blank = [k for k in ("run", "regularity", "healed", "utility", "discovery_rate")
                     if r[k] in ("", None) or r[k] != r[k]]
            if blank:
                raise RemflowError("a row lacks what every table reads", key=f"{path}:{n}",
                                   got=f"empty {', '.join(blank)}",
                                   hint="pass a reports/results.csv written by `remflow evaluate`")
            key = (r["run"], r["regularity"], r["corruption"], r["discovery_rate"], r["seed"])
            if key in seen:
                where = "twice in" if seen[key] == path else f"in two results files: {seen[key]} and"
                raise RemflowError(f"the same run is {where} {path}", key=str(path),
                                   got=f"{key[0]} {key[2]} rate {key[3]:g} seed {key[4]}",
                                   hint="pool files of disjoint grids (other seeds, regularities or rates)")
            seen[key] = path
            if not mixed:
                same.add(r, path)
        rows += part
    return rows


class SettingsCheck:
    """Rows pooled from several results.csv files are one suite's only if a run name stands for the same settings
    in every file (results.csv's `settings`: the run's method config and recipe) and a corruption's originals were
    made under the same data, model, pretraining and corruption settings (`setup`, by part). Files are held against
    each other, not a file against itself (one written with `--mixed --write` holds both); a row of a file written
    before those columns (empty) is not checked."""

    def __init__(self) -> None:
        self.settings: dict[str, tuple[str, Path]] = {}
        self.setup: dict[tuple[str, str, str], tuple[dict, Path]] = {}

    def add(self, row: dict, path: Path) -> None:
        hint = ("pool the files of one suite's settings; `--mixed` pools them anyway, and "
                "`python bench/paired_files.py A.csv B.csv` compares two settings cell by cell")
        settings = str(row.get("settings") or "")
        if settings:
            first = self.settings.setdefault(row["run"], (settings, path))
            if first[0] != settings and first[1] != path:
                raise RemflowError(f"run '{row['run']}' was made with other settings in {first[1]} than in {path}",
                                   key=str(path), got=f"settings {first[0]} and {settings} (the run's method config "
                                   "and recipe, as its records hold them)",
                                   hint="rename the run in one suite's params (methods:) if both are wanted; " + hint)
        parts = setup_parts(row.get("setup"))
        if parts:
            name = originals_key(row)
            first_parts, where = self.setup.setdefault(name, (parts, path))
            differ = [k for k in parts if parts[k] != first_parts[k]] if where != path else []
            if differ:
                raise RemflowError(f"the originals of {name[0]} ({name[1]}) were made under other settings in "
                                   f"{where} than in {path}", key=str(path),
                                   got=f"{', '.join(differ)} differ{'s' if len(differ) == 1 else ''}", hint=hint)



def read_suites(paths: list[Path]) -> list[dict]:
    """The rows of several suites' results.csv files, pooled: each file's corruptions renamed `<suite>/<name>`
    (the suite: the folder that holds reports/), so the same cell of two suites stays two cells."""
    rows = []
    seen: set[Path] = set()
    for path in paths:
        if path.resolve() in seen:
            raise RemflowError("the same results file is given twice", key=str(path),
                               hint="name each file once (its rows would count twice)")
        seen.add(path.resolve())
        suite = path.resolve().parent.parent.name
        for r in read_results([path]):
            rows.append({**r, "corruption": f"{suite}/{r['corruption']}"})
    return rows

def _check_csv_shape(path: Path) -> None:
    """Every line of a results CSV has the header's number of fields (a cut or hand-edited file does not)."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ValueError("the file is empty")
        for row in reader:
            if row and len(row) != len(header):
                raise ValueError(f"line {reader.line_num} has {len(row)} fields, the header {len(header)}")


def write_reports(rows: list[dict], reports: str | Path, metrics_path: str | Path, *, context: dict,
                  taxonomy_run: str | None = None, reference: str | None = None,
                  heatmaps: bool = True) -> dict[str, Path]:
    reports = Path(reports)
    written = {}
    atomic_write_text(reports / "results.csv", csv_text(rows))
    written["csv"] = reports / "results.csv"
    atomic_write_text(metrics_path, dumps_json(metrics_tree(rows)))
    written["metrics"] = Path(metrics_path)
    run = taxonomy_run or runs_in_order(rows)[0]
    reference = pick_reference(rows, reference)
    md = ["# remflow results", "", f"Produced by `remflow evaluate` ({context.get('remflow', '')}).", ""]
    md += [f"- {k}: {v}" for k, v in context.items() if k != "params"]
    md += ["", "## Summary over every cell and seed (mean ± standard error)", "", to_markdown(summary_table(rows))]
    for metric in HEADLINE:
        md += [f"## {TITLES[metric]} by regularity", "", to_markdown(metric_table(rows, metric))]
    md += [f"## Paired: {TITLES['score']} against {reference}", "", to_markdown(paired_table(rows, reference))]
    for metric in HEADLINE:
        md += [f"## Taxonomy: {TITLES[metric]} of {run}", "", to_markdown(taxonomy_table(rows, run, metric))]
    md += robustness_markdown(rows, reference)
    md += detection_markdown(rows)
    if "params" in context:
        md += ["## Parameters", "", "```yaml", context["params"].rstrip(), "```", ""]
    atomic_write_text(reports / "results.md", "\n".join(md))
    written["markdown"] = reports / "results.md"
    if heatmaps:
        written.update(write_heatmaps(rows, reports / "heatmaps"))
        png = regularity_png(rows)
        if png is not None:
            atomic_write_bytes(reports / "regularity.png", png)
            written["regularity"] = reports / "regularity.png"
    return written


def has_robustness(rows: list[dict]) -> bool:
    return any(_finite(r.get("relearn_healed")) for r in rows)


def robustness_markdown(rows: list[dict], reference: str) -> list[str]:
    """Is the corruption gone or only hidden (remflow/robustness.py): each measurement by run and regularity,
    Healed after the clean relearning attack paired against the reference, and its heatmaps."""
    if not has_robustness(rows):
        return []
    some = [r for r in rows if _finite(r.get("relearn_healed"))]
    md = ["## Is the corruption gone or only hidden?", "",
          "Each run's deployed model under a clean relearning attack (fine-tuning on training data outside D_c), a "
          "few-shot attack (the same with a few samples of D_f), feature probes and its distance from the "
          "original (remflow/robustness.py). Read each against the `none` (the original) and `retrain` rows.", ""]
    for col, percent in ROBUSTNESS_TABLES:
        if any(_finite(r.get(col)) for r in some):
            md += [f"### {TITLES.get(col, col)}", "", to_markdown(metric_table(some, col, percent, best=False))]
    md += [f"### {TITLES['relearn_healed']}: paired against {reference}", "",
           to_markdown(paired_table(some, reference, "relearn_healed"))]
    return md


def detection_markdown(rows: list[dict]) -> list[str]:
    """The sections of the measured regularity and, where a detector flagged D_f, of the detection study."""
    headings = {"Utility×Healed (%) by": "Utility×Healed against measured regularity",
                "precision / recall": "Discovery by detectors: precision and recall",
                "what false positives": "What false positives cost"}
    md = []
    for t in detection_tables(rows):
        md += ["## " + next(h for k, h in headings.items() if t.title.startswith(k)), "", to_markdown(t)]
        if t.title.startswith("Utility×Healed (%) by"):
            md += ["![Utility x Healed against measured regularity](regularity.png)", ""]
    return md


# ---------------------------------------------------------------- the detection study and measured regularity


def _finite(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def corruptions_by_regularity(rows: list[dict]) -> list[tuple[str, float]]:
    """(corruption, measured regularity: mean over its seeds' manifests), least regular first."""
    by: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if _finite(r.get("regularity_score")):
            by[r["corruption"]][int(r["seed"])] = float(r["regularity_score"])
    return sorted(((c, sum(v.values()) / len(v)) for c, v in by.items()), key=lambda t: t[1])


def regularity_table(rows: list[dict]) -> Table:
    """Runs x corruptions in order of measured regularity: Utility x Healed, mean over rates, budgets, seeds."""
    order = corruptions_by_regularity(rows)
    runs = runs_in_order(rows)
    values = [[mean_sem([float(r["score"]) for r in rows if r["run"] == run and r["corruption"] == c])[0]
               for c, _ in order] for run in runs]
    body = [[run] + [pct(v) for v in vals] for run, vals in zip(runs, values)]
    return Table("Utility×Healed (%) by corruption, least regular first (measured regularity in brackets)",
                 ["Utility×Healed (%)"] + [f"{c} ({g:.2f})" for c, g in order], body,
                 {(i, j + 1) for i, j in _best_cells(values)},
                 note="regularity: remflow/detection/probe.py (0: the discovered half of D_c teaches nothing about "
                      "the rest; 1: all of it)")


def discovery_table(rows: list[dict]) -> Table:
    """Per detected corruption and budget: the detector's precision / recall of D_f against D_c (%)."""
    found = [r for r in rows if r.get("view") == "found"]
    order = [c for c, _ in corruptions_by_regularity(found)] or sorted({r["corruption"] for r in found})
    budgets = rates_of(found)
    body = []
    for c in order:
        of = [r for r in found if r["corruption"] == c]
        cells = []
        for b in budgets:
            at = {(int(r["seed"])): r for r in of if float(r["discovery_rate"]) == b}  # one per seed
            p = mean_sem([float(r["discovery_precision"]) for r in at.values()])[0]
            rc = mean_sem([float(r["discovery_recall"]) for r in at.values()])[0]
            cells.append(f"{pct(p)} / {pct(rc)}")
        body.append([c, of[0]["discovery"]] + cells)
    return Table("precision / recall (%) of the flagged D_f against D_c, per budget (× |D_c| flagged)",
                 ["corruption", "detector"] + [f"budget {b:g}" for b in budgets], body, right=False)


def false_positive_table(rows: list[dict]) -> Table:
    """Per run: Utility x Healed on D_f as flagged and on its true positives alone, and the paired difference
    (what the false positives cost) with its 95% bootstrap interval."""
    body, bold = [], set()

    def cells(base: str, view: str) -> dict[tuple, dict]:
        return {(r["corruption"], float(r["discovery_rate"]), int(r["seed"])): r for r in rows
                if r.get("view") == view and base_run(r) == base}

    for base in dict.fromkeys(base_run(r) for r in rows if r.get("view") == "found"):
        det, hits = cells(base, "found"), cells(base, "hits")
        keys = sorted(k for k in det if k in hits)
        if not keys:
            continue
        line = [base, str(len(keys))]
        for metric in HEADLINE:
            p = bootstrap_mean_diff([float(det[k][metric]) for k in keys], [float(hits[k][metric]) for k in keys])
            if metric == "score":
                line += [pct(mean_sem([float(det[k]["score"]) for k in keys])[0]),
                         pct(mean_sem([float(hits[k]["score"]) for k in keys])[0])]
            if p.excludes_zero:
                bold.add((len(body), len(line)))
            line.append(paired_text(p))
        body.append(line)
    return Table("what false positives cost: flagged D_f minus its true positives alone, over the same cells",
                 ["run", "pairs", "Healed (points)", "Utility (points)", "U×H flagged (%)", "U×H hits only (%)",
                  "U×H (points)"], body, bold, mark="*",
                 note="*, bold: the 95% paired bootstrap interval excludes 0 (scipy.stats.bootstrap, BCa, seed 0)")


def regularity_png(rows: list[dict]) -> bytes | None:
    """Each run's Utility x Healed (mean over rates, budgets and seeds of a corruption) against the corruption's
    measured regularity; one line a run. None when no row has a measured regularity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = corruptions_by_regularity(rows)
    if not order:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=HEATMAP_DPI)
    # one colour a method, one line style a discovery: oracle subset solid, flagged dashed, hits only dotted
    runs = runs_in_order(rows)
    first = {run: next(r for r in rows if r["run"] == run) for run in runs}
    base = {run: base_run(first[run]) for run in runs}
    colours = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(dict.fromkeys(base.values()))}
    for run in runs:
        style = {"hits": ":", "found": "--"}.get(first[run].get("view") or "", "-")
        pts = []
        for c, g in order:
            v = [float(r["score"]) for r in rows if r["run"] == run and r["corruption"] == c]
            if v:
                pts.append((g, 100 * sum(v) / len(v)))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=run, linewidth=1.2,
                    linestyle=style, color=colours[base[run]], markersize=4)
    ax.set_xlabel("measured regularity (remflow/detection/probe.py)")
    ax.set_ylabel("Utility × Healed (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3, loc="best")
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------- heatmaps

HEATMAP_SIZE = (6.4, 3.2)  # inches; at HEATMAP_DPI this is 640x320 pixels
HEATMAP_DPI = 100


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=HEATMAP_DPI, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def heatmap_png(rows: list[dict], run: str, metric: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regs, rates = regularities_of(rows), rates_of(rows)
    tab = taxonomy(rows, run, metric)
    grid = [[100 * tab.get(g, {}).get(r, float("nan")) for r in rates] for g in regs]
    fig, ax = plt.subplots(figsize=HEATMAP_SIZE)
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="white" if v < 60 else "black", fontsize=9)
    ax.set_xticks(range(len(rates)), [f"{r:g}" for r in rates])
    ax.set_yticks(range(len(regs)), regs)
    ax.set_xlabel("discovery rate")
    ax.set_ylabel("regularity")
    ax.set_title(f"{run}: {TITLES.get(metric, metric)} (%)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _png(fig)


def best_run_png(rows: list[dict], metric: str = "score") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    regs, rates, runs = regularities_of(rows), rates_of(rows), runs_in_order(rows)
    tabs = {m: taxonomy(rows, m, metric) for m in runs}
    idx, label = [], []
    for g in regs:
        irow, lrow = [], []
        for r in rates:
            vals = [(tabs[m].get(g, {}).get(r, float("-inf")), -k, m) for k, m in enumerate(runs)]
            v, negk, m = max(vals)
            irow.append(-negk)
            lrow.append(f"{m}\n{100 * v:.0f}")
        idx.append(irow)
        label.append(lrow)
    cmap = ListedColormap(plt.get_cmap("tab20").colors[: max(1, len(runs))])
    fig, ax = plt.subplots(figsize=HEATMAP_SIZE)
    ax.imshow(idx, cmap=cmap, vmin=-0.5, vmax=len(runs) - 0.5, aspect="auto")
    for i, row in enumerate(label):
        for j, text in enumerate(row):
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(rates)), [f"{r:g}" for r in rates])
    ax.set_yticks(range(len(regs)), regs)
    ax.set_xlabel("discovery rate")
    ax.set_ylabel("regularity")
    ax.set_title(f"best run per cell by {TITLES.get(metric, metric)}")
    fig.tight_layout()
    return _png(fig)


def write_heatmaps(rows: list[dict], folder: str | Path) -> dict[str, Path]:
    folder = Path(folder)
    written = {}
    for run in runs_in_order(rows):
        for metric in HEADLINE:
            path = folder / f"{run}-{metric}.png"
            atomic_write_bytes(path, heatmap_png(rows, run, metric))
            written[f"heatmap:{run}:{metric}"] = path
    if has_robustness(rows):
        for run in runs_in_order(rows):
            path = folder / f"{run}-relearn_healed.png"
            atomic_write_bytes(path, heatmap_png(rows, run, "relearn_healed"))
            written[f"heatmap:{run}:relearn_healed"] = path
    path = folder / "best-score.png"
    atomic_write_bytes(path, best_run_png(rows, "score"))
    written["best"] = path
    return written


