"""Why a tanh solve at small m sits below the matmul rate: the activation against the gemm.

    deqbench quiet --strict -- python -m tools.activation_cost [--n N] [--m 16,32]

One map evaluation of a tanh DEQ is a gemm ``(n, m) @ (m, m)`` (``2 n m^2``
flops) plus one elementwise pass over ``n m`` values. The gemm's work per value
grows with m and the activation's does not, so below some m the activation
costs as much as the gemm and no fusion can bring the evaluation to the
matmul rate. This times, per m and in one process (numba's and BLAS's thread
settings as the environment sets them; wall times, medians of back-to-back
calls), the solver's own map evaluation (``fixed_point.evaluate``: row-block
gemm and fused pass) with the identity and with tanh, next to numpy's matmul
of the same shapes and numpy's ``np.tanh`` over the same values, in ns per
value. ``tanh's own cost`` is the difference of the two evaluations;
``tanh eval / matmul`` is the fraction of the matmul rate a tanh evaluation
reaches (W4's efficiency, before the gradient's gemms); ``tanh for 85%`` is
what tanh could cost per value for an evaluation at 85% of the matmul rate.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from deqbench._kernels.activations import IDENTITY, TANH
from deqbench._kernels.fixed_point import evaluate
from deqbench._threads import single_threaded_blas

from .peers.timing import settle


def measure(n: int, m: int, rounds: int = 21) -> dict:
    """Seconds per call (median of ``rounds`` back-to-back calls) of numpy's matmul,
    the identity and the tanh map evaluation, and ``np.tanh`` over ``n x m`` values.

    Each function is timed in a block of its own calls, after a pause
    (:func:`~tools.peers.timing.settle`): alternating them call by call made
    numba's and OpenBLAS's thread pools wake (and spin) against each other on 2
    cores, which timed the hand-over, not the work (a 4 MFLOP gemm at m = 16
    took 3.3 ms that way)."""
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((n, m))
    A = rng.standard_normal((m, m)) / np.sqrt(m)
    U = rng.standard_normal((n, m))
    T = np.empty((n, m))
    out = np.empty((n, m))
    D = np.zeros((1, 1))

    def solver_eval(code):
        def run():
            with single_threaded_blas():  # as the public calls run it: no nested BLAS threads
                evaluate(Z, A, U, code, 0.0, D, T, 1.0)
        return run

    fns = {
        "gemm": lambda: np.matmul(Z, A, out=T),
        "identity eval": solver_eval(IDENTITY),
        "tanh eval": solver_eval(TANH),
        "np.tanh": lambda: np.tanh(U, out=out),
    }
    result = {}
    for k, f in fns.items():
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
    p = argparse.ArgumentParser(prog="python -m tools.activation_cost",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--m", default="16,32,64,256", help="comma-separated widths (%(default)s)")
    p.add_argument("--rounds", type=int, default=21)
    args = p.parse_args(argv)
    ms = [int(x) for x in args.m.split(",")]
    if args.n < 1 or args.rounds < 1 or min(ms) < 1:
        p.error("--n, --rounds and every m must be >= 1")
    print(f"n = {args.n}; ns per value (n m values), medians of {args.rounds} rounds")
    print("| m | matmul | identity eval | tanh eval | tanh's own cost | np.tanh "
          "| tanh eval / matmul | tanh for 85% |")
    print("|---|---|---|---|---|---|---|---|")
    for m in ms:
        t = measure(args.n, m, args.rounds)
        ns = {k: 1e9 * v / (args.n * m) for k, v in t.items()}
        own = ns["tanh eval"] - ns["identity eval"]
        need = ns["gemm"] / 0.85 - ns["identity eval"]
        print(f"| {m} | {ns['gemm']:.3f} | {ns['identity eval']:.3f} | {ns['tanh eval']:.3f} | "
              f"{own:.3f} | {ns['np.tanh']:.3f} | {100 * t['gemm'] / t['tanh eval']:.0f}% | "
              f"{need:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
