"""Which matrix-multiply kernels the Rust core uses.

The core multiplies with candle's built-in ``gemm`` kernels unless it is given a BLAS. numpy's
Linux and macOS wheels ship OpenBLAS (``scipy-openblas``), which ran this project's linear
shapes 10-25 % faster than ``gemm`` on a 2-core AMD EPYC; ``load_model`` therefore hands the
core numpy's copy the first time it runs. Set ``MINDSCOPE_BLAS=0`` to keep ``gemm``, or
``MINDSCOPE_BLAS=/path/to/libopenblas.so`` to use another library exporting ``cblas_sgemm``.
"""

from __future__ import annotations

import glob
import os

from . import _native

__all__ = ["blas_library", "numpy_blas_path", "use_blas"]


def numpy_blas_path() -> str | None:
    """Path of the OpenBLAS bundled in the installed numpy wheel, or None if it has none."""
    import numpy

    root = os.path.dirname(numpy.__file__)
    patterns = [os.path.join(root, os.pardir, "numpy.libs", "*openblas*.so*"),  # Linux wheels
                os.path.join(root, ".dylibs", "*openblas*.dylib")]  # macOS wheels
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return os.path.realpath(found[0])
    return None


def use_blas(path: str) -> str:
    """Make the core multiply with ``cblas_sgemm`` from the library at ``path`` (once per
    process). Returns the library in use. Raises InvalidArgumentError if it cannot be loaded."""
    return _native.use_blas(os.fspath(path))


def blas_library() -> str | None:
    """The BLAS library the core multiplies with, or None for the built-in ``gemm`` kernels."""
    return _native.blas_library()


def enable_default_blas() -> None:
    """Pick the BLAS per ``MINDSCOPE_BLAS`` (unset: numpy's own); quietly keep ``gemm`` when
    numpy has none. Called by ``load_model``."""
    if blas_library() is not None:
        return
    choice = os.environ.get("MINDSCOPE_BLAS", "").strip()
    if choice.lower() in ("0", "off", "false", "no", "gemm"):
        return
    path = choice or numpy_blas_path()
    if path:
        use_blas(path)
