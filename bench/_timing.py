"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def median_time(fn: Callable[[], T], repeats: int, warmup: bool = True) -> tuple[float, T]:
    """Median wall time of ``repeats`` calls (after one untimed warm-up call) and the last result."""
    if warmup:
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out
