"""How cost grows with size: log grids in m and n, with fitted exponents
(docs/theory.md §8: a Picard iteration costs ``2 m^2 n`` flops).

``time_*`` benchmarks give asv one point per size; ``Exponents`` re-times
each whole grid in one process and reports the least-squares slope of
log(CPU time per iteration) against log(size). Expected:
about 2 in ``m`` and 1 in ``n`` for Picard (less where per-call overheads
dominate small sizes), about 0 in ``n`` for a sufficient-statistics step.
Exponents are tracked, not asserted; a jump in one is a regression in how a
kernel scales.

The whole module is part of ``DEQBENCH_FULL=1`` only: its points are the
kernels of ``bench_fixed_point`` and ``bench_training`` at more sizes, and the
exponents are fits of timings (noise, not counts). The default suite times
``m = 32`` and ``m = 256``.
"""

from __future__ import annotations

import deqbench as db

from .common import (
    Bench,
    best_time,
    forward_problem,
    full_only,
    grid,
    problem,
    strict,
    training,
)

TOL = 1e-10


def picard_seconds_per_iter(p) -> float:
    """Best time of one forward Picard solve divided by its map evaluations."""
    res = strict(db.fixed_point, p.X, p.A, p.B, tol=TOL)
    t = best_time(lambda: db.fixed_point(p.X, p.A, p.B, tol=TOL))
    return t / (res.n_iter + 1)


M_GRID = grid([16, 32, 64, 128], [16, 32, 64, 128, 256, 512])
N_GRID = grid([1024, 4096, 16384], [1024, 4096, 16384, 65536, 262144])
N_FIXED = 2048  # n of the m-grid
M_FIXED = 32  # m of the n-grids
SS_STEPS = 10


def train_sufficient_stats(p, steps=SS_STEPS):
    return training()(
        p.model, p.X, p.Y, p.A, p.B, lr=0.1, steps=steps, tol=TOL, sufficient_stats=True
    )


def sufficient_stats_seconds_per_step(p) -> float:
    """Per-step time of the sufficient-statistics path with the one-off
    ``X^T X / n`` differenced out: ``(t(51 S) - t(S)) / (50 S)``."""
    t_short = best_time(lambda: train_sufficient_stats(p, SS_STEPS))
    t_long = best_time(lambda: train_sufficient_stats(p, 51 * SS_STEPS))
    return max(t_long - t_short, 1e-9) / (50 * SS_STEPS)


@full_only
class ScalingM(Bench):
    """Forward Picard solve against the width ``m`` at ``n = 2048``, ``||A||_2 = 0.5``."""

    params = [M_GRID]
    param_names = ["m"]

    def setup(self, m):
        self.p = forward_problem(m, N_FIXED)
        strict(db.fixed_point, self.p.X, self.p.A, self.p.B, tol=TOL)

    def time_picard(self, m):
        db.fixed_point(self.p.X, self.p.A, self.p.B, tol=TOL)


@full_only
class ScalingN(Bench):
    """Forward Picard solve against the sample count ``n`` at ``m = 32``."""

    params = [N_GRID]
    param_names = ["n"]

    def setup(self, n):
        self.p = forward_problem(M_FIXED, n)
        strict(db.fixed_point, self.p.X, self.p.A, self.p.B, tol=TOL)

    def time_picard(self, n):
        db.fixed_point(self.p.X, self.p.A, self.p.B, tol=TOL)


@full_only
class ScalingNSufficientStats(Bench):
    """Linear training with sufficient statistics against ``n`` (``m = d = 32``,
    10 steps): the per-step cost does not depend on ``n`` (docs/theory.md §8);
    the one-off ``X^T X / n`` is included in the time."""

    params = [N_GRID]
    param_names = ["n"]

    def setup(self, n):
        self.p = problem("linear", M_FIXED, n)
        res = strict(train_sufficient_stats, self.p)
        if res.status not in ("max_steps", "converged"):
            raise RuntimeError(f"training run failed: status={res.status!r}")

    def time_train_sufficient_stats(self, n):
        train_sufficient_stats(self.p)


@full_only
class Exponents:
    """Fitted cost exponents of a Picard iteration over the grids above (lower
    is better: a rise is a kernel that scales worse): about 2 in ``m`` (less
    while BLAS is not yet efficient at small m) and 1 in ``n``."""

    timeout = 600.0

    def track_picard_m(self):
        times = [picard_seconds_per_iter(forward_problem(m, N_FIXED)) for m in M_GRID]
        return db.theory.loglog_fit(M_GRID, times)[0]

    track_picard_m.unit = "exponent"

    def track_picard_n(self):
        times = [picard_seconds_per_iter(forward_problem(M_FIXED, n)) for n in N_GRID]
        return db.theory.loglog_fit(N_GRID, times)[0]

    track_picard_n.unit = "exponent"


@full_only
class ExponentSufficientStats:
    """Fitted exponent in ``n`` of one sufficient-statistics step, the one-off
    ``X^T X / n`` differenced out (about 0: the step does not touch the data;
    lower is better)."""

    timeout = 600.0

    def setup(self):
        training()  # NotImplementedError (asv: skip) before issue 3

    def track_sufficient_stats_n(self):
        times = [sufficient_stats_seconds_per_step(problem("linear", M_FIXED, n)) for n in N_GRID]
        return db.theory.loglog_fit(N_GRID, times)[0]

    track_sufficient_stats_n.unit = "exponent"
