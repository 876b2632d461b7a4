"""A two-node Ray cluster on one machine runs the default suite (shrunk) with `remflow run`: DVC is clean
afterwards and every checkpoint's hash equals a serial `dvc repro`'s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from conftest import ROOT, make_dvc_repo

SHRUNK = {
    "model": {"width": 8},
    "pretrain": {"epochs": 3, "eval_every": 3},
    "unlearn": {"epochs": 1},
    # two methods: the test is about where stages run and what they write, not about the methods
    "grid": {"regularities": ["high"], "discovery_rates": [0.5, 1.0], "seeds": [0], "methods": ["none", "finetune"]},
    "evaluate": {"taxonomy_run": "finetune"},
    "runtime": {"threads": 1, "cpus": 1},
}


def _hashes(repo: Path) -> dict:
    """md5 of every checkpoint, manifest and discovery file the pipeline wrote (run records hold timings)."""
    import hashlib

    files = [*repo.glob("artifacts/**/*.json"), *repo.glob("**/model.safetensors")]
    return {str(f.relative_to(repo)): hashlib.md5(f.read_bytes()).hexdigest() for f in files
            if f.name != "log.json" and ".dvc" not in f.parts}


@pytest.mark.slow
def test_two_node_cluster_runs_the_default_suite(tmp_path):
    from ray.cluster_utils import Cluster

    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        # given no address, a run starts a cluster of its own: Ray's default joins the cluster this one recorded as
        # the machine's latest, and a run on another worker of the test session (or another suite) died with it
        alone = subprocess.run(
            [sys.executable, "-c", "from remflow.executor.core import Options, _start_ray\n"
             "ray, _ = _start_ray(Options())\nprint('nodes', len(ray.nodes()))\nray.shutdown()"],
            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, capture_output=True, text=True)
        assert "nodes 1" in alone.stdout, alone.stdout + alone.stderr[-2000:]
        par = make_dvc_repo(tmp_path / "cluster", SHRUNK)
        env = dict(par.env, RAY_ADDRESS=cluster.address, REMFLOW_RUN_STATS=str(tmp_path / "stats.json"))
        r = subprocess.run([sys.executable, "-m", "remflow", "run"], cwd=par.path, env=env, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        stats = json.loads((tmp_path / "stats.json").read_text())
        assert stats["nodes"] == 2 and stats["workers"] == 2
    finally:
        cluster.shutdown()
    status = subprocess.run(["dvc", "status"], cwd=par.path, capture_output=True, text=True).stdout
    assert "up to date" in status
    serial = make_dvc_repo(tmp_path / "serial", SHRUNK)
    serial.run("dvc", "repro", "-q")
    ours, theirs = _hashes(par.path), _hashes(serial.path)
    assert ours == theirs
    assert any(name.startswith("runs/") for name in ours) and len(ours) > 10
