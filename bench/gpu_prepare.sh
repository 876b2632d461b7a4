#!/usr/bin/env bash
# Here, before bench/gpu_paper.sh runs on a lent GPU machine (which reaches no network): what it lacks, in two
# ignored folders that the device tool carries (`carry: [".fmnist", ".whl"]`, about 35 MB together):
#   .fmnist/  the Fashion-MNIST idx files (the Debian package dataset-fashion-mnist), 30 MB
#   .whl/     wheels of remflow's stage-path imports missing from the GPU image (pydantic, ruamel.yaml), for its
#             Python 3.12 on x86-64 (and their needs). DVC and Ray stay behind: bench/gpu_paper.py runs the stages without them.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
mkdir -p .fmnist .whl
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  [ -f "$src/$f" ] || { echo "missing $src/$f: apt-get install dataset-fashion-mnist (or set FASHION_MNIST)" >&2; exit 2; }
  cp "$src/$f" .fmnist/
done
rm -f .whl/*.whl
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "pydantic>=2.6" "ruamel.yaml>=0.18"
# typing_extensions travels too (pydantic needs a recent one; the carried one shadows the image's)
ls .whl
du -sh .fmnist .whl
