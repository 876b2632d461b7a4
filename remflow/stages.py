"""The five pipeline stages as library functions: validated params in, artifacts written atomically out.

cli.py wraps each in a typer command; tests call them directly. Every input is checked before any work
starts and outputs are written only at the end, so a failing stage writes nothing.
"""

from __future__ import annotations

import copy
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from remflow import __version__
from remflow.cost import measure
from remflow.data.corruption import (check_discovery, discovery_source, load_manifest, make_discovery,
                                     make_manifest)
from remflow.data.datasets import describe, load_splits
from remflow.data.task import Task, make_task
from remflow.errors import RemflowError
from remflow.io import atomic_dir, file_digest, read_json, save_checkpoint, write_json
from remflow.models import build_model, checkpoint_meta, count_params, load_model, shape_signature
from remflow.models.layers import Route
from remflow.config import CORRUPTION_OF, REGULARITIES, ParamsBase
from remflow.metrics import evaluate_model
from remflow.progress import log
from remflow.records import discovery_columns, run_label
from remflow.seeds import derive_seed
from remflow.train import Phase, by_validation, compiled, make_optimizer, setup_runtime, shuffled, train

VARIANTS = ("standard", "etd")


# ---------------------------------------------------------------- corrupt


def corrupt(params: ParamsBase, corruption: str, seed: int, out: str | Path) -> dict:
    """The manifest of one corruption cell: a named regularity of the grid (high: backdoor, medium: interclass,
    low: random labels) or a corruption defined under detection.specs (remflow/detection/corruptions.py)."""
    specs = params.detection.specs if hasattr(params, "detection") else {}
    if corruption not in REGULARITIES and corruption not in specs:
        raise RemflowError("unknown corruption: a regularity or a name under detection.specs", key="--regularity",
                           got=corruption,
                           hint="high, medium, low" + "".join(f", {n}" for n in specs) + " (detection.specs)")
    splits = load_splits(params.data)
    if corruption in REGULARITIES:
        manifest = make_manifest(corruption, seed, params.corruption, splits)
    else:
        from remflow.detection.corruptions import make_corruption

        manifest = make_corruption(corruption, specs[corruption], seed, params.corruption, splits)
    write_json(out, manifest)
    kind = f" ({manifest['kind']})" if "kind" in manifest else ""
    log(f"corrupt {corruption}{kind} seed {seed}: |D_c| = {len(manifest['indices'])} of {describe(splits)}")
    return manifest


# ---------------------------------------------------------------- discover


def discover(params: ParamsBase, manifest_path: str | Path, out: str | Path, *, rate: float | None = None,
             model_path: str | Path | None = None, budget: float | None = None,
             hits_out: str | Path | None = None) -> dict:
    """Write the discovered set D_f of a cell, from one of two sources: the oracle (`rate`: a seeded subset of
    D_c, nested across rates) or a detector run on the pretrained model at `model_path` (`budget`: it flags
    budget x |D_c| samples, false positives included; `hits_out` also gets the flagged set's true positives, what
    an oracle with the detector's recall would know). The unlearn stage reads either file."""
    if (rate is None) == (budget is None):
        raise RemflowError("give either a discovery rate (the oracle) or a budget and a model (a detector)",
                           key="--rate/--budget", got=f"rate {rate}, budget {budget}")
    if rate is not None:
        if model_path is not None or hits_out is not None:
            raise RemflowError("--model and --hits-out belong to a detector's discovery (--budget)", key="--rate",
                               got=rate)
        from remflow.data.corruption import MANIFEST_FORMAT

        m = read_json(manifest_path, "corruption manifest")
        # the oracle reads no data, so the manifest's own fields are checked here (pretrain checks its data too)
        if (not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT or not isinstance(m.get("indices"), list)
                or any(k not in m for k in ("regularity", "seed", "fingerprint"))):
            raise RemflowError("not a remflow corruption manifest, or a damaged one", key=str(manifest_path),
                               got=m.get("format") if isinstance(m, dict) else type(m).__name__,
                               hint="rerun its corrupt stage (dvc repro)")
        d = make_discovery(m, rate, int(m["seed"]))
        write_json(out, d)
        log(f"discover {m['regularity']} rate {rate} seed {m['seed']}: |D_f| = {len(d['indices'])}")
        return d
    if model_path is None:
        raise RemflowError("a detector's discovery reads the pretrained model", key="--model",
                           hint="pass --model artifacts/pretrain/<cell>/model.safetensors")
    return _detect(params, manifest_path, model_path, float(budget), out, hits_out)


def _detect(params, manifest_path, model_path, budget: float, out, hits_out) -> dict:
    from remflow.data.corruption import FLAGGED_FORMAT
    from remflow.detection.detectors import flag, precision_recall, scores_of

    if not (0.0 < budget <= 4.0):
        raise RemflowError("a budget must lie in (0, 4] (a multiple of |D_c|)", key="--budget", got=budget)
    device = setup_runtime(params.runtime)
    splits = load_splits(params.data)
    manifest = load_manifest(manifest_path, splits)
    name = manifest.get("corruption", manifest["regularity"])
    detection = params.detection
    detector = detection.detector_of(name) if name in detection.specs else "cross_val"
    model, meta = load_model(model_path, device)
    if meta.get("fingerprint") != splits.fingerprint:
        raise RemflowError("checkpoint was trained on other data", key=str(model_path), hint="rerun its pretrain stage")
    if model.widened:
        model.deploy_()
    task = make_task(params.data, splits, device, manifest)
    with measure(device) as cost:
        scores = scores_of(detector, model, task, folds=detection.detectors.folds, seed=detection.seed,
                           max_iter=detection.detectors.max_iter, batch_size=params.runtime.eval_batch_size)
    k = min(task.num_train, max(1, int(round(budget * len(manifest["indices"])))))
    found = sorted(int(i) for i in flag(scores, k))
    hits = sorted(set(found) & set(manifest["indices"]))
    precision, recall = precision_recall(found, manifest["indices"])
    # no timing in the file: a forced re-run writes the same bytes (the time goes to the log)
    head = {"format": FLAGGED_FORMAT, "corruption": name, "regularity": manifest["regularity"],
            "seed": manifest["seed"], "fingerprint": manifest["fingerprint"], "detector": detector, "budget": budget}
    d = {**head, "view": "found", "precision": round(precision, 6), "recall": round(recall, 6), "indices": found}
    write_json(out, d)
    if hits_out is not None:
        write_json(hits_out, {**head, "view": "hits", "precision": 1.0 if hits else None,
                              "recall": round(recall, 6), "indices": hits})
    log(f"discover {name} seed {manifest['seed']} with {detector}, budget {budget:g}: flagged {k}, "
        f"precision {precision:.3f}, recall {recall:.3f}, {cost.seconds:.1f}s")
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
                  recipe.epochs, recipe.schedule, finite_key="pretrain.lr")
    # the validation accuracy in base mode (memorisation channels dropped), every eval_every epochs, `tie`
    # deciding between equal scores; with `select: last` only after the last epoch, which is kept
    select = by_validation(task, params.runtime.eval_batch_size, every=recipe.eval_every, tie=recipe.tie,
                           select=recipe.select)
    with measure(device) as cost:
        net = compiled(model, params.runtime) if route_meta is None else model
        fit_log = train(model, make_optimizer(model.parameters(), recipe), phase, select=select, net=net,
                        device=device)
    meta = checkpoint_meta(model, params.model, splits, variant=variant, route=route_meta)
    train_log = {"variant": variant, "regularity": manifest["regularity"], "seed": seed,
                 "best_epoch": fit_log.best_epoch, "best_val_acc": fit_log.best_score, "selection": select.rule,
                 "steps": fit_log.steps,
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
    manifest: dict


def prepare_unlearn(params: ParamsBase, run: str, model_path: str | Path, manifest_path: str | Path,
                    discovery_path: str | Path) -> Prepared:
    """A cell: D_f is the discover stage's file, a subset of D_c (the oracle) or a detector's flagged set."""
    splits = load_splits(params.data)
    manifest = load_manifest(manifest_path, splits)
    discovery = check_discovery(read_json(discovery_path, "discovery file"), manifest, str(discovery_path),
                                len(splits.train_y))
    flagged = discovery_source(discovery)[0] != "oracle"
    return prepare(params, run, model_path, splits, manifest, discovery["indices"], discovery, standard_only=flagged)


def prepare(params: ParamsBase, run: str, model_path: str | Path, splits, manifest: dict, forget: list[int],
            discovery: dict, *, standard_only: bool = False) -> Prepared:
    """Load and check the pretrained model of a cell and build the method's context on D_f = `forget`
    (a discovered subset of D_c, or a detector's flagged set with its false positives)."""
    from remflow.methods import REGISTRY, UnlearnContext

    cfg = params.method(run)
    method = REGISTRY[cfg.method]
    device = setup_runtime(params.runtime)
    model, meta = load_model(model_path, device)
    if meta.get("fingerprint") != splits.fingerprint:
        raise RemflowError("checkpoint was trained on other data (dataset or split settings changed)",
                           key=str(model_path), got=meta.get("dataset"), hint="rerun its pretrain stage: dvc repro")
    if model.widened and standard_only:
        raise RemflowError("the detection study runs on standard pretrained models", key=str(model_path))
    if model.widened and not method.uses_expansion:
        model.deploy_()  # "X (ETD)": the method sees the ETD model with its memorisation channels dropped
    deployed = build_model(params.model, splits.in_channels, splits.num_classes, splits.image_size)
    if shape_signature(deployed) != shape_signature(_deployed_view(model)):
        raise RemflowError("checkpoint architecture differs from params' `model`", key=str(model_path),
                           got=meta.get("model"), hint="rerun its pretrain stage: dvc repro")
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    seed = int(manifest["seed"])
    task = make_task(params.data, splits, device, manifest, list(forget))
    ctx = UnlearnContext(model, task, params, seed, device, route=meta.get("route") if model.widened else None)
    torch.manual_seed(derive_seed(seed, run, "unlearn"))
    return Prepared(ctx, cfg, method, meta.get("variant", "standard"), count_params(deployed), deployed, meta,
                    discovery, manifest)


def unlearn(params: ParamsBase, run: str, model_path: str | Path, manifest_path: str | Path,
            discovery_path: str | Path, out_dir: str | Path) -> dict:
    prep = prepare_unlearn(params, run, model_path, manifest_path, discovery_path)
    task = prep.ctx.task
    source, view, rate = discovery_source(prep.discovery)
    identity = {"run": run, "method": prep.cfg.method, "pretrained": prep.variant, "regularity": task.regularity,
                "discovery_rate": rate, "seed": prep.ctx.seed}
    row = {"label": run_label(run, prep.variant, view),
           "corruption": prep.manifest.get("corruption", CORRUPTION_OF[task.regularity]),
           **discovery_columns(task.discovered, prep.manifest, source)}
    if source == "oracle":
        log(f"unlearn {run} ({prep.variant}) {task.regularity} rate {rate} seed {prep.ctx.seed}: "
            f"|D_f| = {len(task.forget)}")
    else:  # a detector's D_f: the detection study's identity (remflow/detection/, docs/detection.md)
        from remflow.detection.corruptions import family

        log(f"unlearn {run} on {source} {view} {prep.manifest.get('corruption')} budget {rate:g} "
            f"seed {prep.ctx.seed}: |D_f| = {len(task.forget)}")
        identity = {"study": "detection", "run": run, "method": prep.cfg.method, "pretrained": "standard",
                    "corruption": prep.manifest.get("corruption"), "regularity": family(prep.manifest),
                    "detector": source, "view": view, "discovery_rate": rate, "seed": prep.ctx.seed}
        row["view"] = view
    return execute(prep, identity, row, model_path, manifest_path, discovery_path, out_dir)


def execute(prep: Prepared, identity: dict, row: dict, model_path, manifest_path, discovery_path,
            out_dir: str | Path) -> dict:
    """Run the prepared method, then score the deployed model (paper §5.1, as evaluate reads it: from the
    checkpoint written) and write the checkpoint and the run record, which carries the row of results.csv."""
    ctx, cfg, task = prep.ctx, prep.cfg, prep.ctx.task
    scoring_task = task.with_discovered(list(task.discovered or []))  # the cell as given, whatever the method does
    with measure(ctx.device) as cost:
        if len(task.forget):
            result = prep.method.unlearn(ctx, cfg)
        else:  # no known corrupted sample (a detector without true positives): the original model stays
            result, ctx.stats["empty_forget_set"] = copy.deepcopy(ctx.model), True
    if not isinstance(result, torch.nn.Module) or shape_signature(result) != shape_signature(prep.deployed):
        module = sys.modules.get(prep.method.unlearn.__module__)
        what = "a model that is not the deployed architecture" if isinstance(result, torch.nn.Module) else \
            f"{type(result).__name__}, not a model"
        raise RemflowError(f"method '{cfg.method}' returned {what}", key=getattr(module, "__file__", None) or
                           prep.method.unlearn.__module__, got=type(result).__name__,
                           hint="a method returns the unlearnt model, of the architecture it was given (with added "
                                "channels cut off: docs/adding-a-method.md)")

    record: dict[str, Any] = {
        **identity,
        "config": cfg.model_dump(),
        "recipe": ctx.recipe(cfg).model_dump(),
        "stats": ctx.stats,
        "unlearn_seconds": round(cost.seconds, 4),
        "peak_memory_mb": round(cost.peak_memory_mb, 2),
        "params_deployed": prep.params_deployed,
        "params_peak": max(ctx.peak_params, prep.params_deployed),
        "forgotten": len(task.forget),
        "dataset": {"about": describe(task.splits), "fingerprint": task.splits.fingerprint},
        "inputs": {"model": str(model_path), "manifest": str(manifest_path), "discovery": str(discovery_path),
                   "manifest_sha": file_digest(manifest_path), "discovery_sha": file_digest(discovery_path)},
        "device": str(ctx.device),
        "torch": torch.__version__,
        "remflow": __version__,
        "python": platform.python_version(),
    }
    with atomic_dir(out_dir) as tmp:
        save_checkpoint(tmp / "model.safetensors", result.state_dict(), {**prep.meta, "added": {}, "route": None})
        with measure(ctx.device) as scoring:
            deployed, _ = load_model(tmp / "model.safetensors", ctx.device)
            record["scores"] = evaluate_model(deployed, scoring_task, ctx.params.runtime.eval_batch_size)
        record["row"] = row
        record["scoring_seconds"] = round(scoring.seconds, 4)
        if ctx.params.robustness.enabled:  # is the corruption gone or only hidden (remflow/robustness.py)
            record["measures"] = robustness_of(deployed, model_path, scoring_task, ctx)
        write_json(tmp / "record.json", record)
    s = record["scores"]
    log(f"unlearn {identity['run']}: {cost.seconds:.2f}s, peak {cost.peak_memory_mb:.0f} MB; healed {s['healed']:.3f}, "
        f"utility {s['utility']:.3f}")
    return record


def robustness_of(deployed, model_path, task: Task, ctx) -> dict[str, float]:
    """The robustness columns of a deployed model against the original it was unlearnt from (the checkpoint
    at `model_path`, by its deployed slice when it was pretrained with memorisation channels)."""
    from remflow import robustness

    original, _ = load_model(model_path, ctx.device)
    if original.widened:
        original.deploy_()
    params = ctx.params
    return robustness.measure(deployed, original, task, params.robustness, ctx.seed, params.runtime.eval_batch_size,
                              pretrain=params.pretrain)


def _deployed_view(model):
    """The deployed-shape signature of a possibly widened model without touching it."""
    if not model.widened:
        return model
    return copy.deepcopy(model).deploy_()


# ---------------------------------------------------------------- probe


PROBE_FORMAT = "remflow-probe/1"


def probe(params: ParamsBase, manifest_path: str | Path, out: str | Path) -> dict:
    """The regularity probe of one corruption manifest (remflow.detection.probe): how much of the corruption a
    linear model on pixels transfers from one half of D_c to the other. One file per manifest, read by evaluate;
    its bytes depend on its inputs only (the time goes to the log), so a forced re-run leaves evaluate cached."""
    from remflow.detection.probe import regularity_score

    splits = load_splits(params.data)
    manifest = load_manifest(manifest_path, splits)
    task = make_task(params.data, splits, torch.device("cpu"), manifest)
    seed = params.detection.seed if hasattr(params, "detection") else 0
    with measure(torch.device("cpu")) as cost:
        score = regularity_score(task, seed=seed)
    d = {"format": PROBE_FORMAT, "manifest": str(manifest_path), "manifest_sha": file_digest(manifest_path),
         "seed": seed, "regularity_score": round(float(score), 6)}
    write_json(out, d)
    log(f"probe {manifest.get('corruption', manifest['regularity'])} seed {manifest['seed']}: "
        f"regularity {score:.3f}, {cost.seconds:.1f}s")
    return d
