"""The params loader of the commands: remflow.params' schema with the `detection:` section added.

The section is added here, by subclassing, rather than in remflow/config.py: that module and remflow/params.py
are code dependencies of every corrupt, pretrain and unlearn stage of the committed suites, and an edit there
makes them all stale. Errors read as remflow.params' do (key path, problem, value given; exit 2).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from pydantic import ValidationError, create_model, model_validator

from remflow.config import CrossError, ParamsBase
from remflow.detection.config import FAMILY, DetectionCfg
from remflow.params import ParamsError, _describe, _short, cross_checks, read_params
from remflow.params import schema as base_schema


def _detection_rules(self):
    d = self.detection
    for i, name in enumerate(d.corruptions):
        if name not in d.specs:
            raise CrossError(f"detection.corruptions.{i}", name, f"'{name}' has no entry under detection.specs")
    for i, run in enumerate(d.methods):
        if run not in self.methods:
            raise CrossError(f"detection.methods.{i}", run,
                             f"'{run}' has no entry under `methods:` (add `{run}: {{}}` to run it with its defaults)")
    return self


@functools.cache
def schema() -> type[ParamsBase]:
    return create_model("Params", __base__=base_schema(), detection=(DetectionCfg, DetectionCfg()),
                        __validators__={"_detection": model_validator(mode="after")(_detection_rules)})


def detection_checks(p) -> list[tuple[str, str, str]]:
    """The detection rules that need the dataset's shape (as remflow.params.cross_checks)."""
    from remflow.params import DATASET_SHAPE

    if p.data.dataset not in DATASET_SHAPE:  # folder, npz, a plug-in: the shape rules run on the data
        return []
    image, classes = DATASET_SHAPE[p.data.dataset]
    problems = []
    for name in p.detection.corruptions:
        s = p.detection.specs[name]
        if s.kind == "backdoor" and (s.patch or p.corruption.backdoor.patch) >= image:
            problems.append((f"detection.specs.{name}.patch", f"the trigger must be smaller than "
                             f"{p.data.dataset}'s {image}px images", _short(s.patch)))
        if FAMILY[s.kind] == "medium" and max(p.corruption.interclass.classes) >= classes:
            problems.append(("corruption.interclass.classes", f"classes outside 0..{classes - 1}",
                             _short(list(p.corruption.interclass.classes))))
    return problems


def validate(raw: Any, path: str = "params.yaml"):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(path, [("(top level)", "params must be a mapping of sections", _short(raw))])
    try:
        p = schema().model_validate(raw)
    except ValidationError as e:
        raise ParamsError(path, [_describe_detection(err) for err in e.errors()]) from None
    problems = cross_checks(p) + detection_checks(p)
    if problems:
        raise ParamsError(path, problems)
    return p


def load_params(path: str | Path = "params.yaml"):
    return validate(read_params(path), str(path))


def _describe_detection(err: dict) -> tuple[str, str, str]:
    key, msg, got = _describe(err)
    # drop the union tag of a spec (detection.specs.faint.backdoor.scale -> detection.specs.faint.scale)
    parts = key.split(".")
    if parts[:2] == ["detection", "specs"] and len(parts) > 4 and parts[3] in FAMILY:
        key = ".".join(parts[:3] + parts[4:])
    if err.get("type") == "union_tag_invalid" and parts[:2] == ["detection", "specs"]:
        msg = f"unknown corruption kind; known: {', '.join(FAMILY)}"
    return key, msg, got
