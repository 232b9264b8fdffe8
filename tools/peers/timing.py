"""Interleaved timing: every peer once per repetition, order rotated, medians."""

from __future__ import annotations

import gc
import os
import sys
import time

import numpy as np

#: Seconds of pause before every timed batch. Thread pools do not go idle
#: when a call returns: OpenBLAS's workers spin (``sched_yield``) for
#: ``2^28`` TSC cycles (``OPENBLAS_THREAD_TIMEOUT``, ~0.1 s) and OpenMP's
#: for ``GOMP_SPINCOUNT``, so on a 2-core machine the system timed right after
#: a multi-threaded NumPy call shares its second core with a spinner. Measured
#: with ``python -m tools.calibrate --settle`` (2-core AMD EPYC Zen 4,
#: quiet, CLEAN, 0.2% other CPU): deqbench's map evaluation at m = 16,
#: n = 8192, under the public calls' BLAS thread limit (101 us a call alone),
#: took 204 us a call right after a 2-thread ``np.matmul``, 409 us after a
#: 50 ms pause and its normal time from 0.1 s on (the bare kernel: 86 us
#: alone, 519 us right after); numpy's matmul after a deqbench call moved
#: within its run-to-run spread (889-1187 us against 969 alone). Without the
#: pause the peer tables timed which library ran before whom: in rotated
#: order deqbench followed "numpy matmul" in two rounds of three.
SETTLE_S = 0.25


def settle(seconds: float = SETTLE_S) -> None:
    """Let every library's idle worker threads park before the next timing."""
    time.sleep(seconds)


def calibrate(fn, min_batch_s: float) -> int:
    """Calls per timed batch so that one batch lasts about ``min_batch_s``."""
    settle()
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    return max(1, int(np.ceil(min_batch_s / max(dt, 1e-6)))) if dt < min_batch_s else 1


def interleaved(fns: dict, reps: int, min_batch_s: float = 0.2, known: dict | None = None) -> dict:
    """Time each callable in ``fns`` ``reps`` times, rotating the order every repetition.

    Short calls are repeated in a batch of ``inner`` calls (chosen once) and the
    per-call time is batch / inner. Every batch starts after :func:`settle`, so
    no peer is timed while another's threads still spin. ``known``: seconds of
    an earlier (warm) call per name; calls known to last ``min_batch_s`` or more
    are not re-run to calibrate. Returns ``{name: array of per-call seconds}``.
    """
    known = known or {}
    inner = {
        k: 1 if known.get(k, 0.0) >= min_batch_s else calibrate(f, min_batch_s)
        for k, f in fns.items()
    }
    names = list(fns)
    out = {k: [] for k in names}
    for r in range(reps):
        order = names[r % len(names) :] + names[: r % len(names)]
        for k in order:
            gc.collect()
            settle()
            f, nin = fns[k], inner[k]
            t = time.perf_counter()
            for _ in range(nin):
                f()
            out[k].append((time.perf_counter() - t) / nin)
    return {k: np.array(v) for k, v in out.items()}


_PINNED = "DEQBENCH_PEERS_PINNED_THREADS"


def pin_threads(threads: int, module: str, argv) -> None:
    """Re-run ``python -m module argv`` with numba, BLAS and OpenMP limited to
    ``threads`` threads and bound to as many CPUs (the limits must precede the
    imports of the libraries' thread pools); returns at once in the re-run."""
    if os.environ.get(_PINNED) == str(threads):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if threads > len(cpus):
        raise SystemExit(f"{module.rpartition('.')[2]}: --threads {threads} exceeds the "
                         f"{len(cpus)} CPUs this process may run on")
    os.sched_setaffinity(0, cpus[:threads])
    env = dict(os.environ)
    for key in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                "MKL_NUM_THREADS"):
        env[key] = str(threads)
    env[_PINNED] = str(threads)
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)
