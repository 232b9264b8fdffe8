"""How cost grows with size: log grids in m and n, with fitted exponents
(THEORY.md section 8: a Picard iteration costs ``2 m^2 n`` flops).

``time_*`` benchmarks give asv one point per size; each class's
``track_exponent`` re-times its whole grid in one process and reports the
least-squares slope of log(time per iteration) against log(size). Expected:
about 2 in ``m`` and 1 in ``n`` for Picard (less where per-call overheads
dominate small sizes), about 0 in ``n`` for the sufficient-statistics step.
Exponents are tracked, not asserted; a jump in one is a regression in how a
kernel scales.
"""

from __future__ import annotations

import numpy as np

import deqbench as db

from .common import Bench, best_time, fit_exponent, forward_problem, grid, problem, strict, training

TOL = 1e-10


def picard_seconds_per_iter(p) -> float:
    """Best time of one forward Picard solve divided by its map evaluations."""
    res = strict(db.fixed_point, p.A, p.B, p.X, tol=TOL)
    t = best_time(lambda: db.fixed_point(p.A, p.B, p.X, tol=TOL))
    return t / (res.n_iter + 1)


class ScalingM(Bench):
    """Forward Picard solve against the width ``m`` at ``n = 2048``, ``||A||_2 = 0.5``."""

    params = [grid([16, 32, 64, 128], [16, 32, 64, 128, 256, 512])]
    param_names = ["m"]
    n = 2048

    def setup(self, m):
        self.p = forward_problem(m, self.n)
        strict(db.fixed_point, self.p.A, self.p.B, self.p.X, tol=TOL)

    def time_picard(self, m):
        db.fixed_point(self.p.A, self.p.B, self.p.X, tol=TOL)

    def track_exponent(self, m):
        """Slope over the whole m-grid (the same value for every m)."""
        sizes = self.params[0]
        times = [picard_seconds_per_iter(forward_problem(s, self.n)) for s in sizes]
        return fit_exponent(sizes, times)

    track_exponent.unit = "exponent"


class ScalingN(Bench):
    """Forward Picard solve against the sample count ``n`` at ``m = 32``."""

    params = [grid([1024, 4096, 16384], [1024, 4096, 16384, 65536, 262144])]
    param_names = ["n"]
    m = 32

    def setup(self, n):
        self.p = forward_problem(self.m, n)
        strict(db.fixed_point, self.p.A, self.p.B, self.p.X, tol=TOL)

    def time_picard(self, n):
        db.fixed_point(self.p.A, self.p.B, self.p.X, tol=TOL)

    def track_exponent(self, n):
        sizes = self.params[0]
        times = [picard_seconds_per_iter(forward_problem(self.m, s)) for s in sizes]
        return fit_exponent(sizes, times)

    track_exponent.unit = "exponent"


class ScalingNSufficientStats(Bench):
    """Linear training with sufficient statistics against ``n`` (``m = d = 32``,
    10 steps): the per-step cost does not depend on ``n`` (THEORY.md section 8).
    Timed per step with the one-off ``X^T X / n`` included, so the fitted
    exponent is small but not exactly 0."""

    params = [grid([1024, 4096, 16384], [1024, 4096, 16384, 65536, 262144])]
    param_names = ["n"]
    m = 32
    steps = 10

    def _run(self, p):
        return training()(
            p.model, p.X, p.Y, p.A, p.B, lr=0.1, steps=self.steps, tol=TOL, sufficient_stats=True
        )

    def setup(self, n):
        self.p = problem("linear", self.m, n)
        res = strict(self._run, self.p)
        if res.status not in ("max_steps", "converged"):
            raise RuntimeError(f"training run failed: status={res.status!r}")

    def time_train_sufficient_stats(self, n):
        self._run(self.p)

    def track_exponent(self, n):
        sizes = self.params[0]
        times = []
        for s in sizes:
            p = problem("linear", self.m, s)
            times.append(best_time(lambda p=p: self._run(p)))
        return fit_exponent(sizes, np.asarray(times) / self.steps)

    track_exponent.unit = "exponent"
