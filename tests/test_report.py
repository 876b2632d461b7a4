"""Tables and heatmaps against a hand-computed results.csv."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import re
import struct

import pytest
from typer.testing import CliRunner

from remflow import report
from remflow.cli import app

# two methods, two regularities, two rates, two seeds; healed/utility chosen so that the mean of per-run
# products differs from the product of the means
RUNS = [
    # method, regularity, rate, seed, healed, utility
    ("rem", "high", 0.1, 0, 0.50, 0.90),
    ("rem", "high", 0.1, 1, 0.70, 0.80),
    ("rem", "high", 1.0, 0, 0.90, 0.90),
    ("rem", "high", 1.0, 1, 1.00, 1.00),
    ("rem", "low", 0.1, 0, 0.20, 0.90),
    ("rem", "low", 0.1, 1, 0.40, 0.90),
    ("rem", "low", 1.0, 0, 0.80, 0.70),
    ("rem", "low", 1.0, 1, 0.60, 0.90),
    ("none", "high", 0.1, 0, 0.10, 0.95),
    ("none", "high", 0.1, 1, 0.10, 0.95),
    ("none", "high", 1.0, 0, 0.10, 0.95),
    ("none", "high", 1.0, 1, 0.10, 0.95),
    ("none", "low", 0.1, 0, 0.00, 0.95),
    ("none", "low", 0.1, 1, 0.00, 0.95),
    ("none", "low", 1.0, 0, 0.00, 0.95),
    ("none", "low", 1.0, 1, 0.00, 0.95),
]


@pytest.fixture
def rows(tmp_path):
    text = ",".join(report.COLUMNS) + "\n"
    for m, reg, rate, seed, h, u in RUNS:
        values = {"run": m, "method": m, "pretrained": "standard", "regularity": reg, "discovery_rate": rate,
                  "seed": seed, "healed": h, "utility": u, "score": h * u, "healed_test": h, "forget_acc": 1 - h,
                  "unlearn_seconds": 1.5, "peak_memory_mb": 10, "params_deployed": 100, "params_peak": 400,
                  "details": ""}
        text += ",".join(str(values.get(c, "")) for c in report.COLUMNS) + "\n"
    path = tmp_path / "results.csv"
    path.write_text(text)
    return report.read_csv(path)


def test_means_standard_errors_and_the_per_run_product(rows):
    healed = report.summary(rows, "healed")
    mean, sem, n = healed["rem"]
    values = [0.5, 0.7, 0.9, 1.0, 0.2, 0.4, 0.8, 0.6]
    assert n == 8 and mean == pytest.approx(0.6375)
    sd = math.sqrt(sum((v - 0.6375) ** 2 for v in values) / 7)
    assert sem == pytest.approx(sd / math.sqrt(8))
    score, _, _ = report.summary(rows, "score")["rem"]
    products = [0.45, 0.56, 0.81, 1.0, 0.18, 0.36, 0.56, 0.54]
    assert score == pytest.approx(sum(products) / 8)  # = 0.5575
    utility = report.summary(rows, "utility")["rem"][0]
    assert score != pytest.approx(mean * utility)  # not the product of the means (0.6375 * 0.875 = 0.5578)
    assert report.summary(rows, "healed")["none"][1] == pytest.approx(math.sqrt(0.01 * 8 / 4 / 7) / math.sqrt(8))


def test_taxonomy_cells_average_the_seeds(rows):
    tab = report.taxonomy(rows, "rem", "healed")
    assert tab["high"][0.1] == pytest.approx(0.6) and tab["low"][1.0] == pytest.approx(0.7)
    by = report.summary_by_regularity(rows, "healed")
    assert by["rem"]["high"][0] == pytest.approx(0.775) and by["rem"]["low"][0] == pytest.approx(0.5)


def test_metrics_json_is_nested_without_dots(rows):
    tree = report.metrics_tree(rows)
    assert tree["summary"]["rem"] == {"healed": 0.6375, "utility": 0.875, "score": 0.5575}
    assert tree["cells"]["rem"]["high"]["r10"]["healed"] == pytest.approx(0.6)
    assert report.rate_key(0.125) == "r12p5" and report.rate_key(1.0) == "r100"


def test_markdown_marks_the_best(rows):
    md = report.to_markdown(report.summary_table(rows))
    line = next(l for l in md.splitlines() if l.startswith("| rem"))
    assert "**63.75 ± " in line and "**55.75 ± " in line
    assert "**95.00 ± 0.00**" in next(l for l in md.splitlines() if l.startswith("| none"))
    tax = report.to_markdown(report.taxonomy_table(rows, "rem", "score"))
    assert "| high | 50.50 | 90.50 |" in tax


def test_heatmaps_are_pngs_of_the_declared_size(rows, tmp_path):
    written = report.write_heatmaps(rows, tmp_path / "h")
    assert len(written) == 2 * 3 + 1
    for path in written.values():
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        w, h = struct.unpack(">II", data[16:24])
        assert (w, h) == (640, 320)


def test_evaluate_prints_every_format_from_a_csv(rows, tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(report.csv_text(rows))
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", "--from-csv", str(path), "--format", "json", "--method", "rem"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["summary"]["rem"]["score"]["all"]["mean"] == pytest.approx(0.5575)
    assert data["taxonomy"]["cells"]["high"]["0.1"] == pytest.approx(0.505)
    r = runner.invoke(app, ["evaluate", "--from-csv", str(path), "--format", "md"])
    assert r.exit_code == 0 and "| rem |" in r.output
    r = runner.invoke(app, ["evaluate", "--from-csv", str(path), "--format", "csv"])
    assert r.output.splitlines()[0].startswith("run,method,")
    r = runner.invoke(app, ["evaluate", "--from-csv", str(path)])
    assert r.exit_code == 0 and "Utility×Healed" in r.output and "rem" in r.output
    r = runner.invoke(app, ["evaluate", "--from-csv", str(path), "--run", "nope"])
    assert r.exit_code == 2 and "--run" in r.output


@pytest.mark.parametrize("damage, needle", [("header_only", "no rows"), ("empty_utility", "empty utility"),
                                            ("empty_run", "empty run"), ("twice", "twice in")])
def test_a_results_file_that_reads_but_cannot_be_trusted_is_refused(rows, tmp_path, damage, needle):
    path = tmp_path / "r.csv"
    lines = report.csv_text(rows).splitlines()
    header = lines[0].split(",")
    if damage == "header_only":
        lines = lines[:1]
    elif damage == "twice":
        lines = lines + lines[1:2]
    else:
        row = next(csv.reader([lines[1]]))
        row[header.index(damage.split("_")[1])] = ""
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(row)
        lines[1] = buf.getvalue()
    path.write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(app, ["evaluate", "--from-csv", str(path)])
    assert r.exit_code == 2, r.output
    assert needle in " ".join(r.output.replace("│", "").split()) and "missing columns" not in r.output


@pytest.mark.parametrize("damage", ["truncated", "no_columns", "bad_number", "binary"])
def test_evaluate_from_a_damaged_csv_is_a_clear_error(rows, tmp_path, damage):
    path = tmp_path / "[x] r.csv"  # rich markup in a path must print as itself
    text = report.csv_text(rows)
    if damage == "truncated":
        head, first = text.splitlines()[:2]
        path.write_text(head + "\n" + first[: len(first) // 2] + "\n")
    elif damage == "no_columns":
        path.write_text("a,b\n1,2\n")
    elif damage == "bad_number":
        path.write_text(text.replace(",0.1,", ",zero point one,", 1))
    else:
        path.write_bytes(b"\xff\xfe\x00garbage")
    r = CliRunner().invoke(app, ["evaluate", "--from-csv", str(path)])
    assert r.exit_code == 2, r.output
    flat = re.sub(r"[\s│]", "", r.output)  # the panel may wrap the long temporary path
    assert "Traceback" not in r.output and "[x]r.csv" in flat


def test_evaluate_pools_the_results_of_a_split_grid(rows, tmp_path):
    # a grid run as two experiments, one per seed: pooled, the tables are those of the whole grid
    whole, seed0, seed1 = tmp_path / "whole.csv", tmp_path / "s0.csv", tmp_path / "s1.csv"
    whole.write_text(report.csv_text(sorted(rows, key=lambda r: r["seed"])))  # the pooled order: sums match
    seed0.write_text(report.csv_text([r for r in rows if r["seed"] == 0]))
    seed1.write_text(report.csv_text([r for r in rows if r["seed"] == 1]))
    runner = CliRunner()
    args = ["evaluate", "--format", "json", "--method", "rem"]
    one = runner.invoke(app, [*args, "--from-csv", str(whole)])
    pooled = runner.invoke(app, [*args, "--from-csv", str(seed0), "--from-csv", str(seed1)])
    half = runner.invoke(app, [*args, "--from-csv", str(seed0)])
    assert one.exit_code == pooled.exit_code == half.exit_code == 0, pooled.output
    assert json.loads(pooled.output) == json.loads(one.output)
    assert json.loads(half.output) != json.loads(one.output)
    # the same run in two files is double counting: a clear error naming both
    r = runner.invoke(app, [*args, "--from-csv", str(seed0), "--from-csv", str(whole)])
    assert r.exit_code == 2, r.output
    flat = re.sub(r"[\s│]", "", r.output)
    assert "Traceback" not in r.output and "s0.csv" in flat and "whole.csv" in flat and "seed0" in flat


def test_evaluate_writes_the_report_of_a_split_grid_pooled(rows, tmp_path, monkeypatch):
    # the parts of a grid run across sessions, pooled into the one report of the whole grid
    seed0, seed1 = tmp_path / "s0.csv", tmp_path / "s1.csv"
    seed0.write_text(report.csv_text([r for r in rows if r["seed"] == 0]))
    seed1.write_text(report.csv_text([r for r in rows if r["seed"] == 1]))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("grid: {seeds: [0, 1]}\n")
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", "--from-csv", str(seed0), "--from-csv", str(seed1), "--write",
                            "--reports", "pooled", "--metrics", "pooled/metrics.json", "--format", "csv"])
    assert r.exit_code == 0, r.output
    written = report.read_results([tmp_path / "pooled" / "results.csv"])
    key = lambda r: (r["run"], r["regularity"], r["discovery_rate"], r["seed"])  # noqa: E731
    assert sorted(map(key, written)) == sorted(map(key, rows))
    assert {key(r): r["score"] for r in written} == pytest.approx({key(r): r["score"] for r in rows})
    md = (tmp_path / "pooled" / "results.md").read_text()
    assert "pooled from" in md and "s1.csv" in md and "seeds: [0, 1]" in md
    assert "the pooled runs may have been made with other grids" in md
    # the taxonomy run and the reference of the params, as the evaluate stage takes them
    last = report.runs_in_order(rows)[-1]
    (tmp_path / "params.yaml").write_text("grid: {seeds: [0, 1], methods: [%s]}\nmethods: {%s: {}}\n"
                                          "evaluate: {taxonomy_run: %s, reference: %s}\n" % (last, last, last, last))
    r = runner.invoke(app, ["evaluate", "--from-csv", str(seed0), "--from-csv", str(seed1), "--write",
                            "--reports", "pooled2", "--metrics", "pooled2/metrics.json", "--format", "csv"])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "pooled2" / "results.md").read_text()
    assert f"## Taxonomy: Healed of {last}" in md and f"against {last}" in md
    assert (tmp_path / "pooled" / "heatmaps").is_dir() and (tmp_path / "pooled" / "metrics.json").is_file()
    # --write alone has nothing to pool: a clear error, nothing written
    r = runner.invoke(app, ["evaluate", "--write", "--reports", "other"])
    assert r.exit_code == 2 and "--from-csv" in r.output and not (tmp_path / "other").exists()


def test_a_results_file_of_the_old_column_names_is_read(rows, tmp_path):
    old = report.csv_text(rows).replace("run,method,", "method,base_method,", 1)
    path = tmp_path / "old.csv"
    path.write_text(old)
    again = report.read_csv(path)
    assert [r["run"] for r in again] == [r["run"] for r in rows] and again[0]["method"] == rows[0]["method"]


# a hand-made comparison: `better` beats `rem` by 0.10 +- 0.01 in every (cell, seed), `same` equals it,
# `noisy` differs by +-0.2 alternately (mean 0)
PAIRED = [("high", 0.1, 0), ("high", 0.1, 1), ("high", 1.0, 0), ("high", 1.0, 1),
          ("low", 0.1, 0), ("low", 0.1, 1), ("low", 1.0, 0), ("low", 1.0, 1)]


def paired_rows(tmp_path, runs=("rem", "better", "same", "noisy")):
    text = ",".join(report.COLUMNS) + "\n"
    for k, (reg, rate, seed) in enumerate(PAIRED):
        base = 0.3 + 0.05 * k
        scores = {"rem": base, "better": base + 0.10 + (0.01 if k % 2 else -0.01), "same": base,
                  "noisy": base + (0.2 if k % 2 else -0.2)}
        for run in runs:
            values = {"run": run, "method": run, "pretrained": "standard", "regularity": reg,
                      "discovery_rate": rate, "seed": seed, "healed": scores[run], "utility": 1.0,
                      "score": scores[run], "healed_test": 0, "forget_acc": 0, "unlearn_seconds": 1,
                      "peak_memory_mb": 1, "params_deployed": 1, "params_peak": 1, "details": ""}
            text += ",".join(str(values.get(c, "")) for c in report.COLUMNS) + "\n"
    path = tmp_path / "paired.csv"
    path.write_text(text)
    return path


def test_paired_differences_with_bootstrap_intervals(tmp_path):
    rows = report.read_csv(paired_rows(tmp_path))
    cmp = report.paired(rows, "rem")
    assert set(cmp) == {"better", "same", "noisy"}
    better = cmp["better"]["all"]
    assert better.pairs == 8 and better.diff == pytest.approx(0.10)
    assert 0.09 <= better.low < 0.10 < better.high <= 0.11 and better.excludes_zero
    assert cmp["same"]["all"].diff == 0 and not cmp["same"]["all"].excludes_zero
    noisy = cmp["noisy"]["all"]
    assert noisy.low < 0 < noisy.high and not noisy.excludes_zero
    assert cmp["better"]["high"].pairs == 4 and cmp["better"]["low"].excludes_zero
    assert report.paired(rows, "rem") == cmp  # seeded: the same interval every time
    two = report.bootstrap_mean_diff([0.5, 0.6], [0.0, 0.0])  # two pairs: no interval, nothing claimed
    assert two.diff == pytest.approx(0.55) and math.isnan(two.low) and not two.excludes_zero
    md = report.to_markdown(report.paired_table(rows, "rem"))
    line = next(l for l in md.splitlines() if l.startswith("| better"))
    assert "**+10.00 [+9." in line and "]** *" in line
    assert "excludes 0" in md


def test_the_by_original_interval_counts_originals_not_cells():
    """Cells of one original move together: an effect that one original carries alone is significant when cells
    are resampled as if independent, and not over the originals; an effect every original shares stays."""
    import numpy as np
    from scipy.stats import t as student

    groups = [(reg, seed, "") for reg in ("high", "medium", "low") for seed in (0, 1) for _ in range(4)]
    shared = [0.1 + 0.01 * (i % 4) + 0.001 * (i // 4) for i in range(24)]
    one = [0.6 if g == ("high", 0, "") else 0.0 for g in groups]  # one original of six carries it all
    s = report.by_original_interval(shared, groups)
    assert s.pairs == 6 and s.excludes_zero and s.low <= s.diff <= s.high
    o = report.by_original_interval(one, groups)
    assert report.bootstrap_mean_diff(one, [0.0] * 24).excludes_zero  # the cell interval is fooled
    assert o.diff == pytest.approx(0.1) and not o.excludes_zero
    # the t interval over the six original means: 0.6 and five zeros
    half = student.ppf(0.975, 5) * np.std([0.6, 0, 0, 0, 0, 0], ddof=1) / np.sqrt(6)
    assert (o.low, o.high) == pytest.approx((0.1 - half, 0.1 + half))
    assert np.isnan(report.by_original_interval([0.1, 0.2], [("a",), ("a",)]).low)  # one original


def test_the_paired_table_shows_the_by_original_interval(tmp_path):
    rows = report.read_csv(paired_rows(tmp_path))
    by = report.paired(rows, "rem")["better"][report.BY_ORIGINAL]
    assert by.pairs == 4 and by.excludes_zero  # (high|low) x seeds 0, 1
    md = report.to_markdown(report.paired_table(rows, "rem"))
    assert "| by original |" in md and "(4)** *" in md and "With 4 originals the by-original interval is wide" in md


def test_evaluate_reports_the_paired_comparison_in_every_format(tmp_path):
    path = paired_rows(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", "--from-csv", str(path), "--format", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)["paired"]
    assert data["reference"] == "rem" and data["runs"]["better"]["all"]["excludes_zero"] is True
    assert data["runs"]["noisy"]["all"]["excludes_zero"] is False
    r = runner.invoke(app, ["evaluate", "--from-csv", str(path), "--format", "json", "--reference", "better"])
    data = json.loads(r.output)["paired"]
    assert data["reference"] == "better" and data["runs"]["rem"]["all"]["diff"] == pytest.approx(-0.10)
    r = runner.invoke(app, ["evaluate", "--from-csv", str(path)])
    assert r.exit_code == 0 and "minus rem's" in r.output and "+10.00" in r.output
    r = runner.invoke(app, ["evaluate", "--from-csv", str(path), "--format", "md"])
    assert "| better | 8 | **+10.00" in r.output
    r = runner.invoke(app, ["evaluate", "--from-csv", str(path), "--reference", "nope"])
    assert r.exit_code == 2 and "--reference" in r.output and "nope" in r.output
    r = runner.invoke(app, ["evaluate", "--from-csv", str(tmp_path)])  # a folder, not its results.csv
    assert r.exit_code == 2 and "this is a folder" in r.output
    # without rem in the results the first run is the reference
    no_rem = paired_rows(tmp_path, runs=("same", "better"))
    r = runner.invoke(app, ["evaluate", "--from-csv", str(no_rem), "--format", "json"])
    assert json.loads(r.output)["paired"]["reference"] == "same"


def test_a_missing_run_is_refused_with_the_cell_it_lacks(tmp_path, digits_params):
    import pytest

    from remflow.errors import RemflowError
    from remflow.evaluate import collect_runs, expected_cells

    with pytest.raises(RemflowError) as e:
        collect_runs(digits_params, tmp_path)
    n = len(expected_cells(digits_params))
    assert f"{n} of {n} runs are missing" in str(e.value)


def test_a_run_scores_itself_as_a_fresh_scoring_of_its_checkpoint_would(cells, digits_params, tmp_path):
    """Each unlearn cell scores its model while it is in memory; evaluate only gathers the records. The record's
    scores are those of the checkpoint written, scored afresh on a task built from the files (what the evaluate
    stage computed before), and the row evaluate makes of them carries them unchanged."""
    import shutil
    import torch

    from remflow.data.datasets import load_splits
    from remflow.data.task import make_task
    from remflow.data.corruption import load_manifest
    from remflow.io import read_json, write_json
    from remflow.metrics import evaluate_model
    from remflow.models import load_model
    from remflow.errors import RemflowError
    from remflow.records import row_of

    splits = load_splits(digits_params.data)
    for reg, rate in (("high", 0.5), ("medium", 1.0)):
        record, _, _ = cells.run("finetune", reg, rate)
        folder = sorted((cells.root / "runs").glob(f"*-finetune-standard-{reg}-{rate}"))[-1]
        manifest = load_manifest(record["inputs"]["manifest"], splits)
        task = make_task(digits_params.data, splits, torch.device("cpu"), manifest)
        discovered = read_json(record["inputs"]["discovery"], "d")["indices"]
        net, _ = load_model(folder / "model.safetensors")
        fresh = evaluate_model(net, task.with_discovered(discovered), digits_params.runtime.eval_batch_size)
        assert read_json(folder / "record.json", "r")["scores"] == record["scores"] == fresh
        row = row_of(record, folder, 0.25)
        assert {k: row[k] for k in fresh} == {k: round(v, 6) for k, v in fresh.items()}
        assert row["discovery"] == "oracle" and row["discovery_recall"] == rate and row["regularity_score"] == 0.25

    # an old record (no scores) is refused with the stage to rerun
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    rec = read_json(old / "record.json", "r")
    del rec["scores"]
    write_json(old / "record.json", rec)
    with pytest.raises(RemflowError, match="no scores"):
        row_of(rec, old, 0.0)


def test_evaluate_reads_records_only_no_torch():
    """The evaluate stage imports neither torch nor numpy: it reads the grid (params without the method registry),
    gathers JSON records and writes the reports."""
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import sys; import remflow.evaluate, remflow.report, remflow.cli; from remflow.params import load_params; "
            "load_params(sys.argv[1], light=True); "
            "print(sorted(m for m in ('torch', 'numpy', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "params.yaml")], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_evaluate_notes_methods_entries_its_runs_were_not_made_with(tmp_path):
    """Evaluate imports no method, so its schema leaves `methods:` entries unchecked; it holds each entry against
    the config the run's record was made with and notes an unknown key and a changed value (notes, not errors:
    DVC would never rerun an up-to-date suite that a stricter reading refused). Values as YAML writes them and as
    pydantic's lax mode takes them (yes / 1 for a bool, '0.01' for a number) are the record's values."""
    import json

    from conftest import merge, root_params
    from remflow.evaluate import _settings_notes
    from remflow.params import load_params, validate

    def light(over):
        path = tmp_path / "p.yaml"
        path.write_text(json.dumps(merge(root_params(), over)))
        return load_params(path, light=True)

    written = {"beta": 2, "keep": "0.2", "redirect": "yes", "ideal": 0}
    full = validate(merge(root_params(), {"methods": {"rem": written}}))
    record = {"run": "rem", "method": "rem", "config": json.loads(json.dumps(full.methods["rem"].model_dump()))}
    assert record["config"]["redirect"] is True and record["config"]["ideal"] is False and record["config"]["keep"] == 0.2
    assert _settings_notes(light({"methods": {"rem": written}}), record, tmp_path) == []
    assert _settings_notes(full, record, tmp_path) == []
    [(key, note)] = _settings_notes(light({"methods": {"rem": {"bogus_key": 1}}}), record, tmp_path)
    assert key == "rem.bogus_key" and "methods.rem.bogus_key is not among the settings" in note
    [(key, note)] = _settings_notes(light({"methods": {"rem": {"beta": 1}}}), record, tmp_path)
    assert key == "rem.beta" and "made with methods.rem.beta = 2.0, params say 1" in note
    [(_, note)] = _settings_notes(light({"methods": {"rem": {"method": "finetune"}}}), record, tmp_path)
    assert "made with method rem" in note


def test_pooled_csv_keeps_the_records_text(tmp_path):
    # rows read back carry nan for an empty cell and floats for every number; `--write` writes them as the records
    # did: empty, not `nan`, and the parameter counts as integers
    given = {"run": "rem", "method": "rem", "pretrained": "standard", "regularity": "high", "discovery_rate": "0.1",
             "seed": "0", "healed": "0.5", "utility": "0.9", "score": "0.45", "unlearn_seconds": "1.25",
             "params_deployed": "42784", "params_peak": "64176", "corruption": "backdoor", "discovery": "oracle",
             "discovery_precision": "1.0", "relearn_steps": "84.0", "fewshot_steps": "nan",
             "details": '"{""a"": 1}"'}
    # the others empty: forget_acc, regularity_score, most of robustness; `nan` is a value a run measured (a
    # few-shot attack with nothing to attack) and stays `nan`
    assert set(given) < set(report.COLUMNS)
    native = ",".join(report.COLUMNS) + "\n" + ",".join(given.get(c, "") for c in report.COLUMNS) + "\n"
    path = tmp_path / "results.csv"
    path.write_text(native)
    back = report.read_csv(path)
    assert math.isnan(back[0]["forget_acc"]) and math.isnan(back[0]["fewshot_steps"])
    assert back[0]["params_deployed"] == 42784.0
    assert report.csv_text(back) == native
    assert report.csv_text(copy.deepcopy(back)) == native  # pooling copies rows


def test_from_csv_shows_rems_taxonomy_unless_told(rows, tmp_path, monkeypatch):
    # printing a results file: the taxonomy table is REM's (the paired tables' default reference), not the first
    # run's (the original model); --run picks another
    rows = [r for r in rows if r["run"] == "none"] + [r for r in rows if r["run"] != "none"]  # none first
    first = report.runs_in_order(rows)[0]
    assert first == "none"
    path = tmp_path / "r.csv"
    path.write_text(report.csv_text(rows))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    shown = runner.invoke(app, ["evaluate", "--from-csv", str(path), "--format", "md", "--reference", "rem"])
    assert shown.exit_code == 0, shown.output
    assert "Utility×Healed of rem" in shown.output and "Utility×Healed of none" not in shown.output
    other = runner.invoke(app, ["evaluate", "--from-csv", str(path), "--format", "md", "--run", first])
    assert other.exit_code == 0 and f"Utility×Healed of {first}" in other.output


def _with(rows, run=None, seed=None, **values):
    return [{**r, **values} for r in rows if (run is None or r["run"] == run) and (seed is None or r["seed"] == seed)]


def test_pooling_refuses_files_of_other_settings_and_names_what_differs(rows, tmp_path):
    # two experiments of one grid (a seed each) pool; the same run name under other settings, or originals made
    # under another pretraining recipe, would be two suites' rows counted as one suite's: refused, named
    setup = "data:aaaaaa model:bbbbbb pretrain:cccccc corruption:dddddd"
    marked = [{**r, "setup": setup, "settings": f"{r['run']}0001"} for r in rows]
    s0, s1 = tmp_path / "s0.csv", tmp_path / "s1.csv"
    s0.write_text(report.csv_text([r for r in marked if r["seed"] == 0]))
    runner = CliRunner()
    args = ["evaluate", "--format", "json", "--from-csv", str(s0), "--from-csv", str(s1)]

    def pooled(seed1_rows, *extra):
        s1.write_text(report.csv_text(seed1_rows))
        return runner.invoke(app, [*args, *extra])

    same = pooled([r for r in marked if r["seed"] == 1])
    assert same.exit_code == 0, same.output
    other = [{**r, "settings": "rem0002"} if r["run"] == "rem" else r for r in marked if r["seed"] == 1]
    r = pooled(other)
    flat = " ".join(r.output.replace("│", " ").split())
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "run 'rem' was made with other settings" in flat and "rem0001 and rem0002" in flat
    longer = setup.replace("pretrain:cccccc", "pretrain:c0ffee")
    r = pooled([{**r, "setup": longer} for r in marked if r["seed"] == 1])
    flat = " ".join(r.output.replace("│", " ").split())
    assert r.exit_code == 2 and "were made under other settings" in flat and "pretrain differs" in flat, r.output
    # --mixed pools them anyway, as the same rows without the columns (files written before them) always pool
    assert pooled([{**r, "setup": longer} for r in marked if r["seed"] == 1], "--mixed").exit_code == 0
    # ... and the file it writes, which holds both, reads back on its own
    both = tmp_path / "both"
    r = runner.invoke(app, [*args, "--mixed", "--write", "--reports", str(both), "--metrics", str(both / "m.json")])
    assert r.exit_code == 0, r.output
    assert runner.invoke(app, ["evaluate", "--format", "json", "--from-csv", str(both / "results.csv")]).exit_code == 0
    unmarked = pooled([{**r, "setup": "", "settings": ""} for r in marked if r["seed"] == 1])
    assert unmarked.exit_code == 0 and json.loads(unmarked.output) == json.loads(same.output)
    # a detection study's corruption may share a grid corruption's name (digits-detect's `backdoor`): its rows
    # are other originals, with a setup of their own in every file
    det = lambda rows: [{**r, "run": r["run"] + "@found", "view": "found", "discovery": "spectral",  # noqa: E731
                         "setup": longer} for r in rows]
    s0.write_text(report.csv_text([r for r in marked if r["seed"] == 0] + det([r for r in marked if r["seed"] == 0])))
    assert pooled([r for r in marked if r["seed"] == 1] + det([r for r in marked if r["seed"] == 1])).exit_code == 0
    s0.write_text(report.csv_text([r for r in marked if r["seed"] == 0]))
    # the ETD model's rows are other originals: their own setup, not compared with the standard model's
    etd = [{**r, "run": "rem_etd", "pretrained": "etd", "setup": longer} for r in marked if r["run"] == "rem"]
    assert pooled([r for r in marked if r["seed"] == 1] + etd).exit_code == 0
    assert runner.invoke(app, ["evaluate", "--mixed"]).exit_code == 2


def test_setup_tells_the_originals_settings_apart_by_part(tmp_path):
    from remflow.evaluate import setup_of
    from remflow.params import load_params
    from remflow.provenance import setup_parts

    def parts(text: str, rec: dict) -> dict:
        (tmp_path / "params.yaml").write_text(text)
        return setup_parts(setup_of(load_params(tmp_path / "params.yaml", light=True), rec))

    base = ("data: {dataset: digits}\nmodel: {name: cnn, width: 8}\npretrain: {epochs: 30}\n"
            "corruption: {count: 64, backdoor: {patch: 3}}\n")
    high = {"regularity": "high", "pretrained": "standard", "dataset": {"fingerprint": "28aa74899d7ab0c2"}}
    medium = {**high, "regularity": "medium"}
    a, b = parts(base, high), parts(base, medium)
    assert set(a) == {"data", "model", "pretrain", "corruption"}
    assert [k for k in a if a[k] != b[k]] == ["corruption"]  # backdoor against interclass confusion
    assert parts(base, high) == a  # the same settings, the same digests
    longer = parts(base.replace("epochs: 30", "epochs: 40"), high)
    assert [k for k in a if a[k] != longer[k]] == ["pretrain"]
    wider = parts(base.replace("width: 8", "width: 16"), high)
    assert [k for k in a if a[k] != wider[k]] == ["model"]
    patch = base.replace("patch: 3", "patch: 2")
    assert [k for k in a if a[k] != parts(patch, high)[k]] == ["corruption"]
    assert parts(patch, medium) == b  # the backdoor's settings are not the interclass originals'
    assert [k for k in a if a[k] != parts(base, {**high, "dataset": {"fingerprint": "0"}})[k]] == ["data"]
    assert [k for k in a if a[k] != parts(base, {**high, "pretrained": "etd"})[k]] == ["pretrain"]
    assert parts(base.replace("count: 64", "count: 32"), medium) != b
    assert parts(base + "runtime: {threads: 2, eval_batch_size: 512}\n", high) == a  # not settings of the original


def test_metric_healed_or_utility_adds_its_own_paired_comparison(rows, tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(report.csv_text(rows))
    runner = CliRunner()
    out = json.loads(runner.invoke(app, ["evaluate", "--from-csv", str(path), "--format", "json", "--reference",
                                         "none", "--metric", "healed"]).output)
    assert out["paired"]["metric"] == "score" and out["paired_healed"]["metric"] == "healed"
    rem = out["paired_healed"]["runs"]["rem"]["all"]
    assert rem["diff"] == pytest.approx(0.6375 - 0.05) and rem["pairs"] == 8  # RUNS: rem's Healed minus none's
    assert rem["diff"] != pytest.approx(out["paired"]["runs"]["rem"]["all"]["diff"])
    plain = json.loads(runner.invoke(app, ["evaluate", "--from-csv", str(path), "--format", "json"]).output)
    assert not any(k.startswith("paired_") for k in plain)
    md = runner.invoke(app, ["evaluate", "--from-csv", str(path), "--format", "md", "--metric", "utility"]).output
    assert "Utility − rem (points)" in md and "Utility×Healed − rem (points)" in md
