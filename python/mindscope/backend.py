"""Which matrix-multiply kernels the Rust core uses.

The core multiplies with candle's built-in ``gemm`` kernels unless it is given a BLAS. numpy's
Linux and macOS wheels ship OpenBLAS (``scipy-openblas``), which ran this project's linear
shapes 10-25 % faster than ``gemm`` on a 2-core AMD EPYC; ``load_model`` therefore hands the
core numpy's copy the first time it runs. Set ``MINDSCOPE_BLAS=0`` to keep ``gemm``,
``MINDSCOPE_BLAS=mkl`` for Intel MKL from the PyPI package ``mkl`` (on an Intel Xeon: batched
captures 6-12 % faster than OpenBLAS, single prompts 20 %), or ``MINDSCOPE_BLAS=/path/to/libopenblas.so`` for another library exporting
``cblas_sgemm``.
"""

from __future__ import annotations

import glob
import os
import sys

from . import _native
from .errors import InvalidArgumentError

__all__ = ["blas_library", "mkl_path", "numpy_blas_path", "use_blas"]


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


def mkl_path() -> str | None:
    """Path of ``libmkl_rt`` from the PyPI package ``mkl`` (installed under ``sys.prefix/lib``),
    or None if it is not installed."""
    found = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
    return os.path.realpath(found[0]) if found else None


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
    if choice.lower() == "mkl":
        path = mkl_path()
        if path is None:
            raise InvalidArgumentError(
                "MINDSCOPE_BLAS=mkl, but MKL is not installed in this environment "
                f"(no libmkl_rt in {os.path.join(sys.prefix, 'lib')}): pip install mkl")
    else:
        path = choice or numpy_blas_path()
    if path:
        use_blas(path)
