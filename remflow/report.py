"""Tables and heatmaps of the results (paper §5.2): Table-1 style mean ± standard error per method over every
cell and seed, taxonomy tables (rows: regularity high/medium/low, columns: discovery rate), heatmaps.

Utility x Healed is computed per run and then averaged (never the product of the means), as the paper does.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

from remflow.io import atomic_write_bytes, atomic_write_text, dumps_json
from remflow.config import REGULARITIES

COLUMNS = ["method", "base_method", "pretrained", "regularity", "discovery_rate", "seed", "healed", "utility",
           "score", "healed_test", "forget_acc", "unlearn_seconds", "peak_memory_mb", "params_deployed",
           "params_peak", "details"]
HEADLINE = ("healed", "utility", "score")
TITLES = {"healed": "Healed", "utility": "Utility", "score": "Utility×Healed", "healed_test": "Healed (test)",
          "forget_acc": "Acc(D_f)", "unlearn_seconds": "seconds"}


def rate_key(rate: float) -> str:
    """0.1 -> r10, 1.0 -> r100, 0.125 -> r12p5: a rate as a dot-free key for metrics.json."""
    pct = round(float(rate) * 100, 6)
    return f"r{int(pct)}" if pct == int(pct) else "r" + f"{pct:g}".replace(".", "p")


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


def methods_in_order(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.setdefault(r["method"], None)
    return list(seen)


def summary(rows: list[dict], metric: str) -> dict[str, tuple[float, float, int]]:
    """method -> (mean, standard error, number of runs) of `metric` over every cell and seed."""
    by: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by[r["method"]].append(float(r[metric]))
    return {m: (*mean_sem(by[m]), len(by[m])) for m in methods_in_order(rows)}


def taxonomy(rows: list[dict], method: str, metric: str) -> dict[str, dict[float, float]]:
    """regularity -> rate -> mean over seeds of `metric` for one method."""
    cells: dict[tuple[str, float], list[float]] = defaultdict(list)
    for r in rows:
        if r["method"] == method:
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


def metrics_tree(rows: list[dict]) -> dict[str, Any]:
    """The nested metrics.json: summary.<method>.{healed,utility,score} and cells.<method>.<reg>.<rXX>.<metric>."""
    tree: dict[str, Any] = {"summary": {}, "cells": {}}
    for metric in HEADLINE:
        for m, (mean, _, _) in summary(rows, metric).items():
            tree["summary"].setdefault(m, {})[metric] = round(mean, 6)
    for m in methods_in_order(rows):
        for metric in HEADLINE:
            for reg, by_rate in taxonomy(rows, m, metric).items():
                for rate, v in by_rate.items():
                    tree["cells"].setdefault(m, {}).setdefault(reg, {}).setdefault(rate_key(rate), {})[metric] = round(v, 6)
    return tree


# ---------------------------------------------------------------- files


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "details": json.dumps(r.get("details", {}), sort_keys=True)})
    return buf.getvalue()


def read_csv(path: str | Path) -> list[dict]:
    numeric = {"discovery_rate", "healed", "utility", "score", "healed_test", "forget_acc", "unlearn_seconds",
               "peak_memory_mb", "params_deployed", "params_peak", "seed"}
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = dict(r)
            for k in numeric & set(row):
                row[k] = float(row[k]) if row[k] not in ("", None) else float("nan")
            row["seed"] = int(row["seed"])
            row["details"] = json.loads(row["details"]) if row.get("details") else {}
            rows.append(row)
    return rows


def pct(v: float) -> str:
    return "—" if v is None or math.isnan(v) else f"{100 * v:.2f}"


def pm(mean: float, err: float) -> str:
    return "—" if math.isnan(mean) else f"{100 * mean:.2f} ± {100 * err:.2f}"


def summary_by_regularity(rows: list[dict], metric: str) -> dict[str, dict[str, tuple[float, float, int]]]:
    """method -> {"all" | regularity -> (mean, standard error, runs)} of `metric`."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {m: {} for m in methods_in_order(rows)}
    for m, v in summary(rows, metric).items():
        out[m]["all"] = v
    for reg in regularities_of(rows):
        for m, v in summary([r for r in rows if r["regularity"] == reg], metric).items():
            out[m][reg] = v
    return out


def _best(table: dict[str, dict[str, tuple[float, float, int]]], column: str) -> float | None:
    vals = [v[column][0] for v in table.values() if column in v and not math.isnan(v[column][0])]
    return max(vals) if vals else None


def markdown_summary(rows: list[dict], metrics: Iterable[str] = HEADLINE) -> str:
    """One table: methods x headline metrics, mean ± standard error over every cell and seed, best in bold."""
    metrics = list(metrics)
    sums = {m: summary(rows, m) for m in metrics}
    best = {m: max((v[0] for v in sums[m].values() if not math.isnan(v[0])), default=None) for m in metrics}
    head = "| method | runs | " + " | ".join(TITLES.get(m, m) + " (%)" for m in metrics) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(metrics)]
    for meth in methods_in_order(rows):
        cells = []
        for m in metrics:
            mean, err, n = sums[m][meth]
            text = pm(mean, err)
            cells.append(f"**{text}**" if best[m] is not None and mean == best[m] else text)
        lines.append(f"| {meth} | {sums[metrics[0]][meth][2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_metric(rows: list[dict], metric: str) -> str:
    """One metric: methods x (all cells, then each regularity), mean ± standard error, best in bold."""
    table = summary_by_regularity(rows, metric)
    cols = ["all"] + regularities_of(rows)
    lines = [f"| {TITLES.get(metric, metric)} (%) | runs | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for meth, by in table.items():
        cells = []
        for c in cols:
            mean, err, _ = by.get(c, (float("nan"), float("nan"), 0))
            text = pm(mean, err)
            cells.append(f"**{text}**" if mean == _best(table, c) else text)
        lines.append(f"| {meth} | {by['all'][2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_taxonomy(rows: list[dict], method: str, metric: str) -> str:
    tab = taxonomy(rows, method, metric)
    rates = rates_of(rows)
    lines = [f"| {TITLES.get(metric, metric)} of {method} | " + " | ".join(f"{r:g}" for r in rates) + " |",
             "|---|" + "---|" * len(rates)]
    for reg in regularities_of(rows):
        lines.append(f"| {reg} | " + " | ".join(pct(tab.get(reg, {}).get(r, float("nan"))) for r in rates) + " |")
    return "\n".join(lines) + "\n"


def write_reports(rows: list[dict], reports: str | Path, metrics_path: str | Path, *, context: dict,
                  taxonomy_method: str | None = None, heatmaps: bool = True) -> dict[str, Path]:
    reports = Path(reports)
    written = {}
    atomic_write_text(reports / "results.csv", csv_text(rows))
    written["csv"] = reports / "results.csv"
    atomic_write_text(metrics_path, dumps_json(metrics_tree(rows)))
    written["metrics"] = Path(metrics_path)
    method = taxonomy_method or methods_in_order(rows)[0]
    md = ["# remflow results", "", f"Produced by `remflow evaluate` ({context.get('remflow', '')}).", ""]
    md += [f"- {k}: {v}" for k, v in context.items() if k != "params"]
    md += ["", "## Summary over every cell and seed (mean ± standard error)", "", markdown_summary(rows)]
    for metric in HEADLINE:
        md += [f"## {TITLES[metric]} by regularity", "", markdown_metric(rows, metric)]
    for metric in HEADLINE:
        md += [f"## Taxonomy: {TITLES[metric]} of {method}", "", markdown_taxonomy(rows, method, metric)]
    if "params" in context:
        md += ["## Parameters", "", "```yaml", context["params"].rstrip(), "```", ""]
    atomic_write_text(reports / "results.md", "\n".join(md))
    written["markdown"] = reports / "results.md"
    if heatmaps:
        written.update(write_heatmaps(rows, reports / "heatmaps"))
    return written


# ---------------------------------------------------------------- heatmaps

HEATMAP_SIZE = (6.4, 3.2)  # inches; at HEATMAP_DPI this is 640x320 pixels
HEATMAP_DPI = 100


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=HEATMAP_DPI, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def heatmap_png(rows: list[dict], method: str, metric: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regs, rates = regularities_of(rows), rates_of(rows)
    tab = taxonomy(rows, method, metric)
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
    ax.set_title(f"{method}: {TITLES.get(metric, metric)} (%)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _png(fig)


def best_method_png(rows: list[dict], metric: str = "score") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    regs, rates, methods = regularities_of(rows), rates_of(rows), methods_in_order(rows)
    tabs = {m: taxonomy(rows, m, metric) for m in methods}
    idx, label = [], []
    for g in regs:
        irow, lrow = [], []
        for r in rates:
            vals = [(tabs[m].get(g, {}).get(r, float("-inf")), -k, m) for k, m in enumerate(methods)]
            v, negk, m = max(vals)
            irow.append(-negk)
            lrow.append(f"{m}\n{100 * v:.0f}")
        idx.append(irow)
        label.append(lrow)
    cmap = ListedColormap(plt.get_cmap("tab20").colors[: max(1, len(methods))])
    fig, ax = plt.subplots(figsize=HEATMAP_SIZE)
    ax.imshow(idx, cmap=cmap, vmin=-0.5, vmax=len(methods) - 0.5, aspect="auto")
    for i, row in enumerate(label):
        for j, text in enumerate(row):
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(rates)), [f"{r:g}" for r in rates])
    ax.set_yticks(range(len(regs)), regs)
    ax.set_xlabel("discovery rate")
    ax.set_ylabel("regularity")
    ax.set_title(f"best method per cell by {TITLES.get(metric, metric)}")
    fig.tight_layout()
    return _png(fig)


def write_heatmaps(rows: list[dict], folder: str | Path) -> dict[str, Path]:
    folder = Path(folder)
    written = {}
    for method in methods_in_order(rows):
        for metric in HEADLINE:
            path = folder / f"{method}-{metric}.png"
            atomic_write_bytes(path, heatmap_png(rows, method, metric))
            written[f"heatmap:{method}:{metric}"] = path
    path = folder / "best-score.png"
    atomic_write_bytes(path, best_method_png(rows, "score"))
    written["best"] = path
    return written


# ---------------------------------------------------------------- terminal


def rich_metric(rows: list[dict], metric: str):
    """The terminal table of one metric: a row per method, mean ± standard error over all cells and seeds and
    per regularity, the best value of each column in bold."""
    from rich.table import Table

    table_data = summary_by_regularity(rows, metric)
    cols = ["all"] + regularities_of(rows)
    table = Table(title=f"{TITLES.get(metric, metric)} (%): mean ± standard error over cells and seeds")
    table.add_column("method")
    table.add_column("runs", justify="right")
    for c in cols:
        table.add_column(c, justify="right")
    for meth, by in table_data.items():
        cells = []
        for c in cols:
            mean, err, _ = by.get(c, (float("nan"), float("nan"), 0))
            text = pm(mean, err)
            cells.append(f"[bold]{text}[/bold]" if mean == _best(table_data, c) else text)
        table.add_row(meth, str(by["all"][2]), *cells)
    return table


def rich_taxonomy(rows: list[dict], method: str, metric: str):
    from rich.table import Table

    tab = taxonomy(rows, method, metric)
    rates = rates_of(rows)
    table = Table(title=f"{TITLES.get(metric, metric)} of {method} (%): regularity x discovery rate")
    table.add_column("regularity")
    for r in rates:
        table.add_column(f"{r:g}", justify="right")
    for reg in regularities_of(rows):
        table.add_row(reg, *(pct(tab.get(reg, {}).get(r, float("nan"))) for r in rates))
    return table


def summary_json(rows: list[dict], method: str, metric: str) -> dict[str, Any]:
    """Machine-readable form of the terminal tables (`remflow evaluate --format json`)."""
    out: dict[str, Any] = {"summary": {}, "taxonomy": {"method": method, "metric": metric, "cells": {}}}
    for m in HEADLINE:
        for meth, by in summary_by_regularity(rows, m).items():
            for col, (mean, err, n) in by.items():
                out["summary"].setdefault(meth, {}).setdefault(m, {})[col] = {"mean": mean, "sem": err, "runs": n}
    for reg, by_rate in taxonomy(rows, method, metric).items():
        out["taxonomy"]["cells"][reg] = {f"{r:g}": v for r, v in sorted(by_rate.items())}
    return out


def render(rows: list[dict], fmt: str, method: str, metric: str, console) -> None:
    """Print the evaluation tables in one of the formats of `remflow evaluate --format`."""
    if fmt == "table":
        for m in HEADLINE:
            console.print(rich_metric(rows, m))
        console.print(rich_taxonomy(rows, method, metric))
    elif fmt == "md":
        text = markdown_summary(rows) + "\n" + "\n".join(markdown_metric(rows, m) for m in HEADLINE)
        console.print(text + "\n" + markdown_taxonomy(rows, method, metric), markup=False, highlight=False,
                      soft_wrap=True)
    elif fmt == "csv":
        console.print(csv_text(rows), markup=False, highlight=False, soft_wrap=True, end="")
    elif fmt == "json":
        console.print(json.dumps(summary_json(rows, method, metric), indent=2, sort_keys=True), markup=False,
                      highlight=False, soft_wrap=True)
    else:  # pragma: no cover - the CLI restricts the choices
        raise ValueError(fmt)
