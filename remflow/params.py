"""The schema of params.yaml and the one loader every command uses.

`params.yaml` is read the way DVC reads it (YAML 1.2 via ruamel: `1e-3` is a float, `yes` a string) and
validated by one pydantic model with `extra="forbid"` everywhere: the sections of remflow.config, with the
`methods:` map typed by the method registry (each entry is a registered method's config, picked by its
`method:` field) and the detection study's `detection:` section (remflow.detection.config). Then the rules that involve several keys and the dataset's shape are checked
(`cross_checks`), so bad input stops at load time, before any stage runs; the rules that need the data itself
(|D_c| against the training set) are checked by `remflow check` and the stages that load the data
(data.corruption.check_corruption).
"""

from __future__ import annotations

import copy

import functools
import re
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, ValidationError, create_model, model_validator

from remflow.config import *  # noqa: F401,F403  the sections, re-exported for callers of remflow.params
from remflow.config import CrossError, ParamsBase
from remflow.detection.config import FAMILY, DetectionCfg
from remflow.errors import RemflowError

# Params is ParamsBase with `methods` typed as the registry's discriminated union (built by schema()).
Params = ParamsBase

# (image size, classes) of each dataset, for the checks that need no data; test_params checks them against
# the loaders
DATASET_SHAPE = {"digits": (8, 10), "fashion_mnist": (28, 10), "cifar10": (32, 10), "svhn": (32, 10)}


@functools.cache
def schema() -> type[ParamsBase]:
    from remflow.methods import REGISTRY

    configs = tuple(m.config for m in REGISTRY.values())
    entry = Annotated[Union[configs], Field(discriminator="method")]  # type: ignore[valid-type]
    return create_model("Params", __base__=ParamsBase, methods=(dict[str, entry], {}),
                        detection=(DetectionCfg, DetectionCfg()),
                        __validators__={"_detection": model_validator(mode="after")(_detection_rules)})


@functools.cache
def light_schema() -> type[ParamsBase]:
    """The schema without the method registry (`methods:` entries left as mappings): for commands that only
    read the grid and the report settings (evaluate), so that they import no method and no torch."""
    return create_model("Params", __base__=ParamsBase, detection=(DetectionCfg, DetectionCfg()),
                        __validators__={"_detection": model_validator(mode="after")(_detection_rules)})


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


def detection_checks(p) -> list[tuple[str, str, str]]:
    """The detection study's rules that need the dataset's shape (as cross_checks)."""
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


def resnet9_out_size(image: int) -> int:
    """The spatial size ResNet-9's last conv leaves: conv2 halves (stride 2, pad 2), max pool halves, conv4
    (3x3, no padding) takes 2 off. Below 1 the network cannot run."""
    return ((image + 1) // 2) // 2 - 2


def cross_checks(p: ParamsBase) -> list[tuple[str, str, str]]:
    """The rules the stages enforce that involve several keys or the dataset's shape: (key, problem, given)."""
    problems: list[tuple[str, str, str]] = []
    regs = set(p.grid.regularities)
    c = p.corruption
    if "medium" in regs and isinstance(c.count, int) and c.count % 2:
        problems.append(("corruption.count", "interclass confusion (`medium` in grid.regularities) needs an even "
                         "corrupted-set size: n/2 samples of each class", _short(c.count)))
    from remflow.plugins import plugin_checks  # the user's own reader or model class: importable, fit for the grid

    from remflow.methods import REGISTRY

    problems += plugin_checks(p, {name for name, m in REGISTRY.items() if m.uses_expansion})
    if p.data.dataset not in DATASET_SHAPE:  # folder, npz, a plug-in: the data's shape rules run on the data
        return problems
    image, classes = DATASET_SHAPE[p.data.dataset]
    if "high" in regs:
        if c.backdoor.target >= classes:
            problems.append(("corruption.backdoor.target", f"target class outside 0..{classes - 1} of "
                             f"{p.data.dataset}", _short(c.backdoor.target)))
        if c.backdoor.patch >= image:
            problems.append(("corruption.backdoor.patch", f"the trigger must be smaller than {p.data.dataset}'s "
                             f"{image}px images", _short(c.backdoor.patch)))
    if "medium" in regs and max(c.interclass.classes) >= classes:
        problems.append(("corruption.interclass.classes", f"classes outside 0..{classes - 1} of "
                         f"{p.data.dataset}", _short(list(c.interclass.classes))))
    m = p.model
    if m.name == "resnet9" and resnet9_out_size(image) < 1:
        smallest = next(s for s in range(1, 64) if resnet9_out_size(s) >= 1)
        problems.append(("model.name", f"ResNet-9 takes images of at least {smallest}x{smallest}; "
                         f"{p.data.dataset} has {image}x{image} (use `name: cnn`)", _short(m.name)))
    if m.name == "vit" and image % m.patch:
        problems.append(("model.patch", f"{p.data.dataset}'s {image}px images are not a multiple of the patch "
                         "size", _short(m.patch)))
    return problems


class ParamsError(RemflowError):
    """Invalid params: `problems` holds (key path, what is wrong, what was given) rows."""

    def __init__(self, path: str, problems: list[tuple[str, str, str]]):
        key, problem, got = problems[0]
        super().__init__(f"invalid parameters in {path}", key=key, got=got)
        self.path = path
        self.problems = problems


_PARSED: dict = {}  # (path, size, mtime_ns) -> parsed YAML; a long-lived remflow run worker reads each once


def read_yaml(path: str | Path) -> Any:
    """Parse YAML as DVC does (YAML 1.2, safe loader). A file is parsed again whenever its size or mtime
    changes; otherwise the parse is reused (a copy of it), which spares remflow run's workers re-parsing the
    same params.yaml for every stage."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    path = Path(path)
    if not path.is_file():
        raise RemflowError("params file not found", key=str(path), hint="pass --params PATH or run from the repo root")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _PARSED:
        try:
            parsed = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise RemflowError("params file is not UTF-8 text", key=str(path),
                               got=f"byte {e.object[e.start]:#04x} at offset {e.start}", hint="save it as UTF-8") from None
        except YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            what = "; ".join(str(x).strip() for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
            where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
            raise RemflowError(f"not valid YAML: {what or str(e).splitlines()[0]}", key=where) from None
        if len(_PARSED) >= 8:
            _PARSED.pop(next(iter(_PARSED)))
        _PARSED[key] = parsed
    return copy.deepcopy(_PARSED[key])


def validate(raw: Any, path: str = "params.yaml", *, light: bool = False) -> ParamsBase:
    """The params, validated whole; `light`: by `light_schema`, without the rules that need the method registry
    or the dataset's shape (a command that reads the grid only, after `check` has validated everything)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(path, [("(top level)", "params must be a mapping of sections", _short(raw))])
    try:
        p = (light_schema() if light else schema()).model_validate(raw)
    except ValidationError as e:
        raise ParamsError(path, _merge_union_branches([_describe(err) for err in e.errors()])) from None
    problems = [] if light else cross_checks(p) + detection_checks(p)
    if problems:
        raise ParamsError(path, problems)
    return p


def read_params(path: str | Path) -> Any:
    """params.yaml's parsed content; an empty file is refused (the schema's defaults would silently pick a
    dataset and a grid nobody asked for)."""
    raw = read_yaml(path)
    if raw is None or raw == {}:
        raise ParamsError(str(path), [("(top level)", "the params file is empty: nothing says what to run (start "
                                       "from the repository's params.yaml)", _short(raw))])
    return raw


def load_params(path: str | Path = "params.yaml", *, light: bool = False) -> ParamsBase:
    return validate(read_params(path), str(path), light=light)


def _describe(err: dict) -> tuple[str, str, str]:
    loc = [str(p) for p in err.get("loc", ())]
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, CrossError):
        return ctx_err.key, ctx_err.message, _short(ctx_err.got)
    # drop pydantic's union-tag segments (e.g. "rem" inside methods.rem.rem.beta, "cnn" in model.cnn.width)
    cleaned = []
    for i, part in enumerate(loc):
        if i > 0 and loc[i - 1] in ("model",) and part in ("cnn", "resnet9", "vit", PLUGIN_MODEL_TAG):
            continue
        if i > 1 and loc[i - 2] == "methods" and _is_method_tag(part):
            continue
        cleaned.append(part)
    # a detection spec's union tag (detection.specs.faint.backdoor.scale -> detection.specs.faint.scale)
    if cleaned[:2] == ["detection", "specs"] and len(cleaned) > 4 and cleaned[3] in FAMILY:
        cleaned = cleaned[:3] + cleaned[4:]
    key = ".".join(cleaned) or "(top level)"
    kind, msg = err.get("type", ""), err.get("msg", "")
    if kind == "union_tag_invalid" and cleaned[:2] == ["detection", "specs"]:
        return key, f"unknown corruption kind; known: {', '.join(FAMILY)}", _short((err.get("ctx") or {}).get("tag"))
    if kind == "extra_forbidden" and PLUGIN_MODEL_TAG in loc[1:2] and len(cleaned) == 2:
        msg = "not a key of a plug-in model: its constructor's arguments go under `model.options`"
    elif kind == "extra_forbidden":
        msg = "unknown key (a typo?)"
    elif kind == "union_tag_not_found" and cleaned[:1] == ["model"]:
        return "model.name", "required key is missing: cnn, resnet9, vit, or <module>:<Class> (a plug-in)", ""
    elif kind == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        model = cleaned[:1] == ["model"]
        msg = f"unknown {'model' if model else 'method'}; known: {ctx.get('expected_tags', '')}"
        return ("model.name" if model and len(cleaned) == 1 else key), msg, _short(ctx.get("tag"))
    elif kind in ("less_than_equal", "greater_than") and cleaned[:2] == ["grid", "discovery_rates"]:
        msg = "a discovery rate must lie in (0, 1]"
    elif kind == "missing":
        msg = "required key is missing"
    return key, msg.removeprefix("Value error, "), _short(err.get("input"))


_UNION_BRANCH = re.compile(r"\.(literal\[.*\]|float|int|str|bool|none|constrained-\w+|function-\w+\[.*\])$")


def _merge_union_branches(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """A value that fits no member of a union (`value: max` or a number) is one problem at its own key, not one
    row per member under pydantic's member names (`value.literal['max']`, `value.float`). Only rows that share
    the key before such a name and the value given are merged, never a run named like one (`methods.none`)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (key, _, got) in enumerate(rows):
        base = _UNION_BRANCH.sub("", key)
        if base != key and not base.startswith("methods.") and base != "methods":
            groups.setdefault((base, got), []).append(i)
    merged = {i: g for g in groups.values() if len(g) > 1 for i in g}
    out = []
    for i, (key, problem, got) in enumerate(rows):
        g = merged.get(i)
        if g is None:
            out.append((key, problem, got))
        elif i == g[0]:
            problems = [rows[j][1] for j in g]
            text = problems[0] + "".join(f", or {p[0].lower()}{p[1:]}" for p in problems[1:])
            out.append((_UNION_BRANCH.sub("", key), text, got))
    return out


def _is_method_tag(part: str) -> bool:
    from remflow.methods import REGISTRY

    return part in REGISTRY


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
