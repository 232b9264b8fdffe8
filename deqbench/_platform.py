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

    from ._version import __version__

    return {
        "python": platform.python_version(),
        "deqbench": __version__,
        "numpy": numpy.__version__,
        "numba": numba.__version__,
    }
