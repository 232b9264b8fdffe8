"""Thread policy: numba's threads split the samples, BLAS runs single-threaded inside.

Every public solver call runs its kernels under :func:`blas_single_threaded`:
the kernels hand row blocks to numba's threads (``prange``) and call BLAS on
each block from inside that parallel region, where BLAS threads of its own
would only contend with numba's. The number of threads is numba's
(``NUMBA_NUM_THREADS``, ``numba.set_num_threads``); limit it to limit deqbench.
The BLAS limit is restored when the call returns, so NumPy code around
deqbench keeps its own thread settings.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager

__all__ = ["blas_single_threaded", "single_threaded_blas"]

_BLAS = None


def _blas_libraries() -> list:
    """threadpoolctl's controllers of the BLAS libraries loaded at the first call."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController().select(user_api="blas").lib_controllers
    return _BLAS


@contextmanager
def single_threaded_blas():
    """Limit every loaded BLAS library to one thread inside the block.

    Talks to the libraries' controllers directly rather than through
    ``ThreadpoolController.limit``, which re-reads every library's state on
    each call (``results/calibrate/README.md``), and only touches libraries
    not already at one thread.
    Libraries loaded after deqbench's first call are not seen."""
    libs = _blas_libraries()
    old = [lib.get_num_threads() for lib in libs]
    for lib, k in zip(libs, old, strict=True):
        if k != 1:
            lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, k in zip(libs, old, strict=True):
            if k != 1:
                lib.set_num_threads(k)


def blas_single_threaded(fn):
    """Decorator: run ``fn`` under :func:`single_threaded_blas`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_threaded_blas():
            return fn(*args, **kwargs)

    return wrapper
