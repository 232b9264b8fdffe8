"""The one place for numba options used by every kernel, and for their cache.

``fastmath`` keeps ``nnan``/``ninf`` off so ``np.isfinite`` checks inside kernels
stay meaningful; ``error_model="numpy"`` returns inf/nan instead of raising from
inside a kernel (numerical failure becomes a status, never an exception).
Compiled kernels are cached on disk by :class:`KernelCacheLocator`, one folder
per version of the kernel sources.

Compile time: a kernel called from a kernel with an integer constant
(``f(x, 0)``), or with a loop counter that starts at a constant (type inference
first sees ``Literal[int](0)``, then ``int64``), compiles once per literal
besides its ``int64`` specialisation. Pass ``np.int64(0)`` and start counters
at ``np.int64(0)``; ``tests/test_jit_cache.py`` checks a cold start for such
twice-compiled kernels.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import types
from pathlib import Path

import numba as nb
from numba.core import caching, config

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
KEEP_CACHES = 4
"""Kernel caches kept side by side, one per digest of the kernel sources (the
most recently used): enough for a regression gate that alternates two commits."""


def kernel_digest(pkg: Path = _PKG) -> str:
    """SHA-256 of every module that compiles kernels, plus numba's version.

    numba keys a cached kernel on its own file only: a kernel calling a kernel
    of another module that has since changed would load stale machine code
    (seen here as wrong results and segfaults after edits or upgrades). This
    digest is the source stamp of every cached kernel instead.
    """
    sources = [pkg / "_jit.py", pkg / "activations.py", *sorted((pkg / "_kernels").glob("*.py"))]
    h = hashlib.sha256(nb.__version__.encode())
    for path in sources:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_root(pkg: Path = _PKG) -> Path:
    """Where the kernel caches live: ``$NUMBA_CACHE_DIR/deqbench`` when the user
    set one, else the package's own ``__pycache__/numba``."""
    if config.CACHE_DIR:
        return Path(config.CACHE_DIR) / "deqbench"
    return pkg / "__pycache__" / "numba"


def prune_caches(root: Path, keep: int = KEEP_CACHES, current: str = "") -> None:
    """Delete all but the ``keep`` most recently used digest folders under ``root``
    (``current`` is never deleted)."""
    try:
        dirs = sorted((d for d in root.iterdir() if d.is_dir() and d.name != current),
                      key=lambda d: d.stat().st_mtime, reverse=True)
    except OSError:
        return
    for d in dirs[max(keep - 1, 0):]:
        shutil.rmtree(d, ignore_errors=True)


class KernelCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """numba cache locator of deqbench's kernels: one folder per digest of the
    kernel sources (:func:`kernel_digest`), which is also every entry's source stamp.

    Any edit of a kernel module (or a numba upgrade) moves every kernel to a new
    folder, so nothing compiled against other sources is ever loaded; switching
    back and forth between two versions (a regression gate reinstalls BASE and
    HEAD in turn) finds each one's kernels still compiled. File times play no
    part: a reinstall of the same sources keeps its cache.
    """

    package: Path = _PKG
    digest = ""
    root: Path | None = None

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        rel = Path(py_file).resolve().parent.relative_to(self.package)
        self._cache_path = str(self.root / self.digest[:20] / rel)

    def get_cache_path(self):
        return self._cache_path

    def get_source_stamp(self):
        return self.digest

    @classmethod
    def from_function(cls, py_func, py_file):
        if cls.root is None or not Path(py_file).resolve().is_relative_to(cls.package):
            return None  # not a deqbench kernel: numba's own locators decide
        return super().from_function(py_func, py_file)  # None when not writable


def _install_locator() -> None:
    KernelCacheLocator.digest = kernel_digest()
    KernelCacheLocator.root = cache_root()
    here = KernelCacheLocator.root / KernelCacheLocator.digest[:20]
    try:
        here.mkdir(parents=True, exist_ok=True)
        os.utime(here)  # most recently used
    except OSError:  # read-only: numba's own locators then cache elsewhere, or not at all
        pass
    prune_caches(KernelCacheLocator.root, current=here.name)
    impl = caching.CacheImpl if hasattr(caching, "CacheImpl") else caching._CacheImpl
    if KernelCacheLocator not in impl._locator_classes:
        impl._locator_classes.insert(0, KernelCacheLocator)


_install_locator()
