"""The long-lived worker: one Ray actor runs one stage at a time, in its own process, for the whole run.

A stage whose command is a plain `remflow <command> ...` line runs in-process (torch and remflow are imported
once per worker, not once per stage); any other command runs in a shell, as `dvc repro` would run it. Either
way the stage's stdout and stderr go to its own log file (file-descriptor level, so C extensions' output too).

A worker runs the remflow code it imported, which may be older than the files on disk: someone edits a module
during a long run. So the worker records the md5 of each remflow source file at the moment it imports it
(`ImportRecord`, a finder ahead of Python's own), and returns those hashes with every stage it ran in-process.
Before committing the stage, the coordinator compares them with the stage's code dependencies now
(`stale_code`): a dependency that is a file the worker imported and whose content differs was not the code
that made the outputs, and DVC would record the new hash beside them. Such a stage is not committed: its
outputs are removed, its worker is replaced by a fresh one (which imports the code as it is now) and the stage
runs again there; after `retries` such refusals it fails, with the message in its log. Stages run in a shell
import their code in their own process when they start, as under `dvc repro`, and are not checked.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass

# characters that make a command line need a shell (pipes, redirections, expansions, several commands)
_SHELL = re.compile(r"[|&;<>()$`*?~\\\n]")


@dataclass
class StageSpec:
    name: str
    cmds: list[str]
    wdir: str  # absolute: the suite on the shared filesystem
    log: str  # absolute path of the stage's log file
    env: dict[str, str]


def _md5(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.md5(f.read()).hexdigest()
    except OSError:
        return None


class ImportRecord(importlib.abc.MetaPathFinder):
    """The md5 of every source file of `packages` this process imports, taken when it is imported.

    Installed first on sys.meta_path, it asks the finders after it for the module's spec (so the import is the
    one Python would make) and hashes the spec's file right before Python executes it. Modules of `packages`
    imported before it was installed are hashed when it is installed."""

    def __init__(self, packages=("remflow",)):
        self.packages = tuple(packages)
        self.hashes: dict[str, str] = {}  # real path of the source file -> md5 at import

    def _ours(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.packages)

    def _record(self, origin) -> None:
        if origin and origin.endswith(".py"):
            real = os.path.realpath(origin)
            if real not in self.hashes:
                digest = _md5(real)
                if digest is not None:
                    self.hashes[real] = digest

    def install(self) -> "ImportRecord":
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)
        for name, module in list(sys.modules.items()):
            if self._ours(name):
                self._record(getattr(module, "__file__", None))
        return self

    def uninstall(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, name, path=None, target=None):
        if not self._ours(name):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                self._record(spec.origin)
                return spec
        return None


def _files(path: str):
    if os.path.isdir(path):
        for folder, _, names in os.walk(path):
            for n in names:
                yield os.path.join(folder, n)
    else:
        yield path


def stale_code(dep_paths, imported: dict[str, str] | None) -> list[tuple[str, str, str | None]]:
    """(source file, md5 the worker imported, md5 now) for each file behind the stage's dependencies (files or
    folders, followed through links; a code fingerprint of the `check` stage stands for the source files it
    hashes) that the worker imported and that differs now (None: gone)."""
    from remflow.codedeps import source_files

    if not imported:
        return []
    stale = []
    for dep in dep_paths:
        for f in source_files(dep) or _files(dep):
            real = os.path.realpath(f)
            then = imported.get(real)
            if then is not None:
                now = _md5(real)
                if now != then:
                    stale.append((f, then, now))
    return stale


def code_changed_message(stage: str, stale, again: bool) -> str:
    path, then, now = stale[0]
    more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
    what = "runs again on a fresh worker" if again else "failed: it was refused too many times"
    return (f"remflow run: {stage} not committed: its code dependency {path}{more} changed after the worker "
            f"imported it (md5 {then[:8]} then, {now[:8] if now else 'missing'} now), so its outputs came from "
            f"the old code; the stage {what}")


def in_process_argv(cmd: str) -> list[str] | None:
    """The arguments of a `remflow ...` command that is safe to run in-process, else None."""
    if _SHELL.search(cmd):
        return None
    try:
        argv = shlex.split(cmd)
    except ValueError:
        return None
    if not argv or argv[0] != "remflow" or len(argv) < 2 or argv[1] in ("run",):
        return None
    return argv[1:]


def _click_classes(name: str) -> tuple[type, ...]:
    """click's exception class `name`, and typer's own copy of it (typer 0.29 ships its click as typer._click,
    whose exceptions are not click's)."""
    import importlib

    out = []
    for module in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in out:
            out.append(cls)
    return tuple(out)


def _run_remflow(args: list[str]) -> int:
    from remflow.cli import app

    try:
        rc = app(args=args, prog_name="remflow", standalone_mode=False)
        return int(rc or 0)
    except SystemExit as e:  # typer.Exit in some versions, sys.exit() in user code
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except _click_classes("Exit") as e:
        return int(e.exit_code)
    except _click_classes("ClickException") as e:  # a usage error: its one-screen message, exit code 2
        e.show()
        return e.exit_code
    except _click_classes("Abort"):
        return 1
    except Exception:  # noqa: BLE001  a failing stage is reported, the worker lives on
        traceback.print_exc()
        return 1


def _shell(cmd: str, spec: StageSpec, log) -> int:
    """Run a command in a shell of its own process group; its pid goes next to the log, so that the
    coordinator can stop it when its worker is killed (same host)."""
    proc = subprocess.Popen(cmd, shell=True, cwd=spec.wdir, stdout=log, stderr=log, start_new_session=True)
    pidfile = spec.log + ".pid"
    with open(pidfile, "w") as f:
        f.write(f"{socket.gethostname()} {proc.pid}\n")
    try:
        rc = proc.wait()
    except BaseException:  # the worker is being stopped (ray.kill, Ctrl-C): take the command with it
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        raise
    try:
        os.unlink(pidfile)
    except OSError:
        pass
    return rc


def stop_shell(log: str) -> None:
    """Kill the process group of a stage's shell command left behind by a dead worker (this host only)."""
    try:
        host, pid = open(log + ".pid").read().split()
    except (OSError, ValueError):
        return
    if host == socket.gethostname():
        try:
            os.killpg(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    try:
        os.unlink(log + ".pid")
    except OSError:
        pass


def run_stage(spec: StageSpec) -> dict:
    """Run every command of one stage in `spec.wdir`, output to `spec.log`; stop at the first failure."""
    t0 = time.perf_counter()
    os.makedirs(os.path.dirname(spec.log), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    cwd = os.getcwd()
    env_saved = {k: os.environ.get(k) for k in spec.env}
    rc, mode, imported = 0, "in-process", False
    with open(spec.log, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            os.chdir(spec.wdir)
            os.environ.update(spec.env)
            for cmd in spec.cmds:
                print(f"$ {cmd}", flush=True)
                args = in_process_argv(cmd)
                if args is not None:
                    imported = True
                    rc = _run_remflow(args)
                else:
                    mode = "shell"
                    rc = _shell(cmd, spec, log)
                sys.stdout.flush()
                sys.stderr.flush()
                if rc != 0:
                    print(f"remflow run: command exited with code {rc}", file=sys.stderr, flush=True)
                    break
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            os.chdir(cwd)
            for k, v in env_saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return {"rc": rc, "seconds": time.perf_counter() - t0, "mode": mode, "imported": imported}


# what a remflow pipeline's stages import on their first use in a worker (about 4 s on a 2-core CPU: torch and
# remflow; torch._dynamo, which torch.optim's first step imports; scikit-learn for the probes)
WARM_MODULES = ("remflow.cli", "remflow.stages", "remflow.methods", "remflow.robustness", "remflow.detection.probe",
                "torch._dynamo", "sklearn.linear_model", "sklearn.preprocessing")


def warm_up(modules=WARM_MODULES) -> float:
    """Import `modules` now; returns the seconds it took. A module that does not import is left to the stage that
    needs it, which reports the error in its own log."""
    import importlib

    t0 = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001
            pass
    return time.perf_counter() - t0


class StageWorker:
    """The body of the Ray actor (wrapped with ray.remote by the coordinator, with the run's resources).

    `warm`: import what the stages will (WARM_MODULES) before taking the first stage. The coordinator asks it of
    every worker but the first of a remflow pipeline: the first runs the `check` stage, which every other stage
    waits on, so the others' imports fill that wait instead of the first stage each of them runs."""

    def __init__(self, sys_path: list[str], warm: bool = False):
        for p in reversed(sys_path):
            if p not in sys.path:
                sys.path.insert(0, p)
        os.environ.setdefault("REMFLOW_PROGRESS", "plain")
        self.code = ImportRecord().install()  # the remflow source this worker runs, hashed as it is imported
        # otherwise torch and remflow are imported by the first remflow stage this worker runs, then stay imported
        self.warmed = warm_up() if warm else 0.0
        import socket

        try:
            import ray

            self.node = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001
            self.node = ""
        self.where = f"{socket.gethostname()}:{os.getpid()}"

    def ident(self) -> str:
        return self.where

    def run(self, spec: StageSpec) -> dict:
        out = run_stage(spec)
        # the code of the in-process commands (for the commit-time check, `stale_code`)
        out["code"] = dict(self.code.hashes) if out.pop("imported") else {}
        out["worker"] = self.where
        out["node"] = self.node
        return out
