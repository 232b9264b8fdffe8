"""Why a tanh solve at small m sits below the matmul rate: the activation against the gemm.

    ../shared/tools/quiet --strict -- python -m benchmarks.activation_cost [--n N] [--m 16,32]

One map evaluation of a tanh DEQ is a gemm ``(n, m) @ (m, m)`` (``2 n m^2``
flops) plus one elementwise pass ``t <- tanh(t + u)`` over ``n m`` values. The
gemm's work per value grows with m and the pass's does not, so below some m
the pass costs as much as the gemm and no fusion can bring the evaluation to
the matmul rate. This prints, per m and in one process (all threads, wall
times, medians of back-to-back calls): the gemm (numpy's matmul), deqbench's
fused pass (``h_row`` over blocks of rows, as the solver runs it), the same
pass with the identity (memory traffic only), and numpy's own ``np.tanh``
(SIMD through SVML where numpy has it), each in ns per value, and the bound
they set: ``gemm / (gemm + pass)``, the highest fraction of the matmul rate a
tanh evaluation can reach when the pass does not overlap the gemm.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from deqbench._jit import pjit, prange
from deqbench._kernels.activations import IDENTITY, TANH, h_row

from .peers.timing import settle


@pjit
def _pass(code, t, u, rows):
    """``t <- h(t + u)`` over ``t``'s rows in blocks of ``rows`` rows, as the solver's
    flat passes do (one contiguous loop per block)."""
    n, m = t.shape
    nb = (n + rows - 1) // rows
    unused = np.empty(0)  # h_row's mask, read only by the dropout code
    for b in prange(nb):
        i0 = b * rows
        i1 = min(n, i0 + rows)
        h_row(code, 0.0, t[i0:i1].reshape(-1), u[i0:i1].reshape(-1), unused)


def measure(n: int, m: int, rounds: int = 21) -> dict:
    """Seconds per call (median of ``rounds`` back-to-back calls) of the gemm, the fused
    tanh pass, the identity pass and ``np.tanh`` over ``n x m`` values.

    Each function is timed in a block of its own calls, after a pause
    (:func:`~benchmarks.peers.timing.settle`): alternating them call by call made
    numba's and OpenBLAS's thread pools wake (and spin) against each other on 2
    cores, which timed the hand-over, not the work (a 4 MFLOP gemm at m = 16
    took 3.3 ms that way)."""
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((n, m))
    A = rng.standard_normal((m, m)) / np.sqrt(m)
    U = rng.standard_normal((n, m))
    T = np.empty((n, m))
    out = np.empty((n, m))
    rows = max(1, 4096 // m)
    fns = {
        "gemm": lambda: np.matmul(Z, A, out=T),
        "tanh pass": lambda: _pass(TANH, T, U, rows),
        "identity pass": lambda: _pass(IDENTITY, T, U, rows),
        "np.tanh": lambda: np.tanh(U, out=out),
    }
    result = {}
    for k, f in fns.items():
        T[...] = Z  # bounded inputs for the passes (tanh of tanh of ...)
        settle()  # the previous function's threads park
        for _ in range(3):  # compile, fault in, wake the pool
            f()
        ts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        result[k] = float(np.median(ts))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.activation_cost",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--m", default="16,32,64,256", help="comma-separated widths (%(default)s)")
    p.add_argument("--rounds", type=int, default=21)
    args = p.parse_args(argv)
    ms = [int(x) for x in args.m.split(",")]
    if args.n < 1 or args.rounds < 1 or min(ms) < 1:
        p.error("--n, --rounds and every m must be >= 1")
    print(f"n = {args.n}; ns per value (n m values), medians of {args.rounds} rounds")
    print("| m | gemm | tanh pass | identity pass | np.tanh | bound gemm/(gemm+tanh pass) |")
    print("|---|---|---|---|---|---|")
    for m in ms:
        t = measure(args.n, m, args.rounds)
        ns = {k: 1e9 * v / (args.n * m) for k, v in t.items()}
        bound = t["gemm"] / (t["gemm"] + t["tanh pass"])
        print(f"| {m} | {ns['gemm']:.3f} | {ns['tanh pass']:.3f} | {ns['identity pass']:.3f} | "
              f"{ns['np.tanh']:.3f} | {100 * bound:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
