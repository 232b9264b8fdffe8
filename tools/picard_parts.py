"""Where block-resident Picard's time goes: the row-block gemms, the fused pass, the rest.

    deqbench quiet --strict -- python -m tools.picard_parts [--n N] [--m 16,32,64]

``fixed_point.picard`` (identity map, tol 0, ``K`` evaluations, one thread,
BLAS single-threaded as the public calls run it) iterates each row block of
:func:`~deqbench._kernels.blocks.block_rows` rows in cache: per evaluation
one gemm ``block @ M`` and one fused pass (add ``U``, residual norms,
damping). This times, in one process, the same blocks ping-ponged ``K``
times with the gemms alone, the pass alone and both, next to ``picard``
itself and to numpy's matmul over the whole batch ``K`` times, as GFLOP/s of
``2 n m^2 K`` and as shares of ``picard``'s time (medians of interleaved
rounds). ``gemm + pass`` short of ``picard`` is the stopping rule and the
bookkeeping; the gemms' rate is the ceiling of any fused kernel built on
BLAS.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from deqbench._jit import jit
from deqbench._kernels import fixed_point as fp
from deqbench._kernels.activations import IDENTITY
from deqbench._kernels.blocks import block_rows
from deqbench._threads import single_threaded_blas

from .peers.timing import settle


@jit
def _blocks(Z, M, U, D, T, rows, evaluations, gemm, fused):
    """Every block ping-ponged ``evaluations`` times between ``Z`` and ``T``:
    its gemm when ``gemm``, its pass (:func:`~deqbench._kernels.fixed_point._finish`)
    when ``fused``. Returns the sum of the passes' norms (kept live)."""
    n = Z.shape[0]
    s = 0.0
    for i0 in range(0, n, rows):
        i1 = min(i0 + rows, n)
        z, x, u = Z[i0:i1], T[i0:i1], U[i0:i1]
        for k in range(evaluations):
            cur = z if k % 2 == 0 else x
            nxt = x if k % 2 == 0 else z
            if gemm:
                np.dot(cur, M, nxt)
            if fused:
                dd, ff = fp._finish(cur, u, IDENTITY, 0.0, D, nxt, 0, i1 - i0, 1.0)
                s += dd + ff
    return s


def measure(n: int, m: int, evaluations: int = 64, rounds: int = 15) -> tuple[int, dict]:
    """``(rows per block, {part: median seconds})`` for one width."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((m, m))
    A *= 0.5 / max(np.abs(np.linalg.eigvals(A)).max(), 1e-300)
    M = np.ascontiguousarray(A.T)
    U = rng.standard_normal((n, m))
    Z, T = np.empty((n, m)), np.empty((n, m))
    D = np.zeros((1, 1))
    hist = np.empty(evaluations + 2)
    rows = int(block_rows(n, m))
    K = evaluations
    parts = {
        "gemms": lambda: _blocks(Z, M, U, D, T, rows, K, True, False),
        "pass": lambda: _blocks(Z, M, U, D, T, rows, K, False, True),
        "gemm + pass": lambda: _blocks(Z, M, U, D, T, rows, K, True, True),
        "picard": lambda: fp.picard(Z, M, U, IDENTITY, 0.0, D, T, 0.0, K - 1, 1.0, hist, 1,
                                    rows),
        "numpy matmul": lambda: [np.matmul(Z, M, out=T) for _ in range(K)],
    }
    times: dict = {k: [] for k in parts}
    with single_threaded_blas():
        for f in parts.values():
            Z[:] = 0.0
            f()  # compile, fault in
        for _ in range(rounds):
            for k, f in parts.items():
                Z[:] = 0.1
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    return rows, {k: float(np.median(v)) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.picard_parts",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--m", default="16,32,64,256", help="comma-separated widths (%(default)s)")
    p.add_argument("--evaluations", type=int, default=64)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    ms = [int(x) for x in args.m.split(",")]
    if args.n < 1 or args.rounds < 1 or args.evaluations < 2 or min(ms) < 1:
        p.error("--n, --rounds and every m must be >= 1, --evaluations >= 2")
    print(f"n = {args.n}, {args.evaluations} evaluations, one thread: "
          f"GFLOP/s (share of picard's time), medians of {args.rounds} rounds")
    names = ("gemms", "pass", "gemm + pass", "picard", "numpy matmul")
    print("| m | rows | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    for m in ms:
        settle()
        rows, t = measure(args.n, m, args.evaluations, args.rounds)
        flops = 2.0 * args.n * m * m * args.evaluations
        cells = [f"{flops / t[k] / 1e9:.1f} ({100 * t[k] / t['picard']:.0f}%)" for k in names]
        print(f"| {m} | {rows} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
