"""How REM's and Retrain's unlearning time grow with the training-set size and the model width.

One cell (backdoor, discovery 0.5), each run in its own process. Size: Fashion-MNIST subsets with the small
CNN; width: the default suite's digits with the CNN at three widths. Pretraining is shortened (it is not
timed; only the unlearning is). Prints seconds per point and the growth relative to the smallest point.

    python bench/scaling.py
    python bench/scaling.py --sizes 2000,4000,8000 --widths 8,16,32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cells import ROOT, Bench  # noqa: E402

METHODS = {"none": {}, "retrain": {}, "rem": {}}


def point(over: dict) -> tuple[float, float]:
    bench = Bench(ROOT / "params.yaml", {"methods": METHODS, "grid": {"methods": list(METHODS), "etd_methods": []},
                                        **over})
    bench.unlearn("none", "high", 0.5)
    return bench.unlearn("rem", "high", 0.5)["unlearn_seconds"], bench.unlearn("retrain", "high", 0.5)["unlearn_seconds"]


def table(title: str, label: str, points: list[tuple[int, float, float]]) -> None:
    print(title)
    print(f"{label:>10} | {'rem s':>7} {'x':>5} | {'retrain s':>9} {'x':>5} | rem/retrain")
    r0, t0 = points[0][1], points[0][2]
    for v, rem, ret in points:
        print(f"{v:>10} | {rem:7.2f} {rem / r0:5.2f} | {ret:9.2f} {ret / t0:5.2f} | {rem / ret:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,4000,8000")
    ap.add_argument("--widths", default="8,16,32")
    ap.add_argument("--fashion-root", default=None)
    args = ap.parse_args()
    short = {"pretrain": {"epochs": 8, "eval_every": 4}, "methods": {**METHODS, "retrain": {"epochs": 8}}}
    sizes = []
    for n in [int(v) for v in args.sizes.split(",")]:
        data = {"dataset": "fashion_mnist", "train_size": n, "test_size": 2000, "val_fraction": 0.1,
                **({"root": args.fashion_root} if args.fashion_root else {})}
        sizes.append((n, *point({**short, "data": data, "corruption": {"count": 0.02}})))
    import yaml  # the labels say what ran: the root params.yaml's model, pretraining and repair budget

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    width, epochs, repair = base["model"]["width"], base["pretrain"]["epochs"], base["unlearn"]["epochs"]
    table(f"training-set size (Fashion-MNIST subsets, CNN width {width}; retrain 8 epochs, rem {repair} repair "
          "epochs)", "samples", sizes)
    widths = [(w, *point({"model": {"width": w}})) for w in [int(v) for v in args.widths.split(",")]]
    table(f"model width (digits, CNN; retrain = pretraining's {epochs} epochs, rem {repair} repair epochs)", "width",
          widths)


if __name__ == "__main__":
    main()
