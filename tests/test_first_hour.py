"""A new user's first hour: bad input gets one screen and exit code 2 (never a traceback), `check` refuses what a
run would refuse, `--dry` writes nothing, and `remflow run` restores what DVC's run cache holds."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from remflow.cli import app
from test_executor import _env, _sh, tiny  # noqa: F401  (tiny: the shell pipeline a -> b@1..4 -> c)

ROOT = Path(__file__).resolve().parents[1]


def _remflow(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "remflow", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=600)


def _one_screen(r: subprocess.CompletedProcess) -> None:
    text = r.stdout + r.stderr
    assert r.returncode == 2, text
    assert "Traceback" not in text, text
    assert len(text.splitlines()) <= 25, text


def _git_status(repo: Path) -> str:
    return _sh(repo, "git", "status", "--porcelain").stdout


# ---------------------------------------------------------------- DVC's files broken by hand


@pytest.mark.parametrize("dry", [False, True])
def test_a_corrupted_dvc_lock_gives_one_screen(tiny, dry):  # noqa: F811
    (tiny / "dvc.lock").write_text("schema: '2.0'\nstages: [\n")
    r = _remflow(tiny, "run", *(["--dry"] if dry else []))
    _one_screen(r)
    assert "dvc.lock" in r.stderr and "git checkout dvc.lock" in r.stderr
    assert (tiny / "dvc.lock").read_text() == "schema: '2.0'\nstages: [\n"  # left as it was


def test_a_lock_of_another_schema_gives_one_screen(tiny):  # noqa: F811
    (tiny / "dvc.lock").write_text("schema: '9.9'\nstages:\n  a:\n    cmd: nothing\n")
    _one_screen(_remflow(tiny, "run", "--dry"))


def test_an_unresolvable_dvc_yaml_gives_one_screen(tiny):  # noqa: F811
    spec = (tiny / "dvc.yaml").read_text()
    (tiny / "dvc.yaml").write_text(spec.replace("i: [1, 2, 3, 4]", "i: ${grid.regularities}"))
    for args in (["run"], ["run", "--dry"]):
        r = _remflow(tiny, *args)
        _one_screen(r)
        assert "grid.regularities" in r.stderr


# ---------------------------------------------------------------- the run cache and stages left up to date

COUNTED_B = """\
import sys
from pathlib import Path
i = int(sys.argv[1])
with open(Path(__file__).with_name("b-runs.txt"), "a") as log:  # one line per run, appended
    log.write(f"{i}\\n")
open(f"b-{i}.txt", "w").write(open("a.txt").read() * i)
"""


def _b_runs(tiny: Path) -> int:  # noqa: F811
    log = tiny.parent / "b-runs.txt"
    return len(log.read_text().split()) if log.exists() else 0


def test_run_restores_from_the_run_cache_what_dvc_repro_would(tiny):  # noqa: F811
    (tiny.parent / "b.py").write_text(COUNTED_B)
    assert _remflow(tiny, "run").returncode == 0
    assert _b_runs(tiny) == 4
    (tiny / "in.txt").write_text("other\n")
    assert _remflow(tiny, "run").returncode == 0
    assert _b_runs(tiny) == 8
    (tiny / "in.txt").write_text("hello\n")  # back to the first input: every stage is in the run cache
    r = _remflow(tiny, "run")
    assert r.returncode == 0, r.stderr
    assert _b_runs(tiny) == 8  # nothing re-ran
    assert "6 restored from DVC's run cache" in r.stderr
    assert (tiny / "c.txt").read_text() == "60\n"
    assert "up to date" in _sh(tiny, "dvc", "status").stdout


def test_a_stage_whose_upstream_wrote_the_same_bytes_does_not_run(tiny):  # noqa: F811
    (tiny.parent / "b.py").write_text(COUNTED_B)
    spec = (tiny / "dvc.yaml").read_text()
    # a reads only the first line of in.txt: a change below it re-runs a, which writes the same a.txt
    (tiny / "dvc.yaml").write_text(spec.replace(
        "open('a.txt','w').write(open('in.txt').read())", "open('a.txt','w').write(open('in.txt').readline())"))
    (tiny / "in.txt").write_text("hello\nfirst\n")
    assert _remflow(tiny, "run").returncode == 0
    assert _b_runs(tiny) == 4
    (tiny / "in.txt").write_text("hello\nsecond\n")
    r = _remflow(tiny, "run")
    assert r.returncode == 0, r.stderr
    assert _b_runs(tiny) == 4, r.stderr
    assert "5 up to date once their upstream stages ran" in r.stderr
    assert "up to date" in _sh(tiny, "dvc", "status").stdout


def test_a_failed_stage_is_reported_with_its_error_line_and_dependents_counted(tiny):  # noqa: F811
    (tiny.parent / "b.py").write_text("import sys\nsys.exit('b cannot read its input: no such thing')\n")
    r = _remflow(tiny, "run")
    assert r.returncode == 1
    assert "b cannot read its input: no such thing" in r.stderr
    assert "skipped 1 stage that depend on b@" in r.stderr and ": c" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_usage_error_inside_a_remflow_run_worker_is_its_message_and_exit_code_2(tmp_path, capsys):
    """The workers run remflow's commands in-process: a bad flag value (typer's own click copy raises it) is the
    one-screen usage error with exit code 2, as on the command line, not a traceback; and the line remflow run
    shows for a failed stage is the stage's reason, not the worker's "exited with code" line after it."""
    from remflow.executor.cli import _last_error
    from remflow.executor.worker import _run_remflow

    rc = _run_remflow(["discover", "--manifest", str(tmp_path / "m.json"), "--rate", "abc",
                       "--out", str(tmp_path / "d.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "Invalid value for '--rate'" in err
    log = tmp_path / "stage.log"
    log.write_text("$ remflow discover ...\nTraceback (most recent call last):\n  File x\nValueError: the reason\n"
                   "remflow run: command exited with code 1\n")
    assert _last_error(str(log)) == ["ValueError: the reason"]
    log.write_text("$ remflow discover ...\nError: Invalid value for '--rate': 'abc' is not a valid float.\n"
                   "remflow run: command exited with code 2\n")
    assert _last_error(str(log))[-1].startswith("Error: Invalid value for '--rate'")


# ---------------------------------------------------------------- check refuses what a run would refuse

runner = CliRunner()


def _check(params: Path) -> object:
    return runner.invoke(app, ["check", "--params", str(params), "--dvc", str(ROOT / "dvc.yaml")])


def test_check_refuses_an_empty_params_file(tmp_path):
    (tmp_path / "params.yaml").write_text("")
    r = _check(tmp_path / "params.yaml")
    assert r.exit_code == 2
    assert "empty" in r.output


def test_check_refuses_missing_dataset_files(tmp_path):
    raw = (ROOT / "params.yaml").read_text()
    p = tmp_path / "params.yaml"
    p.write_text(raw.replace("dataset: digits", f"dataset: fashion_mnist\n  root: {tmp_path / 'nowhere'}"))
    assert "fashion_mnist" in p.read_text()
    r = _check(p)
    assert r.exit_code == 2, r.output
    joined = "".join(line.strip().strip("│").strip() for line in r.output.splitlines())  # a long path wraps
    assert "nowhere" in joined


def _with_count(tmp_path: Path, count: int) -> Path:
    """The root params.yaml with another corruption.count."""
    raw = (ROOT / "params.yaml").read_text()
    p = tmp_path / "params.yaml"
    p.write_text(re.sub(r"(\n  count: )\S+", rf"\g<1>{count}", raw, count=1))
    assert f"count: {count}" in p.read_text()
    return p


def test_check_explains_a_zero_count_and_notes_rates_that_draw_the_same_set(tmp_path):
    r = _check(_with_count(tmp_path, 0))
    assert r.exit_code == 2
    assert "at least one sample" in r.output and "write a count as an integer" not in r.output
    r = _check(_with_count(tmp_path, 2))
    assert r.exit_code == 0, r.output
    assert "draw the same" in r.output


def test_check_notes_a_root_digits_ignores_and_refuses_cuda_this_machine_lacks(tmp_path, monkeypatch):
    """runtime.device: cuda on a machine without CUDA is exit 2 (every training stage would refuse, after DVC had
    removed its outputs), unless `remflow run --address` runs the stages on a cluster's GPU nodes."""
    import torch

    raw = (ROOT / "params.yaml").read_text().replace("dataset: digits", "dataset: digits\n  root: /data/digits")
    (tmp_path / "params.yaml").write_text(raw)
    r = _check(tmp_path / "params.yaml")
    assert r.exit_code == 0, r.output
    assert "data.root (/data/digits) is not read" in " ".join(r.output.split())
    (tmp_path / "params.yaml").write_text(raw.replace("device: cpu", "device: cuda"))
    r = _check(tmp_path / "params.yaml")
    if torch.cuda.is_available():
        assert r.exit_code == 0, r.output
        return
    assert r.exit_code == 2 and "runtime.device" in r.output and "no CUDA device" in " ".join(r.output.split())
    monkeypatch.setenv("REMFLOW_CUDA_ELSEWHERE", "1")  # what remflow run --address sets
    r = _check(tmp_path / "params.yaml")
    assert r.exit_code == 0 and "GPU nodes run the training stages" in " ".join(r.output.split()), r.output


def test_check_refuses_a_count_beyond_the_training_set(tmp_path):
    r = _check(_with_count(tmp_path, 100000))
    assert r.exit_code == 2
    assert "corruption.count" in r.output


def test_flags_show_no_value_type_in_help():
    r = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "120"})
    assert "--dry" in r.output and "<bool>" not in r.output


def test_an_unexpected_error_is_one_screen_not_a_traceback(tmp_path):
    # a bug (not bad input) surfaces as one panel with where it happened; REMFLOW_DEBUG=1 gives the traceback
    code = ("import remflow.cli as c\n"
            "def boom(path):\n    raise ValueError('kaboom')\n"
            "c._params = boom\n"
            "import sys; sys.argv = ['remflow', 'corrupt', '--regularity', 'high', '--seed', '0', '--out', 'x.json']\n"
            "c.main()\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={**_env(), "REMFLOW_DEBUG": ""})
    assert r.returncode == 1
    assert "kaboom" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.json").exists()


def test_bad_files_and_paths_are_input_errors_not_bugs(tmp_path):
    """What a first hour runs into: a params file saved as Latin-1, a key given twice, a damaged manifest, an
    output path that is a folder, a truncated npz: each exit code 2 naming the file (and the line), not the
    "bug in remflow" panel."""
    latin = tmp_path / "latin.yaml"
    latin.write_bytes((ROOT / "params.yaml").read_bytes() + b"# caf\xe9\n")
    r = runner.invoke(app, ["check", "--params", str(latin), "--dvc", str(ROOT / "dvc.yaml")])
    assert r.exit_code == 2 and "not UTF-8" in r.output and "0xe9" in r.output
    twice = tmp_path / "twice.yaml"
    twice.write_text((ROOT / "params.yaml").read_text() + "grid:\n  seeds: [1]\n")
    r = runner.invoke(app, ["check", "--params", str(twice), "--dvc", str(ROOT / "dvc.yaml")])
    line = len((ROOT / "params.yaml").read_text().splitlines()) + 1
    flat = " ".join(r.output.replace("│", "").split())
    assert r.exit_code == 2 and 'duplicate key "grid"' in flat and f"line {line}," in flat
    (tmp_path / "m.json").write_text('{"indices": [1, 2], "seed": 0}')
    r = runner.invoke(app, ["discover", "--manifest", str(tmp_path / "m.json"), "--rate", "0.5",
                            "--out", str(tmp_path / "d.json"), "--params", str(ROOT / "params.yaml")])
    assert r.exit_code == 2 and "not a remflow corruption manifest" in r.output and not (tmp_path / "d.json").exists()
    (tmp_path / "taken").mkdir()
    r = runner.invoke(app, ["corrupt", "--regularity", "high", "--seed", "0", "--out", str(tmp_path / "taken"),
                            "--params", str(ROOT / "params.yaml")])
    assert r.exit_code == 2 and "--out is a folder" in r.output and not list((tmp_path / "taken").iterdir())
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, x_train=np.zeros((20, 8, 8), np.uint8), y_train=np.arange(20) % 2,
             x_test=np.zeros((4, 8, 8), np.uint8), y_test=np.arange(4) % 2)
    (tmp_path / "cut.npz").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    raw = (ROOT / "params.yaml").read_text().replace("dataset: digits", f"dataset: npz\n  root: {tmp_path / 'cut.npz'}")
    assert "dataset: npz" in raw
    (tmp_path / "npz.yaml").write_text(raw)
    r = runner.invoke(app, ["check", "--params", str(tmp_path / "npz.yaml"), "--dvc", str(ROOT / "dvc.yaml")])
    flat = "".join(r.output.replace("│", "").split())  # the panel wraps a long path across its lines
    assert r.exit_code == 2 and "cut.npz" in flat and "notawholeziparchive" in flat and "unexpected" not in r.output
    r = runner.invoke(app, ["check", "--params", str(ROOT / "params.yaml"), "--dvc", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2 and "pipeline file not found" in r.output
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text().replace(
        "    params:\n", "    params: data\n    other_params:\n", 1))
    r = runner.invoke(app, ["check", "--params", str(ROOT / "params.yaml"), "--dvc", str(tmp_path / "dvc.yaml")])
    assert r.exit_code == 2 and "must be a list of keys" in r.output, r.output


def test_methods_wraps_its_defaults_instead_of_cutting_them():
    r = runner.invoke(app, ["methods"], env={"COLUMNS": "100"})
    assert r.exit_code == 0
    assert "…" not in r.output and "..." not in r.output
    assert "removal_pass" in r.output.replace("\n", "").replace("│", "").replace(" ", "")


def test_compare_shows_params_not_dependency_hashes(monkeypatch, tmp_path):
    from remflow import compare

    (tmp_path / "runs").mkdir()
    (tmp_path / "params.yaml").write_text("unlearn: {epochs: 10}\n")
    rows = [  # exp_show's columns: params by key, metrics by key, dependencies by path (values: hashes)
        {"Experiment": "workspace", "rev": "workspace", "unlearn.epochs": 10, "summary.rem.score": 0.5,
         "remflow/train.py": "ab12", "artifacts/corrupt/high-0.json": "cd34", "runs": "0a", "params.yaml": "1b"},
        {"Experiment": "longer", "rev": "e1", "unlearn.epochs": 12, "summary.rem.score": 0.6,
         "remflow/train.py": "ef56", "artifacts/corrupt/high-0.json": "gh78", "runs": "2c", "params.yaml": "3d"},
    ]
    monkeypatch.setattr(compare, "experiment_rows", lambda repo: rows)
    table = compare.compare_experiments(tmp_path)
    headers = [c.header for c in table.columns]
    assert "unlearn.epochs" in headers
    assert not [h for h in headers if "train.py" in h or "corrupt" in h or h in ("runs", "params.yaml")], headers


def test_check_refuses_a_tracked_section_the_params_file_does_not_write(tmp_path):
    """A section left to its defaults by omission: the schema accepts it, but DVC tracks the key as written and
    would refuse to record every unlearn stage after running it. `remflow check` says so first (exit 2)."""
    from ruamel.yaml import YAML

    data = YAML(typ="safe", pure=True).load((ROOT / "params.yaml").read_text())
    data.pop("robustness")
    (tmp_path / "params.yaml").write_text(json.dumps(data))  # JSON is YAML
    r = subprocess.run([sys.executable, "-m", "remflow", "check", "--params", str(tmp_path / "params.yaml"),
                        "--dvc", str(ROOT / "dvc.yaml")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "robustness" in r.stderr and "robustness: {}" in r.stderr
    data["robustness"] = {}
    (tmp_path / "params.yaml").write_text(json.dumps(data))  # JSON is YAML
    r = subprocess.run([sys.executable, "-m", "remflow", "check", "--params", str(tmp_path / "params.yaml"),
                        "--dvc", str(ROOT / "dvc.yaml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- from a walkthrough on a fresh clone (2026-12-07)


def test_an_empty_grid_is_refused_at_grid_methods(tmp_path):
    """A grid that runs no method would train every original and only then fail at evaluate; and it must name
    grid.methods, not evaluate.taxonomy_run (which then lists no run)."""
    raw = (ROOT / "params.yaml").read_text().replace("  methods: [none, retrain, finetune, rem]", "  methods: []")
    assert "  methods: []" in raw
    (tmp_path / "params.yaml").write_text(raw)
    r = _check(tmp_path / "params.yaml")
    assert r.exit_code == 2 and "grid.methods" in r.output and "runs no method" in " ".join(r.output.split())
    assert "taxonomy_run" not in r.output


def test_a_key_dvc_yaml_interpolates_must_be_written(tmp_path):
    """Deleting `grid.seeds` leaves remflow its default, but DVC cannot resolve ${grid.seeds}: check says which key
    (and `remflow run` runs the same check before DVC reads the project)."""
    raw = (ROOT / "params.yaml").read_text().replace("  seeds: [0]\n", "")
    assert "seeds" not in raw.split("grid:")[1].split("methods:")[0]
    (tmp_path / "params.yaml").write_text(raw)
    r = _check(tmp_path / "params.yaml")
    flat = " ".join(r.output.replace("│", "").split())
    assert r.exit_code == 2 and "${grid.seeds}" in flat and "ms.yaml: grid.seeds" in flat, r.output


def test_interpolations_from_elsewhere_are_not_held_against_params(tmp_path):
    """dvc.yaml may take values from files it names (`vars: [config.yaml]`) or escape `\\${...}`: DVC reads such a
    project, so check does not refuse it for keys params.yaml does not write."""
    from ruamel.yaml import YAML

    from remflow.params import load_params, read_yaml
    from remflow.pipeline_check import check_pipeline

    raw = read_yaml(ROOT / "params.yaml")
    raw["grid"].pop("seeds")
    p = load_params(ROOT / "params.yaml")
    spec = (ROOT / "dvc.yaml").read_text()
    (tmp_path / "dvc.yaml").write_text(spec.replace("vars:\n  - code: remflow\n", "vars:\n  - code: remflow\n  - more.yaml\n"))
    assert check_pipeline(p, tmp_path / "dvc.yaml", raw=raw) >= 6
    with pytest.raises(Exception, match="grid.seeds"):
        check_pipeline(p, ROOT / "dvc.yaml", raw=raw)


def test_run_names_a_missing_params_file_and_an_output_path_is_checked_before_training(tmp_path):
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    r = _remflow(tmp_path, "run", "--dry")
    _one_screen(r)
    assert "params file not found" in r.stderr and "DVC cannot read" not in r.stderr
    (tmp_path / "taken.txt").write_text("mine")
    r = runner.invoke(app, ["pretrain", "--manifest", str(tmp_path / "m.json"), "--out", str(tmp_path / "taken.txt"),
                            "--params", str(ROOT / "params.yaml")])
    assert r.exit_code == 2 and "--out is a file" in r.output  # refused before the manifest is even read
    assert (tmp_path / "taken.txt").read_text() == "mine"
    r = runner.invoke(app, ["unlearn", "--run", "none", "--model", "m", "--manifest", "m", "--discovered", "d",
                            "--out", str(tmp_path / "taken.txt" / "run"), "--params", str(ROOT / "params.yaml")])
    assert r.exit_code == 2 and "a parent of --out is a file" in r.output


def test_an_address_nothing_answers_is_refused_at_once():
    """Ray retries a dead address for minutes; remflow run says so in one screen first."""
    import socket
    import time

    from remflow.errors import RemflowError
    from remflow.executor.core import _reachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    start = time.perf_counter()
    with pytest.raises(RemflowError) as e:
        _reachable(f"127.0.0.1:{port}", timeout=5)
    assert e.value.key == "--address" and time.perf_counter() - start < 10
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        _reachable(f"ray://127.0.0.1:{s.getsockname()[1]}")  # something answers: Ray takes it from there
    _reachable("auto")


def test_an_unknown_model_names_model_name(tmp_path):
    raw = (ROOT / "params.yaml").read_text().replace("  name: cnn", "  name: resnet50")
    (tmp_path / "params.yaml").write_text(raw)
    r = _check(tmp_path / "params.yaml")
    assert r.exit_code == 2 and "model.name" in r.output and "resnet50" in r.output


def test_check_notes_when_the_code_that_runs_is_not_the_code_dvc_tracks(tmp_path):
    """dvc.yaml's `code` folder is what DVC hashes; a remflow installed from another checkout runs other code."""
    r = _check(ROOT / "params.yaml")
    assert r.exit_code == 0 and "tracks the code at" not in r.output
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    r = runner.invoke(app, ["check", "--params", str(ROOT / "params.yaml"), "--dvc", str(tmp_path / "dvc.yaml")])
    flat = " ".join(r.output.split())
    assert r.exit_code == 0 and "tracks the code at" in flat and "pip install -e" in flat, r.output
