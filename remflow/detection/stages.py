"""The detection study's stages: corrupt a named cell, flag D_f with a detector, unlearn on what was flagged.

Pretraining is remflow's own `pretrain` stage, run on the cell's manifest. The unlearn stage mirrors
remflow.stages.unlearn with a flagged set in place of a subset of D_c: D_f may hold clean samples (false
positives), and Healed and Utility keep their definitions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from remflow import stages
from remflow.config import CORRUPTION_OF
from remflow.cost import measure
from remflow.data.corruption import check_manifest, load_manifest
from remflow.data.datasets import describe, load_splits
from remflow.data.task import make_task
from remflow.detection.config import DETECTORS
from remflow.detection.corruptions import family, make_corruption
from remflow.detection.detectors import flag, precision_recall, scores_of
from remflow.errors import RemflowError
from remflow.io import read_json, write_json
from remflow.models import load_model
from remflow.progress import log
from remflow.records import VIEW_SUFFIX, discovery_columns, run_label
from remflow.train import setup_runtime

DETECTION_FORMAT = "remflow-detection/1"
VIEWS = ("found", "hits")


def corrupt(params, name: str, seed: int, out: str | Path) -> dict:
    d = params.detection
    if name not in d.specs:
        raise RemflowError("no such corruption under detection.specs", key="--corruption", got=name,
                           hint=f"defined: {', '.join(d.specs) or '(none)'}")
    splits = load_splits(params.data)
    manifest = make_corruption(name, d.specs[name], seed, params.corruption, splits)
    write_json(out, manifest)
    log(f"corrupt {name} ({manifest['kind']}) seed {seed}: |D_c| = {len(manifest['indices'])} of {describe(splits)}")
    return manifest


def detect(params, manifest_path: str | Path, model_path: str | Path, budget: float, out: str | Path) -> dict:
    if not (0.0 < budget <= 4.0):
        raise RemflowError("a budget must lie in (0, 4] (a multiple of |D_c|)", key="--budget", got=budget)
    device = setup_runtime(params.runtime)
    splits = load_splits(params.data)
    manifest = load_manifest(manifest_path, splits)
    name = manifest.get("corruption", manifest["regularity"])
    detector = params.detection.detector_of(name) if name in params.detection.specs else "cross_val"
    model, meta = load_model(model_path, device)
    if meta.get("fingerprint") != splits.fingerprint:
        raise RemflowError("checkpoint was trained on other data", key=str(model_path), hint="rerun its pretrain stage")
    if model.widened:
        model.deploy_()
    task = make_task(params.data, splits, device, manifest)
    cfg = params.detection.detectors
    with measure(device) as cost:
        scores = scores_of(detector, model, task, folds=cfg.folds, seed=params.detection.seed,
                           max_iter=cfg.max_iter, batch_size=params.runtime.eval_batch_size)
    k = min(task.num_train, max(1, int(round(budget * len(manifest["indices"])))))
    found = flag(scores, k)
    precision, recall = precision_recall(found.tolist(), manifest["indices"])
    d = {"format": DETECTION_FORMAT, "corruption": name, "regularity": manifest["regularity"],
         "seed": manifest["seed"], "fingerprint": manifest["fingerprint"], "detector": detector, "budget": budget,
         "precision": round(precision, 6), "recall": round(recall, 6), "seconds": round(cost.seconds, 3),
         "indices": [int(i) for i in found]}
    write_json(out, d)
    log(f"detect {name} seed {manifest['seed']} with {detector}, budget {budget:g}: flagged {k}, "
        f"precision {precision:.3f}, recall {recall:.3f}")
    return d


def check_detection(d: Any, manifest: dict, num_train: int, path: str) -> dict:
    """Refuse a flagged set that is not a detection file of this manifest's cell."""
    if not isinstance(d, dict) or d.get("format") != DETECTION_FORMAT or not isinstance(d.get("indices"), list):
        raise RemflowError("not a remflow detection file", key=path, hint="rerun its detect stage")
    for key in ("regularity", "seed", "fingerprint"):
        if d.get(key) != manifest.get(key):
            raise RemflowError(f"detection file made for another corrupted set ({key} {d.get(key)!r}, the "
                               f"manifest's {manifest.get(key)!r})", key=path, hint="rerun its detect stage")
    idx = d["indices"]
    if (not idx or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_train for i in idx)
            or len(set(idx)) != len(idx)):
        raise RemflowError("flagged indices must be distinct training indices", key=path, hint="rerun its detect stage")
    if d.get("detector") not in DETECTORS:
        raise RemflowError("unknown detector", key=path, got=d.get("detector"))
    return d


def view_indices(found: list[int], manifest: dict, view: str) -> list[int]:
    """found: D_f as flagged; hits: its true positives (what an oracle with the detector's recall gets)."""
    if view == "found":
        return sorted(found)
    if view == "hits":
        return sorted(set(found) & set(manifest["indices"]))
    raise RemflowError("unknown view", key="--view", got=view, hint="found or hits")


def unlearn(params, run: str, model_path: str | Path, manifest_path: str | Path, found_path: str | Path,
            view: str, out_dir: str | Path) -> dict:
    """remflow's unlearn stage on a flagged D_f: `found` as the detector flagged it, `hits` its true positives."""
    if view not in VIEWS:
        raise RemflowError("unknown view", key="--view", got=view, hint="found or hits")
    splits = load_splits(params.data)
    manifest = check_manifest(read_json(manifest_path, "corruption manifest"), splits, str(manifest_path))
    found = check_detection(read_json(found_path, "detection file"), manifest, len(splits.train_y), str(found_path))
    forget = view_indices(found["indices"], manifest, view)
    prep = stages.prepare(params, run, model_path, splits, manifest, forget, found, standard_only=True)
    log(f"unlearn {run} on {found['detector']} {view} {manifest.get('corruption')} budget {found['budget']:g} "
        f"seed {prep.ctx.seed}: |D_f| = {len(forget)}")
    identity = {"study": "detection", "run": run, "method": prep.cfg.method, "pretrained": "standard",
                "corruption": manifest.get("corruption"), "regularity": family(manifest), "detector": found["detector"],
                "view": view, "discovery_rate": float(found["budget"]), "seed": prep.ctx.seed}
    row = {"label": run_label(run, "standard") + VIEW_SUFFIX[view],
           "corruption": manifest.get("corruption", CORRUPTION_OF[family(manifest)]),
           **discovery_columns(forget, manifest, found["detector"] + (":hits" if view == "hits" else ""))}
    return stages.execute(prep, identity, row, model_path, manifest_path, found_path, out_dir)
