"""What a run costs: wall time and peak memory above the starting level (recorded for every unlearning run)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
import time
from dataclasses import dataclass

import torch


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (another C library)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


def _trim_heap() -> None:
    """Hand the memory that earlier work freed back to the system (glibc's malloc_trim, under a millisecond), so
    that the resident set a measurement starts from holds no free heap the measured work could reuse without
    growing it: a `remflow run` worker runs many stages in one process, and without this a stage's peak read
    0 MB whenever an earlier stage had freed as much (0.0 for 5 of the default suite's 9 Retrain runs).
    No gc.collect(): a quarter of a second with torch loaded, and what it would free is not a run's tensors."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@dataclass
class Cost:
    seconds: float = 0.0
    peak_memory_mb: float = 0.0


@contextlib.contextmanager
def measure(device: torch.device):
    """Wall time and peak memory above the starting level: CUDA allocator peak, or the process's resident-set
    high-water mark on CPU (reset through /proc/self/clear_refs, Linux), measured from a resident set with the
    free heap trimmed (`_trim_heap`), so that a process that ran other work before measures the same."""
    cost = Cost()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_mem = torch.cuda.memory_allocated()
    else:
        _trim_heap()
        with contextlib.suppress(OSError):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        start_mem = _rss_kb("VmRSS") * 1024
    t0 = time.perf_counter()
    try:
        yield cost
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _rss_kb("VmHWM") * 1024
        cost.seconds = time.perf_counter() - t0
        cost.peak_memory_mb = max(0.0, (peak - start_mem) / 2**20)
