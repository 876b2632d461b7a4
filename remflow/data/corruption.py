"""The three corruptions (paper §1) as manifests, and discovery of D_f ⊆ D_c.

A manifest names the corrupted training indices D_c, their new labels and (for the backdoor) the trigger;
it is applied at load time and never copies images.

- high regularity, `backdoor`: |D_c| indices drawn uniformly from the training set (samples already of the
  target class included, as in the paper), relabelled to the target class; the trigger patch is pasted after
  augmentation and normalisation, at the value given (default: the largest value of the normalised data).
- medium regularity, `interclass`: the first n/2 training samples of class A get label B and the first n/2
  of class B get label A (Goel et al.; CIFAR-10 cat<->dog = 3<->5).
- low regularity, `random_labels`: |D_c| uniform indices get a new label drawn uniformly over all classes, as
  the released code draws them (in effect: it adds U{1..9} to another sample's label, the labels being read in
  another order than the sorted indices), so about 1/num_classes keep their true label. They still count in
  D_c (and in Healed, against their clean label). `random_labels.always_wrong` draws over the other classes
  only (remflow's earlier rule, the paper's wording "random wrong labels"). Both draws take the same place in
  the seeded stream, so the indices do not depend on the switch.

Discovery takes a seeded permutation of D_c and keeps its first round(rate * |D_c|) entries, so the
discovered sets of one seed are nested across rates (as numpy's choice without replacement is in the paper).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from remflow.data.datasets import Splits
from remflow.errors import RemflowError
from remflow.io import read_json
from remflow.config import CORRUPTION_OF, CorruptionCfg

MANIFEST_FORMAT = "remflow-manifest/1"
DISCOVERY_FORMAT = "remflow-discovery/1"   # D_f drawn from D_c at a rate (the oracle grid)
FLAGGED_FORMAT = "remflow-detection/1"     # D_f flagged by a detector at a budget, or its true positives
FLAGGED_VIEWS = ("found", "hits")           # found: as the detector flagged it; hits: its true positives alone
# fixed stream ids so that each random decision has its own stream for a given seed
_STREAM_CORRUPT, _STREAM_DISCOVER = 11, 23


def corrupted_size(cfg: CorruptionCfg, n_train: int) -> int:
    n = cfg.count if isinstance(cfg.count, int) else int(round(cfg.count * n_train))
    if n < 1 or n > n_train:
        raise RemflowError(f"corrupted-set size resolves to {n} samples, outside 1..{n_train}",
                           key="corruption.count", got=cfg.count)
    return n


def trigger_value(cfg: CorruptionCfg, splits: Splits) -> float:
    """The trigger's value in normalised units ('max' = the largest normalised value in the training set)."""
    if cfg.backdoor.value != "max":
        return float(cfg.backdoor.value)
    peaks = splits.train_x.max(axis=(0, 2, 3)).astype(np.float64) / 255.0
    return float(max((p - m) / s for p, m, s in zip(peaks, splits.mean, splits.std)))


def make_manifest(regularity: str, seed: int, cfg: CorruptionCfg, splits: Splits) -> dict[str, Any]:
    labels = splits.train_y
    n_train, n_classes = len(labels), splits.num_classes
    n = corrupted_size(cfg, n_train)
    rng = np.random.default_rng([seed, _STREAM_CORRUPT])
    trigger = None
    classes = None
    if regularity == "high":
        target = cfg.backdoor.target
        if target >= n_classes:
            raise RemflowError(f"target class outside 0..{n_classes - 1}", key="corruption.backdoor.target", got=target)
        if cfg.backdoor.patch >= splits.image_size:
            raise RemflowError(f"trigger patch must be smaller than the {splits.image_size}px image",
                               key="corruption.backdoor.patch", got=cfg.backdoor.patch)
        idx = np.sort(rng.choice(n_train, size=n, replace=False))
        new = np.full(n, target, dtype=np.int64)
        trigger = {"size": cfg.backdoor.patch, "value": trigger_value(cfg, splits), "target": target}
    elif regularity == "medium":
        a, b = cfg.interclass.classes
        if max(a, b) >= n_classes:
            raise RemflowError(f"classes outside 0..{n_classes - 1}", key="corruption.interclass.classes", got=[a, b])
        if n % 2:
            raise RemflowError("interclass confusion needs an even corrupted-set size (n/2 per class)",
                               key="corruption.count", got=cfg.count)
        of_a, of_b = np.flatnonzero(labels == a), np.flatnonzero(labels == b)
        if min(len(of_a), len(of_b)) < n // 2:
            raise RemflowError(
                f"classes {a} and {b} have {len(of_a)} and {len(of_b)} training samples; {n // 2} each are needed",
                key="corruption.count", got=cfg.count)
        pick_a, pick_b = of_a[: n // 2], of_b[: n // 2]
        idx = np.concatenate([pick_a, pick_b])
        order = np.argsort(idx)
        idx = idx[order]
        new = np.concatenate([np.full(n // 2, b), np.full(n // 2, a)]).astype(np.int64)[order]
        classes = [a, b]
    elif regularity == "low":
        idx = np.sort(rng.choice(n_train, size=n, replace=False))
        if cfg.random_labels.always_wrong:
            new = (labels[idx] + rng.integers(1, n_classes, size=n)) % n_classes
        else:
            new = rng.integers(0, n_classes, size=n).astype(np.int64)
    else:
        raise RemflowError("unknown regularity", key="--regularity", got=regularity,
                           hint="one of high, medium, low")
    return {
        "format": MANIFEST_FORMAT,
        "regularity": regularity,
        "corruption": CORRUPTION_OF[regularity],
        "seed": seed,
        "dataset": splits.name,
        "fingerprint": splits.fingerprint,
        "num_train": n_train,
        "num_classes": n_classes,
        "indices": [int(i) for i in idx],
        "labels": [int(v) for v in new],
        "trigger": trigger,
        "classes": classes,
    }


def check_manifest(m: Any, splits: Splits, path: str) -> dict[str, Any]:
    """Refuse a manifest that is malformed or was made for other data."""
    def bad(msg, got=None):
        raise RemflowError(f"corrupted manifest: {msg}", key=path, got=got,
                           hint="rerun `dvc repro` for its corrupt stage (or `dvc repro -f` if data changed)")

    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        bad("not a remflow manifest", got=m.get("format") if isinstance(m, dict) else type(m).__name__)
    for key in ("regularity", "seed", "indices", "labels", "fingerprint", "num_train"):
        if key not in m:
            bad(f"missing field '{key}'")
    if m["regularity"] not in CORRUPTION_OF:
        bad("unknown regularity", got=m["regularity"])
    if m["fingerprint"] != splits.fingerprint or m["num_train"] != len(splits.train_y):
        raise RemflowError(
            "manifest was made for other data (dataset or split settings changed)", key=path,
            got=f"{m.get('dataset')} {m['fingerprint']}",
            hint="rerun its corrupt stage: dvc repro; if the data files themselves changed, dvc repro -f (DVC does "
                 "not track data.root: docs/adding-a-dataset-or-model.md, 'Your data and DVC')")
    idx, lab = m["indices"], m["labels"]
    if not isinstance(idx, list) or not isinstance(lab, list) or len(idx) != len(lab) or not idx:
        bad("indices and labels must be equal-length, non-empty lists")
    arr = np.asarray(idx)
    if arr.dtype.kind != "i" or arr.min() < 0 or arr.max() >= len(splits.train_y) or len(np.unique(arr)) != len(arr):
        bad("indices must be distinct training indices")
    la = np.asarray(lab)
    if la.dtype.kind != "i" or la.min() < 0 or la.max() >= splits.num_classes:
        bad("labels outside the dataset's classes")
    if m["regularity"] == "high":
        t = m.get("trigger")
        need = {"alpha", "pattern_seed"} if isinstance(t, dict) and t.get("kind") == "blend" else {"size", "value"}
        if not isinstance(t, dict) or not need <= set(t):
            bad("backdoor manifest without a trigger spec")
        if t.get("kind") == "blend" and not (isinstance(t["alpha"], (int, float)) and 0 < t["alpha"] <= 1):
            bad("a blended trigger's alpha must lie in (0, 1]", got=t["alpha"])
    return m


def load_manifest(path, splits: Splits) -> dict[str, Any]:
    return check_manifest(read_json(path, "corruption manifest"), splits, str(path))


def discovered_size(rate: float, corrupted: int) -> int:
    """|D_f| at a discovery rate: round(rate * |D_c|), at least one sample."""
    return max(1, int(round(rate * corrupted)))


def make_discovery(manifest: dict[str, Any], rate: float, seed: int) -> dict[str, Any]:
    if not (0.0 < rate <= 1.0):
        raise RemflowError("discovery rate must lie in (0, 1]", key="--rate", got=rate)
    corrupted = np.asarray(manifest["indices"], dtype=np.int64)
    k = discovered_size(rate, len(corrupted))
    perm = np.random.default_rng([seed, _STREAM_DISCOVER]).permutation(len(corrupted))
    found = np.sort(corrupted[perm[:k]])
    return {
        "format": DISCOVERY_FORMAT,
        "regularity": manifest["regularity"],
        "seed": seed,
        "rate": rate,
        "fingerprint": manifest["fingerprint"],
        "indices": [int(i) for i in found],
    }


def check_corruption(cfg: CorruptionCfg, regularities, splits: Splits) -> None:
    """The corruption rules that need the loaded training set (|D_c| within it, an even |D_c| for interclass
    confusion, enough samples of the two classes), for every regularity of the grid: what each corrupt stage
    would refuse, refused before any stage runs."""
    for reg in regularities:
        make_manifest(reg, 0, cfg, splits)


def check_discovery(d: Any, manifest: dict[str, Any], path: str, num_train: int | None = None) -> dict[str, Any]:
    """The one reader of a discovered set D_f, whatever its source: a subset of D_c drawn at a rate (the discover
    stage's oracle) or a detector's flagged set (false positives included) or its true positives. Refuses a
    file made for another cell, naming it."""
    if isinstance(d, dict) and d.get("format") == FLAGGED_FORMAT:
        return _check_flagged(d, manifest, path, num_train)
    return _check_drawn(d, manifest, path)


def discovery_source(d: dict[str, Any]) -> tuple[str, str, float]:
    """(source, view, rate or budget) of a checked discovery file: ("oracle", "", rate) or (detector, view,
    budget)."""
    if d.get("format") == FLAGGED_FORMAT:
        return str(d["detector"]), str(d["view"]), float(d["budget"])
    return "oracle", "", float(d["rate"])


def _check_flagged(d: dict[str, Any], manifest: dict[str, Any], path: str, num_train: int | None) -> dict[str, Any]:
    def bad(msg, got=None):
        raise RemflowError(f"flagged set: {msg}", key=path, got=got, hint="rerun its discover stage (dvc repro)")

    if not isinstance(d.get("indices"), list):
        bad("no indices")
    for key in ("regularity", "seed", "fingerprint"):
        if d.get(key) != manifest.get(key):
            bad(f"made for another corrupted set ({key} {d.get(key)!r}, the manifest's {manifest.get(key)!r})")
    if d.get("view") not in FLAGGED_VIEWS:
        bad("unknown view", got=d.get("view"))
    if not isinstance(d.get("detector"), str) or not d["detector"]:
        bad("no detector named", got=d.get("detector"))
    budget = d.get("budget")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (0.0 < budget <= 4.0):
        bad("the budget must be a number in (0, 4]", got=budget)
    idx = d["indices"]
    top = num_train if num_train is not None else float("inf")
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < top for i in idx) or len(set(idx)) != len(idx):
        bad("flagged indices must be distinct training indices")
    if d["view"] == "found" and not idx:
        bad("a detector flags at least one sample")
    if d["view"] == "hits" and not set(idx) <= set(manifest["indices"]):
        bad("the true positives must lie in D_c")
    return d


def _check_drawn(d: Any, manifest: dict[str, Any], path: str) -> dict[str, Any]:
    """Refuse a discovery file that is not a subset of D_c drawn at its rate for this manifest (a hand-edited
    or stale file), naming the file."""
    def bad(msg, got=None):
        raise RemflowError(f"discovery file: {msg}", key=path, got=got,
                           hint="rerun its discover stage (dvc repro), or fix the file by hand")

    if not isinstance(d, dict) or d.get("format") != DISCOVERY_FORMAT or not isinstance(d.get("indices"), list):
        raise RemflowError("not a remflow discovery file", key=path, hint="rerun its discover stage")
    rate = d.get("rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (0.0 < rate <= 1.0):
        bad("the discovery rate must be a number in (0, 1]", got=rate)
    for key in ("regularity", "seed", "fingerprint"):
        if d.get(key) != manifest.get(key):
            bad(f"made for another corrupted set ({key} {d.get(key)!r}, the manifest's {manifest.get(key)!r})")
    idx = d["indices"]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
        bad("indices must be integers")
    outside = sorted(set(idx) - set(manifest["indices"]))
    if outside:
        raise RemflowError(
            f"{len(outside)} discovered indices are not in the corrupted set D_c", key=path,
            got=outside[:5], hint="D_f must be a subset of the manifest's indices; rerun its discover stage")
    if len(set(idx)) != len(idx):
        raise RemflowError("discovered indices repeat", key=path)
    expected = discovered_size(rate, len(manifest["indices"]))
    if len(idx) != expected:
        bad(f"rate {rate:g} of |D_c| = {len(manifest['indices'])} is {expected} discovered samples; the file "
            f"lists {len(idx)}", got=rate)
    return d
