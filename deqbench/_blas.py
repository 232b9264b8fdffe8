"""The BLAS that numba's ``np.dot`` calls: what the kernels need to know of it.

A floor module (it imports nothing of deqbench): the kernels read
:func:`small_gemm_mnk` when they are imported.
"""

from __future__ import annotations

#: OpenBLAS cores with the AVX-512 small-matrix gemm (OpenBLAS >= 0.3.16,
#: ``kernel/x86_64/*gemm_small_kernel_*_skylakex.c``; Cooper Lake and Sapphire
#: Rapids build on Skylake-X's kernels): a plain ``C = A B`` of ``M N K <=
#: 10^6`` runs straight from the operands, without the copies into packed
#: panels of the blocked path (``dgemm_small_kernel_permit_skylakex.c``).
_SMALL_GEMM_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})
_SMALL_GEMM_MNK = 10**6


def _version(text) -> tuple:
    parts = []
    for p in str(text).split(".")[:3]:
        if not p.isdigit():
            break
        parts.append(int(p))
    return tuple(parts)


def numba_blas(info: list) -> list:
    """The BLAS entries of threadpoolctl's ``info``, less the ``libmkl_rt`` that
    :func:`mkl_gemm` loaded (the kernels call it by address, never through
    numba's ``np.dot``)."""
    import os

    own = {os.path.realpath(v["path"]) for v in _MKL.values() if isinstance(v, dict)}
    return [i for i in info if i.get("user_api") == "blas"
            and os.path.realpath(str(i.get("filepath", ""))) not in own]


def small_gemm_mnk() -> int:
    """Largest ``M N K`` for which the BLAS that numba's ``np.dot`` calls (SciPy's)
    multiplies without packing: ``10**6`` where every BLAS loaded is OpenBLAS
    >= 0.3.16 running a Skylake-X-family core (AVX-512 CPUs, AMD Zen 4 among
    them), else 0 (other BLAS, AVX2 cores: no such path, or not known).

    Read once, when the kernels are imported; cached kernels keep the value
    they were compiled with (numba's cache is keyed on the CPU, not on
    ``OPENBLAS_CORETYPE``: clear it after forcing another core)."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the BLAS numba calls)
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - both are dependencies
        return 0
    libs = numba_blas(threadpool_info())
    ok = libs and all(
        i.get("internal_api") == "openblas"
        and str(i.get("architecture", "")).lower() in _SMALL_GEMM_CORES
        and _version(i.get("version", "")) >= (0, 3, 16)
        for i in libs)
    return _SMALL_GEMM_MNK if ok else 0


# --- an optional faster gemm: MKL's CBLAS (``pip install deqbench[mkl]``) -----

MKL_ENV = "DEQBENCH_MKL_RT"
"""Environment variable: the ``libmkl_rt`` to load (a file, or the folder that
holds it), before the ``mkl`` distribution's own files and ``<prefix>/lib``."""

_MKL_THREADING_SEQUENTIAL = 1
_MKL_INTERFACE_LP64 = 0


class MklUnavailable(RuntimeError):
    """MKL's gemm cannot be used here; the message says why (one line)."""


def _mkl_candidates() -> list[str]:
    import glob
    import os
    import sys

    found = []
    env = os.environ.get(MKL_ENV, "")
    if env:
        if os.path.isdir(env):
            found += sorted(glob.glob(os.path.join(env, "libmkl_rt.*")))
        else:
            found.append(env)
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution("mkl")
        found += sorted(str(dist.locate_file(f)) for f in (dist.files or [])
                        if os.path.basename(str(f)).startswith("libmkl_rt."))
    except (ImportError, PackageNotFoundError):
        pass
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        found += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.*")))
    return list(dict.fromkeys(found))


def mkl_version() -> str:
    """Version of the ``mkl`` distribution, the ``$DEQBENCH_MKL_RT`` path, or
    ``"absent"``: part of a calibration's key (nothing is loaded)."""
    import os

    env = os.environ.get(MKL_ENV, "")
    try:
        from importlib.metadata import PackageNotFoundError, version

        installed = version("mkl")
    except (ImportError, PackageNotFoundError):
        installed = ""
    if env:
        return f"{installed or 'path'} ({env})"
    return installed or "absent"


_MKL: dict = {}


def mkl_gemm() -> dict:
    """MKL's ``cblas_dgemm`` and ``cblas_sgemm``: ``{"dgemm": address, "sgemm":
    address, "path": ..., "version": ...}``, loaded once per process (the
    addresses are this process's: the kernels take them as run-time values).

    ``libmkl_rt`` is switched to its sequential threading layer (the kernels
    call it from numba's threads, one block each) and the LP64 interface
    (32-bit integers). Raises :class:`MklUnavailable` where no ``libmkl_rt``
    is found, it does not load, or another user of it fixed other layers."""
    import ctypes

    key = tuple(_mkl_candidates())
    if key in _MKL:
        hit = _MKL[key]
        if isinstance(hit, MklUnavailable):
            raise hit
        return hit
    if not key:
        err = MklUnavailable(f"no libmkl_rt found (pip install mkl, or set {MKL_ENV})")
        _MKL[key] = err
        raise err
    reasons = []
    for path in key:
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            reasons.append(f"{path}: {exc}")
            continue
        layer = lib.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL)
        if layer != _MKL_THREADING_SEQUENTIAL:
            reasons.append(f"{path}: already loaded with threading layer {layer}, not sequential")
            continue
        iface = lib.MKL_Set_Interface_Layer(_MKL_INTERFACE_LP64)
        if iface != _MKL_INTERFACE_LP64:
            reasons.append(f"{path}: interface layer {iface}, not LP64")
            continue
        buf = ctypes.create_string_buffer(256)
        lib.MKL_Get_Version_String(buf, len(buf))
        found = {
            "dgemm": ctypes.cast(lib.cblas_dgemm, ctypes.c_void_p).value,
            "sgemm": ctypes.cast(lib.cblas_sgemm, ctypes.c_void_p).value,
            "path": path,
            "version": buf.value.decode(errors="replace").strip(),
            "lib": lib,
        }
        _MKL[key] = found
        return found
    err = MklUnavailable("; ".join(reasons))
    _MKL[key] = err
    raise err
