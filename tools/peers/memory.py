"""Peak memory of one W2 step (linear, loss + exact implicit gradient), one peer per process.

Run as ``python -m tools.peers.memory PEER M N RHO TOL``; prints one JSON line.

Method: the process builds the problem, runs the step once (JIT compilation,
lazy library state), then records its resident set size, resets the kernel's
high-water mark (``/proc/self/clear_refs``, value 5) and runs the step again.
``peak_extra = VmHWM - VmRSS before the call``: the memory the step itself
needed beyond its (already resident) inputs. glibc's mmap threshold is pinned
(``MALLOC_MMAP_THRESHOLD_``, set by the caller) so freed work arrays go back
to the kernel instead of staying in the heap between the two calls.

"Arrays the step must hold" beyond its inputs ``X, Y, A, B``: ``U = X B^T``,
``Z``, ``G = dL/dZ``, the adjoint ``Lam`` (each ``n x m``) and the gradients
``(m x m) + (m x d)`` (docs/theory.md §8: ``O(n (m + d) + m^2 + m d)``).
"""

from __future__ import annotations

import json
import sys


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(peer: str, m: int, n: int, rho: float, tol: float) -> dict:
    from benchmarks.peers.problems import linear_problem
    from benchmarks.peers.registry import step_factories

    p = linear_problem(m, n, rho=rho)
    p.tol = tol
    p.max_iter = 5000
    fn = dict(step_factories(p))[peer]()
    out = fn()  # warm-up: compilation and lazy initialisation
    import gc

    del out
    gc.collect()
    rss0 = _status("VmRSS")
    ok = _reset_peak()
    out = fn()
    hwm = _status("VmHWM")
    inputs = 8 * (p.X.size + p.Y.size + p.A.size + p.B.size)
    must = 8 * (4 * n * m + m * m + m * p.d)
    return {
        "peer": peer,
        "m": m,
        "n": n,
        "rho": rho,
        "tol": tol,
        "fp_evals": out.fp_evals,
        "adj_evals": out.adj_evals,
        "peak_extra_bytes": hwm - rss0,
        "must_hold_extra_bytes": must,
        "input_bytes": inputs,
        "ratio_extra": (hwm - rss0) / must,
        "ratio_total": (hwm - rss0 + inputs) / (must + inputs),
        "hwm_reset": ok,
    }


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(measure(a[0], int(a[1]), int(a[2]), float(a[3]), float(a[4]))))
