"""Where REM loses, measured: what the base model does with the *undiscovered* corrupted samples, epoch by epoch.

REM only sees D_f. Whatever it removes from the rest of D_c (D_u = D_c minus D_f) comes from generalisation:
the flush pushes D_f out of the base model, the repair trains on D_r (which still holds D_u with its corrupted
labels) and redirects D_f's re-learning into the added channels. This script runs REM (and, side by side,
Retrain and the corrupted model) on chosen cells and records, for the deployed base model,

- after each flush epoch and after each repair epoch (REM's own calls of its flush stop and its proxy):
  D_u memorised (share of D_u predicted as its corrupted label), D_u healed (predicted as its clean label),
  D_f memorised, and Acc(D_r) and the proxy REM selects on;
- at the end, the kept model of REM and Retrain's model: Healed split into D_f and D_u.

No product code changes: the two functions REM calls each epoch (`forget_accuracy`, `proxy` in
remflow.methods.forgetting) are wrapped here for the length of a run.

    python bench/rem_mechanism.py --params pipelines/digits-full/params.yaml --regularities high low \
        --rates 0.1 0.5 --seeds 0 1 --csv docs/results/rem-mechanism/digits-full.csv
    python bench/rem_mechanism.py --from-csv docs/results/rem-mechanism/digits-full.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("REMFLOW_PROGRESS", "off")
sys.path.insert(0, str(ROOT / "bench"))
from _cells import staged_cell, write_csv  # noqa: E402

FIELDS = ["regularity", "discovery_rate", "seed", "run", "phase", "epoch", "flush_round", "du_memorised",
          "du_healed", "df_memorised", "df_healed", "retain_acc", "proxy", "n_du", "n_df"]


def shares(task, model, idx) -> tuple[float, float]:
    """(memorised, healed): the share of `idx` predicted as its corrupted label, and as its clean label."""
    from remflow.train import predict

    if len(idx) == 0:
        return float("nan"), float("nan")
    pred = predict(model, task, task.train_x[idx], task.triggered[idx])
    return (float((pred == task.train_y[idx]).float().mean()),
            float((pred == task.train_clean_y[idx]).float().mean()))


def undiscovered(task):
    import torch

    keep = ~task.is_forget[task.corrupted]
    return task.corrupted[keep] if len(task.corrupted) else torch.zeros(0, dtype=torch.long)


def traced_rem(params, pre, manifest, disc, out, cell: dict) -> list[dict]:
    """Run REM through its stage with the flush stop and the proxy wrapped; one row per call."""
    from remflow import stages
    from remflow.methods import forgetting

    rows: list[dict] = []
    state = {"round": 0, "epoch": 0}
    orig_fa, orig_proxy = forgetting.forget_accuracy, forgetting.proxy

    def row(ctx, model, phase):
        t = ctx.task
        du = undiscovered(t)
        mem, heal = shares(t, model, du)
        dfm, _ = shares(t, model, t.forget)
        rows.append({**cell, "run": "rem", "phase": phase, "epoch": state["epoch"], "flush_round": state["round"],
                     "du_memorised": round(mem, 6), "du_healed": round(heal, 6), "df_memorised": round(dfm, 6),
                     "retain_acc": round(ctx.acc(model, t.retain), 6), "proxy": None, "n_du": len(du),
                     "n_df": len(t.forget)})

    def fa(ctx, model, forget, gen):
        state["round"] += 1
        row(ctx, model, "after flush epoch")
        return orig_fa(ctx, model, forget, gen)

    def px(ctx, model, forget, retain, gamma, *view):  # view: the proxy's data view (its generator), as passed
        value = orig_proxy(ctx, model, forget, retain, gamma, *view)
        row(ctx, model, "before unlearning" if not rows else "after repair epoch")
        rows[-1]["proxy"] = round(value, 6)
        state["epoch"] += 1
        state["round"] = 0
        return value

    forgetting.forget_accuracy, forgetting.proxy = fa, px
    try:
        rec = stages.unlearn(params, "rem", pre / "model.safetensors", manifest, disc, out)
    finally:
        forgetting.forget_accuracy, forgetting.proxy = orig_fa, orig_proxy
    rows.append({**cell, "run": "rem", "phase": "kept", "epoch": rec["stats"].get("best_epoch"),
                 "flush_round": None, "proxy": None})
    return rows


def final_row(params, task_of, model_path, run, cell) -> dict:
    from remflow.models import load_model

    net, _ = load_model(model_path)
    if getattr(net, "widened", False):
        net.deploy_()
    t = task_of()
    du = undiscovered(t)
    mem, heal = shares(t, net, du)
    dfm, dfh = shares(t, net, t.forget)
    return {**cell, "run": run, "phase": "final", "epoch": None, "flush_round": None, "du_memorised": round(mem, 6),
            "du_healed": round(heal, 6), "df_memorised": round(dfm, 6), "df_healed": round(dfh, 6),
            "retain_acc": None, "proxy": None,
            "n_du": len(du), "n_df": len(t.forget)}


def run(args) -> list[dict]:
    import torch
    from ruamel.yaml import YAML

    from remflow import stages
    from remflow.data.datasets import load_splits
    from remflow.data.task import Task
    from remflow.params import validate
    from remflow.io import read_json

    params = validate(YAML(typ="safe", pure=True).load(Path(args.params).read_text()))
    work = Path(args.work or tempfile.mkdtemp(prefix="rem-mech-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    splits = load_splits(params.data)
    for reg in args.regularities:
        for seed in args.seeds:
            for rate in args.rates:
                cell = {"regularity": reg, "discovery_rate": rate, "seed": seed}
                manifest, model_path, disc = staged_cell(params, work, reg, rate, seed)
                pre = model_path.parent

                def task_of():
                    return Task(splits, torch.device("cpu"), reg, read_json(manifest, "m"),
                                read_json(disc, "d")["indices"])

                rows += traced_rem(params, pre, manifest, disc, work / f"rem-{reg}-{rate}-{seed}", cell)
                rows.append(final_row(params, task_of, work / f"rem-{reg}-{rate}-{seed}" / "model.safetensors",
                                      "rem", cell))
                rt = work / f"retrain-{reg}-{rate}-{seed}"
                if not (rt / "model.safetensors").exists():
                    stages.unlearn(params, "retrain", pre / "model.safetensors", manifest, disc, rt)
                rows.append(final_row(params, task_of, rt / "model.safetensors", "retrain", cell))
                rows.append(final_row(params, task_of, pre / "model.safetensors", "none", cell))
                print(summary(rows), flush=True)
                if args.csv:
                    write_csv(rows, args.csv, FIELDS)
    return rows


def _f(v) -> float:
    return float("nan") if v in (None, "") else float(v)


def summary(rows: list[dict]) -> str:
    """Per cell group (regularity x rate, seeds pooled): D_u memorised before, after the first flush, after each
    repair epoch's mean, at the kept epoch; and the final D_u healed of REM, Retrain and the corrupted model."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["regularity"], float(r["discovery_rate"])), []).append(r)
    out = ["| cell (seeds pooled) | D_u memorised: before | once the first flush stopped | after a repair epoch "
           "(mean of all) | D_f memorised after a repair epoch (mean of all) | D_u healed: REM | Retrain | "
           "corrupted model | D_f healed: REM |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (reg, rate), rs in groups.items():
        def mean(sel, key):
            v = [_f(r[key]) for r in rs if sel(r)]
            v = [x for x in v if x == x]
            return 100 * float(np.mean(v)) if v else float("nan")
        before = mean(lambda r: r["phase"] == "before unlearning", "du_memorised")
        last = {}  # seed -> the first flush's last call (the state it stopped in)
        for r in rs:
            if r["phase"] == "after flush epoch" and int(r["epoch"]) == 1:
                if r["seed"] not in last or int(r["flush_round"]) > int(last[r["seed"]]["flush_round"]):
                    last[r["seed"]] = r
        flush1 = 100 * float(np.mean([_f(r["du_memorised"]) for r in last.values()])) if last else float("nan")
        rep = mean(lambda r: r["phase"] == "after repair epoch", "du_memorised")
        dfrep = mean(lambda r: r["phase"] == "after repair epoch", "df_memorised")
        fin = {run: mean(lambda r, run=run: r["phase"] == "final" and r["run"] == run, "du_healed")
               for run in ("rem", "retrain", "none")}
        df_heal = mean(lambda r: r["phase"] == "final" and r["run"] == "rem", "df_healed")
        out.append(f"| {reg} @ {rate:g} | {before:.1f} | {flush1:.1f} | {rep:.1f} | {dfrep:.1f} | {fin['rem']:.1f} "
                   f"| {fin['retrain']:.1f} | {fin['none']:.1f} | {df_heal:.1f} |")
    return "\n".join(out)


def per_epoch(rows: list[dict], reg: str, rate: float) -> str:
    """REM epoch by epoch, means over seeds: D_u and D_f memorised once the flush before the epoch has stopped
    and after the epoch's repair, Acc(D_r) and the proxy; and the epochs the proxy kept."""
    rs = [r for r in rows if r["regularity"] == reg and float(r["discovery_rate"]) == rate and r["run"] == "rem"]
    after: dict[int, list[dict]] = {}
    flushed: dict[tuple[int, int], dict] = {}  # (seed, epoch) -> the flush's last call (its stopping state)
    for r in rs:
        if r["phase"] in ("before unlearning", "after repair epoch"):
            after.setdefault(int(r["epoch"]), []).append(r)
        elif r["phase"] == "after flush epoch":
            k = (int(r["seed"]), int(r["epoch"]))
            if k not in flushed or int(r["flush_round"]) > int(flushed[k]["flush_round"]):
                flushed[k] = r
    kept = sorted(int(r["epoch"]) for r in rs if r["phase"] == "kept")
    epochs = sorted(after)

    def cells(vals):
        return " | ".join("—" if not v else f"{100 * np.mean(v):.1f}" for v in vals)

    fl = [[_f(r["du_memorised"]) for (s, e), r in flushed.items() if e == ep] for ep in epochs]
    lines = [f"{reg} @ {rate:g} (REM, means over seeds; kept epochs: {', '.join(map(str, kept))})",
             "| epoch | " + " | ".join(str(e) for e in epochs) + " |", "|---|" + "---:|" * len(epochs),
             "| D_u memorised, flush stopped (%) | " + cells(fl) + " |"]
    for key, label in (("du_memorised", "D_u memorised, after the repair epoch (%)"),
                       ("df_memorised", "D_f memorised, after the repair epoch (%)"),
                       ("retain_acc", "Acc(D_r) (%)"), ("proxy", "proxy (%)")):
        lines.append(f"| {label} | " + cells([[_f(r[key]) for r in after[e]] for e in epochs]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "pipelines/digits-full/params.yaml"))
    ap.add_argument("--regularities", nargs="+", default=["high", "low"])
    ap.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--work", help="scratch folder (reused: corrupted sets and pretrained models are kept)")
    ap.add_argument("--csv", help="write the rows here")
    ap.add_argument("--from-csv", help="print the tables from this CSV, running nothing")
    args = ap.parse_args()
    rows = list(csv.DictReader(open(args.from_csv))) if args.from_csv else run(args)
    print(summary(rows))
    for reg, rate in sorted({(r["regularity"], float(r["discovery_rate"])) for r in rows}):
        print()
        print(per_epoch(rows, reg, rate))


if __name__ == "__main__":
    main()
