"""What a results.csv row was made under, as short digests that pooled files can be checked against.

`setup`: the settings of the run's original model, its seed aside, by part (data, model, pretrain, corruption),
which the evaluate stage takes from params (remflow.evaluate.setup_of); `settings`: what the run executed (its
method's config and training recipe, as its record holds them). `remflow evaluate --from-csv` refuses to pool
files that differ in either for a run or corruption they share (remflow.report.SettingsCheck).

A module of its own, apart from remflow.records, whose module body the unlearn stage's code fingerprint hashes
(artifacts/code/stage-unlearn.json): how results are pooled is the evaluate stage's concern only.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# what the original models depend on, each part a short digest in results.csv's `setup` column
SETUP_PARTS = ("data", "model", "pretrain", "corruption")


def digest(obj: Any, size: int = 8) -> str:
    """A short, machine-independent digest of a JSON-able value (keys sorted)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def setup_text(parts: dict[str, Any]) -> str:
    """results.csv's `setup`: `data:<digest> model:<digest> pretrain:<digest> corruption:<digest>`, the settings
    the row's original model was made under (its seed aside), so that pooled files can be checked to share them."""
    return " ".join(f"{k}:{digest(parts[k], 6)}" for k in SETUP_PARTS)


def setup_parts(text: str) -> dict[str, str]:
    """`setup_text`'s parts back ({} for an empty or unreadable column: a file written before it)."""
    parts = dict(p.split(":", 1) for p in str(text or "").split() if ":" in p)
    return parts if set(parts) == set(SETUP_PARTS) else {}


def settings_of(rec: dict[str, Any], robustness: dict[str, Any] | None = None) -> str:
    """results.csv's `settings`: a digest of what the run executed (its method's config and its training recipe, as
    its record holds them) and of how its robustness was measured (params' `robustness`, whose columns the row
    carries), the same for every cell of a run and different when any of those settings is."""
    what = {"method": rec.get("method"), "config": rec.get("config"), "recipe": rec.get("recipe")}
    return digest(what if robustness is None else {**what, "robustness": robustness})


def originals_key(row: dict[str, Any]) -> tuple[str, str, str]:
    """Which originals a results.csv row's `setup` describes: its corruption, the pretrained variant, and the kind of
    row (a detection spec may share a grid corruption's name, as digits-detect's `backdoor` does)."""
    return row["corruption"], row.get("pretrained") or "standard", "detection" if row.get("view") else "grid"
