#!/usr/bin/env bash
# On a machine with CUDA: the CUDA tests and the training-throughput benchmark, in under 5 minutes.
# Prints the card, the test result and the figures to put in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export REMFLOW_PROGRESS=plain PYTHONUNBUFFERED=1
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device"
p = torch.cuda.get_device_properties(0)
print(f"card: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
python -m pytest -q -m cuda tests/test_cuda.py
# CIFAR-shaped throughput (synthetic images: the machine has no dataset files), ResNet-9 at the paper's width
python bench/throughput.py --dataset synthetic --model resnet9 --width 32 --batch-size 512 --padding 4 \
  --steps 200 --warmup 30 --workers 0,8 --repeats 2
