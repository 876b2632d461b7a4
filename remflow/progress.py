"""Progress on stderr: a rich bar with ETA in a terminal, one plain line per epoch otherwise (dvc repro in CI,
dvc queue logs). Results never go here; they go to files."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from rich.console import Console

err = Console(stderr=True, highlight=False)


def _interactive() -> bool:
    if os.environ.get("REMFLOW_PROGRESS") == "plain":
        return False
    return err.is_terminal


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Progress:
    """`with Progress("pretrain", total=epochs) as p: ... p.advance(loss=0.3, val=0.9)`.

    Nested progress (REM's flush inside its repair loop) adds a line to the live display in a terminal and
    prints one summary line at its end otherwise, so logs stay one line per outer epoch.
    """

    _live = None  # the rich display shared by nested bars
    _depth = 0

    def __init__(self, label: str, total: int, unit: str = "epoch"):
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.info = ""
        self.t0 = time.perf_counter()
        self._task = None
        self._nested = False

    def __enter__(self) -> "Progress":
        self._nested = Progress._depth > 0
        Progress._depth += 1
        if _interactive() and self.total > 0:
            if Progress._live is None:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn
                from rich.progress import TimeElapsedColumn, TimeRemainingColumn

                Progress._live = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                              TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                              TextColumn("{task.fields[info]}"), console=err, transient=True)
                Progress._live.start()
            self._task = Progress._live.add_task(self.label, total=self.total, info="")
        return self

    def advance(self, n: int = 1, **info: Any) -> None:
        self.done += n
        self.info = "  ".join(f"{k} {_fmt(v)}" for k, v in info.items())
        if self._task is not None:
            Progress._live.update(self._task, advance=n, info=self.info)
        elif not self._nested:
            dt = time.perf_counter() - self.t0
            print(f"[{self.label}] {self.unit} {self.done}/{self.total}  {self.info}  ({dt:.1f}s)", file=sys.stderr,
                  flush=True)

    def __exit__(self, *exc) -> None:
        Progress._depth -= 1
        if self._task is not None:
            Progress._live.remove_task(self._task)
            if Progress._depth == 0:
                Progress._live.stop()
                Progress._live = None
        elif self._nested and self.done:
            dt = time.perf_counter() - self.t0
            print(f"  [{self.label}] {self.done} {self.unit}s  {self.info}  ({dt:.1f}s)", file=sys.stderr, flush=True)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
