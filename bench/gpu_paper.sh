#!/usr/bin/env bash
# Issue 32 on a lent GPU machine, sized to about 10 minutes of one H100 / H200 (the device tool's run, with
# `carry: [".fmnist", ".whl"]` after bench/gpu_prepare.sh here; the files land in $OUT):
#   1. the card, and the CUDA path: bf16 autocast, channels_last, no host-device synchronisation inside the
#      training loop (tests/test_cuda.py, REMFLOW_SYNC_CHECK);
#   2. ResNet-9 (width 32) training throughput on Fashion-MNIST padded to 32x32, batch 512, crop + flip, images/s
#      (bench/throughput.py; airbench's published CIFAR-10 figure for scale: 94% in about 3.8 s on one A100,
#      about 10 epochs of 50000 images, some 130000 images/s);
#   3. a slice of pipelines/fashion-mnist-paper at full scale, several runs at once on the card, each stage timed
#      (bench/gpu_paper.py: stage_times.csv, params.yaml, results.csv, summary.txt);
#   4. the time of the paper's whole CIFAR-10 grid on this card, priced from those stage times
#      (bench/grid_time.py; TRAIN_IMAGES: the measured and the target training set's sizes).
# Overrides (tests/test_gpu_paper.py runs it so on the CPU): SLICE, the slice's flags; PARAMS, the suite's
# params file; DATA, the idx files' folder; WHEELS, the wheels' folder; WORK, the models' folder; THROUGHPUT,
# flags appended to the throughput step's.
# Each step has its own time limit, so a failure in one leaves the others' figures.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-paper-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 REMFLOW_PROGRESS=plain
WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    || { echo "the carried wheels did not install" >&2; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
DATA=${DATA:-.fmnist}
PARAMS=${PARAMS:-pipelines/fashion-mnist-paper/params.yaml}
THROUGHPUT=${THROUGHPUT:-}
SLICE=${SLICE:---regularities high --seeds 0 --rates 0.1,1.0 --workers 6 --budget 300 --deadline 390}
[ -f "$DATA/train-images-idx3-ubyte.gz" ] || { echo "no $DATA/: run bench/gpu_prepare.sh here and carry .fmnist" >&2; exit 2; }
{
  echo "== card"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 -c "
import torch
if not torch.cuda.is_available():
    print(f'no CUDA device (torch {torch.__version__})')
else:
    p = torch.cuda.get_device_properties(0)
    print(f'{p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, torch {torch.__version__}, CUDA {torch.version.cuda}')"
  echo "== CUDA path (tests/test_cuda.py)"
  timeout 150 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py
  echo "== throughput (bench/throughput.py)"
  # shellcheck disable=SC2086
  timeout 120 python3 bench/throughput.py --dataset fashion_mnist --root "$DATA" --pad-to 32 --model resnet9 \
    --width 32 --batch-size 512 --padding 4 --steps 200 --warmup 30 --workers 0 --repeats 1 $THROUGHPUT
  echo "== pipelines/fashion-mnist-paper, a slice (bench/gpu_paper.py $SLICE)"
  # shellcheck disable=SC2086
  timeout 420 python3 bench/gpu_paper.py --params "$PARAMS" --root "$DATA" $SLICE --work "${WORK:-/tmp/gpu-paper-work}" \
    --out "$OUT"
  echo "== the paper's CIFAR-10 grid on this card, priced from these stage times (bench/grid_time.py)"
  # shellcheck disable=SC2086
  timeout 60 python3 bench/grid_time.py "$OUT/stage_times.csv" --measured "$OUT/params.yaml" \
    --target pipelines/cifar10-resnet9/params.yaml --train-images ${TRAIN_IMAGES:-58800 49000}
  echo "== done"
} 2>&1 | tee "$OUT/log.txt"
