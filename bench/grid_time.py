"""Time to a whole grid on one card, from the stage times bench/gpu_paper.py measured on a slice.

    python bench/grid_time.py OUT/stage_times.csv --measured OUT/params.yaml \\
        --target pipelines/cifar10-resnet9/params.yaml

Counts the target grid's stages by kind (each original per variant, each run of each cell) and prices each
with the mean card time of its kind, scaled by the work its recipe asks for against the measured one's
(training images x epochs: pretraining's recipe for the originals and Retrain, unlearning's for the other
runs). A stage's card time is its share of the card while it ran: its wall time, split with the stages that
ran beside it (the `started` / `ended` columns). Kinds the slice did not measure are priced as their nearest
measured kind, and named. Pass the params.yaml that bench/gpu_paper.py wrote beside the stage times (the
slice's overrides included) as --measured. The corrupt, probe and discover stages (seconds on the CPU) are left
out; so is the time a scheduler needs between stages. It prints an estimate, not a measurement: each line says
what it rests on.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage_times", help="bench/gpu_paper.py's stage_times.csv (several files: pooled)", nargs="+")
    p.add_argument("--measured", required=True, help="params.yaml the stage times were measured with")
    p.add_argument("--target", required=True, help="params.yaml of the grid to price")
    p.add_argument("--train-images", type=int, nargs=2, metavar=("MEASURED", "TARGET"), default=None,
                   help="training images after the validation split (default: read from each params' data)")
    return p.parse_args(argv)


def train_images(params, path: str) -> int:
    from remflow.data.datasets import load_splits
    from remflow.errors import RemflowError

    try:
        return len(load_splits(params.data).train_y)
    except RemflowError as e:
        raise SystemExit(f"{path}: its data cannot be read here ({e.message}); pass --train-images MEASURED "
                         "TARGET (CIFAR-10 at val_fraction 0.02: 49000)") from None


def grid_stages(params) -> dict[str, int]:
    """How many stages of each kind the grid runs: `pretrain <variant>` and `<run>` / `<run> (etd)`."""
    g = params.grid
    cells = len(g.regularities) * len(g.seeds)
    counts = {f"pretrain {v}": cells for v in g.pretrain_variants}
    for runs, suffix in ((g.methods, ""), (g.etd_methods, " (etd)")):
        for run in runs:
            counts[run + suffix] = cells * len(g.discovery_rates)
    return counts


def card_shares(rows: list[dict]) -> list[float | None]:
    """Each row's claim on the card: the integral over its lifetime of 1 / (stages running then), from the
    `started`/`ended` columns (None where a row has none). Stages that overlapped split the card's time."""
    spans = [(float(r["started"]), float(r["ended"])) if r.get("started") and r.get("ended") else None for r in rows]
    points = sorted({t for span in spans if span for t in span})
    share = [0.0 if span else None for span in spans]
    for a, b in zip(points, points[1:]):
        live = [i for i, span in enumerate(spans) if span and span[0] <= a and span[1] >= b]
        for i in live:
            share[i] += (b - a) / len(live)
    return share


def measured_means(paths: list[str]) -> tuple[dict[str, float], dict[str, int], int, bool]:
    """Mean card seconds per stage kind (each stage's share of the card; without the started/ended columns, its
    seconds over the most stages that ran at once), how many of each, that most, and whether shares were used."""
    secs: dict[str, list[float]] = defaultdict(list)
    most, shared = 0, True
    rows: list[dict] = []
    for path in paths:
        with open(path, newline="") as f:
            part = list(csv.DictReader(f))
        shares = card_shares(part)
        for r, share in zip(part, shares):
            r["_share"] = share
        rows += part
    for r in rows:
        if r["running_at_start"]:
            most = max(most, int(r["running_at_start"]))
    for r in rows:
        if r["status"] != "ok" or r["kind"] not in ("pretrain", "unlearn"):
            continue
        key = f"pretrain {r['variant']}" if r["kind"] == "pretrain" else r["run"] + (
            " (etd)" if r["variant"] == "etd" else "")
        if r["_share"] is None:
            shared = False
            secs[key].append(float(r["seconds"]) / max(most, 1))
        else:
            secs[key].append(r["_share"])
    return {k: sum(v) / len(v) for k, v in secs.items()}, {k: len(v) for k, v in secs.items()}, most, shared


def estimate(counts: dict[str, int], means: dict[str, float], scale_pretrain: float, scale_unlearn: float
             ) -> tuple[list[tuple[str, int, float, str]], float]:
    """(kind, count, seconds each, basis) per kind of the target grid, and the summed stage seconds. An
    unmeasured kind is priced as its nearest measured one: an original as the standard original, Retrain as the
    standard original too (it trains as the original does), a run on the ETD model as the same run on the
    standard one, any other run as the mean of the measured runs (Retrain and `none` left out)."""
    runs = [v for k, v in means.items() if k.split(" ")[0] not in ("pretrain", "retrain", "none")]  # `none` trains
    # nothing: it would price an unmeasured method as scoring alone
    fallback = sum(runs) / len(runs) if runs else None
    lines, total = [], 0.0
    for key, n in counts.items():
        base = key.split(" ")[0]
        long = key.startswith("pretrain") or base == "retrain"  # pretraining's recipe
        if key in means:
            each, basis = means[key], "measured"
        elif long and "pretrain standard" in means:
            each, basis = means["pretrain standard"], "not measured: as pretrain standard"
        elif base in means:
            each, basis = means[base], f"not measured: as {base} on the standard model"
        elif fallback is not None and not long:
            each, basis = fallback, "not measured: the mean of the measured runs"
        else:
            raise SystemExit(f"no measured stage to price {key!r} with")
        each *= scale_pretrain if long else scale_unlearn
        lines.append((key, n, each, basis))
        total += n * each
    return lines, total


def main(argv=None) -> None:
    args = parse(argv)
    from remflow.params import load_params

    measured, target = load_params(args.measured), load_params(args.target)
    means, ns, most, shared = measured_means(args.stage_times)
    if args.train_images:
        n_measured, n_target = args.train_images
        if n_measured < 1 or n_target < 1:
            raise SystemExit("--train-images: two positive counts")
    else:
        n_measured, n_target = train_images(measured, args.measured), train_images(target, args.target)
    scale_pretrain = (n_target * target.pretrain.epochs) / (n_measured * measured.pretrain.epochs)
    scale_unlearn = (n_target * target.unlearn.epochs) / (n_measured * measured.unlearn.epochs)
    counts = grid_stages(target)
    lines, total = estimate(counts, means, scale_pretrain, scale_unlearn)
    print(f"measured: {args.measured}, {n_measured} training images, up to {most} stages at once; stages: "
          + ", ".join(f"{k} x{n}" for k, n in ns.items()))
    if measured.model != target.model:
        print(f"note: the models differ ({measured.model.name} measured, {target.model.name} priced): the scaling "
              "counts images and epochs only")
    print(f"target: {args.target}, {n_target} training images; work scaled by {scale_pretrain:.3f} (pretraining's "
          f"recipe) and {scale_unlearn:.3f} (unlearning's)")
    print(f"{'stage kind':28s} {'stages':>6s} {'card s':>8s}  basis")
    for key, n, each, basis in lines:
        print(f"{key:28s} {n:6d} {each:8.1f}  {basis}")
    how = ("each stage's share of the card as measured (overlapping stages split it)" if shared else
           f"each stage's seconds over the {most} stages that ran at once")
    print(f"{sum(counts.values())} stages; on one card kept as busy as in the measurement: {total / 3600:.2f} h "
          f"({how})")


if __name__ == "__main__":
    main()
