"""Where per-sample Anderson converges beyond the contraction domain (docs/theory.md §3).

    python -m tools.anderson_domain [--m 3,8,16] [--seeds 6]

For random Gaussian ``m x m`` maps scaled to a spectral radius ``rho(A) > 1``,
``n = 25`` samples, ``tol = 1e-10``, ``max_iter = 2000`` and a window of
``m + 2`` residuals (more than the ``m + 1`` with which Anderson terminates in
exact arithmetic), this counts the seeds on which ``deqbench.fixed_point(...,
method="anderson")`` converges. The pattern is what makes ``train`` and
``flow`` certify Anderson on the contraction domain only: beyond it the outcome
depends on the instance and on rounding, not on a test that the
sufficient-statistics path could run on ``A``. Not a timing: no quiet machine
needed.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np

import deqbench as db

RHOS = (3.16, 10.0, 31.6, 100.0, 316.0, 1000.0, 3162.0, 10000.0)


def converged(m: int, rho: float, seeds: int) -> int:
    """Seeds (of ``seeds``) on which Anderson reaches ``tol`` at ``rho(A) = rho``."""
    ok = 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed * 1000 + m)
        A = rng.standard_normal((m, m))
        A *= rho / np.max(np.abs(np.linalg.eigvals(A)))
        X = rng.standard_normal((25, 4))
        B = rng.standard_normal((m, 4))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", db.ConvergenceWarning)
            r = db.fixed_point(X, A, B, method="anderson", tol=1e-10, max_iter=2000,
                               anderson_history=m + 2)
        ok += r.status == "converged"
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.anderson_domain",
                                description=__doc__.splitlines()[0])
    p.add_argument("--m", default="3,8,16", help="comma-separated widths (default 3,8,16)")
    p.add_argument("--seeds", type=int, default=6, help="random maps per cell (default 6)")
    a = p.parse_args(argv)
    ms = [int(x) for x in a.m.split(",")]
    print("| m \\ rho(A) | " + " | ".join(f"{r:g}" for r in RHOS) + " |")
    print("|---" * (len(RHOS) + 1) + "|")
    for m in ms:
        row = [converged(m, rho, a.seeds) for rho in RHOS]
        print(f"| {m} | " + " | ".join(f"{k}/{a.seeds}" for k in row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
