"""The suites under pipelines/: one dvc.yaml for all, valid params, and a smoke run of each on small files in
the dataset's real on-disk format (the suite's params with pipelines/smoke.yaml applied)."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from ruamel.yaml import YAML

from conftest import ROOT, DvcRepo, merge, write_yaml
from remflow.params import load_params
from remflow.pipeline_check import check_pipeline

SUITES = sorted(p.name for p in (ROOT / "pipelines").iterdir() if (p / "dvc.yaml").is_file())
# suites that study one question with a few methods (the rest run every registered method)
FOCUSED = {"digits-detect", "fashion-mnist-large", "fashion-mnist-paper"}  # the methods their question needs
SMALL_MODELS = {
    "cnn": {"width": 4},
    "resnet9": {"width": 4},
    "vit": {"patch": 8, "dim": 32, "depth": 1, "heads": 2, "dim_head": 8, "mlp_dim": 32},
}


def test_there_are_the_three_suites():
    assert {"cifar10-resnet9", "svhn-vit", "fashion-mnist"} <= set(SUITES)


RECORDED = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs" / "results").glob("*/params.yaml"))


@pytest.mark.parametrize("path", RECORDED)
def test_recorded_params_files_still_validate(path):
    # docs/results/<run>/params.yaml files are offered for reproduction (`cp ... params.yaml && dvc repro`): each
    # must pass today's schema and write every key today's dvc.yaml tracks
    raw = YAML(typ="safe", pure=True).load((ROOT / path).read_text())
    assert check_pipeline(load_params(ROOT / path), ROOT / "dvc.yaml", raw=raw) >= 6


@pytest.mark.parametrize("suite", SUITES)
def test_suite_uses_the_root_pipeline_and_checks(suite):
    folder = ROOT / "pipelines" / suite
    own = (folder / "dvc.yaml").read_text()
    assert own == (ROOT / "dvc.yaml").read_text().replace("  - code: remflow\n", "  - code: ../../remflow\n")
    params = load_params(folder / "params.yaml")
    # every params key a stage tracks is written in the file (DVC refuses to record a stage whose key is not)
    raw = YAML(typ="safe", pure=True).load((folder / "params.yaml").read_text())
    assert check_pipeline(params, folder / "dvc.yaml", raw=raw) >= 6
    # every registered method runs in the suite
    from remflow.methods import REGISTRY

    methods = {name for name, m in REGISTRY.items() if not m.ablation}
    if suite == "cifar10-resnet9":  # the paper's own setting runs the ablations too
        methods = set(REGISTRY)
    if suite in FOCUSED:  # a study of its own: a few methods, named in its params.yaml
        return
    # the ViT and Fashion-MNIST suites leave the REM ablations out (GPU time; the CPU hour)
    assert methods <= set(params.grid.methods), methods - set(params.grid.methods)


# ---------------------------------------------------------------- small files in the real formats


def write_cifar(root: Path, n: int = 120) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, n)
        data = rng.integers(0, 96, (n, 3, 32, 32), dtype=np.uint8)
        data[np.arange(n), labels % 3] += 150  # a learnable signal: the class picks the bright channel
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data.reshape(n, -1), "labels": labels.tolist()}, f)


def write_svhn(root: Path, n: int = 600) -> None:
    from scipy.io import savemat

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("train_32x32.mat", "test_32x32.mat"):
        y = rng.integers(1, 11, n)
        x = rng.integers(0, 96, (32, 32, 3, n), dtype=np.uint8)
        x[:, :, (y % 3), np.arange(n)] += 150
        savemat(root / name, {"X": x, "y": y.reshape(-1, 1)})


def write_fashion(root: Path, n: int = 600) -> None:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def idx(name, arr):
        header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
        (root / name).write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))

    for prefix in ("train", "t10k"):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 28, 28))
        x[np.arange(n), 2 * y + 3, :] = 255  # a learnable signal: the class picks a bright row
        idx(f"{prefix}-images-idx3-ubyte.gz", x)
        idx(f"{prefix}-labels-idx1-ubyte.gz", y)


WRITERS = {"cifar10": write_cifar, "svhn": write_svhn, "fashion_mnist": write_fashion}


def smoke_params(suite: str, data_root: Path, **grid) -> dict:
    """The suite's params with pipelines/smoke.yaml applied, on small files in its dataset's real format."""
    params = YAML(typ="safe", pure=True).load((ROOT / "pipelines" / suite / "params.yaml").read_text())
    smoke = YAML(typ="safe", pure=True).load((ROOT / "pipelines" / "smoke.yaml").read_text())
    WRITERS[params["data"]["dataset"]](data_root)
    over = merge(smoke, {"data": {"root": str(data_root)}, "model": SMALL_MODELS[params["model"]["name"]]})
    return merge(merge(params, over), {"grid": grid} if grid else {})


@pytest.mark.slow
# one smoke run per dataset and model: digits is the root suite's; fashion-mnist-large is fashion-mnist's data and
# model at other sizes (its params are checked above)
@pytest.mark.parametrize("suite", [s for s in SUITES if not s.startswith("digits") and s != "fashion-mnist-large"])
def test_suite_smoke_run(tmp_path, suite):
    """Every stage of the suite on its data format and model, every method of its grid (ETD rows included), and
    the report: the stages' functions in one process (the pipeline around them is the same for every suite and
    is run under DVC by test_a_suite_runs_as_its_own_dvc_project_under_dvc_repro and tests/test_pipeline.py)."""
    from remflow import report, stages
    from remflow.params import validate
    from remflow.evaluate import evaluate

    p = validate(smoke_params(suite, tmp_path / "data"))
    art, runs = tmp_path / "artifacts", tmp_path / "runs"
    g = p.grid
    for reg in g.regularities:
        for seed in g.seeds:
            manifest = art / "corrupt" / f"{reg}-{seed}.json"
            stages.corrupt(p, reg, seed, manifest)
            stages.probe(p, manifest, art / "probe" / f"{reg}-{seed}.json")
            for variant in g.pretrain_variants:
                stages.pretrain(p, manifest, art / "pretrain" / f"{reg}-{seed}-{variant}", variant)
            for rate in g.discovery_rates:
                found = art / "discover" / f"{reg}-{rate}-{seed}.json"
                stages.discover(p, manifest, found, rate=rate)
                for methods, variant, prefix in ((g.methods, "standard", ""), (g.etd_methods, "etd", "etd-")):
                    for m in methods:
                        model = art / "pretrain" / f"{reg}-{seed}-{variant}" / "model.safetensors"
                        stages.unlearn(p, m, model, manifest, found, runs / f"{prefix}{m}-{reg}-{rate}-{seed}")
    rows, dataset = evaluate(p, runs, art / "probe")
    report.write_reports(rows, tmp_path / "reports", tmp_path / "metrics.json", context={"dataset": dataset})
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    expected = set(g.methods) | {f"{m}_etd" for m in g.etd_methods}
    assert set(metrics["summary"]) == expected
    assert len(rows) == len(expected) * len(g.regularities) * len(g.discovery_rates) * len(g.seeds)
    assert all(0.0 <= r["utility"] <= 1.0 and 0.0 <= r["healed"] <= 1.0 for r in rows)


@pytest.mark.slow
def test_a_suite_runs_as_its_own_dvc_project_under_dvc_repro(tmp_path):
    """A suite as the repository holds it: one git repository, the suite a DVC project of its own (--subdir)
    whose dvc.yaml reaches the code at ../../remflow; a few methods (every method runs in the smoke runs)."""
    suite = "fashion-mnist"
    repo_dir = tmp_path / "repo"
    (repo_dir / "pipelines").mkdir(parents=True)
    shutil.copytree(ROOT / "remflow", repo_dir / "remflow", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / ".dvcignore", repo_dir / ".dvcignore")
    folder = repo_dir / "pipelines" / suite
    folder.mkdir()
    # the suite's definition only: a committed run's dvc.lock (a megabyte for fashion-mnist) would make DVC
    # re-read and re-write it after every smoke stage (bench/lockfile.py), and its outputs are not smoke outputs
    shutil.copy(ROOT / "pipelines" / suite / "dvc.yaml", folder / "dvc.yaml")
    params = smoke_params(suite, repo_dir / "data" / suite, methods=["none", "rem"], etd_methods=["rem"])
    params["methods"] = {"none": {}, "rem": params["methods"]["rem"]}
    write_yaml(folder / "params.yaml", params)

    repo = DvcRepo(repo_dir)
    repo.run("git", "init", "-q", "-b", "main")
    repo.path = folder
    repo.run("dvc", "init", "-q", "--subdir")
    shutil.copy(ROOT / ".dvcignore", folder / ".dvcignore")
    (folder / ".dvc" / "plots").mkdir(exist_ok=True)
    shutil.copy(ROOT / ".dvc" / "plots" / "remflow_heatmap.json", folder / ".dvc" / "plots")
    repo.run("git", "add", "-A")
    repo.run("git", "commit", "-q", "-m", "suite")
    repo.run("dvc", "repro")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["summary"]) == {"none", "rem", "rem_etd"}
    rows = (folder / "reports" / "results.csv").read_text().splitlines()
    assert len(rows) - 1 == 3
    fp = json.loads((folder / "artifacts" / "code" / "stage-unlearn.json").read_text())
    assert fp["code"] == "../../remflow"
    assert repo.ran_stages(repo.run("dvc", "repro")) == []
