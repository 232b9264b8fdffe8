"""float32 against float64 (issue 11): W1 (forward Picard solve of the linear DEQ)
and W2 (loss and exact implicit gradient) on the same problem in both dtypes.

The pair ``time_w1``/``time_w2`` at ``dtype="float32"`` and ``"float64"`` gives the
throughput ratio (target: float32 at >= 1.7x). Both dtypes solve to ``tol = 1e-5``
(above the float32 floor ``8 eps = 9.5e-7``, :func:`deqbench.tol_floor`) so they do the
same number of map evaluations (``track_map_evaluations``; compare timings per
evaluation if the counts differ). Default grid m = 256, n = 2048;
``DEQBENCH_FULL=1`` adds m = 1024.
"""

from __future__ import annotations

import numpy as np

import deqbench as db

from .common import Ungated, forward_problem, grid, rel_err, strict

SIZES = grid([256], [256, 1024])
N = 2048
DTOL = 1e-5


class Dtype(Ungated):
    """W1 and W2 at ``||A||_2 = 0.5``, ``tol = 1e-5``, ``n = 2048``, in float32 and float64."""

    params = (["float64", "float32"], SIZES)
    param_names = ["dtype", "m"]

    def setup(self, dtype, m):
        p = forward_problem(m, N, rho=0.5)
        dt = np.dtype(dtype)
        self.X, self.A, self.B = (np.ascontiguousarray(a, dt) for a in (p.X, p.A, p.B))
        self.Y = np.ascontiguousarray(p.Y, dt)
        self.fp = strict(db.fixed_point, self.X, self.A, self.B, tol=DTOL)
        self.lg = strict(db.loss_and_grad, "linear", self.X, self.Y, self.A, self.B, tol=DTOL)
        if dtype == "float32":  # the float32 gradient within 1e-4 of float64 (the bar)
            ref = db.loss_and_grad("linear", p.X, p.Y, p.A, p.B, tol=1e-10)
            err = max(rel_err(self.lg.grad_A, ref.grad_A), rel_err(self.lg.grad_B, ref.grad_B))
            if not err <= 1e-4:
                raise AssertionError(f"float32 gradient {err:.2e} from float64 at m = {m}")

    def time_w1(self, dtype, m):
        db.fixed_point(self.X, self.A, self.B, tol=DTOL)

    def time_w2(self, dtype, m):
        db.loss_and_grad("linear", self.X, self.Y, self.A, self.B, tol=DTOL)

    def track_map_evaluations(self, dtype, m):
        return self.fp.n_iter + 1

    track_map_evaluations.unit = "evaluations"
