"""Serial `dvc repro` against `remflow run`: wall time and bookkeeping per stage, side by side in one run.

Two pipelines, each built fresh in a temporary git+DVC repository (a copy of the code, this repository's
dvc.yaml, params from the default suite):
  * default: the default suite as shipped (params.yaml), optionally shrunk with --default-epochs;
  * grid: the paper-sized taxonomy on digits with the `none` method, so that compute is near zero and what
    is left is bookkeeping: 3 regularities x --rates x --seeds x --runs copies of `none` (default 3 x 10 x 3
    x 20 = 1800 unlearn cells, about 1900 stages). Serial `dvc repro` runs --serial-cells of its unlearn
    cells only (it would take hours), after the same upstream stages; its per-stage cost is measured there.

Bookkeeping per stage = (wall time x parallel runs - the stages' own compute) / stages, where a stage's own
compute is what it reports (pretraining seconds in its log.json; unlearning and scoring seconds in its
record.json). For
`dvc repro` that is everything around the science (process start, imports, data and model loading, DVC's
status, hashing, lock rewrite); for `remflow run` the same per worker-second.

    python bench/orchestration.py                                    # full size
    python bench/orchestration.py --rates 2 --seeds 1 --runs 4      # a reduced grid
The last line is `bookkeeping_per_stage_s: X` for `remflow run` on the grid.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _yaml():
    y = YAML()
    y.default_flow_style = None
    return y


def _env() -> dict:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", REMFLOW_PROGRESS="plain")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _sh(cwd: Path, *args) -> None:
    subprocess.run(list(args), cwd=cwd, env=_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_repo(path: Path, params: dict) -> Path:
    path.mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    shutil.copytree(ROOT / "remflow", path / "remflow", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / ".dvcignore", path / ".dvcignore")
    with open(path / "params.yaml", "w") as f:
        _yaml().dump(params, f)
    _sh(path, "git", "init", "-q")
    _sh(path, "dvc", "init", "-q")
    (path / ".dvc" / "plots").mkdir(exist_ok=True)
    shutil.copy(ROOT / ".dvc" / "plots" / "remflow_heatmap.json", path / ".dvc" / "plots")
    _sh(path, "git", "add", "-A")
    _sh(path, "git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench")
    return path


def compute_seconds(repo: Path) -> float:
    total = 0.0
    for log in repo.glob("artifacts/pretrain/*/log.json"):
        total += json.loads(log.read_text()).get("seconds", 0.0)
    for rec in repo.glob("runs/*/record.json"):
        r = json.loads(rec.read_text())
        # the run's method and its scoring (since runs score themselves: the evaluate stage's work before)
        total += r.get("unlearn_seconds", 0.0) + r.get("scoring_seconds", 0.0)
    return total


def result_hashes(repo: Path) -> dict:
    """md5 of every checkpoint (pretrained and unlearned), corruption manifest and discovery file in the
    workspace (the run records and logs hold timings, which differ between any two runs)."""
    import hashlib

    files = [*repo.glob("artifacts/**/*.safetensors"), *repo.glob("runs/*/*.safetensors"),
             *repo.glob("artifacts/corrupt/*.json"), *repo.glob("artifacts/discover/*.json")]
    return {str(f.relative_to(repo)): hashlib.md5(f.read_bytes()).hexdigest() for f in files}


# results.csv columns that are measurements of the run, not of the model: time and memory differ between any
# two runs of the same stage
RUN_COLUMNS = ("unlearn_seconds", "peak_memory_mb")


def results_rows(repo: Path) -> list[dict] | None:
    """reports/results.csv without its timing columns, sorted, or None when the suite wrote none."""
    import csv

    path = repo / "reports" / "results.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = [{k: v for k, v in r.items() if k not in RUN_COLUMNS} for r in csv.DictReader(f)]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def stage_count(repo: Path) -> int:
    lock = YAML(typ="safe", pure=True).load((repo / "dvc.lock").read_text())
    return len(lock["stages"])


def timed(cwd: Path, *args, stats: Path | None = None) -> float:
    env = _env()
    if stats is not None:
        env["REMFLOW_RUN_STATS"] = str(stats)
    t = time.perf_counter()
    r = subprocess.run(list(args), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed in {cwd}:\n{r.stderr[-3000:]}")
    return wall


def report(label: str, wall: float, stages: int, compute: float, parallel: int) -> float:
    per = (wall * parallel - compute) / max(1, stages)
    print(f"{label:38s} {stages:5d} stages  wall {wall:8.1f}s  compute {compute:7.1f}s  x{parallel}  "
          f"bookkeeping/stage {per:6.2f}s", flush=True)
    return per


def run_remflow(repo: Path, workers: int | None) -> tuple[float, dict]:
    stats = repo / "run-stats.json"
    args = [sys.executable, "-m", "remflow", "run"] + (["--workers", str(workers)] if workers else [])
    wall = timed(repo, *args, stats=stats)
    return wall, json.loads(stats.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20, help="copies of the `none` method per cell")
    ap.add_argument("--serial-cells", type=int, default=30, help="unlearn cells serial dvc repro runs")
    ap.add_argument("--workers", type=int, default=None, help="remflow run's parallel runs (default: cores)")
    ap.add_argument("--default-epochs", type=int, default=None, help="shrink the default suite's pretraining")
    ap.add_argument("--skip-default", action="store_true", help="the grid only")
    ap.add_argument("--skip-grid", action="store_true", help="the default suite only")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"),
                    help="params of the first part (default: the default suite's; e.g. a suite's params.yaml)")
    ap.add_argument("--regularities", nargs="+", help="first part: only these regularities of its grid")
    ap.add_argument("--seeds-only", type=int, nargs="+", help="first part: only these seeds of its grid")
    args = ap.parse_args()
    base = YAML(typ="safe", pure=True).load(Path(args.params).read_text())
    base.setdefault("runtime", {})["threads"] = 1
    base["runtime"]["cpus"] = 1
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="remflow-orch-") as tmp:
        tmp = Path(tmp)
        if not args.skip_default:
            params = json.loads(json.dumps(base))
            if args.regularities:
                params["grid"]["regularities"] = args.regularities
            if args.seeds_only:
                params["grid"]["seeds"] = args.seeds_only
            if args.default_epochs:
                params["pretrain"]["epochs"] = args.default_epochs
                params["pretrain"]["eval_every"] = args.default_epochs
            print(f"== {Path(args.params).resolve().relative_to(ROOT)} (grid {params['grid']['regularities']} x "
                  f"seeds {params['grid']['seeds']}; threads 1 per run in both, so the bytes match)", flush=True)
            serial = make_repo(tmp / "default-serial", params)
            wall = timed(serial, "dvc", "repro", "-q")
            report("dvc repro (serial)", wall, stage_count(serial), compute_seconds(serial), 1)
            par = make_repo(tmp / "default-run", params)
            wall, st = run_remflow(par, args.workers)
            report(f"remflow run ({st['workers']} workers)", wall, stage_count(par), compute_seconds(par),
                   st["workers"])
            a, b = result_hashes(serial), result_hashes(par)
            differ = sorted(p for p in a if a[p] != b.get(p))
            print(f"results identical to the serial run: {len(a) - len(differ)} of {len(a)} checkpoints, "
                  f"manifests and discovery files have the same md5 in both workspaces"
                  + (f"; differ: {', '.join(differ)}" if differ else ""), flush=True)
            ra, rb = results_rows(serial), results_rows(par)
            if ra is not None:
                same = sum(x == y for x, y in zip(ra, rb or []))
                print(f"reports/results.csv identical to the serial run's: {same} of {len(ra)} rows equal in "
                      f"every column but {', '.join(RUN_COLUMNS)}" + ("" if same == len(ra) == len(rb or [])
                                                                       else " (DIFFER)"), flush=True)
            t = time.perf_counter()
            _sh(par, "dvc", "repro")
            print(f"no-op dvc repro after remflow run: {time.perf_counter() - t:.1f}s", flush=True)
        if args.skip_grid:
            return

        # the paper-sized grid, `none` method, digits
        rates = [round((i + 1) / args.rates, 3) for i in range(args.rates)]
        names = [f"none{i:02d}" for i in range(args.runs)]
        grid = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())  # digits, the default suite
        grid.setdefault("runtime", {}).update({"threads": 1, "cpus": 1})
        grid["pretrain"].update({"epochs": 1, "eval_every": 1})
        grid["grid"].update({"discovery_rates": rates, "seeds": list(range(args.seeds)), "methods": names,
                             "etd_methods": [], "pretrain_variants": ["standard"]})
        grid["methods"] = {n: {"method": "none"} for n in names}
        grid["evaluate"] = {"taxonomy_run": names[0]}
        print(f"== grid: 3 regularities x {args.rates} rates x {args.seeds} seeds x {args.runs} runs of `none`",
              flush=True)
        # serial dvc repro: the upstream stages, then a sample of unlearn cells, timed alone
        serial = make_repo(tmp / "grid-serial", grid)
        cells = [(n, r, rate, s) for s in range(args.seeds) for r in ("high", "medium", "low")
                 for rate in rates for n in names][: args.serial_cells]
        upstream = sorted({f"discover@{r}-{rate}-{s}" for _, r, rate, s in cells}
                          | {f"pretrain@{r}-{s}-standard" for _, r, _, s in cells})
        _sh(serial, "dvc", "repro", "-q", *upstream)  # the sampled cells' upstream stages, not timed
        before = stage_count(serial)
        c0 = compute_seconds(serial)
        cells = [f"unlearn@{n}-{r}-{rate}-{s}" for n, r, rate, s in cells]
        wall = timed(serial, "dvc", "repro", "-q", "--single-item", *cells)
        dvc_per = report("dvc repro (serial, unlearn cells)", wall, stage_count(serial) - before,
                         compute_seconds(serial) - c0, 1)
        par = make_repo(tmp / "grid-run", grid)
        wall, st = run_remflow(par, args.workers)
        n = stage_count(par)
        per = report(f"remflow run ({st['workers']} workers, all)", wall, n, compute_seconds(par), st["workers"])
        s = st["seconds"]
        print(f"remflow run coordinator: DVC status {s.get('status', 0):.1f}s, commits {s.get('commit', 0):.1f}s "
              f"({s.get('commit', 0) / max(1, n):.3f}s a stage), {st['commits']} lock writes "
              f"{s.get('lock write', 0):.1f}s, Ray start {s.get('ray start', 0):.1f}s; the report stage "
              f"(evaluate, counted as bookkeeping above) {st['stage_times'].get('evaluate', 0):.1f}s", flush=True)
        print(f"dvc repro estimated for all {n} stages: {dvc_per * n / 3600:.1f} h of bookkeeping "
              f"({dvc_per:.2f}s a stage); ratio dvc/remflow per stage: {dvc_per / max(per, 1e-9):.1f}x "
              f"on {cores} cores", flush=True)
        print(f"bookkeeping_per_stage_s: {per:.3f}")


if __name__ == "__main__":
    main()
