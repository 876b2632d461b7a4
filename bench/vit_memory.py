"""Peak memory of one unlearning step on the paper's ViT (pipelines/svhn-vit: dim 512, depth 4, 4 heads of 64,
MLP 768, 32x32x3 images, patch 8): Retrain, REM as the paper runs it, and REM's efficient mode, each in its own
process, measured on the CPU at batches that fit here and extrapolated to the paper's batch of 2048.

What one step holds, as remflow's code takes it (same layers, routing and losses as remflow.methods.rem):
- retrain: the deployed ViT, Adam, cross-entropy on the batch;
- rem: the ViT widened to the paper's 8 heads / MLP 1536 in every block, its frozen copy as the reference
  (a full-mode forward per batch, no gradient), the full-mode pass with per-sample masks (D_f on the shared
  mask) and the base-mode removal pass on the whole batch;
- rem_fast: added channels in the last channel group only (the last block's MLP, at ratio 1), no frozen copy
  (reference outputs from a table), the removal pass on the batch's D_f samples only (2% of the batch: the
  paper's |D_c| share at discovery rate 1).

Peak memory is the process's resident-set high-water mark above its level before the model was built
(parameters, gradients, Adam state, activations, the reference copy), after two steps. The fit is linear in
the batch (memory = fixed + per-sample x batch), from the measured batches; the extrapolation is printed as such.

    python bench/vit_memory.py                      # batches 32, 64, 128
    python bench/vit_memory.py --batches 64,128,256
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

MODES = ("retrain", "rem", "rem_fast")
PAPER_BATCH = 2048
FORGET_SHARE = 0.02


def step_peak(mode: str, batch: int) -> dict:
    import torch

    from remflow.cost import _rss_kb
    from remflow.losses import npo, npo_redirect, per_sample_ce
    from remflow.methods.rem import added_channels
    from remflow.models import count_params
    from remflow.models.layers import Route
    from remflow.models.vit import ViT

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.rand(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    idx = torch.arange(batch)
    is_f = torch.zeros(batch, dtype=torch.bool)
    is_f[: max(1, int(FORGET_SHARE * batch))] = True
    start = _rss_kb("VmRSS")
    model = ViT(3, 10, 32, 8, 512, 4, 4, 64, 768)
    deployed = count_params(model)
    ref = None
    if mode != "retrain":
        model.widen_(added_channels(model, 1.0, None if mode == "rem" else 1), seed=1)
        if mode == "rem":
            import copy

            ref = copy.deepcopy(model).eval().requires_grad_(False)
    held = count_params(model) + (count_params(ref) if ref is not None else 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    table = torch.rand(batch)  # rem_fast: the reference's per-sample CE, looked up
    route = Route.for_batch(idx, is_f, keep=0.2, seed=3)
    for _ in range(2):
        if mode == "retrain":
            loss = per_sample_ce(model(x), y).mean()
        else:
            if ref is not None:
                with torch.no_grad():
                    ce_ref = per_sample_ce(ref(x, Route.for_batch(idx, is_f, keep=0.2, seed=3)), y)
            else:
                ce_ref = table
            ce_full = per_sample_ce(model(x, route), y)
            loss = npo_redirect(ce_full, ce_ref, 1.0).sum()
            if mode == "rem":  # the base pass on the whole batch, the removal term on its D_f samples
                ce_base = per_sample_ce(model(x), y)
                loss = loss + torch.where(is_f, npo(ce_base, ce_ref, 1.0), torch.zeros_like(ce_base)).sum()
            else:  # the base pass on the batch's D_f samples only
                f = torch.nonzero(is_f).flatten()
                loss = loss + npo(per_sample_ce(model(x[f]), y[f]), ce_ref[f], 1.0).sum()
            loss = loss / batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    peak = _rss_kb("VmHWM")
    return {"mode": mode, "batch": batch, "peak_mb": (peak - start) / 1024, "params_held": held,
            "params_deployed": deployed}


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares fixed + per_sample * batch."""
    n = len(points)
    mx = sum(b for b, _ in points) / n
    my = sum(m for _, m in points) / n
    sxx = sum((b - mx) ** 2 for b, _ in points)
    slope = sum((b - mx) * (m - my) for b, m in points) / sxx if sxx else 0.0
    return my - slope * mx, slope


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="32,64,128")
    ap.add_argument("--one", nargs=2, metavar=("MODE", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(step_peak(args.one[0], int(args.one[1]))))
        return
    batches = [int(b) for b in args.batches.split(",")]
    res: dict[str, list[dict]] = {m: [] for m in MODES}
    print("peak memory of two unlearning steps on the paper's ViT (CPU, fp32), one process per figure")
    print(f"{'batch':>6} | " + " | ".join(f"{m:>9} MB" for m in MODES))
    for b in batches:
        for m in MODES:  # side by side, interleaved
            out = subprocess.run([sys.executable, __file__, "--one", m, str(b)], capture_output=True, text=True,
                                 check=True)
            res[m].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{b:>6} | " + " | ".join(f"{res[m][-1]['peak_mb']:12.1f}" for m in MODES), flush=True)
    est = {}
    for m in MODES:
        fixed, per = fit([(r["batch"], r["peak_mb"]) for r in res[m]])
        est[m] = fixed + per * PAPER_BATCH
        r0 = res[m][0]
        print(f"{m:>9}: {fixed:8.1f} MB fixed + {per:6.3f} MB a sample; extrapolated to batch {PAPER_BATCH}: "
              f"{est[m]:8.0f} MB; parameters held {r0['params_held'] / r0['params_deployed']:.2f}x the deployed "
              f"{r0['params_deployed']:,}")
    for m in ("rem", "rem_fast"):
        meas = res[m][-1]["peak_mb"] / res["retrain"][-1]["peak_mb"]
        print(f"{m}/retrain peak memory: {meas:.2f} at batch {batches[-1]} (measured), "
              f"{est[m] / est['retrain']:.2f} at batch {PAPER_BATCH} (extrapolated)")


if __name__ == "__main__":
    main()
