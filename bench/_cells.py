"""Benchmark plumbing: prepare cells with the remflow CLI in a scratch folder and run methods as separate
processes, exactly as `dvc repro` runs them, reading their run records (time, peak memory, parameters)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]


def write_csv(rows: list[dict], path: str, fields: list[str]) -> None:
    """Rows as a CSV with these columns (rewritten whole, so a run stopped early leaves a readable file)."""
    import csv

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


class Bench:
    def __init__(self, params: Path = ROOT / "params.yaml", over: dict | None = None, workdir: Path | None = None):
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="remflow-bench-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        raw = YAML(typ="safe", pure=True).load(Path(params).read_text())
        self.raw = merge(raw, over or {})
        self.params = self.dir / "params.yaml"
        self._write(self.params, self.raw)
        self.env = {**os.environ, "REMFLOW_PROGRESS": "plain"}

    @staticmethod
    def _write(path: Path, data: dict) -> None:
        y = YAML()
        y.default_flow_style = None
        with open(path, "w") as f:
            y.dump(data, f)

    def variant(self, name: str, over: dict) -> Path:
        """A params file with `over` applied, for a second configuration of the same cells."""
        path = self.dir / f"params-{name}.yaml"
        self._write(path, merge(self.raw, over))
        return path

    def remflow(self, *args: str, params: Path | None = None) -> None:
        cmd = [sys.executable, "-m", "remflow", *args, "--params", str(params or self.params)]
        res = subprocess.run(cmd, cwd=self.dir, env=self.env, capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")

    def prepare(self, regularity: str, rate: float, seed: int = 0) -> dict[str, Path]:
        d = self.dir
        manifest = d / f"corrupt/{regularity}-{seed}.json"
        model = d / f"pretrain/{regularity}-{seed}/model.safetensors"
        disc = d / f"discover/{regularity}-{rate}-{seed}.json"
        if not manifest.exists():
            self.remflow("corrupt", "--regularity", regularity, "--seed", str(seed), "--out", str(manifest))
        if not model.exists():
            self.remflow("pretrain", "--manifest", str(manifest), "--out", str(model.parent))
        if not disc.exists():
            self.remflow("discover", "--manifest", str(manifest), "--rate", str(rate), "--out", str(disc))
        return {"manifest": manifest, "model": model, "discovered": disc}

    def unlearn(self, method: str, regularity: str, rate: float, seed: int = 0, params: Path | None = None,
                tag: str = "") -> dict:
        inputs = self.prepare(regularity, rate, seed)
        out = self.dir / "runs" / f"{method}{tag}-{regularity}-{rate}-{seed}"
        self.remflow("unlearn", "--method", method, "--model", str(inputs["model"]), "--manifest",
                     str(inputs["manifest"]), "--discovered", str(inputs["discovered"]), "--out", str(out),
                     params=params)
        return {**json.loads((out / "record.json").read_text()), "dir": str(out)}

    def score(self, run_dir: Path, params: Path | None = None) -> dict[str, float]:
        """Healed, Utility and Utility x Healed of a finished run, scored as the evaluate stage scores it."""
        import torch

        from remflow.data.corruption import check_discovery, load_manifest
        from remflow.data.datasets import load_splits
        from remflow.data.task import make_task
        from remflow.io import read_json
        from remflow.metrics import evaluate_model
        from remflow.models import load_model
        from remflow.params import load_params

        p = load_params(params or self.params)
        rec = read_json(Path(run_dir) / "record.json", "run record")
        inputs = {k: Path(v) if Path(v).is_absolute() else self.dir / v for k, v in rec["inputs"].items()
                  if k in ("manifest", "discovery")}
        device = torch.device("cpu")
        if not hasattr(self, "_splits"):
            self._splits = load_splits(p.data)
        task = make_task(p.data, self._splits, device, load_manifest(inputs["manifest"], self._splits))
        disc = check_discovery(read_json(inputs["discovery"], "discovery file"), task.manifest,
                               str(inputs["discovery"]))
        model, _ = load_model(Path(run_dir) / "model.safetensors", device)
        return evaluate_model(model, task.with_discovered(disc["indices"]), p.runtime.eval_batch_size)


def staged_cell(params, work: Path, regularity: str, rate: float, seed: int) -> tuple[Path, Path, Path]:
    """A cell's corruption manifest, standard pretrained model and oracle discovery, made through the stage
    functions in-process into `work` (each reused when already there): (manifest, model file, discovery file)."""
    from remflow import stages

    manifest = work / f"corrupt-{regularity}-{seed}.json"
    if not manifest.exists():
        stages.corrupt(params, regularity, seed, manifest)
    pre = work / f"pretrain-{regularity}-{seed}"
    if not (pre / "model.safetensors").exists():
        stages.pretrain(params, manifest, pre, "standard")
    disc = work / f"discover-{regularity}-{rate}-{seed}.json"
    if not disc.exists():
        stages.discover(params, manifest, disc, rate=rate)
    return manifest, pre / "model.safetensors", disc
