"""Memory of a training step as the iteration count grows (docs/theory.md §8).

An exact implicit step stores no unrolled graph: its peak memory is
``O(n (m + d) + m^2 + m d)`` whatever the forward and adjoint iteration counts.
``K`` below is the number of Picard iterations each solve needs (dialled in with
a symmetric ``A`` of spectral radius ``tol^(1/K)``); every value here must stay
flat in ``K``. An unrolled graph would add ``8 K n m`` bytes (1000 iterations at
n = 4096, m = 16: 500 MiB).
"""

from __future__ import annotations

import numpy as np

import deqbench as db

from .common import (
    Bench,
    grid,
    peak_rss_increase_mib,
    problem,
    strict,
    training,
)

TOL = 1e-8


def step_problem(K: int, n: int = 4096, m: int = 16):
    p = problem("linear", m, n)
    p.A = db.data.symmetric_with_spectrum(np.linspace(-1.0, 1.0, m) * TOL ** (1.0 / K))
    return p


class StepMemory(Bench):
    """One exact GD step (``loss_and_grad``, Picard forward and adjoint),
    linear model, ``n = 4096, m = d = 16``.

    ``peakmem_gd_step``: asv's peak RSS of the process (data + one step).
    ``track_step_peak_increase``: peak RSS added by the step alone, in MiB
    (lower is better, flat in ``K``). ``track_fp_iters`` confirms ``K``.
    """

    params = [grid([10, 1000], [10, 100, 1000, 5000])]
    param_names = ["K"]
    rounds = 1

    def setup(self, K):
        self.p = step_problem(K)
        self.info = strict(self._step).info

    def _step(self):
        p = self.p
        return db.loss_and_grad("linear", p.X, p.Y, p.A, p.B, tol=TOL, max_iter=20 * 5000)

    def peakmem_gd_step(self, K):
        self._step()

    def track_step_peak_increase(self, K):
        return peak_rss_increase_mib(self._step)

    track_step_peak_increase.unit = "MiB"

    def track_fp_iters(self, K):
        return self.info["fp_iters"]

    track_fp_iters.unit = "iterations"


class TrainMemory(Bench):
    """``deqbench.train`` for 5 steps of the problem above (per-sample path,
    ``record_every=1``): peak memory flat in ``K``."""

    params = [grid([10, 1000], [10, 100, 1000, 5000])]
    param_names = ["K"]
    rounds = 1
    steps = 5

    def setup(self, K):
        self.train = training()
        self.p = step_problem(K)
        res = strict(self._run)
        if res.status not in ("max_steps", "converged"):
            raise RuntimeError(f"training run failed: status={res.status!r}")
        self.fp_iters = float(np.mean(res.history["fp_iters"]))

    def _run(self):
        p = self.p
        return self.train(
            "linear",
            p.X,
            p.Y,
            p.A,
            p.B,
            lr=1e-9,
            steps=self.steps,
            tol=TOL,
            warm_start=False,
            max_iter=20 * 5000,
            sufficient_stats=False,
        )

    def peakmem_train(self, K):
        self._run()

    def track_train_peak_increase(self, K):
        return peak_rss_increase_mib(self._run)

    track_train_peak_increase.unit = "MiB"

    def track_fp_iters_per_step(self, K):
        return self.fp_iters

    track_fp_iters_per_step.unit = "iterations"
