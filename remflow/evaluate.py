"""The evaluate stage: gather the run records of the grid into rows (paper §5.1's metrics, costs, the
discovered set against D_c, the measured regularity); the tables and files are remflow.report's.

Each unlearn cell scored its own run while its model was in memory (remflow.stages.execute), and each
corruption manifest has its regularity probe (the `probe` stage), so this stage reads JSON only: no torch, no
checkpoint, no dataset. A record whose manifest or discovered set changed since it ran is refused as stale.
"""

from __future__ import annotations

import math
from pathlib import Path

from remflow.config import CORRUPTION_OF, ParamsBase
from remflow.errors import RemflowError
from remflow.io import file_digest, read_json
from remflow.progress import log
from remflow.provenance import settings_of, setup_text
from remflow.records import resolution, row_of, run_label

PROBE_FORMAT = "remflow-probe/1"  # remflow.stages.probe's files


def expected_cells(params: ParamsBase) -> list[tuple[str, str, str, float, int]]:
    """(run, pretrained, regularity, rate, seed) for every cell the grid asks for, in table order."""
    g = params.grid
    cells = []
    for runs, variant in ((g.methods, "standard"), (g.etd_methods, "etd")):
        for run in runs:
            for reg in g.regularities:
                for rate in g.discovery_rates:
                    for seed in g.seeds:
                        cells.append((run, variant, reg, float(rate), int(seed)))
    return cells


def _collect(runs_dir: str | Path, cells: list[tuple], key, describe, folder_of=None) -> list[tuple[dict, Path]]:
    """The run records of `cells` under `runs_dir`, in their order: `key(rec)` names a record's cell (None: not
    of this grid); stale records of removed cells are ignored, a missing one is refused (`describe(cell)`).
    Two folders of one cell (a rate written 1.0, then 1, names another stage, whose old folder stays): the one
    `folder_of(cell)` names, the folder the grid's stage writes now, is taken and the other noted as stale;
    without `folder_of`, or when neither is that folder, both are refused."""
    found: dict[tuple, tuple[dict, Path]] = {}
    wanted = set(cells)
    stale: list[str] = []
    for rec_path in sorted(Path(runs_dir).glob("*/record.json")):
        if rec_path.parent.name.startswith("."):  # a temporary folder a killed stage left (io.atomic_dir)
            continue
        rec = read_json(rec_path, "run record")
        k = key(rec, rec_path)
        if k is None:
            continue
        if k in found and k in wanted:  # one left by an earlier grid whose stage had another name
            current = folder_of(k) if folder_of is not None else None
            first, this = found[k][1].name, rec_path.parent.name
            if current in (first, this):
                stale.append(this if current == first else first)
                if current == first:
                    continue
            else:
                raise RemflowError(f"two run folders hold the same cell: {first} and {this}", key=str(runs_dir),
                                   got=", ".join(map(str, k)),
                                   hint="one was left by an earlier grid (a rate written 1.0, then 1, names "
                                        "another stage): delete the folder no stage of `dvc stage list` writes")
        found[k] = (rec, rec_path.parent)
    if stale:
        log(f"note: {len(stale)} run folder{'s' if len(stale) > 1 else ''} of the grid's cells under a rate "
            f"written otherwise before (e.g. {Path(runs_dir) / stale[0]}) left out: the grid's stages write "
            "other folders now; delete them to free the space")
    missing = [c for c in cells if c not in found]
    if missing:
        raise RemflowError(f"{len(missing)} of {len(cells)} {describe(missing[0])}", key=str(runs_dir),
                           hint="run `dvc repro` first")
    return [found[c] for c in cells]


def spelled(values, written) -> dict[float, str]:
    """A list's values as params.yaml writes them, as DVC names stages by them (`1` and `1.0` are two stage names),
    by their value: `written` is the list as read from the YAML, `values` as validated."""
    out = {float(v): str(v) for v in values}
    if isinstance(written, list):
        for w in written:
            if isinstance(w, (int, float)) and not isinstance(w, bool):
                out[float(w)] = str(w)
    return out


def collect_runs(params: ParamsBase, runs_dir: str | Path, rates: dict[float, str] | None = None
                 ) -> list[tuple[dict, Path]]:
    """The run records of the current grid; stale runs of removed cells are ignored, missing ones refused.
    `rates`: the grid's rates as written (`spelled`), which name the folders its stages write."""

    def key(rec, rec_path):
        if rec.get("study") == "detection":
            return None
        try:
            return (rec["run"], rec["pretrained"], rec["regularity"], float(rec["discovery_rate"]), int(rec["seed"]))
        except (KeyError, TypeError, ValueError):
            raise RemflowError("run record lacks its cell identity", key=str(rec_path),
                               hint="delete the run folder and rerun dvc repro") from None

    def describe(cell):
        run, var, reg, rate, seed = cell
        return f"runs are missing, e.g. {run_label(run, var)} {reg} rate {rate} seed {seed}"

    def folder_of(cell):  # dvc.yaml: unlearn writes runs/${key}, unlearn_etd runs/etd-${key}
        run, var, reg, rate, seed = cell
        name = f"{run}-{reg}-{rates[rate]}-{seed}"
        return name if var == "standard" else f"etd-{name}"

    # without the rates as written, two folders of one cell stay refused (which is current cannot be told)
    return _collect(runs_dir, expected_cells(params), key, describe, folder_of if rates is not None else None)


def expected_detection_cells(params) -> list[tuple[str, str, float, int, str]]:
    """(run, corruption, budget, seed, view) for every cell of the detection study, in table order."""
    d = getattr(params, "detection", None)
    if d is None:
        return []
    return [(run, corr, float(b), int(seed), view) for run in d.methods for view in d.views
            for corr in d.corruptions for b in d.budgets for seed in params.grid.seeds]


def collect_detection_runs(params, runs_dir: str | Path, budgets: dict[float, str] | None = None
                           ) -> list[tuple[dict, Path]]:
    def key(rec, _):
        if rec.get("study") != "detection":
            return None
        return (rec["run"], rec["corruption"], float(rec["discovery_rate"]), int(rec["seed"]), rec["view"])

    def describe(cell):
        run, corr, b, seed, view = cell
        return f"detection-study runs are missing, e.g. {run} on {corr} budget {b:g} seed {seed} ({view})"

    def folder_of(cell):  # dvc.yaml: unlearn_x writes runs/x-${key}
        run, corr, b, seed, view = cell
        return f"x-{run}-{corr}-{budgets[b]}-{seed}-{view}"

    return _collect(runs_dir, expected_detection_cells(params), key, describe,
                    folder_of if budgets is not None else None)


def probe_path(probes_dir: str | Path, manifest_path: str) -> Path:
    """A manifest's probe file: the same name under the probes folder."""
    return Path(probes_dir) / Path(manifest_path).name


def _regularity(probes_dir: str | Path, manifest_path: str, manifest_sha: str, cache: dict) -> float:
    if manifest_path not in cache:
        path = probe_path(probes_dir, manifest_path)
        if not path.exists():
            raise RemflowError("no regularity probe for a corruption manifest", key=str(path), got=manifest_path,
                               hint="run its probe stage: dvc repro (or remflow run)")
        d = read_json(path, "probe file")
        if not isinstance(d, dict) or d.get("format") != PROBE_FORMAT or "regularity_score" not in d:
            raise RemflowError("not a remflow probe file", key=str(path), hint="rerun its probe stage")
        if d.get("manifest_sha") != manifest_sha:
            raise RemflowError("probe is stale: its manifest changed since it ran", key=str(path),
                               got=manifest_path, hint="run `dvc repro`")
        cache[manifest_path] = float(d["regularity_score"])
    return cache[manifest_path]


def _written(entry) -> dict:
    """The settings a `methods:` entry writes: a mapping (evaluate's light schema) or a validated config."""
    if entry is None:
        return {}
    if isinstance(entry, dict):
        return dict(entry)
    fields = getattr(entry, "model_fields_set", None)
    return entry.model_dump(include=set(fields) | {"method"}) if fields is not None else {}


def _lax(value, like):
    """`value` as written in YAML, coerced the way pydantic's lax mode turns it into the type of `like` (what the
    record stores): 'yes' / 1 for a bool, '0.01' for a number. Unchanged where no such coercion applies."""
    if isinstance(like, bool) and not isinstance(value, bool):
        text = str(value).strip().lower()
        return {"1": True, "true": True, "yes": True, "on": True, "y": True, "t": True,
                "0": False, "false": False, "no": False, "off": False, "n": False, "f": False}.get(text, value)
    if isinstance(like, (int, float)) and not isinstance(like, bool) and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _same_value(a, b) -> bool:
    a = _lax(a, b)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b if isinstance(a, bool) and isinstance(b, bool) else False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    return a == b


def _settings_notes(params, rec: dict, folder: Path) -> list[tuple[str, str]]:
    """What params.yaml's `methods.<run>` writes against what the run's record was made with. Evaluate imports no
    method (no torch), so this is its look at those entries: a key the method's config does not have (a typo),
    or a value other than the run used (a run made before params changed). Notes, not errors: a config's own
    validators may rewrite a value (or take an alias) in ways only `remflow check`, which validates every entry,
    can tell, and refusing here would stop an up-to-date pipeline that DVC would never rerun."""
    run, config = rec.get("run"), rec.get("config")
    if not isinstance(config, dict) or run not in (params.methods or {}):
        return []
    notes = []
    for key, value in _written(params.methods[run]).items():
        if key == "method":
            if value != rec.get("method"):
                notes.append((f"{run}.method", f"{folder.name} was made with method {rec.get('method')}, params' "
                              f"methods.{run} says {value}: run `dvc repro`"))
        elif key not in config:
            notes.append((f"{run}.{key}", f"methods.{run}.{key} is not among the settings "
                          f"{config.get('method', run)}'s runs were made with (a typo? `remflow check` validates "
                          "every entry)"))
        elif not _same_value(value, config[key]):
            notes.append((f"{run}.{key}", f"{folder.name} (and maybe more of {run}'s runs) was made with "
                          f"methods.{run}.{key} = {config[key]!r}, params say {value!r}: if params changed since, "
                          "run `dvc repro`"))
    return notes


def _pretrain_of(params: ParamsBase, variant: str | None) -> dict:
    """Pretraining's settings of a variant: the ETD settings count for the ETD model only."""
    recipe = params.pretrain.model_dump()
    if variant != "etd":
        recipe.pop("etd", None)
    return {**recipe, "variant": variant}


def setup_of(params: ParamsBase, rec: dict) -> str:
    """The settings a run's original model was made under, its seed aside (results.csv's `setup`): the training
    split's fingerprint and augmentation, the model, the pretraining recipe with the variant (standard or ETD) and
    the corruption's settings. Files pooled with `--from-csv` must agree on it for a corruption they share, so
    that seeds run under other settings are not pooled as one suite's."""
    corruption = params.corruption.model_dump()
    if rec.get("study") == "detection":
        spec = params.detection.specs.get(rec.get("corruption"))
        part = {"corruption": corruption, "spec": spec.model_dump() if hasattr(spec, "model_dump") else spec}
    else:
        name = CORRUPTION_OF.get(rec["regularity"], rec["regularity"])
        part = {"count": corruption.get("count"), name: corruption.get(name)}
    return setup_text({"data": {"fingerprint": (rec.get("dataset") or {}).get("fingerprint"),
                                "augment": params.data.augment.model_dump()},
                       "model": params.model.model_dump(),
                       "pretrain": _pretrain_of(params, rec.get("pretrained")),
                       "corruption": part})


def evaluate(params: ParamsBase, runs_dir: str | Path, probes_dir: str | Path = "artifacts/probe",
             raw: dict | None = None) -> tuple[list[dict], dict]:
    """One row per run of the grid (and of the detection study), from the run records; and the data they ran on
    ({"about", "fingerprint"}), which every record must share. `raw`: params.yaml as read, for the rates and
    budgets as written, which name the run folders."""
    rates = budgets = None
    if isinstance(raw, dict):
        grid, det = raw.get("grid") or {}, raw.get("detection") or {}
        rates = spelled(params.grid.discovery_rates, grid.get("discovery_rates") if isinstance(grid, dict) else None)
        budgets = spelled(params.detection.budgets, det.get("budgets") if isinstance(det, dict) else None)
    runs = collect_runs(params, runs_dir, rates) + collect_detection_runs(params, runs_dir, budgets)
    digests: dict[str, str] = {}
    probes: dict[str, float] = {}
    notes: dict[str, str] = {}  # one note per key or run (not per cell)
    corrupted: dict[str, int] = {}  # manifest -> |D_c|
    forget: dict[float, int] = {}  # discovery rate -> the smallest |D_f| drawn at it
    dataset: dict | None = None
    rows = []
    for rec, folder in runs:
        inputs = rec["inputs"]
        for what in ("manifest", "discovery"):
            path = inputs[what]
            if path not in digests:
                if not Path(path).exists():
                    raise RemflowError(f"run's {what} is gone", key=str(folder), got=path, hint="run `dvc repro`")
                digests[path] = file_digest(path)
            if digests[path] != inputs[f"{what}_sha"]:
                raise RemflowError(f"run is stale: its {what} changed since it ran", key=str(folder),
                                   got=path, hint="run `dvc repro`")
        data = rec.get("dataset")
        if dataset is None:
            dataset = data
        elif data != dataset:
            raise RemflowError("runs of one grid trained on other data (dataset or split settings changed)",
                               key=str(folder), got=(data or {}).get("about"), hint="run `dvc repro`")
        for key, note in _settings_notes(params, rec, folder):
            notes.setdefault(key, note)
        score = _regularity(probes_dir, inputs["manifest"], digests[inputs["manifest"]], probes)
        rows.append(row_of(rec, folder, score, setup_of(params, rec), settings_of(rec, params.robustness.model_dump())))
        if rec.get("study") != "detection" and inputs["manifest"] not in corrupted:  # the grid's D_c only
            corrupted[inputs["manifest"]] = len(read_json(inputs["manifest"], "corruption manifest").get("indices", []))
        if rec.get("study") != "detection" and isinstance(rec.get("forgotten"), int):
            rate = float(rec["discovery_rate"])
            forget[rate] = min(forget.get(rate, rec["forgotten"]), rec["forgotten"])
    for note in list(notes.values())[:10]:
        log(f"note: {note}")
    out = dict(dataset or {})
    if corrupted and forget:
        lowest = min(forget)
        out["resolution"] = resolution(min(corrupted.values()), forget[lowest], lowest)[0]
    return rows, out
