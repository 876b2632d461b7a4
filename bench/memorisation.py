"""Has the original model memorised its corruption? Pretraining's checkpoint choice side by side.

For each seed and each `pretrain.select` (best_val: the best validation epoch; last: the model as training
leaves it), pretrains the root suite's model on the random-label (or another) cell and prints Healed of the
original model with the kept epoch, and the share of D_c whose drawn label is its true one (a model that
memorised every corrupted label heals exactly that share; 0 where labels are drawn always wrong).

    python bench/memorisation.py                      # random labels, seeds 0-2, 2 threads
    python bench/memorisation.py --regularity medium --seeds 0 1 --threads 1
    python bench/memorisation.py --params pipelines/fashion-mnist-large/params.yaml --seeds 0 --threads 1 \
        --select best_val --set data.augment.crop_padding=1
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from ruamel.yaml import YAML

from remflow import stages
from remflow.data.datasets import load_splits
from remflow.data.task import Task
from remflow.io import read_json
from remflow.metrics import evaluate_model
from remflow.models import load_model
from remflow.params import validate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regularity", default="low", choices=["high", "medium", "low"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="the suite's params.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides as dotted keys, YAML values (pretrain.epochs=80 data.augment.crop_padding=1)")
    ap.add_argument("--select", nargs="+", default=["best_val", "last"], choices=["best_val", "last"])
    args = ap.parse_args()
    raw = YAML(typ="safe", pure=True).load(args.params.read_text())
    for item in args.set:
        key, value = item.split("=", 1)
        node = raw
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = YAML(typ="safe", pure=True).load(value)
    if raw.get("data", {}).get("root"):  # a suite's data path is relative to its folder
        raw["data"]["root"] = str((args.params.parent / raw["data"]["root"]).resolve())
    raw["runtime"]["threads"] = args.threads
    work = Path(tempfile.mkdtemp(prefix="memorisation-"))
    # drawn true: the share of D_c whose new label is its true one (random labels drawn over all classes); a
    # model that memorised every corrupted label heals exactly that share
    print(f"{'seed':>4} {'select':>8} {'kept epoch':>10} {'healed of the original':>23} {'drawn true':>10}")
    for seed in args.seeds:
        for select in args.select:
            raw["pretrain"]["select"] = select
            params = validate(raw)
            cell = work / f"{seed}-{select}"
            manifest = cell / "manifest.json"
            cell.mkdir(parents=True)
            stages.corrupt(params, args.regularity, seed, manifest)
            log = stages.pretrain(params, manifest, cell / "pretrain")
            splits = load_splits(params.data)
            m = read_json(manifest, "manifest")
            task = Task(splits, torch.device("cpu"), args.regularity, m, m["indices"])
            net, _ = load_model(cell / "pretrain" / "model.safetensors")
            healed = evaluate_model(net.deploy_() if net.widened else net, task)["healed"]
            same = sum(int(splits.train_y[i]) == int(y) for i, y in zip(m["indices"], m["labels"])) / len(m["indices"])
            print(f"{seed:>4} {select:>8} {log['best_epoch']:>10} {healed:>23.3f} {same:>10.3f}", flush=True)


if __name__ == "__main__":
    main()
