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

_CONTROLLER = None


def _controller():
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


@contextmanager
def single_threaded_blas():
    """Limit every loaded BLAS library to one thread inside the block (~15 us)."""
    with _controller().limit(limits=1, user_api="blas"):
        yield


def blas_single_threaded(fn):
    """Decorator: run ``fn`` under :func:`single_threaded_blas`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_threaded_blas():
            return fn(*args, **kwargs)

    return wrapper
