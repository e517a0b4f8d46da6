"""Progress of long calls: prompts done, rate and ETA, on a terminal or in Jupyter.

One bar for every long Python-side loop (dumps, corpus extraction, corpus statistics):
a ``\\r`` line on a terminal, a line updated in place in a notebook (an IPython display
handle, no widget library), nothing when output is not interactive or ``on`` is false.
"""

from __future__ import annotations

import sys
import time
from typing import Any


class ProgressBar:
    """Prompts done, prompts/s and ETA: a ``\\r`` line on a terminal, a line updated in place in
    Jupyter (an IPython display handle, no widget library needed), nothing otherwise."""

    def __init__(self, total: int, on: bool, unit: str = "prompts"):
        self.total, self.done, self.unit, self.t0 = total, 0, unit, time.perf_counter()
        self.handle: Any = None
        self.tty = False
        if on:
            self.handle = self._jupyter_handle()
            self.tty = self.handle is None and sys.stderr.isatty()

    def _jupyter_handle(self) -> Any:
        shell = sys.modules.get("IPython")
        try:
            ip = shell.get_ipython() if shell else None  # type: ignore[attr-defined]
            if ip is None or type(ip).__name__ != "ZMQInteractiveShell":
                return None
            from IPython.display import display

            return display(self._line(), display_id=True)
        except Exception:  # any trouble with IPython: fall back to no bar rather than fail the job
            return None

    def _line(self) -> str:
        dt = time.perf_counter() - self.t0
        rate = self.done / dt if dt > 0 else 0.0
        eta = f"{(self.total - self.done) / rate:.0f}s" if rate > 0 else "?"
        filled = int(30 * self.done / max(self.total, 1))
        return (f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {self.unit} "
                f"{rate:.1f}/s ETA {eta}")

    def update(self, n: int) -> None:
        self.done += n
        if self.handle is not None:
            self.handle.update(self._line())
        elif self.tty:
            sys.stderr.write("\r" + self._line() + " ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
