"""The one place for numba options used by every kernel.

``fastmath`` keeps ``nnan``/``ninf`` off so ``np.isfinite`` checks inside kernels
stay meaningful; ``error_model="numpy"`` returns inf/nan instead of raising from
inside a kernel (numerical failure becomes a status, never an exception).
"""

from __future__ import annotations

import numba as nb

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

_COMMON = dict(cache=True, nogil=True, error_model="numpy")


def jit(fn=None, **overrides):
    """Serial kernel: ``numba.njit`` with the project options."""
    opts = {**_COMMON, "fastmath": set(FASTMATH), **overrides}
    if fn is None:
        return lambda f: nb.njit(**opts)(f)
    return nb.njit(**opts)(fn)


def pjit(fn=None, **overrides):
    """Parallel kernel (``prange`` over samples)."""
    return jit(fn, parallel=True, **overrides)


prange = nb.prange

# A serial kernel loaded from the on-disk cache calls the parallel kernels it
# was compiled against without going through their dispatchers, so nothing
# would start numba's thread pool and the first parallel region would crash.
# Every kernel module imports this one: start the pool here, once.
nb.get_num_threads()
