"""`remflow run`: the changed stages of one DVC project, in dependency order, in parallel on Ray workers.

DVC stays the record. The coordinator asks DVC's own index which stages are changed (what `dvc repro` would
run), removes their outputs as `dvc repro` does, and hands each ready stage to a free worker. A finished
stage is saved and committed to the cache with DVC's own Stage.save/commit (which also writes its run-cache
entry); its lock entry is DVC's own serialisation, written for a batch of finished stages at once, atomically
(dvcio.LockText), not by DVC's parse-and-rewrite of the whole lock per stage. A stage is dispatched only
after every stage it depends on is committed (committing relinks outputs, so a downstream reader must not
race it). Nothing that did not finish cleanly is ever committed: a failed
stage's outputs are removed and its dependents skipped; a stage whose worker died runs again on a new worker;
on Ctrl-C the finished stages are committed and the rest is left for the next run.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from remflow.errors import RemflowError
from remflow.executor.dvcio import LockText, cached_param_reads
from remflow.executor.worker import StageSpec, stop_shell

LOG_DIR = Path(".remflow") / "logs"


@dataclass
class Options:
    address: str | None = None
    cpus: float = 1.0
    gpus: float = 0.0
    workers: int | None = None
    batch: int = 64  # most stages per lock write
    commit_every_s: float = 5.0  # commit finished stages at least this often
    retries: int = 2  # reruns of a stage whose worker died
    dry: bool = False
    live: bool | None = None  # rich live view (default: when stderr is a terminal)
    warm: bool = False  # workers but the first import the stages' modules while the first runs `check`


@dataclass
class Report:
    planned: int = 0
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # stage -> log file
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> the failed stage it depends on
    left: list[str] = field(default_factory=list)  # not run (interrupted)
    restored: list[str] = field(default_factory=list)  # outputs checked out from DVC's run cache, nothing ran
    unchanged: list[str] = field(default_factory=list)  # still up to date once their upstream stages ran
    changed_now: int = 0  # of `planned`, the stages changed before anything runs (the rest: downstream of them)
    rerun: list[str] = field(default_factory=list)  # ran again after its worker died
    interrupted: bool = False
    workers: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # where the coordinator's time went
    stage_seconds: float = 0.0  # sum of the stages' own wall time in the workers
    stage_times: dict[str, float] = field(default_factory=dict)  # stage -> its wall time in a worker
    logs: dict[str, str] = field(default_factory=dict)  # stage -> its log file (stages that ran in a worker)
    commits: int = 0
    nodes: set = field(default_factory=set)  # Ray nodes that ran stages

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if (self.failed or self.skipped) else 0


def _log_name(stage_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stage_name.replace("@", "-")) + ".log"


class _Timer:
    def __init__(self, report: Report):
        self.report = report

    def __call__(self, key: str):
        timer = self

        class _T:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                s = timer.report.seconds
                s[key] = s.get(key, 0.0) + time.perf_counter() - self.t0

        return _T()


def plan(repo, changed: set | None = None) -> tuple[list, dict, dict]:
    """The stages `dvc repro` would run, upstream first; each stage's upstream and downstream among them.
    `changed`, when given, receives the stages changed now; the others are picked because a stage they depend
    on will run, and the run asks DVC again once that stage is committed (as `dvc repro` does)."""
    import networkx as nx
    from dvc.stage import PipelineStage

    graph = repo.index.graph  # edges point from a stage to the stages it depends on
    pos = {s: i for i, s in enumerate(repo.index.stages)}  # dvc.yaml's order among stages that are ready
    order = list(nx.lexicographical_topological_sort(graph.reverse(copy=False), key=lambda s: pos.get(s, 0)))
    chosen: list = []
    picked: set = set()
    for stage in order:
        if not isinstance(stage, PipelineStage) or not stage.cmd or stage.frozen:
            continue
        upstream = [u for u in graph.successors(stage) if u in picked]
        if not upstream:  # a stage below one that will run is asked when that one is committed (needs_run)
            if not stage.changed():
                continue
            if changed is not None:
                changed.add(stage)
        chosen.append(stage)
        picked.add(stage)
    ups = {s: [u for u in graph.successors(s) if u in picked] for s in chosen}
    downs: dict = {s: [] for s in chosen}
    for s, us in ups.items():
        for u in us:
            downs[u].append(s)
    return chosen, ups, downs


def _cluster_slots(ray, opts: Options) -> int:
    res = ray.cluster_resources()
    slots = int(res.get("CPU", 1) // max(opts.cpus, 1e-9)) if opts.cpus else 10**6
    if opts.gpus:
        slots = min(slots, int(res.get("GPU", 0) // opts.gpus))
    return slots


def _start_ray(opts: Options):
    import ray

    if ray.is_initialized():
        return ray, False
    address = opts.address or os.environ.get("RAY_ADDRESS") or None
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                  configure_logging=True)
    _quiet_raylet_messages()
    # Ray starts its workers at niceness 15: on a machine shared with anything else the stages then wait
    os.environ.setdefault("RAY_worker_niceness", "0")
    # no address: a cluster of this run's own. Ray's default (address None) joins the cluster that `ray start` or
    # a ray.cluster_utils.Cluster last recorded on this machine, so a run beside such a cluster (the cluster test
    # on another pytest worker) ran its stages on that cluster's workers and died with it ("Failed to connect to
    # GCS"). To join a cluster started with `ray start`, pass its address or `--address auto`
    if address:
        _reachable(address)
    try:
        ray.init(address=address or "local", **kwargs)
    except Exception as e:  # noqa: BLE001  Ray's own startup: a timeout, a refused address, a stale session
        where = f"the cluster at {address}" if address else "a local Ray cluster for this run"
        raise RemflowError(f"could not start or join {where}", key="--address" if address else "ray",
                           got=str(e).splitlines()[0] if str(e) else type(e).__name__,
                           hint="a local start times out on a machine busy with other work: run again when it is "
                                "freer; for a cluster, check its address (`ray status` on the head node)") from e
    return ray, True


def _reachable(address: str, timeout: float = 10.0) -> None:
    """A `host:port` (or `ray://host:port`) that nothing answers is refused at once: Ray itself retries a dead
    address for minutes, printing warnings."""
    import socket

    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return  # `auto` and other forms: Ray resolves them
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise RemflowError("no Ray cluster answers at this address", key="--address", got=address,
                           hint=f"{e.strerror or e}; `ray status` on the head node prints its address "
                                "(host:6379 by default)") from None


def _quiet_raylet_messages() -> None:
    """Ray prints the raylet's error messages (a worker killed for memory, with a paragraph of advice) on the
    driver's stdout, whatever log_to_driver says; remflow run reports a lost worker itself (it reruns the
    stage and says so). Those messages go to .remflow/logs/ray.log instead."""
    try:
        import ray._private.worker as ray_worker
    except ImportError:  # pragma: no cover - another Ray layout: leave its printing as it is
        return
    shown = getattr(ray_worker, "print_to_stdstream", None)
    if shown is None or getattr(shown, "_remflow", False):
        return

    def print_to_log(data, ignore_prefix: bool = False):
        if data.get("pid") != "raylet":
            return shown(data, ignore_prefix=ignore_prefix)
        try:
            LOG_DIR.mkdir(parents=True, exist_ok=True)
            with open(LOG_DIR / "ray.log", "a") as f:
                f.write("\n".join(str(line) for line in data.get("lines", [])) + "\n")
        except OSError:
            pass

    print_to_log._remflow = True
    ray_worker.print_to_stdstream = print_to_log


def execute(root: Path, opts: Options, view=None) -> Report:
    """Run the changed stages of the DVC project at `root`; returns what happened (exit code included)."""
    from dvc.repo import Repo

    import logging

    logging.getLogger("dvc").setLevel(logging.WARNING)  # no "Updating lock file" per batch in the live view
    report = Report()
    timed = _Timer(report)
    root = Path(root).resolve()
    t_start = time.perf_counter()
    with timed("open"):
        repo = Repo(str(root))
    if Path(repo.root_dir).resolve() != root:
        raise RemflowError("not the root of a DVC project", key=str(root), got=repo.root_dir,
                           hint="run `remflow run` in a suite's folder (each has its own .dvc/)")
    stop = {"now": False}

    def on_sigint(signum, frame):
        if stop["now"]:  # a second Ctrl-C: give up committing
            raise KeyboardInterrupt
        stop["now"] = True
        if view is not None:
            view.note("Ctrl-C: committing what finished; the next run does the rest (Ctrl-C again to abort)")

    with repo.lock, repo.scm_context(quiet=True), cached_param_reads():
        changed: set = set()
        with timed("status"):
            stages, ups, downs = plan(repo, changed)
        report.planned = len(stages)
        report.changed_now = len(changed)
        if opts.dry or not stages:
            report.left = [s.addressing for s in stages]
            repo.close()
            return report
        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            _drive(repo, root, stages, ups, downs, opts, report, timed, view, stop, changed)
        finally:
            signal.signal(signal.SIGINT, previous)
    repo.close()
    report.seconds["wall"] = time.perf_counter() - t_start
    return report


def _drive(repo, root, stages, ups, downs, opts, report, timed, view, stop, changed=None):
    with timed("ray start"):
        ray, started = _start_ray(opts)
    try:
        _loop(ray, repo, root, stages, ups, downs, opts, report, timed, view, stop, changed)
    finally:
        if started:
            with timed("ray stop"):
                ray.shutdown()


def _loop(ray, repo, root, stages, ups, downs, opts, report, timed, view, stop, changed=None):
    from remflow.executor.worker import StageWorker

    slots = _cluster_slots(ray, opts)
    if slots < 1:
        have = ray.cluster_resources()
        raise RemflowError("the cluster cannot hold one run with these resources",
                           key="runtime.cpus / runtime.gpus (or --cpus / --gpus)",
                           got=f"a run asks for {opts.cpus:g} CPUs and {opts.gpus or 0:g} GPUs; the cluster has "
                               f"{have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs",
                           hint="ask for at most what one machine of the cluster has (a fraction of a GPU shares "
                                "one: --gpus 0.25)")
    # more workers than the resources hold would wait for resources forever (each holds its share while alive)
    n = max(1, min(opts.workers or slots, slots, len(stages)))
    report.workers = n
    actor_cls = ray.remote(StageWorker).options(num_cpus=opts.cpus, num_gpus=opts.gpus or 0, max_restarts=0,
                                                max_concurrency=1)
    sys_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]

    def new_worker(warm: bool = False):
        return actor_cls.remote(sys_path, warm)

    def replace(actor) -> None:
        """Kill a worker that must not run another stage (it died, or holds stale code); a fresh one idles."""
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001
            pass
        idle.append(new_worker())

    with timed("workers start"):
        idle = deque(new_worker(opts.warm and i > 0) for i in range(n))

    waiting_on = {s: len(ups[s]) for s in stages}  # upstream stages not yet committed
    ready = deque(s for s in stages if waiting_on[s] == 0)
    running: dict = {}  # future -> (stage, actor, started)
    finished: deque = deque()  # done in a worker, outputs not yet committed to the cache
    saved: list = []  # committed to the cache, not yet written to dvc.lock
    locks: dict = {}  # lock file path -> LockText
    attempts: dict = {}
    asked: set = set()  # ready stages already asked whether they need to run
    dead: set = set()  # failed or skipped
    last_write = time.perf_counter()
    log_dir = root / LOG_DIR
    if view is not None:
        view.start(len(stages), n)

    def fail(stage, why_log: str):
        report.failed[stage.addressing] = why_log
        dead.add(stage)
        with timed("remove outputs"):
            _remove_outs(stage)
        todo = list(downs[stage])
        while todo:
            d = todo.pop()
            if d in dead:
                continue
            dead.add(d)
            report.skipped[d.addressing] = stage.addressing
            todo.extend(downs[d])
        if view is not None:
            view.failed(stage.addressing, why_log)

    def save(stage) -> None:
        """Hash and commit one finished stage's outputs (cache and run cache); its dependents may start."""
        try:
            with timed("commit"):
                _save(stage)
        except Exception as e:  # noqa: BLE001  e.g. an output the command did not write
            log = str(log_dir / _log_name(stage.addressing))
            with open(log, "a") as f:
                print(f"remflow run: the stage finished but DVC could not commit it: {e}", file=f)
            fail(stage, log)
            return
        saved.append(stage)
        release(stage)

    def release(stage) -> None:
        """`stage` is committed (or needed no run): the stages that waited on it may start."""
        for d in downs[stage]:
            waiting_on[d] -= 1
            if waiting_on[d] == 0 and d not in dead:
                ready.append(d)

    def needs_run(stage) -> bool:
        """Ask DVC again about a stage picked only because an upstream stage was to run: that stage is
        committed now, and if it wrote the same bytes this one is up to date (`dvc repro` skips it too)."""
        if changed is None or stage in changed:
            return True
        with timed("status"):
            return stage.changed()

    def write_lock() -> None:
        """One atomic lock write per lock file for every stage committed since the last one."""
        nonlocal saved, last_write
        if not saved:
            return
        with timed("lock write"):
            _write_locks(repo, saved, stages, locks)
        report.commits += 1
        report.done.extend(s.addressing for s in saved)
        if view is not None:
            view.committed(len(saved))
        saved = []
        last_write = time.perf_counter()

    def spec(stage):
        cmds = stage.cmd if isinstance(stage.cmd, list) else [stage.cmd]
        return StageSpec(stage.addressing, [c for c in cmds if c.strip()], str(Path(stage.wdir).resolve()),
                         str(log_dir / _log_name(stage.addressing)),
                         {"DVC_ROOT": str(root), "DVC_STAGE": stage.addressing,
                          # a cluster run's stages may validate runtime.device: cuda on a node without CUDA
                          # (pipeline_check.CUDA_ELSEWHERE, set by run_command)
                          **({"REMFLOW_CUDA_ELSEWHERE": "1"} if os.environ.get("REMFLOW_CUDA_ELSEWHERE") else {})})

    while (ready or running or finished or saved) and not stop["now"]:
        # hand ready stages to idle workers; what DVC's run cache holds is checked out, not run (`dvc repro`)
        while ready and not stop["now"]:
            stage = ready[0]
            if stage in dead:
                ready.popleft()
                continue
            if stage not in asked and not needs_run(stage):
                ready.popleft()
                report.unchanged.append(stage.addressing)
                release(stage)
                if view is not None:
                    view.restored(stage.addressing, "up to date")
                continue
            asked.add(stage)  # needs_run asked once
            if not idle:
                break
            ready.popleft()
            with timed("remove outputs"):
                _remove_outs(stage)
            with timed("run cache"):
                hit = _restore_from_run_cache(repo, stage)
            if hit:
                report.restored.append(stage.addressing)
                finished.append(stage)
                if view is not None:
                    view.restored(stage.addressing, "restored from DVC's run cache")
                continue
            actor = idle.popleft()
            with timed("dispatch"):
                fut = actor.run.remote(spec(stage))
            running[fut] = (stage, actor, time.perf_counter())
            attempts[stage] = attempts.get(stage, 0) + 1
            if view is not None:
                view.started(stage.addressing, id(actor))
        if running:
            with timed("wait"):  # do not sit in wait while finished stages wait to be committed
                done_refs, _ = ray.wait(list(running), num_returns=1, timeout=0 if finished else 0.25)
            # collect everything else already finished too
            if done_refs:
                more, _ = ray.wait([r for r in running if r not in done_refs], num_returns=len(running) - 1,
                                   timeout=0) if len(running) > 1 else ([], None)
                done_refs += more
            for ref in done_refs:
                stage, actor, t0 = running.pop(ref)
                try:
                    out = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.ActorDiedError) as e:
                    # the worker died mid-stage: whatever it wrote is discarded and the stage runs again
                    stop_shell(str(log_dir / _log_name(stage.addressing)))
                    with timed("remove outputs"):
                        _remove_outs(stage)
                    replace(actor)
                    if view is not None:
                        view.lost(stage.addressing, id(actor))
                    if attempts[stage] <= opts.retries:
                        report.rerun.append(stage.addressing)
                        ready.appendleft(stage)
                    else:
                        fail(stage, f"worker died {attempts[stage]} times ({type(e).__name__})")
                    continue
                idle.append(actor)
                report.stage_seconds += out["seconds"]
                report.stage_times[stage.addressing] = out["seconds"]
                report.logs[stage.addressing] = str(log_dir / _log_name(stage.addressing))
                report.nodes.add(out.get("node", ""))
                if out["rc"] == 0:
                    from remflow.executor.worker import code_changed_message, stale_code

                    stale = stale_code([d.fs_path for d in stage.deps], out.get("code"))
                    if stale:  # its worker ran older code than the files DVC would record: not committed
                        log = str(log_dir / _log_name(stage.addressing))
                        again = attempts[stage] <= opts.retries
                        msg = code_changed_message(stage.addressing, stale, again)
                        with open(log, "a") as f:
                            print(msg, file=f)
                        with timed("remove outputs"):
                            _remove_outs(stage)
                        idle.remove(actor)  # it keeps the old code: a fresh worker imports the files as they are
                        replace(actor)
                        if view is not None:
                            from rich.markup import escape

                            getattr(view, "running", {}).pop(id(actor), None)
                            view.note(escape(msg))
                        else:
                            print(msg, file=sys.stderr)
                        if again:
                            ready.appendleft(stage)
                        else:
                            fail(stage, log)
                        continue
                    finished.append(stage)
                    if view is not None:
                        view.finished(stage.addressing, id(actor), out["seconds"], out.get("worker", ""))
                else:
                    fail(stage, str(log_dir / _log_name(stage.addressing)))
        # commit finished stages a few at a time, going back to dispatching in between so that no worker
        # waits on the coordinator; the lock is written for a batch of them at once
        t_commit = time.perf_counter()
        while finished and not (idle and ready and time.perf_counter() - t_commit > 0.05):
            save(finished.popleft())
        if saved and (len(saved) >= opts.batch or time.perf_counter() - last_write >= opts.commit_every_s
                      or not (running or finished)):
            write_lock()

    if stop["now"]:
        report.interrupted = True
        # stop the stages in flight; their outputs are half-written: remove them, commit nothing of theirs
        for ref, (stage, actor, _) in list(running.items()):
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.2)  # the worker is gone before its shell's pid file is read
            stop_shell(str(log_dir / _log_name(stage.addressing)))
            with timed("remove outputs"):
                _remove_outs(stage)
        running.clear()
        while finished:
            save(finished.popleft())
        write_lock()
        # up to date once their upstream stages ran: nothing to do next time either, so not left
        settled = set(report.done) | set(report.unchanged)
        report.left = [s.addressing for s in stages
                       if s.addressing not in settled and s not in dead]
    for actor in idle:
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001
            pass
    if view is not None:
        view.stop()


def commit_only(root: Path) -> int:
    """`dvc commit` for every changed stage of the project at `root`, with one lock write: each stage's deps
    and present outputs are hashed and committed as they are, nothing runs. For a change known not to alter
    the outputs (a refactor of code the stages depend on); refused, with nothing written, when a stage's output
    is missing. Returns the number of stages committed."""
    from dvc.repo import Repo

    import logging

    logging.getLogger("dvc").setLevel(logging.WARNING)
    root = Path(root).resolve()
    repo = Repo(str(root))
    try:
        if Path(repo.root_dir).resolve() != root:
            raise RemflowError("not the root of a DVC project", key=str(root), got=repo.root_dir,
                               hint="run `remflow run --commit` in a suite's folder (each has its own .dvc/)")
        with repo.lock, repo.scm_context(quiet=True), cached_param_reads():
            stages, _, _ = plan(repo)
            missing = [f"{s.addressing}: {o}" for s in stages for o in s.outs if not o.exists]
            if missing:
                raise RemflowError(f"{len(missing)} outputs are missing; --commit records outputs as they are",
                                   key=missing[0].split(":")[0], got=missing[0],
                                   hint="run the stages instead: remflow run")
            for stage in stages:
                _save(stage)
            _write_locks(repo, stages, stages, {})
        return len(stages)
    finally:
        repo.close()


def _write_locks(repo, batch, stages, locks: dict) -> None:
    """Write the lock entries of the committed stages in `batch`: one atomic write per lock file they belong
    to, each file's entries in `stages`' order. `locks` (lock file path -> LockText) keeps the parsed texts
    between batches; the files are staged in git as `dvc repro` stages them."""
    from remflow.executor.dvcio import lock_path

    by_lock: dict = {}
    for stage in batch:
        by_lock.setdefault(lock_path(stage.dvcfile), []).append(stage)
    for path, group in by_lock.items():
        if path not in locks:
            locks[path] = LockText(path, order=[st.name for st in stages])
        locks[path].update(group)
        locks[path].write()
        repo.scm_context.track_file(os.path.relpath(path))  # as DVC's Lockfile does: relative to cwd


def _restore_from_run_cache(repo, stage) -> bool:
    """What `dvc repro` does before running a stage: when DVC's run cache holds a run of this command with
    these deps and params, check its outputs out of the cache. True when it did."""
    from dvc.stage.cache import RunCacheNotFoundError

    try:
        repo.stage_cache.restore(stage)
    except RunCacheNotFoundError:
        return False
    except Exception:  # noqa: BLE001  a damaged cache entry: run the stage instead
        return False
    return True


def _remove_outs(stage) -> None:
    """What `dvc repro` does before running a stage: outputs that are not `persist` are removed."""
    for out in stage.outs:
        if out.persist:
            out.unprotect()
        elif out.exists:
            out.remove(ignore_remove=False)


def _save(stage) -> None:
    """What `dvc repro` does after a stage's command: hash its deps and outs, save the run-cache entry,
    commit the outputs to the cache. The lock entry is written later, for a batch (LockText)."""
    no_cache_outs = any(not o.use_cache for o in stage.outs if not (o.is_metric or o.is_plot))
    stage.save(run_cache=not no_cache_outs)
    stage.commit()
