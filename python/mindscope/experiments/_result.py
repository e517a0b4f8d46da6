"""What every experiment returns: arrays, metrics, a plot, and a folder on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._files import create_temp_beside
from ..errors import InvalidArgumentError, StorageError


def int_arg(value: Any, name: str, minimum: int) -> int:
    """An integer argument of an experiment; bool, float and str are refused with a message
    (instead of a TypeError from a comparison deep inside, or silent truncation)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def text_arg(value: Any, name: str) -> str:
    """A non-empty string argument."""
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{name} must be a non-empty string, got {value!r}")
    return value


def to_jsonable(value: Any) -> Any:
    """numpy scalars and arrays (and NaN, which JSON lacks) as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if np.isfinite(f) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it into place, so an existing
    file is either the old or the new version, never half of one. The file gets the user's
    normal permissions (0o666 minus the umask)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = create_temp_beside(path)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(to_jsonable(obj), f, indent=2)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise StorageError(f"cannot write {path}: {e}") from e


class ExperimentResult:
    """Base of experiment results: ``metrics()`` (JSON-able summary), ``plot(path)``,
    ``save(folder)`` which writes ``metrics.json`` and the plot there, and an interactive view
    (``view()``, shown by Jupyter, ``show()``, ``to_html(path)``)."""

    name = "experiment"

    def metrics(self) -> dict[str, Any]:
        raise NotImplementedError

    def plot(self, path: str | os.PathLike[str]) -> str:
        raise NotImplementedError

    def view(self) -> Any:
        """The interactive view of this result (a :class:`mindscope.views.View`)."""
        raise NotImplementedError

    def _repr_html_(self) -> str:
        return self.view().html()

    def show(self) -> str | None:
        """Display the interactive view in Jupyter; elsewhere write it to a temporary HTML file
        and return its path."""
        return self.view().show()

    def to_html(self, path: str | os.PathLike[str]) -> str:
        """Save the interactive view as a self-contained HTML page; returns the path."""
        return self.view().to_html(path)

    def save(self, folder: str | os.PathLike[str]) -> dict[str, str]:
        """Write ``metrics.json``, ``<name>.png`` and the interactive view ``<name>.html`` into
        ``folder``; returns their paths (keys ``metrics``, ``plot``, ``view``)."""
        out = Path(folder)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create output folder {out}: {e}") from e
        metrics_path = out / "metrics.json"
        write_json_atomic(metrics_path, self.metrics())
        png = self.plot(out / f"{self.name}.png")
        page = self.to_html(out / f"{self.name}.html")
        return {"metrics": str(metrics_path), "plot": str(png), "view": str(page)}

    def __repr__(self) -> str:
        m = self.metrics()
        keys = [k for k, v in m.items() if isinstance(v, (int, float, str))][:6]
        return f"{type(self).__name__}(" + ", ".join(f"{k}={m[k]!r}" for k in keys) + ")"
