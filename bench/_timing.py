"""Helpers shared by the benchmark scripts: timing, and finding the reference implementation."""

from __future__ import annotations

import statistics
import subprocess
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


def have_transformers(python: str) -> bool:
    """Whether ``python`` (this interpreter, or the one given by --hf-python) has transformers."""
    try:
        res = subprocess.run([python, "-c", "import torch, transformers"], capture_output=True, check=False)
    except OSError:  # no such interpreter
        return False
    return res.returncode == 0
