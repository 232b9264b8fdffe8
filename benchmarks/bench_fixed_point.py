"""Forward solve: method x activation x width (docs/theory.md §3).

Default suite: Picard and Anderson, identity and tanh (the two code paths of
the map: a plain gemm pass and one through the activation table), at
``m = 32`` (bound by the elementwise pass) and ``m = 256`` (bound by the
gemm), ``n = N_AT[m]`` so one solve takes >= ~10 ms. ``DEQBENCH_FULL=1`` adds
damping, the direct solve, every activation and more widths.
"""

from __future__ import annotations

import deqbench as db
from deqbench.theory import predicted_fp_iters

from .common import (
    N_AT,
    TOL,
    Bench,
    Tracked,
    allocations,
    contraction_rate,
    cost_ratio,
    forward_problem,
    grid,
    matmul,
    strict,
)

METHODS = {
    "picard": {"method": "picard"},
    "damped": {"method": "picard", "damping": 0.8},
    "anderson": {"method": "anderson"},
    "direct": {"method": "direct"},
}
ACTIVATIONS = ["identity", "tanh", "leaky_relu(0.2)", "sigmoid", "softplus", "relu", "gelu"]
PARAM_NAMES = ["method", "activation", "m"]
PARAMS = [
    grid(["picard", "anderson"], list(METHODS)),
    grid(["identity", "tanh"], ACTIVATIONS),
    grid([32, 256], [16, 32, 64, 256]),
]
#: The counts cost no noise: a wider grid than the timings.
METRIC_PARAMS = [list(METHODS), grid(ACTIVATIONS[:3], ACTIVATIONS), PARAMS[2]]


def setup_forward(method, activation, m):
    """Problem at ``||A||_2 = 0.5`` with ``n = N_AT[m]``, solver options and the
    first solve (numba compiled or loaded, buffers touched)."""
    if method == "direct" and activation != "identity":
        raise NotImplementedError("method='direct' solves linear maps only")
    p = forward_problem(m, N_AT[m], rho=0.5, activation=activation)
    kw = dict(METHODS[method], activation=activation, tol=TOL)
    return p, kw, strict(db.fixed_point, p.X, p.A, p.B, **kw)


class FixedPoint(Bench):
    """``deqbench.fixed_point`` at ``||A||_2 = 0.5``, ``tol = 1e-10``, ``n = N_AT[m]``."""

    params = PARAMS
    param_names = PARAM_NAMES

    def setup(self, method, activation, m):
        self.p, self.kw, _ = setup_forward(method, activation, m)

    def time_fixed_point(self, method, activation, m):
        db.fixed_point(self.p.X, self.p.A, self.p.B, **self.kw)


class FixedPointMetrics(Tracked):
    """Machine-independent numbers of the solves timed by ``FixedPoint``.

    * ``map_evaluations``: evaluations of the map per solve (``n_iter + 1``;
      1 for ``direct``). Exact: any rise is a regression.
    * ``iterations_over_predicted``: ``n_iter / theory.predicted_fp_iters(r, tol)``
      with ``r`` the spectral radius of the (damped) iteration matrix for the
      linear map (about 1) and the bound ``Lip(phi) ||A||_2`` for a nonlinear
      map (at most 1); ``direct``: 0.
    * ``bytes_allocated``: ``tracemalloc`` peak of one solve after a warm-up.
    * ``nrt_allocations``: allocations inside compiled code per solve (exact).
    * ``efficiency``: CPU time of the solve over ``map_evaluations`` numpy
      matmuls ``Z @ A^T`` of the same shapes, timed in the same process (a
      ratio: machines of one ISA agree on it; 1 would be pure BLAS).
    """

    params = METRIC_PARAMS
    param_names = PARAM_NAMES
    tracks = {
        "map_evaluations": "evaluations",
        "iterations_over_predicted": "ratio",
        "bytes_allocated": "bytes",
        "nrt_allocations": "allocations",
        "efficiency": "time / numpy matmul time",
    }

    def setup_cache(self):
        return self.sweep()

    def measure(self, method, activation, m):
        p, kw, res = setup_forward(method, activation, m)
        evals = len(res.history)
        if method == "direct":
            ratio = 0.0
        else:
            rate = contraction_rate(p.A, kw.get("damping", 1.0), activation)
            ratio = res.n_iter / predicted_fp_iters(rate, TOL)
        solve = lambda: db.fixed_point(p.X, p.A, p.B, **kw)  # noqa: E731
        alloc = allocations(solve)
        return {
            "map_evaluations": evals,
            "iterations_over_predicted": ratio,
            "bytes_allocated": alloc["bytes"],
            "nrt_allocations": alloc["nrt"],
            "efficiency": cost_ratio(solve, [(matmul(res.z, p.A.T), evals)]),
        }


class FixedPointContraction(Tracked):
    """Iteration counts as the spectral radius ``rho(A)`` approaches 1 (linear
    map, Gaussian ``A``, ``||A||_2 ~ 2 rho``, ``m = 32, n = 1024``): Picard
    needs about ``theory.predicted_fp_iters(rho, tol)`` plus a transient,
    Anderson far fewer. Counts only (the time per evaluation is ``FixedPoint``'s)."""

    params = [["picard", "anderson"], [0.5, 0.9, 0.99]]
    param_names = ["method", "rho"]
    tracks = {"map_evaluations": "evaluations", "iterations_over_predicted": "ratio"}

    def setup_cache(self):
        return self.sweep()

    def measure(self, method, rho):
        p = forward_problem(32, 1024)
        A = db.data.with_spectral_radius(p.A, rho)
        res = strict(db.fixed_point, p.X, A, p.B, method=method, tol=TOL, max_iter=100_000)
        predicted = predicted_fp_iters(contraction_rate(A), TOL)
        return {
            "map_evaluations": len(res.history),
            "iterations_over_predicted": res.n_iter / predicted,
        }
