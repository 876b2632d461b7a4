"""The detection study's stages: corrupt a named cell, flag D_f with a detector, unlearn on what was flagged.

Pretraining is remflow's own `pretrain` stage, run on the cell's manifest. The unlearn stage mirrors
remflow.stages.unlearn with a flagged set in place of a subset of D_c: D_f may hold clean samples (false
positives), and Healed and Utility keep their definitions.
"""

from __future__ import annotations

import copy
import platform
from pathlib import Path
from typing import Any

import torch

from remflow import __version__
from remflow.cost import measure
from remflow.data.corruption import check_manifest, load_manifest
from remflow.data.datasets import describe, load_splits
from remflow.data.task import make_task
from remflow.detection.config import DETECTORS
from remflow.detection.corruptions import family, make_corruption
from remflow.detection.detectors import flag, precision_recall, scores_of
from remflow.errors import RemflowError
from remflow.io import atomic_dir, file_digest, read_json, save_checkpoint, write_json
from remflow.models import build_model, count_params, load_model, shape_signature
from remflow.progress import log
from remflow.seeds import derive_seed
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
    from remflow.methods import REGISTRY, UnlearnContext

    if view not in VIEWS:
        raise RemflowError("unknown view", key="--view", got=view, hint="found or hits")
    cfg = params.method(run)
    method = REGISTRY[cfg.method]
    device = setup_runtime(params.runtime)
    splits = load_splits(params.data)
    manifest = check_manifest(read_json(manifest_path, "corruption manifest"), splits, str(manifest_path))
    found = check_detection(read_json(found_path, "detection file"), manifest, len(splits.train_y), str(found_path))
    forget = view_indices(found["indices"], manifest, view)
    model, meta = load_model(model_path, device)
    if meta.get("fingerprint") != splits.fingerprint:
        raise RemflowError("checkpoint was trained on other data", key=str(model_path), hint="rerun its pretrain stage")
    if model.widened:
        raise RemflowError("the detection study runs on standard pretrained models", key=str(model_path))
    deployed = build_model(params.model, splits.in_channels, splits.num_classes, splits.image_size)
    if shape_signature(deployed) != shape_signature(model):
        raise RemflowError("checkpoint architecture differs from params' `model`", key=str(model_path),
                           hint="rerun its pretrain stage: dvc repro")
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    seed = int(manifest["seed"])
    task = make_task(params.data, splits, device, manifest, forget)
    ctx = UnlearnContext(model, task, params, seed, device)
    torch.manual_seed(derive_seed(seed, run, "unlearn"))
    log(f"unlearn {run} on {found['detector']} {view} {manifest.get('corruption')} budget {found['budget']:g} "
        f"seed {seed}: |D_f| = {len(forget)}")
    with measure(device) as cost:
        if forget:
            result = method.unlearn(ctx, cfg)
        else:  # no true positive: nothing is known to forget, the original model stays
            result, ctx.stats["empty_forget_set"] = copy.deepcopy(model), True
    if shape_signature(result) != shape_signature(deployed):
        raise RuntimeError(f"method '{cfg.method}' returned a model that is not the deployed architecture")
    record = {
        "study": "detection", "run": run, "method": cfg.method, "pretrained": "standard",
        "corruption": manifest.get("corruption"), "regularity": family(manifest), "detector": found["detector"],
        "view": view, "discovery_rate": float(found["budget"]), "seed": seed,
        "config": cfg.model_dump(), "recipe": ctx.recipe(cfg).model_dump(), "stats": ctx.stats,
        "unlearn_seconds": round(cost.seconds, 4), "peak_memory_mb": round(cost.peak_memory_mb, 2),
        "params_deployed": count_params(deployed), "params_peak": max(ctx.peak_params, count_params(deployed)),
        "forgotten": len(forget),
        "inputs": {"model": str(model_path), "manifest": str(manifest_path), "discovery": str(found_path),
                   "manifest_sha": file_digest(manifest_path), "discovery_sha": file_digest(found_path)},
        "device": str(device), "torch": torch.__version__, "remflow": __version__,
        "python": platform.python_version(),
    }
    with atomic_dir(out_dir) as tmp:
        save_checkpoint(tmp / "model.safetensors", result.state_dict(), {**meta, "added": {}, "route": None})
        write_json(tmp / "record.json", record)
    log(f"unlearn {run}: {cost.seconds:.2f}s")
    return record
