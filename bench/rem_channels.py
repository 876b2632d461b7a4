"""Where REM puts the corruption: the added channels before the cut, the base model after it.

REM widens the model, flushes D_f out of it, repairs on all data while routing D_f through one shared mask of the
added channels, and then cuts the added channels off. Two questions about the model it keeps (issue 30):

1. Did the redirection put the corruption into the added channels? Before the cut, run the kept model through
   D_f's shared mask, through each sample's own mask (what D_r's samples were trained through) and with every
   added channel on, and ask how much of D_f and of the undiscovered corrupted samples D_u it predicts at the
   corrupted label.
2. Does the base model still hold it? After the cut (the deployed model), the same shares, then the same shares
   after the clean relearning attack of docs/robustness.md (fine-tuning on clean data outside D_c): a base model
   that only hid the corruption gives it back.

Per cell (regularity x discovery rate x seed) the script trains the original through the stage functions
(corrupt, pretrain, discover), runs REM's steps 1-4 (`run_rem`, which returns the kept model with its added
channels on), measures, cuts, measures again. No product code changes. Each row is one model view; `memorised`
is the share of a set predicted at its corrupted (training) label, over the samples whose corrupted label differs
from their clean one; `healed` the share predicted at the clean label, over the whole set (as Healed counts).

    python bench/rem_channels.py --params pipelines/digits-full/params.yaml --regularities high medium low \
        --rates 0.1 0.5 1.0 --seeds 0 1 --csv docs/results/rem-channels/digits-full.csv
    python bench/rem_channels.py --from-csv docs/results/rem-channels/digits-full.csv
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
from rem_mechanism import _f, undiscovered  # noqa: E402

FIELDS = ["regularity", "discovery_rate", "seed", "view", "n_df", "n_du", "df_memorised", "df_healed",
          "du_memorised", "du_healed", "test_acc"]
# the model views, in the order the table prints them
VIEWS = ("original", "uncut: D_f's shared mask", "uncut: own masks", "uncut: every added channel",
         "cut (deployed)", "cut, after clean relearning")


def predicted(model, task, images, triggered, route_of=None, batch_size: int = 1024):
    """Predicted classes, eval mode; `route_of(start, stop)` gives the Route of a batch (None: base mode)."""
    import torch

    from remflow.train import autocast

    was = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for s in range(0, len(images), batch_size):
                sl = slice(s, s + batch_size)
                x = task.inputs(images[sl], None if triggered is None else triggered[sl], None)
                with autocast(x.device):
                    r = None if route_of is None else route_of(s, min(s + batch_size, len(images)))
                    out.append((model(x) if r is None else model(x, r)).argmax(1))
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def view_row(task, model, route_for=None) -> dict:
    """memorised / healed on D_f and D_u, accuracy on the clean test split, for one view of a model.

    `route_for(idx)` gives the Route of training samples `idx` (test samples route by their position, offset past
    the training indices, so they get masks no training sample had)."""
    import torch

    du = undiscovered(task)
    row: dict = {"n_df": len(task.forget), "n_du": len(du)}
    for name, idx in (("df", task.forget), ("du", du)):
        if len(idx) == 0:
            row[f"{name}_memorised"] = row[f"{name}_healed"] = None
            continue
        ro = None if route_for is None else (lambda a, b, idx=idx: route_for(idx[a:b]))
        pred = predicted(model, task, task.train_x[idx], task.triggered[idx], ro)
        # memorised: over the samples whose corrupted label is not their clean one (random labels keep the true
        # label for about a tenth, and a backdoor drawn from every class keeps it for the target class's images)
        changed = task.train_y[idx] != task.train_clean_y[idx]
        hit = (pred == task.train_y[idx])[changed]
        row[f"{name}_memorised"] = round(float(hit.float().mean()), 6) if len(hit) else None
        row[f"{name}_healed"] = round(float((pred == task.train_clean_y[idx]).float().mean()), 6)
    ro = None
    if route_for is not None:
        def ro(a, b):
            return route_for(torch.arange(a, b, device=task.device) + task.num_train)
    pred = predicted(model, task, task.test_x, None, ro)
    row["test_acc"] = round(float((pred == task.test_y).float().mean()), 6)
    return row


def relearned(model, task, params, seed: int):
    """A copy of the deployed model after the clean relearning attack (remflow.robustness's, same seed)."""
    from remflow import robustness as rb

    cfg = params.robustness
    return rb.relearned_copy(model, task, rb.attack_recipe(cfg, params.pretrain),
                             rb.attack_steps(cfg, params.pretrain, task), seed)


def cell_rows(params, splits, work: Path, reg: str, rate: float, seed: int) -> list[dict]:
    import torch

    from remflow import stages
    from remflow.io import read_json
    from remflow.methods.rem import run_rem
    from remflow.models.layers import SHARED_ID, Route

    manifest, model_path, disc = staged_cell(params, work, reg, rate, seed)
    cell = {"regularity": reg, "discovery_rate": rate, "seed": seed}
    prep = stages.prepare(params, "rem", model_path, splits, read_json(manifest, "manifest"),
                          read_json(disc, "discovery")["indices"], read_json(disc, "discovery"))
    ctx, task = prep.ctx, prep.ctx.task
    rows = [{**cell, "view": VIEWS[0], **view_row(task, ctx.model)}]
    res = run_rem(ctx, prep.cfg)
    model = res.model

    def shared(idx):
        return Route(torch.full_like(idx, SHARED_ID), keep=res.keep, seed=res.route_seed, per_layer=res.per_layer)

    def own(idx):
        return Route(idx, keep=res.keep, seed=res.route_seed, per_layer=res.per_layer)

    def every(idx):
        return Route(idx, keep=1.0, seed=res.route_seed, per_layer=res.per_layer)

    for name, fn in zip(VIEWS[1:4], (shared, own, every)):
        rows.append({**cell, "view": name, **view_row(task, model, fn)})
    model.deploy_()
    rows.append({**cell, "view": VIEWS[4], **view_row(task, model)})
    rows.append({**cell, "view": VIEWS[5], **view_row(task, relearned(model, task, params, seed))})
    return rows


def summary(rows: list[dict]) -> str:
    """Per regularity (rates and seeds pooled): each view's memorised share of D_f and D_u and its test accuracy,
    in %, means over cells."""
    regs = list(dict.fromkeys(r["regularity"] for r in rows))
    out = []
    for reg in regs:
        rs = [r for r in rows if r["regularity"] == reg]
        cells = len({(r["discovery_rate"], r["seed"]) for r in rs})
        out += [f"\n{reg} ({cells} cells: rates {sorted({_f(r['discovery_rate']) for r in rs})}, seeds "
                f"{sorted({int(_f(r['seed'])) for r in rs})})",
                "| model view | D_f at corrupted label | D_u at corrupted label | D_u at clean label | clean test acc |",
                "|---|---:|---:|---:|---:|"]
        for view in VIEWS:
            vs = [r for r in rs if r["view"] == view]
            if not vs:
                continue

            def m(key):
                v = [_f(r[key]) for r in vs]
                v = [x for x in v if x == x]
                return f"{100 * float(np.mean(v)):.1f}" if v else "—"
            out.append(f"| {view} | {m('df_memorised')} | {m('du_memorised')} | {m('du_healed')} | {m('test_acc')} |")
        out += ["", "paired over the cells (points of the share at the corrupted label; 95% BCa interval):"]
        for key, label in (("df_memorised", "D_f"), ("du_memorised", "D_u")):
            for a, b in ((VIEWS[1], VIEWS[4]), (VIEWS[5], VIEWS[4])):
                out.append(f"- {label}: {a} − {b}: {paired_text(rs, key, a, b)}")
    return "\n".join(out)


def paired_text(rows: list[dict], key: str, a: str, b: str) -> str:
    """Mean of view a − view b over the cells both have a value in, with remflow's paired bootstrap."""
    from remflow.report import bootstrap_mean_diff

    def by_cell(view):
        return {(r["discovery_rate"], r["seed"]): _f(r[key]) for r in rows if r["view"] == view and _f(r[key]) == _f(r[key])}
    x, y = by_cell(a), by_cell(b)
    common = sorted(set(x) & set(y))
    p = bootstrap_mean_diff([100 * x[c] for c in common], [100 * y[c] for c in common])
    return f"{p.diff:+.1f} [{p.low:+.1f}, {p.high:+.1f}] ({p.pairs} cells)"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "pipelines/digits-full/params.yaml"))
    ap.add_argument("--regularities", nargs="+", default=["high", "medium", "low"])
    ap.add_argument("--rates", nargs="+", type=float, default=[0.1, 0.5])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--work", help="scratch folder for the originals (reused when given again)")
    ap.add_argument("--csv", help="write the rows here")
    ap.add_argument("--from-csv", help="print the table of an earlier --csv")
    a = ap.parse_args(argv)
    if a.from_csv:
        with open(a.from_csv, newline="") as f:
            print(summary(list(csv.DictReader(f))))
        return
    import torch
    from ruamel.yaml import YAML

    from remflow.data.datasets import load_splits
    from remflow.params import validate

    torch.set_num_threads(1)
    params = validate(YAML(typ="safe", pure=True).load(Path(a.params).read_text()))
    splits = load_splits(params.data)
    work = Path(a.work or tempfile.mkdtemp(prefix="rem-channels-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for reg in a.regularities:
        for seed in a.seeds:
            for rate in a.rates:
                rows += cell_rows(params, splits, work, reg, rate, seed)
                if a.csv:
                    write_csv(rows, a.csv, FIELDS)
                print(f"done {reg} @ {rate:g} seed {seed}", flush=True)
    print(summary(rows))


if __name__ == "__main__":
    main()
