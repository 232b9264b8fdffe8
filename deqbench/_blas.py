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
    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    ok = libs and all(
        i.get("internal_api") == "openblas"
        and str(i.get("architecture", "")).lower() in _SMALL_GEMM_CORES
        and _version(i.get("version", "")) >= (0, 3, 16)
        for i in libs)
    return _SMALL_GEMM_MNK if ok else 0
