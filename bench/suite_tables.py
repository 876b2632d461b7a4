"""The tables of docs/results.md's digits-full section from a suite's results.csv: each run's means, paired
Utility x Healed against rem and retrain (all cells, then by region), and, where the runs were measured, the
robustness columns and Healed after the clean relearning attack paired against retrain.

    python bench/suite_tables.py pipelines/digits-full/reports/results.csv
"""
import sys
from remflow import report as R

rows = R.read_csv(sys.argv[1])
runs = R.runs_in_order(rows)
S = {m: R.summary(rows, m) for m in ("healed", "utility", "score")}
vs_rem = R.paired(rows, "rem")
vs_ret = R.paired(rows, "retrain")
def pt(p):
    return R.paired_text(p) if p is not None else "reference"
print("| run | Healed (%) | Utility (%) | Utility×Healed (%) | − rem, 95% paired | − retrain, 95% paired |")
print("|---|---:|---:|---:|---|---|")
for r in runs:
    cells = [R.pm(*S[m][r][:2]) for m in ("healed", "utility", "score")]
    a = vs_rem.get(r, {}).get("all") if r != "rem" else None
    b = vs_ret.get(r, {}).get("all") if r != "retrain" else None
    print(f"| {r} | " + " | ".join(cells) + f" | {pt(a)} | {pt(b)} |")
print()
regs = R.regularities_of(rows)
pairs = {g: max((p[g].pairs for p in vs_ret.values() if g in p), default=0) for g in regs}
print("Utility×Healed − retrain by region (points, 95% paired interval; the most pairs a run has: "
      + ", ".join(f"{g} {n}" for g, n in pairs.items()) + "):")
print()
print("| run | " + " | ".join(regs) + " |")
print("|---|" + "---|" * len(regs))
for r in runs:
    if r == "retrain":
        continue
    print(f"| {r} | " + " | ".join(pt(vs_ret.get(r, {}).get(g)) for g in regs) + " |")
print()
if R.has_robustness(rows):
    cols = [("relearn_healed", True), ("relearn_drop", True), ("fewshot_steps", False), ("probe_clean", True)]
    by = {c: R.summary_by_regularity(rows, c) for c, _ in cols}
    hdr = ["Healed after relearning, all", "lost: high", "lost: medium", "lost: low", "few-shot steps: high",
           "few-shot steps: low", "clean readout, all"]
    print("| run | " + " | ".join(hdr) + " |")
    print("|---|" + "---:|" * len(hdr) + "")
    def f(c, g, pct=True):
        m, e, _ = by[c][r].get(g, (float("nan"), float("nan"), 0))
        return f"{100*m:.1f}" if pct else f"{m:.1f}"
    for r in runs:
        vals = [f("relearn_healed", "all"), f("relearn_drop", "high"), f("relearn_drop", "medium"),
                f("relearn_drop", "low"), f("fewshot_steps", "high", False), f("fewshot_steps", "low", False),
                f("probe_clean", "all")]
        print(f"| {r} | " + " | ".join(vals) + " |")
    print()
    p = R.paired(rows, "retrain", "relearn_healed")
    print("Healed after the clean relearning attack − retrain (points):")
    print()
    print("| run | all | " + " | ".join(regs) + " |")
    print("|---|" + "---|" * (len(regs) + 1))
    for r in runs:
        if r == "retrain":
            continue
        print(f"| {r} | " + " | ".join(pt(p.get(r, {}).get(g)) for g in ["all", *regs]) + " |")
