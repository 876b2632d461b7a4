"""The study's corruption cells as manifests (the format of remflow.data.corruption, read by every stage).

The three named corruptions come from remflow.data.corruption.make_manifest with the spec's overrides, so a
spec of kind `backdoor` with no overrides gives the `high` manifest of the same seed, index for index. Each
manifest keeps the family it is scored as in `regularity` (high, medium, low: metrics.py's Utility and
test-time face) and names its cell in `corruption`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from remflow.config import CorruptionCfg
from remflow.data.corruption import corrupted_size, make_manifest
from remflow.data.datasets import Splits
from remflow.detection.config import FAMILY, ConfusionSpec
from remflow.errors import RemflowError

_STREAM_CONFUSION = 31


def confusable_class(splits: Splits) -> np.ndarray:
    """For every class, the other class whose mean training image is nearest (the matrix's off-diagonal peak)."""
    x = splits.train_x.reshape(len(splits.train_x), -1).astype(np.float64)
    means = np.stack([x[splits.train_y == c].mean(0) for c in range(splits.num_classes)])
    dist = ((means[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    return dist.argmin(1)


def make_corruption(name: str, spec: Any, seed: int, cfg: CorruptionCfg, splits: Splits) -> dict[str, Any]:
    kind = spec.kind
    if kind == "backdoor":
        bd = cfg.backdoor.model_copy(update={k: v for k, v in (("patch", spec.patch), ("value", spec.value))
                                             if v is not None})
        m = make_manifest("high", seed, cfg.model_copy(update={"backdoor": bd}), splits)
        m["trigger"]["value"] = float(m["trigger"]["value"]) * spec.scale
    elif kind == "blend":
        m = make_manifest("high", seed, cfg, splits)
        m["trigger"] = {"kind": "blend", "alpha": float(spec.alpha), "pattern_seed": int(seed),
                        "target": m["trigger"]["target"]}
    elif kind == "interclass":
        count = cfg.count
        if spec.fraction is not None:
            a, b = cfg.interclass.classes
            per_class = min(int((splits.train_y == a).sum()), int((splits.train_y == b).sum()))
            count = 2 * max(1, int(spec.fraction * per_class))
        m = make_manifest("medium", seed, cfg.model_copy(update={"count": count}), splits)
    elif kind == "random_labels":
        m = make_manifest("low", seed, cfg, splits)
    elif kind == "confusion":
        m = _confusion(spec, seed, cfg, splits)
    else:  # pragma: no cover  the schema admits no other kind
        raise RemflowError("unknown corruption kind", key=f"detection.specs.{name}.kind", got=kind)
    m.update({"corruption": name, "kind": kind, "spec": spec.model_dump()})
    return m


def _confusion(spec: ConfusionSpec, seed: int, cfg: CorruptionCfg, splits: Splits) -> dict[str, Any]:
    # the indices of random labels of the same seed; only the wrong labels are drawn otherwise
    m = make_manifest("low", seed, cfg, splits)
    idx = np.asarray(m["indices"])
    true = splits.train_y[idx]
    k = splits.num_classes
    partner = confusable_class(splits)
    rng = np.random.default_rng([seed, _STREAM_CONFUSION])
    to_partner = rng.random(len(idx)) < spec.focus
    uniform = (true + rng.integers(1, k, size=len(idx))) % k
    m["labels"] = [int(v) for v in np.where(to_partner, partner[true], uniform)]
    m["confusion_partner"] = [int(c) for c in partner]
    return m


def family(manifest: dict) -> str:
    return FAMILY.get(manifest.get("kind", ""), manifest["regularity"])


__all__ = ["make_corruption", "confusable_class", "family", "corrupted_size"]
