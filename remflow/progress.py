"""Progress on stderr: a rich bar with ETA in a terminal; otherwise (dvc repro piped to a file, CI) one line when
a training run ends and at most one every 30 s while it runs. REMFLOW_PROGRESS=plain prints a line per epoch
(remflow run's stage logs, the tests). Results never go here; they go to files."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from rich.console import Console

err = Console(stderr=True, highlight=False)
BRIEF_EVERY_S = 30.0  # off a terminal, without REMFLOW_PROGRESS=plain: at most one line this often


def _interactive() -> bool:
    if os.environ.get("REMFLOW_PROGRESS") == "plain":
        return False
    return err.is_terminal


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Progress:
    """`with Progress("pretrain", total=epochs) as p: ... p.advance(loss=0.3, val=0.9)`.

    One bar per training run; a nested phase (REM's flush) is not a bar of its own: its epochs show in the
    figures of the outer epoch (`flush 3`).
    """

    def __init__(self, label: str, total: int, unit: str = "epoch"):
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.info = ""
        self.t0 = self._said = time.perf_counter()
        self._live = None
        self._task = None

    def __enter__(self) -> "Progress":
        if _interactive() and self.total > 0:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn
            from rich.progress import TimeElapsedColumn, TimeRemainingColumn

            self._live = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                      TextColumn("{task.fields[info]}"), console=err, transient=True)
            self._live.start()
            self._task = self._live.add_task(self.label, total=self.total, info="")
        return self

    def advance(self, n: int = 1, **info: Any) -> None:
        self.done += n
        self.info = "  ".join(f"{k} {_fmt(v)}" for k, v in info.items())
        if self._live is not None:
            self._live.update(self._task, advance=n, info=self.info)
        else:
            now = time.perf_counter()
            if (os.environ.get("REMFLOW_PROGRESS") == "plain" or self.done >= self.total
                    or now - self._said >= BRIEF_EVERY_S):
                self._said = now
                print(f"[{self.label}] {self.unit} {self.done}/{self.total}  {self.info}  ({now - self.t0:.1f}s)",
                      file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
