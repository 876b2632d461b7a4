"""`remflow clean`: one unlearning method applied to a model the user trained, outside the DVC grid.

Inputs: the checkpoint (remflow's safetensors format, or a plain state dict of `model:` in params, .pt/.pth or
.safetensors), the dataset of `data:` in params (as trained on: the flagged images carry whatever corruption
they have, with the labels they were trained with), and a file of flagged training samples: D_f, the part of
the corrupted set that is known. The method runs through the same path as the pipeline's unlearn stage (its
registry entry, an UnlearnContext on a Task whose discovered set is the flagged samples); the cleaned model is
written in the deployed architecture with a record of what was measured.

What can be measured without D_c: Utility (test accuracy), forget accuracy (the flagged samples against the
labels they were trained with: how much of the known corruption the model still fits), accuracy on the other
training samples and on the validation split. What cannot: Healed, Healed on the test set and Utility x Healed
need all of D_c and its clean labels (and a backdoor's trigger), which nobody has here.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from remflow import __version__
from remflow.config import ParamsBase
from remflow.cost import measure
from remflow.data.datasets import Splits, describe, load_splits
from remflow.data.task import Task, make_task
from remflow.errors import RemflowError
from remflow.io import atomic_dir, file_digest, load_checkpoint, save_checkpoint, write_json
from remflow.models import build_model, checkpoint_meta, count_params, load_model, shape_signature
from remflow.progress import log
from remflow.seeds import derive_seed
from remflow.train import accuracy, predict, setup_runtime

NOT_MEASURED = ("healed, healed_test and score (Utility x Healed) are not measured: they need the whole "
                "corrupted set D_c with its clean labels (and a backdoor's trigger for healed_test); remflow clean "
                "knows only the flagged samples D_f. forget_acc is D_f's accuracy against the labels it was "
                "trained with; it says how much of the known corruption the model still fits, nothing about the "
                "corruption nobody flagged.")


def clean_command(params: ParamsBase, name: str, model_path: str | Path, flagged_path: str | Path, out_dir: str | Path,
          seed: int = 0) -> dict:
    """Unlearn the flagged samples from the user's model with method (or run) `name`; write model + record."""
    from remflow.methods import REGISTRY, UnlearnContext

    check_out(out_dir, model_path, flagged_path)
    cfg = method_config(params, name)
    method = REGISTRY[cfg.method]
    if getattr(cfg, "ideal", False):
        raise RemflowError(f"'{name}' is told all of the corrupted set D_c (an oracle bound); remflow clean knows "
                           "only the flagged samples", key="--method", got=name, hint="use rem")
    device = setup_runtime(params.runtime)
    splits = load_splits(params.data)
    flagged = read_flagged(flagged_path, params, splits)
    forget, val_flagged = place_flagged(flagged, splits, str(flagged_path))
    if len(val_flagged):  # a known corrupted sample must not steer model selection: take it out of validation
        keep = ~np.isin(splits.val_source, val_flagged)
        splits = dataclasses.replace(splits, val_x=splits.val_x[keep], val_y=splits.val_y[keep],
                                     val_source=splits.val_source[keep])
    model, route = load_original(model_path, params, splits, device)
    if model.widened and not method.uses_expansion:
        model.deploy_()  # an ETD checkpoint: the method sees it with its memorisation channels dropped
    deployed = build_model(params.model, splits.in_channels, splits.num_classes, splits.image_size)
    view = model if not model.widened else _deployed_copy(model)
    if shape_signature(deployed) != shape_signature(view):
        raise RemflowError("checkpoint architecture differs from params' `model`", key=str(model_path),
                           hint="set `model:` in params to the architecture the checkpoint was trained as")
    task = make_task(params.data, splits, device, None, forget.tolist())
    before = scores(view, task, params.runtime.eval_batch_size)

    ctx = UnlearnContext(model, task, params, seed, device, route=route if model.widened else None)
    torch.manual_seed(derive_seed(seed, name, "unlearn"))
    log(f"clean {name} ({cfg.method}): |D_f| = {len(forget)} of {describe(splits)}")
    with measure(device) as cost:
        result = method.unlearn(ctx, cfg)
    if shape_signature(result) != shape_signature(deployed):
        raise RuntimeError(f"method '{cfg.method}' returned a model that is not the deployed architecture")
    after = scores(result, task, params.runtime.eval_batch_size)

    record: dict[str, Any] = {
        "command": "clean",
        "run": name,
        "method": cfg.method,
        "config": cfg.model_dump(),
        "recipe": ctx.recipe(cfg).model_dump(),
        "seed": seed,
        "before": before,
        "after": after,
        "measured": {"utility": "accuracy on the test split", "forget_acc": "accuracy on the flagged samples "
                     "against the labels they were trained with", "retain_acc": "accuracy on the other training "
                     "samples", "val_acc": "accuracy on the validation split (flagged samples taken out)"},
        "not_measured": NOT_MEASURED,
        "flagged": len(forget) + len(val_flagged),
        "flagged_in_validation": len(val_flagged),
        "stats": ctx.stats,
        "unlearn_seconds": round(cost.seconds, 4),
        "peak_memory_mb": round(cost.peak_memory_mb, 2),
        "params_deployed": count_params(deployed),
        "params_peak": max(ctx.peak_params, count_params(deployed)),
        "data": {"dataset": params.data.dataset, "root": params.data.root, "fingerprint": splits.fingerprint,
                 "train": len(splits.train_y), "val": len(splits.val_y), "test": len(splits.test_y)},
        "inputs": {"model": str(model_path), "model_sha": file_digest(model_path), "flagged": str(flagged_path),
                   "flagged_sha": file_digest(flagged_path)},
        "device": str(device),
        "torch": torch.__version__,
        "remflow": __version__,
        "python": platform.python_version(),
    }
    meta = checkpoint_meta(result, params.model, splits, variant="clean", route=None)
    with atomic_dir(out_dir) as tmp:
        save_checkpoint(tmp / "model.safetensors", result.state_dict(), meta)
        write_json(tmp / "record.json", record)
    log(f"clean {name}: utility {before['utility']:.4f} -> {after['utility']:.4f}, forget acc "
        f"{before['forget_acc']:.4f} -> {after['forget_acc']:.4f}, {cost.seconds:.1f}s")
    return record


def check_out(out_dir: str | Path, *inputs: str | Path) -> None:
    """--out is replaced whole when the cleaning succeeds: refuse, before anything runs, a path that holds
    anything but an earlier `remflow clean` output (a file, a folder of other files, one holding an input)."""
    out = Path(out_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise RemflowError("--out names a file; it takes a folder that remflow clean writes whole", key="--out",
                           got=str(out), hint="give a new folder, e.g. cleaned/")
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise RemflowError("--out is the current folder (or holds it), and remflow clean replaces it whole",
                           key="--out", got=str(out), hint="give a new folder, e.g. cleaned/")
    for f in inputs:
        if resolved in Path(f).resolve().parents:
            raise RemflowError("--out holds an input of this command, and remflow clean replaces it whole",
                               key="--out", got=str(out), hint=f"give a new folder (it holds {f})")
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return
    earlier = names == ["model.safetensors", "record.json"]
    if earlier:
        try:
            earlier = json.loads((out / "record.json").read_text(encoding="utf-8")).get("command") == "clean"
        except (OSError, ValueError, AttributeError):
            earlier = False
    if not earlier:
        raise RemflowError("--out is a folder of other files, and remflow clean replaces it whole", key="--out",
                           got=f"{out} (holds {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})",
                           hint="give a new or empty folder, or an earlier remflow clean output to replace")


def method_config(params: ParamsBase, name: str):
    """An entry under `methods:` in params, else a registered method with its defaults."""
    from remflow.methods import REGISTRY

    if name in params.methods:
        return params.methods[name]
    if name in REGISTRY:
        return REGISTRY[name].config()
    raise RemflowError(f"no method or run named '{name}'", key="--method", got=name,
                       hint=f"registered: {', '.join(REGISTRY)}; runs in params: {', '.join(params.methods) or '-'}")


def scores(model: torch.nn.Module, task: Task, batch_size: int) -> dict[str, float]:
    def acc(idx):
        return accuracy(model, task, idx, batch_size=batch_size)

    test = predict(model, task, task.test_x, batch_size=batch_size) == task.test_y
    val = predict(model, task, task.val_x, batch_size=batch_size) == task.val_y
    return {"utility": float(test.float().mean()), "forget_acc": acc(task.forget), "retain_acc": acc(task.retain),
            "val_acc": float(val.float().mean()) if len(val) else float("nan")}


# ---------------------------------------------------------------- the flagged samples


REMFLOW_FORMATS = ("remflow-manifest/1", "remflow-discovery/1", "remflow-detection/1")  # data/corruption.py's


def read_flagged(path: str | Path, params: ParamsBase, splits: Splits) -> np.ndarray:
    """Positions in the reader's training set. The file: one entry per line (`#` comments), each an index or,
    for `folder`, an image's path (relative to <root>/train, to the current folder, or its bare name when
    unique); or JSON: a list, or an object with `indices`. A remflow manifest, discovery or detection file
    counts its indices in the split's training set (after data.train_size and the validation split, as the
    pipeline's stages do): it is accepted for the data it was made on only, and its indices are translated."""
    path = Path(path)
    if not path.is_file():
        raise RemflowError("flagged-samples file not found", key=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise RemflowError(f"cannot read the flagged-samples file ({e})", key=str(path)) from None
    entries: list[Any]
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RemflowError(f"not valid JSON ({e})", key=str(path)) from None
        entries = data.get("indices") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise RemflowError("JSON must be a list of entries or an object with `indices`", key=str(path))
        if isinstance(data, dict) and data.get("format") in REMFLOW_FORMATS:
            return _from_split_positions(data, splits, path)
        lines = list(range(1, len(entries) + 1))
    else:
        lines, entries = [], []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(n)
                entries.append(line)
    if not entries:
        raise RemflowError("no flagged samples in the file", key=str(path), hint="one training index (or, for a "
                           "folder dataset, one image path) per line")
    names = _folder_names(params) if params.data.dataset == "folder" else None
    out = []
    for n, e in zip(lines, entries):
        if (isinstance(e, int) and not isinstance(e, bool)) or (isinstance(e, str) and e.lstrip("-").isdecimal()
                                                                   and e.isascii()):
            out.append(_index(e, f"{path}:{n}"))
        elif names is not None and isinstance(e, str):
            out.append(_by_name(e, names, f"{path}:{n}"))
        else:
            raise RemflowError("not a training index" + (" or an image path" if names else ""),
                               key=f"{path}:{n}", got=e, hint="training indices count from 0 in the order of the "
                               "reader's training set" + ("" if names else "; file names need data.dataset: folder"))
    return np.unique(np.asarray(out, dtype=np.int64))


def _index(entry: int | str, where: str) -> int:
    i = int(entry)
    if not 0 <= i < 2**62:  # np.int64 holds it; no training set is near that size
        raise RemflowError("not a training index (out of range)", key=where, got=entry,
                           hint="training indices count from 0 in the order of the reader's training set")
    return i


def _from_split_positions(data: dict, splits: Splits, path: Path) -> np.ndarray:
    """A remflow file's indices (positions in the split's training set) as positions in the reader's."""
    if data.get("fingerprint") != splits.fingerprint:
        raise RemflowError(f"this {data['format'].split('/')[0].removeprefix('remflow-')} file was made on other "
                           "data (its training split differs from params' data:)", key=str(path),
                           got=data.get("fingerprint"), hint="use the params the pipeline ran with, or give the "
                           "flagged samples as reader indices (one per line)")
    idx = data["indices"]
    n = len(splits.train_y)
    bad = [i for i in idx if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise RemflowError(f"index outside the split's training set (0..{n - 1})", key=str(path), got=bad[0])
    if not idx:
        raise RemflowError("no flagged samples in the file", key=str(path))
    return np.unique(np.asarray(splits.train_source, dtype=np.int64)[np.asarray(idx, dtype=np.int64)])


def _folder_names(params: ParamsBase) -> dict:
    from remflow.data.custom import folder_files

    root = Path(params.data.root)
    files, _ = folder_files(root, "train")
    train = root / "train"
    by_rel = {f.relative_to(train).as_posix(): i for i, f in enumerate(files)}
    by_abs = {str(f.resolve()): i for i, f in enumerate(files)}
    by_name: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        by_name.setdefault(f.name, []).append(i)
    return {"rel": by_rel, "abs": by_abs, "name": by_name}


def _by_name(entry: str, names: dict, where: str) -> int:
    if entry in names["rel"]:
        return names["rel"][entry]
    resolved = str(Path(entry).resolve())
    if resolved in names["abs"]:
        return names["abs"][resolved]
    hits = names["name"].get(Path(entry).name, []) if "/" not in entry else []
    if len(hits) == 1:
        return hits[0]
    raise RemflowError("no such training image" if not hits else "image name is not unique across classes",
                       key=where, got=entry, hint="write the path relative to <root>/train, e.g. cat/0001.png")


def place_flagged(flagged: np.ndarray, splits: Splits, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions in the split's training set, reader positions that fell in the validation split)."""
    pos = {int(s): i for i, s in enumerate(splits.train_source)}
    in_val = set(int(s) for s in splits.val_source)
    forget, val = [], []
    for s in flagged.tolist():
        if s in pos:
            forget.append(pos[s])
        elif s in in_val:
            val.append(s)
        else:
            n = len(splits.train_source) + len(splits.val_source)
            raise RemflowError(f"flagged index {s} is not in the training set (0..{n - 1}"
                               f"{', less what data.train_size leaves out' if n else ''})", key=where, got=s)
    if not forget:
        raise RemflowError("every flagged sample fell in the validation split: nothing to unlearn", key=where,
                           hint="lower data.val_fraction or change data.split_seed")
    return np.sort(np.asarray(forget, dtype=np.int64)), np.asarray(sorted(val), dtype=np.int64)


# ---------------------------------------------------------------- the user's checkpoint


def load_original(path: str | Path, params: ParamsBase, splits: Splits, device: torch.device):
    """(model, route) from a remflow checkpoint, or from a plain state dict of params' `model`."""
    path = Path(path)
    if not path.is_file():
        raise RemflowError("checkpoint not found", key=str(path))
    if path.suffix == ".safetensors" and _has_remflow_meta(path):
        model, meta = load_model(path, device)
        if meta.get("fingerprint") not in (None, splits.fingerprint):
            raise RemflowError("checkpoint was trained on other data (dataset or split settings differ from "
                               "params' `data:`)", key=str(path), got=meta.get("dataset"),
                               hint="set `data:` as it was when the model was trained")
        return model, meta.get("route")
    state = _plain_state(path)
    model = build_model(params.model, splits.in_channels, splits.num_classes, splits.image_size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RemflowError(f"state dict does not fit params' `model` ({str(e).splitlines()[0]}; "
                           f"{_diff(model.state_dict(), state)})", key=str(path), got=params.model.name,
                           hint="set `model:` in params to the architecture it was trained as") from None
    return model.to(device), None


def _has_remflow_meta(path: Path) -> bool:
    try:
        load_checkpoint(path)
    except RemflowError as e:
        if e.message.startswith("not a remflow checkpoint"):
            return False
        raise
    return True


def _plain_state(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            return load(path.read_bytes())
        except (SafetensorError, ValueError, OSError) as e:
            raise RemflowError(f"not a safetensors file ({e})", key=str(path)) from None
    import zipfile

    with open(path, "rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # torch.save writes a zip (or, legacy, a pickle)
        raise RemflowError("not a PyTorch checkpoint (torch.save writes a zip archive)", key=str(path),
                           hint="save it with torch.save(model.state_dict(), path), or pass a .safetensors file")
    try:  # weights only: a checkpoint from elsewhere cannot run code here
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a foreign or truncated file
        raise RemflowError(f"cannot read the checkpoint as a state dict ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})", key=str(path),
                           hint="save it with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RemflowError("not a state dict (a mapping of names to tensors)", key=str(path),
                           hint="save it with torch.save(model.state_dict(), path)")
    return state


def _diff(expected: dict, got: dict) -> str:
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        return f"missing {missing[:3]}, unexpected {extra[:3]}"
    shapes = [k for k in expected if tuple(expected[k].shape) != tuple(got[k].shape)]
    return f"shapes differ at {shapes[:3]}" if shapes else "same keys and shapes"


def _deployed_copy(model):
    import copy

    return copy.deepcopy(model).deploy_()
