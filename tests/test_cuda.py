"""The CUDA path: bf16 autocast, channels_last, no host-device synchronisation in the inner loop.

Skipped without a GPU; `bench/gpu_check.sh` runs these on a machine with one (`pytest -m cuda`).
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_params

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def cuda_params():
    return make_params({"runtime": {"device": "cuda", "threads": None}, "pretrain": {"epochs": 4, "eval_every": 2},
                        "unlearn": {"epochs": 2}, "methods": {"rem": {}, "retrain": {"epochs": 2}},
                        "data": {"augment": {"crop_padding": 1, "flip": True}}})


def test_pretrain_and_unlearn_on_cuda_without_syncs_in_the_inner_loop(tmp_path, cuda_params, monkeypatch):
    from remflow import stages

    monkeypatch.setenv("REMFLOW_SYNC_CHECK", "1")  # train() raises on any synchronising op inside its inner loop
    manifest = tmp_path / "m.json"
    stages.corrupt(cuda_params, "high", 0, manifest)
    stages.pretrain(cuda_params, manifest, tmp_path / "p")
    stages.pretrain(cuda_params, manifest, tmp_path / "e", variant="etd")
    stages.discover(cuda_params, manifest, tmp_path / "d.json", rate=0.5)
    for method, model in (("rem", "p"), ("retrain", "p"), ("rem", "e")):
        rec = stages.unlearn(cuda_params, method, tmp_path / model / "model.safetensors", manifest,
                             tmp_path / "d.json", tmp_path / f"run-{method}-{model}")
        assert rec["device"].startswith("cuda") and rec["peak_memory_mb"] > 0


def test_bf16_autocast_and_channels_last_in_the_training_step(cuda_params):
    from remflow.data.datasets import load_splits
    from remflow.data.task import make_task
    from remflow.models import build_model
    from remflow.params import ResNet9Cfg
    from remflow.train import autocast

    splits = load_splits(cuda_params.data)
    task = make_task(cuda_params.data, splits, torch.device("cuda"), None)
    batch = task.batch(task.everything[:32], task.generator(0))
    assert batch.x.is_contiguous(memory_format=torch.channels_last)
    model = build_model(ResNet9Cfg(name="resnet9", width=8), 1, 10, 8).cuda().to(memory_format=torch.channels_last)
    with autocast(torch.device("cuda")):
        out = model(torch.nn.functional.interpolate(batch.x, size=32))
    assert out.dtype == torch.bfloat16
