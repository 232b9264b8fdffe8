"""The machine a run happens on: CPU model, usable CPUs, package versions.

Shared by ``deqbench info``, the sweep engine (version checks on Dask
workers) and ``deqbench reproduce`` (the summary's header).
"""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` reports."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def vector_isa() -> str:
    """The CPU's vector extensions that matter for the kernels: ``avx512 (subsets)``,
    ``avx2``, or ``other`` (from /proc/cpuinfo; ``unknown`` where it is absent)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln.split(":", 1)[1].split() for ln in fh if ln.startswith("flags")), [])
    except OSError:
        return "unknown"
    if "avx512f" in flags:
        return "avx512 (" + " ".join(sorted(x for x in flags if x.startswith("avx512"))) + ")"
    return "avx2" if "avx2" in flags else "other"


def default_workers() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def versions() -> dict:
    """Versions that must agree between a sweep's client and every worker."""
    import numba
    import numpy

    import deqbench

    return {
        "python": platform.python_version(),
        "deqbench": deqbench.__version__,
        "numpy": numpy.__version__,
        "numba": numba.__version__,
    }


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
