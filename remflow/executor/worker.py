"""The long-lived worker: one Ray actor runs one stage at a time, in its own process, for the whole run.

A stage whose command is a plain `remflow <command> ...` line runs in-process (torch and remflow are imported
once per worker, not once per stage); any other command runs in a shell, as `dvc repro` would run it. Either
way the stage's stdout and stderr go to its own log file (file-descriptor level, so C extensions' output too).
"""

from __future__ import annotations

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


def _run_remflow(args: list[str]) -> int:
    import click

    from remflow.cli import app

    try:
        rc = app(args=args, prog_name="remflow", standalone_mode=False)
        return int(rc or 0)
    except SystemExit as e:  # typer.Exit in some versions, sys.exit() in user code
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
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
    rc, mode = 0, "in-process"
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
    return {"rc": rc, "seconds": time.perf_counter() - t0, "mode": mode}


class StageWorker:
    """The body of the Ray actor (wrapped with ray.remote by the coordinator, with the run's resources)."""

    def __init__(self, sys_path: list[str]):
        for p in reversed(sys_path):
            if p not in sys.path:
                sys.path.insert(0, p)
        os.environ.setdefault("REMFLOW_PROGRESS", "plain")
        # torch and remflow are imported by the first remflow stage this worker runs, then stay imported
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
        out["worker"] = self.where
        out["node"] = self.node
        return out
