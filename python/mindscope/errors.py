"""Typed exceptions raised by mindscope.

Every error the Rust core reports arrives as one of these. Each also derives from the
built-in exception a Python user would reach for first (``ValueError``, ``KeyError``,
``OSError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class MindscopeError(Exception):
    """Base class of every mindscope error."""


class InvalidArgumentError(MindscopeError, ValueError):
    """An argument has a value that is not allowed (the message says what is)."""


class ShapeError(InvalidArgumentError):
    """An array has the wrong shape or length."""


class UnknownHookError(MindscopeError, KeyError):
    """A hook name the model does not have; the message lists the closest valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelFormatError(MindscopeError, ValueError):
    """A model file or folder that cannot be read (not GGUF, truncated, missing file or tensor)."""


class UnsupportedArchitectureError(MindscopeError, ValueError):
    """A model architecture mindscope does not implement; the message lists the supported ones."""


class NotFittedError(MindscopeError, ValueError):
    """An estimator was used before ``fit``."""


class DataError(MindscopeError, ValueError):
    """Input data that cannot be used: NaN/inf features, a single class, malformed lines."""


class MissingDependencyError(DataError):
    """An optional package a step needs is not installed; the message says what to install.
    (A :class:`DataError`, as it was before it had a class of its own.)"""


class StorageError(MindscopeError, OSError):
    """Reading or writing a file or dump failed."""


class ComputeError(MindscopeError, RuntimeError):
    """A numerical backend failed. Please report it: this is a bug or an exotic input."""


class InternalError(MindscopeError, RuntimeError):
    """A bug in mindscope (a panic in the core, caught at the boundary). Please report it with the
    call that caused it; the process and everything already written to disk are intact."""


class ResourceError(MindscopeError, MemoryError):
    """A request would need more memory than the machine has; the message says how to ask for less."""


class WorkerError(MindscopeError, RuntimeError):
    """``fn`` (or loading the model) failed on a worker. ``block`` and ``prompt_range``
    (``(lo, hi)``) say what it was working on, ``remote_traceback`` where it failed; the
    original exception is the ``__cause__`` when it could be sent back."""

    def __init__(self, message: str, block: int = -1, prompt_range: tuple[int, int] = (0, 0),
                 remote_traceback: str = ""):
        super().__init__(message)
        self.block, self.prompt_range, self.remote_traceback = block, prompt_range, remote_traceback


__all__ = [
    "MindscopeError",
    "InvalidArgumentError",
    "ShapeError",
    "UnknownHookError",
    "ModelFormatError",
    "UnsupportedArchitectureError",
    "NotFittedError",
    "DataError",
    "MissingDependencyError",
    "StorageError",
    "ComputeError",
    "InternalError",
    "ResourceError",
    "WorkerError",
]
