"""The one place for numba options used by every kernel.

``fastmath`` keeps ``nnan``/``ninf`` off so ``np.isfinite`` checks inside kernels
stay meaningful; ``error_model="numpy"`` returns inf/nan instead of raising from
inside a kernel (numerical failure becomes a status, never an exception).
"""

from __future__ import annotations

import hashlib
import types
from pathlib import Path

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


def twins(fn):
    """Compile a ``prange`` kernel twice: ``(serial, parallel)``.

    Callers pick by problem size (``PASS_PARALLEL_MIN`` in
    :mod:`deqbench._kernels.fixed_point`). The serial twin
    is a copy of the function under another qualified name, so the two
    compilations never share an on-disk cache entry.
    """
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                              fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + "_serial"
    copy.__module__ = fn.__module__
    copy.__doc__ = fn.__doc__
    return jit(copy), pjit(fn)


prange = nb.prange

# A serial kernel loaded from the on-disk cache calls the parallel kernels it
# was compiled against without going through their dispatchers, so nothing
# would start numba's thread pool and the first parallel region would crash.
# Every kernel module imports this one: start the pool here, once.
nb.get_num_threads()


_PKG = Path(__file__).resolve().parent


def _drop_stale_cache(pkg: Path = _PKG) -> None:
    """Delete the package's cached kernels when any kernel source changed.

    numba keys a cached kernel on its own file only: a kernel calling a kernel
    of another module that has since changed would load stale machine code
    (seen here as wrong results and segfaults after edits or upgrades). The
    digest covers every module that compiles kernels, plus numba's version.
    """
    sources = [pkg / "_jit.py", pkg / "activations.py", *sorted((pkg / "_kernels").glob("*.py"))]
    h = hashlib.sha256(nb.__version__.encode())
    for path in sources:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    digest = h.hexdigest()
    stamp = pkg / "__pycache__" / "numba-kernels.sha256"
    try:
        if stamp.read_text() == digest:
            return
    except OSError:
        pass
    try:
        for cached in [*pkg.glob("__pycache__/*.nb[ic]"), *pkg.glob("*/__pycache__/*.nb[ic]")]:
            cached.unlink(missing_ok=True)
        stamp.parent.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:  # read-only install: numba then caches elsewhere, or not at all
        pass


_drop_stale_cache()
