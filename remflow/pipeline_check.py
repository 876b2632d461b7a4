"""`remflow check`: the rules that need the data (check_data), and dvc.yaml must declare, per stage, exactly the
params sections its command reads.

An under-declared stage silently keeps a stale cache when that section changes; an over-declared one reruns
for nothing. STAGE_READS is the one list of what each command reads; stages.py follows it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from remflow.errors import RemflowError
from remflow.config import GridCfg, ParamsBase
from remflow.params import read_yaml

# set by `remflow run --address` for its stages and itself: a cluster's GPU nodes run the training stages, so a
# node without CUDA (the head, a CPU worker running `check`) may validate `runtime.device: cuda`
CUDA_ELSEWHERE = "REMFLOW_CUDA_ELSEWHERE"

# the runtime keys that change a stage's results (runtime.cpus/gpus/workers only schedule `remflow run`)
RUNTIME_RESULT_KEYS = ("runtime.device", "runtime.threads", "runtime.compile", "runtime.eval_batch_size")

# what each command reads from params.yaml (besides validating all of it); a command whose reads depend on its
# source is listed once per source, named by the flag that picks it (`discover --budget`: a detector)
STAGE_READS: dict[str, set[str]] = {
    "check": set(),  # reads all of params.yaml: it depends on the file itself
    "corrupt": {"data", "corruption"},  # a named regularity of the grid
    "corrupt --corruption": {"data", "corruption", "detection.specs.<corruption>"},  # a detection.specs cell
    "pretrain": {"data", "model", "pretrain", *RUNTIME_RESULT_KEYS},
    "discover": set(),  # the oracle: a subset of D_c at a rate
    "discover --budget": {"data", *RUNTIME_RESULT_KEYS, "detection.specs.<corruption>", "detection.detectors",
                          "detection.seed"},  # a detector on the pretrained model
    "unlearn": {"data", "model", "pretrain", "unlearn", "robustness", *RUNTIME_RESULT_KEYS, "methods.<run>"},
    "probe": {"data", "detection.seed"},
    "evaluate": {"grid", "evaluate", "detection", "data", "model", "pretrain", "corruption", "robustness"},  # gathers
    # run records (no dataset, no checkpoint); data/model/pretrain/corruption/robustness only for results.csv's
    # `setup` and `settings` digests
}
_METHOD_KEY = re.compile(r"^methods\.\$\{item\.\w+\}$")
_SPEC_KEY = re.compile(r"^detection\.specs\.\$\{item\.\w+\}$")
_GRID_REF = re.compile(r"\$\{grid\.(\w+)\}")
_REF = re.compile(r"\$\{\s*([A-Za-z_][\w.]*)\s*\}")


def _key(entry: str) -> str:
    if _METHOD_KEY.match(entry):
        return "methods.<run>"
    return "detection.specs.<corruption>" if _SPEC_KEY.match(entry) else entry


def _declared(params_list, stage: str, dvc_path: Path) -> set[str]:
    keys = set()
    if params_list is not None and not isinstance(params_list, list):
        raise RemflowError(f"stage '{stage}': `params:` must be a list of keys", key=f"{dvc_path}: stages.{stage}.params",
                           got=params_list)
    for entry in params_list or []:
        if isinstance(entry, str):
            keys.add(_key(entry))
        elif isinstance(entry, dict):
            for file, sub in entry.items():
                if file not in ("params.yaml",):
                    raise RemflowError(f"stage '{stage}' tracks params of another file ({file})", key=str(dvc_path),
                                       hint="remflow stages read params.yaml only")
                for k in sub or []:
                    keys.add(_key(k))
    return keys


def _present(raw: dict, key: str) -> bool:
    node: object = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def check_pipeline(params: ParamsBase, dvc_path: str | Path, raw: dict | None = None,
                   params_path: str | Path = "params.yaml") -> int:
    """Check dvc.yaml's per-stage `params:` lists against STAGE_READS; with `raw` (the params file as written),
    also that every key a stage tracks is written in that file: DVC runs such a stage and then refuses to record
    it ("Parameters ... are missing"), so a section left to its defaults must still be there."""
    detection = getattr(params, "detection", None)
    if not params.grid.methods and not params.grid.etd_methods and not getattr(detection, "methods", None):
        raise RemflowError("the grid runs no method: evaluate would have nothing to report, after every original "
                           "had trained", key=f"{Path(params_path).name}: grid.methods", got=[],
                           hint="list runs of `methods:` under grid.methods (or grid.etd_methods)")
    dvc_path = Path(dvc_path)
    if not dvc_path.is_file():  # read_yaml's own message speaks of the params file
        raise RemflowError("pipeline file not found", key=str(dvc_path), hint="pass --dvc PATH to the dvc.yaml")
    spec = read_yaml(dvc_path)
    if not isinstance(spec, dict) or not isinstance(spec.get("stages"), dict):
        raise RemflowError("no `stages:` mapping", key=str(dvc_path))
    # names that dvc.yaml defines itself (`vars:`) or per stage (`item`, `key`): not params.yaml's
    local = {"item", "key"} | {k for v in spec.get("vars") or [] if isinstance(v, dict) for k in v}
    # values from files dvc.yaml names (`vars: [config.yaml]`) or a stage's own `vars:`: not checked against params
    opaque = any(not isinstance(v, dict) for v in spec.get("vars") or []) or any(
        isinstance(st, dict) and st.get("vars") for st in spec["stages"].values())
    n = 0
    for name, stage in spec["stages"].items():
        body = stage.get("do", stage) if isinstance(stage, dict) else {}
        cmd = body.get("cmd", "")
        cmd = " ".join(cmd) if isinstance(cmd, list) else str(cmd)
        m = re.search(r"\bremflow\s+([\w-]+)", cmd)
        if not m:
            continue
        command = m.group(1)
        if command not in STAGE_READS:
            raise RemflowError(f"stage '{name}' runs an unknown command `remflow {command}`", key=str(dvc_path))
        command = next((f"{command} {flag}" for flag in ("--corruption", "--budget")
                        if f"{command} {flag}" in STAGE_READS and re.search(rf"(^|\s){flag}\b", cmd)), command)
        declared = _declared(body.get("params"), name, dvc_path)
        expected = STAGE_READS[command]
        missing, extra = sorted(expected - declared), sorted(declared - expected)
        if missing or extra:
            show = lambda ks: ", ".join(k.replace("<run>", "${item.method}").replace(  # noqa: E731
                "<corruption>", "${item.corruption}") for k in ks)
            parts = []
            if missing:
                parts.append(f"lacks {show(missing)} (a change there would not rerun it)")
            if extra:
                parts.append(f"declares {show(extra)}, which `remflow {command}` does not read")
            raise RemflowError(f"stage '{name}' " + "; ".join(parts), key=f"{dvc_path}: stages.{name}.params",
                               got=sorted(declared), hint=f"`remflow {command}` reads: {show(sorted(expected))}")
        if raw is not None:
            absent = sorted(k for k in declared if "<" not in k and not _present(raw, k))
            if absent:
                raise RemflowError(f"stage '{name}' tracks {', '.join(absent)}, which {Path(params_path).name} "
                                   "does not write: DVC would run the stage and then refuse to record it",
                                   key=f"{params_path}: {absent[0]}", got="absent (defaults apply, but DVC "
                                   "tracks the key as written)",
                                   hint=f"write `{absent[0]}: {{}}` in {Path(params_path).name} for its defaults"
                                        if "." not in absent[0] else f"write {absent[0]} in {Path(params_path).name}")
        text = str(stage)
        for ref in _GRID_REF.findall(text):
            if ref not in GridCfg.model_fields:
                raise RemflowError(f"stage '{name}' refers to ${{grid.{ref}}}, which params' grid does not have",
                                   key=f"{dvc_path}: stages.{name}", got=ref)
        if raw is not None and not opaque:  # DVC interpolates these from the file as written: a key left to its
            # default is absent (escaped `\${...}` is not interpolated)
            for ref in _REF.findall(re.sub(r"\\\$\{[^}]*\}", "", text)):
                if ref.split(".")[0] not in local and not _present(raw, ref):
                    raise RemflowError(f"stage '{name}' interpolates ${{{ref}}}, which {Path(params_path).name} "
                                       "does not write: DVC cannot read the project without it",
                                       key=f"{params_path}: {ref}", got="absent (remflow would use its default)",
                                       hint=f"write {ref} in {Path(params_path).name} (the repository's "
                                            "params.yaml shows every key)")
        n += 1
    if n == 0:
        raise RemflowError("no stage runs a remflow command", key=str(dvc_path))
    return n


def check_suite(params: ParamsBase, root: Path) -> None:
    """What `remflow run` and `remflow recheck` refuse before DVC touches a suite: a key dvc.yaml needs that
    params.yaml does not write (or another pipeline problem), missing dataset files, |D_c| beyond the data."""
    check_pipeline(params, root / "dvc.yaml", raw=read_yaml(root / "params.yaml"), params_path=root / "params.yaml")
    check_data(params)


def check_data(p) -> list[str]:
    """The rules that need the training set itself: its files are there (an error unless data.download is on),
    |D_c| fits it. Returns notes on what runs but may not be what was meant."""
    from remflow.data.corruption import check_corruption, corrupted_size, discovered_size
    from remflow.data.datasets import load_splits
    from remflow.records import resolution

    try:  # never downloads
        splits = load_splits(p.data.model_copy(update={"download": False}))
    except RemflowError as e:
        if not p.data.download:
            raise
        return [f"the dataset files are not there yet; its stages will download them (data.download): {e.message}"]
    check_corruption(p.corruption, p.grid.regularities, splits)
    check_model(p.model, splits, p.pretrain.batch_size)
    n = corrupted_size(p.corruption, len(splits.train_y))
    drawn: dict[int, list[float]] = {}
    for rate in p.grid.discovery_rates:
        drawn.setdefault(discovered_size(rate, n), []).append(rate)
    notes = [f"discovery rates {', '.join(map(str, rates))} all draw the same {k} of |D_c| = {n} samples: their "
             f"cells run on the same D_f (raise corruption.count to tell them apart)"
             for k, rates in drawn.items() if len(rates) > 1]
    if p.grid.discovery_rates:
        lowest = min(p.grid.discovery_rates)
        line, fine = resolution(n, discovered_size(lowest, n), lowest)
        if not fine:
            notes.append(line)
    from remflow.data.custom import class_names

    names = class_names(p.data)
    if names:
        shown = ", ".join(f"{i}: {n}" for i, n in enumerate(names[:20])) + (", ..." if len(names) > 20 else "")
        notes.append(f"labels of the class folders (sorted as strings; corruption.backdoor.target and "
                     f"corruption.interclass.classes are these numbers): {shown}")
    if p.data.dataset == "digits" and p.data.root:
        notes.append(f"data.root ({p.data.root}) is not read: digits comes from scikit-learn's wheel")
    import torch

    if p.runtime.device == "cuda" and not torch.cuda.is_available():
        if not os.environ.get(CUDA_ELSEWHERE):  # run here: every training stage would refuse, after DVC removed
            raise RemflowError("runtime.device is cuda and this machine has no CUDA device", key="runtime.device",
                               got="cuda", hint="runtime.device: cpu to run here; on a Ray cluster with GPU "
                               "nodes, `remflow run --address ...` runs the stages there")
        notes.append("runtime.device is cuda and this machine has no CUDA device: the cluster's GPU nodes run the "
                     "training stages (remflow run --address)")
    return notes


def check_model(cfg, splits, batch_size: int | None = None) -> None:
    """`model:` builds for this data and gives one finite score per class, in evaluation and in training mode
    (forward and backward): what pretraining would find out after the corrupt, probe and discover stages had run
    (a plug-in's constructor or forward failing, its head the wrong size). `batch_size`: pretraining's, whose
    last batch may hold a single image, which a model with batch statistics cannot train on."""
    import torch

    from remflow.models import build_model

    model = build_model(cfg, splits.in_channels, splits.num_classes, splits.image_size)  # RemflowError: key model
    from remflow.data.task import input_stats, normalise

    # two training images, normalised as the task feeds them (zeros would make a per-image standardisation nan)
    x = torch.zeros(2, splits.in_channels, splits.image_size, splits.image_size)
    if len(splits.train_x) >= 2:
        x = normalise(torch.from_numpy(splits.train_x[:2]), *input_stats(splits))
    shape = f"{splits.in_channels}x{splits.image_size}x{splits.image_size} images"
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001 - the user's forward, reported as bad input
        raise RemflowError(f"the model fails on a batch of this data ({type(e).__name__}: {e})", key="model",
                           got=shape, hint="the model must take (N, C, H, W) float images of the dataset's size"
                           ) from None
    if isinstance(out, (tuple, list)):
        raise RemflowError(f"the model returns a {type(out).__name__} of {len(out)}, not a tensor of scores",
                           key="model", got=f"{type(out).__name__} for 2 images",
                           hint="forward must return the logits alone, one row of num_classes scores an image")
    if tuple(getattr(out, "shape", ())) != (2, splits.num_classes):
        raise RemflowError(f"the model must give one score per class: {splits.num_classes} for this data",
                           key="model", got=f"output of shape {tuple(getattr(out, 'shape', ()))} for 2 images",
                           hint="size its last layer to num_classes (the plug-in's constructor receives it)")
    if not bool(torch.isfinite(out).all()):
        raise RemflowError("the model gives scores that are not finite (nan or inf) on a batch of this data",
                           key="model", got=shape, hint="check its forward (a division, a log, an uninitialised "
                           "parameter)")
    model.train()
    try:
        model(x).float().logsumexp(dim=1).mean().backward()
    except Exception as e:  # noqa: BLE001 - the user's forward or backward in training mode
        raise RemflowError(f"the model fails in training mode on a batch of this data ({type(e).__name__}: {e})",
                           key="model", got=shape, hint="its training-mode forward and backward must work on a "
                           "batch of (N, C, H, W) images") from None
    n = len(splits.train_y)
    if batch_size and n % batch_size == 1:
        try:
            model(x[:1])
        except Exception as e:  # noqa: BLE001 - BatchNorm and the like cannot train on one image
            raise RemflowError(f"pretraining's last batch holds a single image ({n} training images, a batch of "
                               f"{batch_size}) and the model fails on it in training mode ({type(e).__name__}: "
                               f"{e})", key="pretrain.batch_size", got=batch_size,
                               hint="a batch size that leaves at least two images in the last batch") from None
