"""`remflow run` on a tiny shell pipeline: batch commits leave DVC clean, and each fault loses nothing."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]

# a -> b@1..4 -> c; STAGE_B is the body of b, formatted per test (it sees I, the matrix value)
PIPELINE = """\
stages:
  a:
    cmd: python -c "open('a.txt','w').write(open('in.txt').read())"
    deps:
      - in.txt
    outs:
      - a.txt
  b:
    matrix:
      i: [1, 2, 3, 4]
    cmd: python ../b.py ${item.i}
    deps:
      - a.txt
    outs:
      - b-${item.i}.txt
  c:
    cmd: python -c "print(sum(len(open(f'b-{i}.txt').read()) for i in range(1, 5)), file=open('c.txt', 'w'))"
    deps:
      - b-1.txt
      - b-2.txt
      - b-3.txt
      - b-4.txt
    outs:
      - c.txt
"""

B_OK = """\
import sys
i = int(sys.argv[1])
open(f"b-{i}.txt", "w").write(open("a.txt").read() * i)
"""


# this test session's own Ray folder: a Ray cluster that something else runs on the machine is never joined
# or disturbed (a short path: Ray's socket paths must stay under the OS limit)
_RAY_TMP = tempfile.mkdtemp(prefix="rf-ray-")
atexit.register(shutil.rmtree, _RAY_TMP, ignore_errors=True)


def _env() -> dict:
    env = dict(os.environ)
    env["RAY_TMPDIR"] = _RAY_TMP
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env["RAY_ADDRESS"] = ""  # a local Ray, whatever the shell says
    return env


def _sh(cwd: Path, *args, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, env=_env(), capture_output=True, text=True, check=check)


@pytest.fixture
def tiny(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(PIPELINE)
    (repo / "in.txt").write_text("hello\n")
    (repo / "params.yaml").write_text("runtime:\n  cpus: 1\n  workers: 2\n")
    (tmp_path / "b.py").write_text(B_OK)
    _sh(repo, "git", "init", "-q")
    _sh(repo, "dvc", "init", "-q")
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny")
    return repo


def _run(repo: Path, *args, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "remflow", "run", *args], cwd=repo, env=_env(), capture_output=True,
                       text=True, timeout=600)
    if check_rc is not None:
        assert r.returncode == check_rc, r.stdout + r.stderr
    return r


def _lock(repo: Path) -> dict:
    path = repo / "dvc.lock"
    return YAML(typ="safe", pure=True).load(path.read_text())["stages"] if path.exists() else {}


def _status_clean(repo: Path) -> bool:
    return "up to date" in _sh(repo, "dvc", "status").stdout


def test_run_commits_everything_like_a_serial_repro(tiny, tmp_path):
    _run(tiny)
    assert _status_clean(tiny)
    assert "didn't change" in _sh(tiny, "dvc", "repro").stdout or _status_clean(tiny)
    assert (tiny / "c.txt").read_text() == "60\n"  # 6 * (1 + 2 + 3 + 4)
    ours = _lock(tiny)
    assert sorted(ours) == ["a", "b@1", "b@2", "b@3", "b@4", "c"]
    assert all(f.startswith("b-") or f in ("a.log", "c.log") for f in os.listdir(tiny / ".remflow" / "logs"))
    # a serial dvc repro of the same pipeline records the same hashes
    serial = tmp_path / "serial"
    _sh(tmp_path, "git", "clone", "-q", str(tiny), str(serial))
    _sh(serial, "dvc", "repro", "-q")
    assert _lock(serial) == ours
    # byte for byte: the lock remflow run writes is the file DVC writes (same serialisation, same order)
    assert (serial / "dvc.lock").read_text() == (tiny / "dvc.lock").read_text()
    # the run cache holds every stage: after a run on other input, going back restores them without running
    (tiny / "in.txt").write_text("other\n")
    _sh(tiny, "dvc", "repro", "-q")
    (tiny / "in.txt").write_text("hello\n")
    out = _sh(tiny, "dvc", "repro").stdout
    assert "Stage 'a' is cached - skipping run" in out and "Stage 'c' is cached - skipping run" in out
    assert "Running stage" not in out
    assert _lock(tiny) == ours


def test_second_run_does_nothing_and_dry_lists_changes(tiny):
    _run(tiny)
    assert _run(tiny, "--dry").stdout.strip() == ""
    (tiny / "in.txt").write_text("changed\n")
    listed = _run(tiny, "--dry").stdout.split()
    assert listed == ["a", "b@1", "b@2", "b@3", "b@4", "c"]


def test_a_failing_stage_skips_only_its_dependents(tiny, tmp_path):
    (tmp_path / "b.py").write_text(B_OK.replace('open(f"b-{i}', 'i == 2 and sys.exit("b2 breaks")\nopen(f"b-{i}'))
    r = _run(tiny, check_rc=1)
    lock = _lock(tiny)
    assert sorted(lock) == ["a", "b@1", "b@3", "b@4"]  # the others finished and are committed
    assert "b@2" in r.stderr and "skipped" in r.stderr and "c" in r.stderr.split("skipped")[1]
    assert not (tiny / "b-2.txt").exists() and not (tiny / "c.txt").exists()
    assert "b2 breaks" in (tiny / ".remflow" / "logs" / "b-2.log").read_text()
    # fixed, the next run does only the failed stage and its dependents
    (tmp_path / "b.py").write_text(B_OK)
    dry = _run(tiny, "--dry")
    assert dry.stdout.split() == ["b@2", "c"]
    # b@2 is changed now (its output is missing), c only because b@2 will run
    assert "2 stages would run: 1 changed now; the other 1 depend on them" in " ".join(dry.stderr.split())
    _run(tiny)
    assert _status_clean(tiny)


def test_a_killed_worker_means_the_stage_runs_again(tiny, tmp_path):
    # the first b@3 writes half its output, then kills the worker process running it (its shell's parent)
    (tmp_path / "b.py").write_text(B_OK.replace('open(f"b-{i}', '''\
import os, pathlib, signal
marker = pathlib.Path("../killed")
if i == 3 and not marker.exists():
    marker.write_text("x")
    open("b-3.txt", "w").write("half")
    os.kill(os.getppid(), signal.SIGKILL)
    import time; time.sleep(30)
open(f"b-{i}'''))
    (tiny / "dvc.yaml").write_text(PIPELINE.replace("cmd: python ../b.py", "cmd: exec python ../b.py"))
    r = _run(tiny)
    assert (tmp_path / "killed").exists()
    assert "b@3" in r.stderr and "again" in r.stderr
    # Ray's own paragraph about the lost worker goes to a log, not the terminal (remflow run says it above)
    assert "worker died" not in r.stdout.lower() and "raylet" not in r.stdout, r.stdout
    assert (tiny / "b-3.txt").read_text() == "hello\n" * 3
    assert _status_clean(tiny)
    assert (tiny / "c.txt").read_text() == "60\n"


def test_ctrl_c_commits_what_finished_and_the_next_run_does_the_rest(tiny, tmp_path):
    # b@3 and b@4 write half an output, then take long; Ctrl-C comes while they run
    (tmp_path / "b.py").write_text(B_OK.replace('open(f"b-{i}', '''\
import time
if i >= 3:
    open(f"b-{i}.txt", "w").write("half")
    time.sleep(20)
open(f"b-{i}'''))
    (tiny / "params.yaml").write_text("runtime:\n  cpus: 1\n  workers: 4\n")
    errors = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen([sys.executable, "-m", "remflow", "run", "--cpus", "0.5"], cwd=tiny, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=errors)
    deadline = time.time() + 240
    while time.time() < deadline and not all((tiny / f"b-{i}.txt").exists() for i in (1, 2, 3, 4)):
        time.sleep(0.5)
    time.sleep(2)  # b@1 and b@2 are done by now
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    errors.close()
    assert proc.returncode == 130, (tmp_path / "stderr.txt").read_text()
    lock = _lock(tiny)
    assert sorted(lock) == ["a", "b@1", "b@2"]
    assert not (tiny / "b-3.txt").exists() and not (tiny / "b-4.txt").exists()  # nothing half-written stays
    (tmp_path / "b.py").write_text(B_OK)
    assert _run(tiny, "--dry").stdout.split() == ["b@3", "b@4", "c"]
    _run(tiny)
    assert _status_clean(tiny)
    assert (tiny / "c.txt").read_text() == "60\n"


def test_runtime_section_is_validated_and_overridable(tiny):
    (tiny / "params.yaml").write_text("runtime:\n  cpus: 1\n  gpus: 1.5\n")
    r = _run(tiny, check_rc=2)
    assert "runtime.gpus" in r.stderr and "1.5" in r.stderr
    (tiny / "params.yaml").write_text("runtime:\n  cpus: -1\n")
    r = _run(tiny, check_rc=2)
    assert "runtime.cpus" in r.stderr
    assert not (tiny / "dvc.lock").exists()
    from remflow.executor import options_from

    (tiny / "params.yaml").write_text("runtime:\n  cpus: 2\n  gpus: 0.25\n  workers: 3\n")
    opts, _ = options_from(tiny)
    assert (opts.cpus, opts.gpus, opts.workers) == (2, 0.25, 3)
    opts, _ = options_from(tiny, cpus=1, gpus=0.5, workers=8)
    assert (opts.cpus, opts.gpus, opts.workers) == (1, 0.5, 8)


def test_the_lock_is_written_whole_or_not_at_all(tiny, monkeypatch):
    """A coordinator stopped while it writes dvc.lock leaves the previous lock as it was, and no debris."""
    from dvc.repo import Repo

    from remflow.executor import dvcio

    _run(tiny)
    before = (tiny / "dvc.lock").read_bytes()
    repo = Repo(str(tiny))
    stages = [s for s in repo.index.stages if s.cmd]
    lock = dvcio.LockText(str(tiny / "dvc.lock"))
    assert lock.text() == before.decode()  # read back into blocks and joined, nothing moves
    lock.update(stages)
    assert lock.text() == before.decode()  # DVC's own serialisation of the same stages: the same bytes

    def killed(src, dst):
        raise KeyboardInterrupt  # the coordinator is stopped between writing the new text and the rename

    monkeypatch.setattr(dvcio.os, "replace", killed)
    lock.blocks = {k: v.replace("md5:", "md5: x") for k, v in lock.blocks.items()}
    with pytest.raises(KeyboardInterrupt):
        lock.write()
    repo.close()
    assert (tiny / "dvc.lock").read_bytes() == before
    assert not [f for f in os.listdir(tiny) if f.endswith(".tmp")]


def test_params_reads_are_memoised_per_file_version(tmp_path):
    """remflow run memoises DVC's params reads, but an edited params file is read again."""
    import dvc.dependency.param as param
    from dvc.fs import LocalFileSystem

    from remflow.executor.dvcio import cached_param_reads

    fs, path = LocalFileSystem(), str(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("a: 1\nb: {c: 1e-3}\n")
    original = param.load_path
    with cached_param_reads():
        assert param.load_path is not original
        first = param.load_path(path, fs)
        first["a"] = 99  # a caller that changes what it got does not change the memo
        assert param.load_path(path, fs) == {"a": 1, "b": {"c": 0.001}}
        (tmp_path / "params.yaml").write_text("a: 22\nb: {c: 1e-3}\n")
        assert param.load_path(path, fs)["a"] == 22
    assert param.load_path is original


def test_commit_records_a_code_change_that_leaves_the_outputs_without_running(tiny):
    """`remflow run --commit`: the batched `dvc commit` for a refactor; a missing output refuses it."""
    (tiny / "b.py").write_text(B_OK)
    text = (tiny / "dvc.yaml").read_text().replace("python ../b.py ${item.i}", "python b.py ${item.i}")
    (tiny / "dvc.yaml").write_text(text.replace("      - a.txt\n    outs:\n      - b-", "      - a.txt\n"
                                                "      - b.py\n    outs:\n      - b-"))
    _run(tiny)
    assert _status_clean(tiny)
    before = {f.name: f.read_bytes() for f in tiny.glob("*.txt")}
    (tiny / "b.py").write_text(B_OK + "# a comment: the same program\n")
    assert not _status_clean(tiny)

    (tiny / "b-2.txt").unlink()
    lock = (tiny / "dvc.lock").read_text()
    r = _run(tiny, "--commit", check_rc=2)
    assert "missing" in r.stderr and "b@2" in r.stderr
    assert (tiny / "dvc.lock").read_text() == lock  # nothing written
    (tiny / "b-2.txt").write_bytes(before["b-2.txt"])

    r = _run(tiny, "--commit")
    assert "committed" in r.stderr
    assert _status_clean(tiny)  # the new code hash is recorded, nothing ran
    assert {f.name: f.read_bytes() for f in tiny.glob("*.txt")} == before
    b_dep = next(d for d in _lock(tiny)["b@1"]["deps"] if d["path"] == "b.py")
    import hashlib
    assert b_dep["md5"] == hashlib.md5((tiny / "b.py").read_bytes()).hexdigest()
    assert "Data and pipelines are up to date" in _run(tiny, "--commit").stderr


def test_a_ray_that_does_not_start_is_a_clear_error_not_a_traceback(monkeypatch):
    """Ray's startup failing (a timeout on a busy machine, a wrong --address) gives remflow's one-screen error with
    what Ray said, not "a bug in remflow"."""
    import ray

    from remflow.errors import RemflowError
    from remflow.executor.core import Options, _start_ray

    def refuse(*a, **k):
        raise Exception("The current node timed out during startup. This could happen because ...")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(RemflowError) as e:
        _start_ray(Options())
    assert e.value.key == "ray" and "timed out during startup" in str(e.value.got)
    with pytest.raises(RemflowError) as e:
        _start_ray(Options(address="10.0.0.1:6379"))
    assert e.value.key == "--address" and "10.0.0.1:6379" in e.value.message


def test_a_warm_worker_imports_what_the_stages_will_and_survives_a_module_that_does_not(tmp_path):
    # in a fresh process: the workers but the first of a remflow pipeline import the stages' modules before they
    # take a stage; one that does not import is left to the stage that needs it (its own log says why)
    code = ("import sys; from remflow.executor.worker import StageWorker, WARM_MODULES, warm_up\n"
            "assert 'torch' not in sys.modules\n"
            "assert warm_up(('no_such_module_for_remflow', 'json')) >= 0\n"
            "w = StageWorker([], warm=True)\n"
            "missing = [m for m in WARM_MODULES if m not in sys.modules]\n"
            "assert not missing and w.warmed > 0, missing\n"
            "assert any(p.endswith('stages.py') for p in w.code.hashes)  # hashed as imported, as a stage would\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    from remflow.executor.core import Options

    assert Options().warm is False  # any other DVC project: workers import nothing until a stage does


class _FakeRay:
    """What the coordinator's loop asks of Ray before its first stage: resources, an actor class, kill."""

    def __init__(self, cpus: int):
        self.cpus, self.made, self.killed = cpus, [], 0

    def cluster_resources(self):
        return {"CPU": self.cpus}

    def remote(self, cls):
        ray = self

        class Actor:
            def options(self, **kw):
                return self

            def remote(self, *args):
                ray.made.append(args)
                return object()

        return Actor()

    def kill(self, actor):
        self.killed += 1


@pytest.mark.parametrize("warm", [True, False])
def test_workers_but_the_first_warm_up_when_asked(warm):
    # the first worker takes the first ready stage (the check stage) cold; the others import while it runs
    from remflow.executor.core import Options, Report, _loop, _Timer

    class Stage:  # what the loop reads of a stage before dispatching it; hashable, as DVC's stages are
        def __init__(self, name):
            self.addressing = name

    stages = [Stage(f"s{i}") for i in range(5)]
    ray, report = _FakeRay(cpus=3), Report()
    opts = Options(cpus=1.0, warm=warm)
    _loop(ray, None, Path("."), stages, {s: [] for s in stages}, {s: [] for s in stages}, opts, report,
          _Timer(report), None, {"now": True})  # stopped before the first dispatch: only the workers are made
    assert [args[1] for args in ray.made] == [False, warm, warm]
    assert ray.killed == 3 and report.workers == 3


UNCHANGED = """\
stages:
  a:
    cmd: python -c "open('a.txt','w').write(open('in.txt').read().strip())"
    deps:
      - in.txt
    outs:
      - a.txt
  b:
    cmd: python -c "open('b.txt','w').write(open('a.txt').read() * 2)"
    deps:
      - a.txt
    outs:
      - b.txt
  d:
    cmd: python ../d.py
    deps:
      - in2.txt
    outs:
      - d.txt
"""


def test_ctrl_c_counts_a_stage_left_up_to_date_by_its_upstream_as_done_not_left(tiny, tmp_path):
    # a re-runs and writes the same bytes, so b is up to date without running; Ctrl-C comes while d runs:
    # only d is left for the next run
    (tiny / "dvc.yaml").write_text(UNCHANGED)
    (tiny / "in2.txt").write_text("1\n")
    (tmp_path / "d.py").write_text("open('d.txt', 'w').write(open('in2.txt').read())\n")
    _run(tiny)
    assert sorted(_lock(tiny)) == ["a", "b", "d"]
    (tiny / "in.txt").write_text("hello\n\n")  # a's output is the same stripped text
    (tiny / "in2.txt").write_text("2\n")
    (tmp_path / "d.py").write_text("import time\ntime.sleep(60)\nopen('d.txt', 'w').write('late')\n")
    errors = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen([sys.executable, "-m", "remflow", "run"], cwd=tiny, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=errors)
    try:
        deadline = time.time() + 240  # the progress lines (stderr is not a terminal): b decided while d sleeps
        while time.time() < deadline and "b (up to date)" not in (tmp_path / "stderr.txt").read_text():
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        errors.close()
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 130, err
    assert "1 committed, 1 up to date, 1 left for the next run" in " ".join(err.split()), err
    assert _run(tiny, "--dry").stdout.split() == ["d"]
