"""Progress of long calls: work done, rate and ETA, on a terminal or in Jupyter.

One bar for every long call: runs over many prompts, attribution, probe sweeps, the
experiments, dumps, corpus extraction and statistics. It is a ``\\r`` line on stderr, a line
updated in place in a notebook (an IPython display handle, no widget library), and nothing
when output is not interactive.

Every long public call takes ``progress: bool | None = None``: ``None`` shows the bar when
the session is interactive (stderr is a terminal, or a Jupyter kernel runs the code),
``False`` never shows it, ``True`` always does (on stderr when there is no terminal).

Calls into the Rust core pass :func:`native_progress`'s callable, which the core calls with
``(done, total)`` as batches finish (at most every 50 ms, from the calling thread); raising
``KeyboardInterrupt`` from it stops the work.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .errors import InvalidArgumentError

# Redraw at most this often (seconds): a terminal line is cheap, a notebook update is not.
_TERMINAL_EVERY = 0.1
_NOTEBOOK_EVERY = 0.25
# A bar shown because the session is interactive waits this long before its first line, so
# that quick calls (one prompt, a small fit) leave no trace; a forced bar draws at once.
_AUTO_DELAY = 0.5


def check_progress(progress: Any) -> bool | None:
    """``progress`` as given (``True``, ``False`` or ``None``), or an InvalidArgumentError."""
    if progress is None or isinstance(progress, bool):
        return progress
    raise InvalidArgumentError(f"progress must be True, False or None (show when interactive), got {progress!r}")


def _jupyter() -> bool:
    """Whether the code runs in a Jupyter kernel."""
    shell = sys.modules.get("IPython")
    try:
        ip = shell.get_ipython() if shell else None  # type: ignore[attr-defined]
    except Exception:  # any trouble with IPython: treat as not a notebook
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def is_interactive() -> bool:
    """Whether a bar shows by default: stderr is a terminal or a Jupyter kernel runs the code."""
    return _jupyter() or _stderr_is_terminal()


def shows(progress: bool | None) -> bool:
    """Whether a call given ``progress`` draws a bar."""
    progress = check_progress(progress)
    return is_interactive() if progress is None else progress


class _Text:
    """A line that a notebook shows as plain text (a ``str`` would show with its quotes)."""

    def __init__(self, line: str):
        self.line = line

    def __repr__(self) -> str:
        return self.line

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.line)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ProgressBar:
    """Work done out of ``total``, items/s and ETA: a ``\\r`` line on stderr, a line updated in
    place in Jupyter (an IPython display handle), or nothing.

    ``on`` is a call's ``progress`` argument: ``None`` draws when interactive (from half a
    second into the work, so quick calls show nothing), ``True`` always, ``False`` never.
    ``update(n)`` adds work done, ``set(done, total)`` replaces the counts (what the core
    reports); both are safe from several threads.
    """

    def __init__(self, total: int, on: bool | None, unit: str = "prompts", label: str = ""):
        self.total, self.done, self.unit, self.label = int(total), 0, unit, label
        self.t0 = time.perf_counter()
        self.delay = _AUTO_DELAY if on is None else 0.0
        self.notebook = self.stream = False
        if shows(on):
            self.notebook = _jupyter()
            self.stream = not self.notebook
        self.handle: Any = None  # the notebook's display handle, made at the first draw
        self.drawn_at = -1.0
        self.lock = threading.Lock()

    @property
    def visible(self) -> bool:
        return self.notebook or self.stream

    def _show_in_notebook(self, line: str) -> None:
        if self.handle is None:
            try:
                from IPython.display import display

                self.handle = display(_Text(line), display_id=True)
                return
            except Exception:  # any trouble with IPython: fall back to stderr rather than fail the job
                self.notebook, self.stream = False, True
                sys.stderr.write("\r" + line + " ")
                return
        self.handle.update(_Text(line))

    def _line(self) -> str:
        """``label: [####......] done/total unit  rate unit/s  elapsed  ETA remaining``."""
        dt = time.perf_counter() - self.t0
        rate = self.done / dt if dt > 0 else 0.0
        left = max(self.total - self.done, 0)
        eta = _duration(left / rate) if rate > 0 else ("0s" if left == 0 else "?")
        filled = int(30 * min(self.done, self.total) / max(self.total, 1))
        head = f"{self.label}: " if self.label else ""
        return (f"{head}[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {self.unit}  "
                f"{rate:.1f} {self.unit}/s  {_duration(dt)}  ETA {eta}")

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force:
            if now - self.t0 < self.delay:
                return
            every = _NOTEBOOK_EVERY if self.notebook else _TERMINAL_EVERY
            if self.done < self.total and now - self.drawn_at < every:
                return
        self.drawn_at = now
        if self.notebook:
            self._show_in_notebook(self._line())
        elif self.stream:
            sys.stderr.write("\r" + self._line() + " ")
            sys.stderr.flush()

    def update(self, n: int) -> None:
        with self.lock:
            self.done += int(n)
            if self.visible:
                self._draw()

    def set(self, done: int, total: int) -> None:
        with self.lock:
            self.done, self.total = int(done), int(total)
            if self.visible:
                self._draw()

    def close(self) -> None:
        """End the bar: draw its final counts (if it was drawn, or is forced) and end the line."""
        with self.lock:
            if self.visible and (self.drawn_at >= 0 or self.delay == 0):
                self._draw(force=True)
                if self.stream:
                    sys.stderr.write("\n")
                    sys.stderr.flush()
            self.handle, self.notebook, self.stream = None, False, False


@contextmanager
def progress_bar(total: int, progress: bool | None, unit: str, label: str = "") -> Iterator[ProgressBar]:
    """A :class:`ProgressBar` closed (its line ended) however the block exits."""
    bar = ProgressBar(total, progress, unit, label)
    try:
        yield bar
    finally:
        bar.close()


@contextmanager
def native_progress(progress: bool | None, unit: str, label: str = "") -> Iterator[Callable[[int, int], None] | None]:
    """The ``progress`` callable to pass to a core call, or None when no bar shows (then the
    core reports nowhere and pays nothing). The bar is made at the first report, whose
    ``total`` the core knows, and closed when the block exits."""
    if not shows(progress):
        yield None
        return
    bar: ProgressBar | None = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = ProgressBar(total, progress, unit, label)
        bar.set(done, total)

    try:
        yield report
    finally:
        if bar is not None:
            bar.close()
