"""A run record's row: what the unlearn stage writes about its run and the evaluate stage aggregates.

No torch here: the evaluate stage reads records and never a checkpoint. The unlearn stage scores its run
while the model is in memory (remflow.stages) and puts the scores, the costs and the row's identity into
`record.json`; `row_of` turns a record into the row of results.csv.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from remflow.errors import RemflowError
from remflow.provenance import settings_of

# what a record must carry for its row (written by the unlearn stage since records score themselves)
ROW_KEYS = ("label", "corruption", "discovery", "discovery_precision", "discovery_recall")


def run_label(run: str, pretrained: str, view: str = "") -> str:
    """A row's label in results.csv and the tables: the run, `<run>_etd` on the ETD-pretrained model, and
    `<run>@found` / `<run>@hits` on a detector's D_f (flagged, or its true positives alone). The label is for
    reading: the report selects rows by their `pretrained`, `discovery` and `view` columns and pairs them by
    `base_run`."""
    label = run if pretrained == "standard" else f"{run}_etd"
    return f"{label}@{view}" if view else label


def base_run(row: dict[str, Any]) -> str:
    """The label of the same run on the oracle's D_f (a detection row's label without its view)."""
    view = row.get("view") or ""
    return row["run"][: -len(view) - 1] if view and row["run"].endswith("@" + view) else row["run"]


def discovery_columns(discovered: list[int], manifest: dict, label: str) -> dict:
    """How D_f stands against D_c: precision (share of D_f in D_c) and recall (share of D_c in D_f)."""
    corrupted = set(manifest["indices"])
    hits = len(set(discovered) & corrupted)
    return {"discovery": label, "discovery_precision": round(hits / len(discovered), 6) if discovered else float("nan"),
            "discovery_recall": round(hits / len(corrupted), 6)}


def row_of(rec: dict[str, Any], folder: Path, regularity_score: float, setup: str = "",
           settings: str | None = None) -> dict[str, Any]:
    """The results.csv row of one run record (scores rounded as evaluate always wrote them); `setup` and
    `settings`: remflow.provenance's digests, which evaluate makes with params (`settings` defaults to the
    record's own, without the robustness measurements' settings)."""
    row = rec.get("row")
    if not isinstance(rec.get("scores"), dict) or not isinstance(row, dict) or any(k not in row for k in ROW_KEYS):
        raise RemflowError("run record has no scores (written before runs scored themselves)", key=str(folder),
                           hint="rerun its unlearn stage: dvc repro (or remflow run)")
    head = {"run": row["label"], "method": rec["method"], "pretrained": rec["pretrained"],
            "regularity": rec["regularity"], "discovery_rate": rec["discovery_rate"], "seed": rec["seed"]}
    scores = {k: round(float(v), 6) for k, v in rec["scores"].items()}
    tail = {
        "unlearn_seconds": rec["unlearn_seconds"],
        "peak_memory_mb": rec["peak_memory_mb"],
        "params_deployed": rec["params_deployed"],
        "params_peak": rec["params_peak"],
        "corruption": row["corruption"],
        "discovery": row["discovery"],
        "view": row.get("view", ""),
        "discovery_precision": row["discovery_precision"],
        "discovery_recall": row["discovery_recall"],
    }
    extra = {k: round(float(v), 6) for k, v in (rec.get("measures") or {}).items()}
    return {**head, **scores, **tail, **extra, "regularity_score": round(float(regularity_score), 6),
            "setup": setup, "settings": settings if settings is not None else settings_of(rec),
            "details": rec.get("stats", {})}


# the resolution a suite needs before its tables may claim an ordering (DESIGN §7): one image of D_c moves Healed
# by at most 1 point, and D_f at the lowest discovery rate holds at least 10 images
MAX_POINTS_PER_IMAGE = 1.0
MIN_FORGET_IMAGES = 10


def resolution(corrupted: int, smallest_forget: int, lowest_rate: float) -> tuple[str, bool]:
    """A line that says how finely the suite's Healed can tell runs apart, and whether it is fine enough to claim
    an ordering (`corrupted`: |D_c|; `smallest_forget`: |D_f| at the lowest rate)."""
    points = 100.0 / corrupted if corrupted else float("inf")
    ok = points <= MAX_POINTS_PER_IMAGE and smallest_forget >= MIN_FORGET_IMAGES
    line = (f"|D_c| = {corrupted}: one image moves Healed by {points:.2f} points; D_f at the lowest rate "
            f"({lowest_rate:g}) holds {smallest_forget} image{'s' if smallest_forget != 1 else ''}")
    if not ok:
        need = max(math.ceil(100 / MAX_POINTS_PER_IMAGE), math.ceil(MIN_FORGET_IMAGES / max(lowest_rate, 1e-9)))
        line += (f". Too coarse to claim an ordering (at most {MAX_POINTS_PER_IMAGE:g} point an image and at least "
                 f"{MIN_FORGET_IMAGES} images of D_f): read its differences as indicative; |D_c| >= {need} would do")
    return line, ok
