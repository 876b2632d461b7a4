"""What a run costs, as results.csv reports it: peak memory above the starting level, measured the same in a
process that ran other work before (a `remflow run` worker runs many stages)."""

from __future__ import annotations

import torch

from remflow.cost import measure


def _allocate(mb: int, kept: list) -> int:
    """A run's working memory, 1 MB blocks freed at its end, and a small object that outlives it (as a stage's
    logs and records do) above them on the heap, so the freed blocks stay with the process."""
    blocks = [torch.ones(256, 1024) for _ in range(mb)]
    kept.append(torch.ones(64))
    return len(blocks)


def test_peak_memory_is_measured_again_after_the_same_work_was_freed():
    cpu = torch.device("cpu")
    peaks, kept = [], []
    for _ in range(5):
        with measure(cpu) as cost:
            _allocate(64, kept)
        peaks.append(cost.peak_memory_mb)
    # without the heap trimmed at the start, the third read 2 MB: the blocks freed before were reused
    assert all(56 <= p <= 96 for p in peaks), peaks
    with measure(cpu) as small:
        _allocate(8, kept)
    assert small.peak_memory_mb < 32 and small.seconds >= 0
