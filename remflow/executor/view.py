"""The live view of `remflow run` on stderr: counts, ETA and what each worker runs (rich); in a pipe or a log,
one plain line per event instead."""

from __future__ import annotations

import sys
import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class View:
    def __init__(self, live: bool | None = None, console: Console | None = None):
        self.console = console or Console(stderr=True, highlight=False)
        self.live_mode = self.console.is_terminal if live is None else live
        self.total = self.done = self.failed_n = self.ran = 0
        self.workers = 0
        self.running: dict[int, tuple[str, float]] = {}  # worker -> (stage, started)
        self.names: dict[int, str] = {}
        self.durations: list[float] = []
        self.notes: list[str] = []
        self.t0 = time.perf_counter()
        self._live: Live | None = None

    # -- events from the coordinator
    def start(self, total: int, workers: int) -> None:
        self.total, self.workers, self.t0 = total, workers, time.perf_counter()
        if self.live_mode:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False,
                              get_renderable=self._render)
            self._live.start()
        else:
            self._print(f"remflow run: {total} stages on {workers} workers")

    def started(self, stage: str, worker: int) -> None:
        self.names.setdefault(worker, f"w{len(self.names)}")
        self.running[worker] = (stage, time.perf_counter())

    def finished(self, stage: str, worker: int, seconds: float, where: str) -> None:
        self.running.pop(worker, None)
        self.ran += 1
        self.durations.append(seconds)
        if not self.live_mode:
            self._print(f"[{self.ran}/{self.total}] {stage} ({seconds:.1f}s, {where})")

    def restored(self, stage: str, how: str) -> None:
        """A stage that needed no worker: checked out of DVC's run cache (committed later, as a run is), or up
        to date after all (nothing to commit)."""
        self.ran += 1
        if how == "up to date":
            self.done += 1
        if not self.live_mode:
            self._print(f"[{self.ran}/{self.total}] {stage} ({how})")

    def committed(self, n: int) -> None:
        self.done += n

    def failed(self, stage: str, log: str) -> None:
        self.failed_n += 1
        for w, (s, _) in list(self.running.items()):
            if s == stage:
                self.running.pop(w)
        self.note(f"[red]failed[/red] {stage}: {log}")

    def lost(self, stage: str, worker: int) -> None:
        self.running.pop(worker, None)
        self.note(f"[yellow]worker lost[/yellow] running {stage}: it runs again")

    def note(self, text: str) -> None:
        self.notes.append(text)
        if not self.live_mode:
            self._print(Text.from_markup(text).plain)

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None

    # -- drawing
    def eta(self) -> float | None:
        if not self.durations:
            return None
        left = self.total - self.done - self.failed_n - len(self.running)
        mean = sum(self.durations) / len(self.durations)
        in_flight = sum(max(0.0, mean - (time.perf_counter() - t)) for _, t in self.running.values())
        return (left * mean + in_flight) / max(1, self.workers)

    def _render(self):
        queued = max(0, self.total - self.done - self.failed_n - len(self.running) - (self.ran - self.done))
        head = Text.from_markup(
            f"[bold]remflow run[/bold]  [green]done {self.done}[/green] · [cyan]running {len(self.running)}[/cyan]"
            f" · [red]failed {self.failed_n}[/red] · queued {queued} · of {self.total}"
            f"   elapsed {_fmt(time.perf_counter() - self.t0)}  ETA {_fmt(self.eta())}")
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column(style="dim")
        table.add_column()
        table.add_column(justify="right", style="dim")
        now = time.perf_counter()
        for w, (stage, t) in sorted(self.running.items(), key=lambda kv: self.names.get(kv[0], "")):
            table.add_row(self.names.get(w, "?"), stage, _fmt(now - t))
        parts = [head, table] + [Text.from_markup(n) for n in self.notes[-5:]]
        return Group(*parts)

    def _print(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)
