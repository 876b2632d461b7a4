"""The five pipeline stages as library functions: validated params in, artifacts written atomically out.

cli.py wraps each in a typer command; tests call them directly. Every input is checked before any work
starts and outputs are written only at the end, so a failing stage writes nothing.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from remflow import __version__
from remflow.cost import measure
from remflow.data.corruption import check_discovery, load_manifest, make_discovery, make_manifest
from remflow.data.datasets import describe, load_splits
from remflow.data.task import Task, make_task
from remflow.errors import RemflowError
from remflow.io import atomic_dir, file_digest, read_json, save_checkpoint, write_json
from remflow.models import build_model, checkpoint_meta, count_params, load_model, shape_signature
from remflow.models.layers import Route
from remflow.config import REGULARITIES, ParamsBase
from remflow.progress import log
from remflow.seeds import derive_seed
from remflow.train import Phase, by_validation, compiled, make_optimizer, setup_runtime, shuffled, train

VARIANTS = ("standard", "etd")


# ---------------------------------------------------------------- corrupt


def corrupt(params: ParamsBase, regularity: str, seed: int, out: str | Path) -> dict:
    if regularity not in REGULARITIES:
        raise RemflowError("unknown regularity", key="--regularity", got=regularity, hint="one of high, medium, low")
    splits = load_splits(params.data)
    manifest = make_manifest(regularity, seed, params.corruption, splits)
    write_json(out, manifest)
    log(f"corrupt {regularity} seed {seed}: |D_c| = {len(manifest['indices'])} of {describe(splits)}")
    return manifest


# ---------------------------------------------------------------- discover


def discover(params: ParamsBase, manifest_path: str | Path, rate: float, out: str | Path) -> dict:
    m = read_json(manifest_path, "corruption manifest")
    if not isinstance(m, dict) or not isinstance(m.get("indices"), list) or "seed" not in m:
        raise RemflowError("corrupted manifest: no indices", key=str(manifest_path),
                           hint="rerun its corrupt stage (dvc repro)")
    d = make_discovery(m, rate, int(m["seed"]))
    write_json(out, d)
    log(f"discover {m['regularity']} rate {rate} seed {m['seed']}: |D_f| = {len(d['indices'])}")
    return d


# ---------------------------------------------------------------- pretrain


def pretrain(params: ParamsBase, manifest_path: str | Path, out_dir: str | Path, variant: str = "standard") -> dict:
    """Train the original (corrupted) model. `etd`: example-tied dropout memorisation channels (paper §2.3)."""
    if variant not in VARIANTS:
        raise RemflowError("unknown pretraining variant", key="--variant", got=variant, hint="standard or etd")
    device = setup_runtime(params.runtime)
    splits = load_splits(params.data)
    manifest = load_manifest(manifest_path, splits)
    seed = int(manifest["seed"])
    task = make_task(params.data, splits, device, manifest)
    recipe = params.pretrain

    torch.manual_seed(derive_seed(seed, "pretrain-init"))
    model = build_model(params.model, splits.in_channels, splits.num_classes, splits.image_size)
    route_meta = None
    if variant == "etd":
        etd = params.pretrain.etd
        model.widen_(model.added_for_ratio(etd.ratio), seed=derive_seed(seed, "etd-init"))
        route_meta = {"keep": etd.keep, "seed": derive_seed(seed, "etd-masks"), "per_layer": etd.masks == "per_layer"}
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    def loss_fn(net, batch):
        route = None if route_meta is None else Route(batch.idx, keep=route_meta["keep"], seed=route_meta["seed"],
                                                      per_layer=route_meta["per_layer"])
        return torch.nn.functional.cross_entropy(net(batch.x, route), batch.y)

    gen = task.generator(derive_seed(seed, "pretrain-data"))
    phase = Phase(f"pretrain {variant}", loss_fn, shuffled(task, task.everything, recipe.batch_size, gen),
                  recipe.epochs, recipe.schedule)
    # the validation accuracy in base mode (memorisation channels dropped), every eval_every epochs; with
    # `select: last` only after the last epoch, so the model is kept as training left it
    every = recipe.eval_every if recipe.select == "best_val" else recipe.epochs
    select = by_validation(task, params.runtime.eval_batch_size, every=every)
    with measure(device) as cost:
        net = compiled(model, params.runtime) if route_meta is None else model
        fit_log = train(model, make_optimizer(model.parameters(), recipe), phase, select=select, net=net,
                        device=device)
    meta = checkpoint_meta(model, params.model, splits, variant=variant, route=route_meta)
    train_log = {"variant": variant, "regularity": manifest["regularity"], "seed": seed,
                 "best_epoch": fit_log.best_epoch, "best_val_acc": fit_log.best_score, "steps": fit_log.steps,
                 "epochs": fit_log.epochs,
                 "seconds": round(cost.seconds, 3), "device": str(device)}
    out_dir = Path(out_dir)
    save_checkpoint(out_dir / "model.safetensors", model.state_dict(), meta)
    write_json(out_dir / "log.json", train_log)
    log(f"pretrain {variant} {manifest['regularity']} seed {seed}: val acc {fit_log.best_score:.4f} "
        f"(epoch {fit_log.best_epoch}), {cost.seconds:.1f}s")
    return train_log


# ---------------------------------------------------------------- unlearn


@dataclass
class Prepared:
    """An unlearning run, ready to go: what `unlearn` checks and loads before calling the method."""

    ctx: UnlearnContext
    cfg: Any
    method: Any
    variant: str
    params_deployed: int
    deployed: torch.nn.Module
    meta: dict
    discovery: dict


def prepare_unlearn(params: ParamsBase, run: str, model_path: str | Path, manifest_path: str | Path,
                    discovery_path: str | Path) -> Prepared:
    from remflow.methods import REGISTRY, UnlearnContext

    cfg = params.method(run)
    method = REGISTRY[cfg.method]
    device = setup_runtime(params.runtime)
    splits = load_splits(params.data)
    manifest = load_manifest(manifest_path, splits)
    discovery = check_discovery(read_json(discovery_path, "discovery file"), manifest, str(discovery_path))
    model, meta = load_model(model_path, device)
    if meta.get("fingerprint") != splits.fingerprint:
        raise RemflowError("checkpoint was trained on other data (dataset or split settings changed)",
                           key=str(model_path), got=meta.get("dataset"), hint="rerun its pretrain stage: dvc repro")
    if model.widened and not method.uses_expansion:
        model.deploy_()  # "X (ETD)": the method sees the ETD model with its memorisation channels dropped
    deployed = build_model(params.model, splits.in_channels, splits.num_classes, splits.image_size)
    if shape_signature(deployed) != shape_signature(_deployed_view(model)):
        raise RemflowError("checkpoint architecture differs from params' `model`", key=str(model_path),
                           got=meta.get("model"), hint="rerun its pretrain stage: dvc repro")
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    seed = int(manifest["seed"])
    task = make_task(params.data, splits, device, manifest, discovery["indices"])
    ctx = UnlearnContext(model, task, params, seed, device, route=meta.get("route") if model.widened else None)
    torch.manual_seed(derive_seed(seed, run, "unlearn"))
    return Prepared(ctx, cfg, method, meta.get("variant", "standard"), count_params(deployed), deployed, meta,
                    discovery)


def unlearn(params: ParamsBase, run: str, model_path: str | Path, manifest_path: str | Path,
            discovery_path: str | Path, out_dir: str | Path) -> dict:
    prep = prepare_unlearn(params, run, model_path, manifest_path, discovery_path)
    ctx, cfg, task = prep.ctx, prep.cfg, prep.ctx.task
    log(f"unlearn {run} ({prep.variant}) {task.regularity} rate {prep.discovery['rate']} seed {ctx.seed}: "
        f"|D_f| = {len(task.forget)}")
    with measure(ctx.device) as cost:
        result = prep.method.unlearn(ctx, cfg)
    if shape_signature(result) != shape_signature(prep.deployed):
        raise RuntimeError(f"method '{cfg.method}' returned a model that is not the deployed architecture")

    record: dict[str, Any] = {
        "run": run,
        "method": cfg.method,
        "pretrained": prep.variant,
        "regularity": task.regularity,
        "discovery_rate": float(prep.discovery["rate"]),
        "seed": ctx.seed,
        "config": cfg.model_dump(),
        "recipe": ctx.recipe(cfg).model_dump(),
        "stats": ctx.stats,
        "unlearn_seconds": round(cost.seconds, 4),
        "peak_memory_mb": round(cost.peak_memory_mb, 2),
        "params_deployed": prep.params_deployed,
        "params_peak": max(ctx.peak_params, prep.params_deployed),
        "forgotten": len(task.forget),
        "inputs": {"model": str(model_path), "manifest": str(manifest_path), "discovery": str(discovery_path),
                   "manifest_sha": file_digest(manifest_path), "discovery_sha": file_digest(discovery_path)},
        "device": str(ctx.device),
        "torch": torch.__version__,
        "remflow": __version__,
        "python": platform.python_version(),
    }
    with atomic_dir(out_dir) as tmp:
        save_checkpoint(tmp / "model.safetensors", result.state_dict(), {**prep.meta, "added": {}, "route": None})
        write_json(tmp / "record.json", record)
    log(f"unlearn {run}: {cost.seconds:.2f}s, peak {cost.peak_memory_mb:.0f} MB")
    return record


def _deployed_view(model):
    """The deployed-shape signature of a possibly widened model without touching it."""
    if not model.widened:
        return model
    import copy

    return copy.deepcopy(model).deploy_()
