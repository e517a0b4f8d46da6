"""Which matrix-multiply kernels the Rust core uses.

The core multiplies with candle's built-in ``gemm`` kernels unless it is given a BLAS. The
first ``load_model`` hands it one, chosen by ``MINDSCOPE_BLAS``:

- unset: on an Intel CPU, Intel MKL if the PyPI package ``mkl`` is installed (``pip install
  "mindscope[mkl]"``; on a 2-core Intel Xeon, batched captures 7-12 % faster than OpenBLAS,
  single prompts 20 %); otherwise the OpenBLAS that numpy's Linux and macOS wheels ship
  (``scipy-openblas``, which ran this project's linear shapes 10-25 % faster than ``gemm`` on a
  2-core AMD EPYC, where MKL was slower than it: float32 forwards of Gemma 3 and MiniLM 6-24 %);
- ``openblas``: numpy's OpenBLAS even when MKL is installed; ``mkl``: MKL or an error saying
  what to install; ``0`` (or ``off``, ``gemm``): candle's ``gemm``;
- a path: any library exporting ``cblas_sgemm``.
"""

from __future__ import annotations

import glob
import os
import sys

from . import _native
from .errors import InvalidArgumentError

__all__ = ["blas_library", "default_blas_path", "mkl_path", "numpy_blas_path", "use_blas"]


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


def _cpu_is_intel() -> bool:
    """Whether /proc/cpuinfo names an Intel CPU (False where there is no /proc)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("vendor_id") and "GenuineIntel" in line for line in f)
    except OSError:
        return False


def default_blas_path() -> str | None:
    """The BLAS an unset ``MINDSCOPE_BLAS`` picks: MKL on an Intel CPU when installed, else
    numpy's OpenBLAS (None when neither is there)."""
    mkl = mkl_path() if _cpu_is_intel() else None
    return mkl or numpy_blas_path()


def use_blas(path: str) -> str:
    """Make the core multiply with ``cblas_sgemm`` from the library at ``path`` (once per
    process). Returns the library in use. Raises InvalidArgumentError if it cannot be loaded."""
    return _native.use_blas(os.fspath(path))


def blas_library() -> str | None:
    """The BLAS library the core multiplies with, or None for the built-in ``gemm`` kernels."""
    return _native.blas_library()


def enable_default_blas() -> None:
    """Pick the BLAS per ``MINDSCOPE_BLAS`` (see the module docstring); quietly keep ``gemm``
    when neither MKL nor numpy's OpenBLAS is there. Called by ``load_model``."""
    if blas_library() is not None:
        return
    choice = os.environ.get("MINDSCOPE_BLAS", "").strip()
    key = choice.lower()
    if key in ("0", "off", "false", "no", "gemm"):
        return
    if key == "mkl":
        path = mkl_path()
        if path is None:
            raise InvalidArgumentError(
                "MINDSCOPE_BLAS=mkl, but MKL is not installed in this environment "
                f"(no libmkl_rt in {os.path.join(sys.prefix, 'lib')}): pip install mkl")
    elif key == "openblas":
        path = numpy_blas_path()
        if path is None:
            raise InvalidArgumentError(
                "MINDSCOPE_BLAS=openblas, but the installed numpy bundles no OpenBLAS; "
                "allowed: unset, mkl, openblas, 0, or the path of a library with cblas_sgemm")
    elif key == "":
        path = default_blas_path()
    else:
        try:
            use_blas(choice)
        except InvalidArgumentError as e:
            raise InvalidArgumentError(
                f"MINDSCOPE_BLAS={choice!r}: {e}; allowed: unset (MKL on an Intel CPU if "
                "installed, else numpy's OpenBLAS), mkl, openblas, 0 (candle's gemm), or the path of a library "
                "exporting cblas_sgemm") from None
        return
    if path:
        use_blas(path)
