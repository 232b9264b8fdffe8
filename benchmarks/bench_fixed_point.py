"""Forward solve: method x activation x (m, n) (THEORY.md section 3)."""

from __future__ import annotations

import deqbench as db

from .common import (
    TOL,
    Bench,
    cached,
    contraction_rate,
    forward_problem,
    grid,
    predicted_iters,
    strict,
    sweep,
    with_spectral_radius,
)

METHODS = {
    "picard": {"method": "picard"},
    "damped": {"method": "picard", "damping": 0.8},
    "anderson": {"method": "anderson"},
    "direct": {"method": "direct"},
}
PARAMS = [
    list(METHODS),
    grid(
        ["identity", "tanh", "leaky_relu(0.2)"],
        ["identity", "tanh", "leaky_relu(0.2)", "sigmoid", "softplus", "relu", "gelu"],
    ),
    grid([16, 64], [16, 64, 256]),
    grid([2048], [2048, 16384]),
]
PARAM_NAMES = ["method", "activation", "m", "n"]


def setup_forward(method, activation, m, n):
    """Problem at ``||A||_2 = 0.5`` and solver options; the first solve."""
    if method == "direct" and activation != "identity":
        raise NotImplementedError("method='direct' solves linear maps only")
    p = forward_problem(m, n, rho=0.5, activation=activation)
    kw = dict(METHODS[method], activation=activation, tol=TOL)
    return p, kw, strict(db.fixed_point, p.X, p.A, p.B, **kw)


class FixedPoint(Bench):
    """``deqbench.fixed_point`` at ``||A||_2 = 0.5``, ``tol = 1e-10``."""

    params = PARAMS
    param_names = PARAM_NAMES

    def setup(self, method, activation, m, n):
        self.p, self.kw, _ = setup_forward(method, activation, m, n)

    def time_fixed_point(self, method, activation, m, n):
        db.fixed_point(self.p.X, self.p.A, self.p.B, **self.kw)


class FixedPointIterations:
    """Iterations of the solves timed by ``FixedPoint``.

    ``track_iterations_over_predicted``: iterations / ``ceil(log tol / log r)``
    (THEORY.md section 3) with ``r`` the spectral radius of the (damped)
    iteration matrix for the linear map (ratio about 1), and the contraction
    bound ``Lip(phi) ||A||_2`` for nonlinear maps (ratio at most 1). Anderson
    should sit below Picard; ``direct`` is 0.
    """

    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 600.0

    def measure(self, method, activation, m, n):
        p, kw, res = setup_forward(method, activation, m, n)
        rate = contraction_rate(p.A, kw.get("damping", 1.0), activation)
        return {"iters": res.n_iter, "ratio": res.n_iter / predicted_iters(rate, TOL)}

    def setup_cache(self):
        return sweep(self)

    def setup(self, cache, *params):
        cached(cache, params)

    def track_iterations(self, cache, *params):
        return cached(cache, params)["iters"]

    track_iterations.unit = "iterations"

    def track_iterations_over_predicted(self, cache, *params):
        return cached(cache, params)["ratio"]

    track_iterations_over_predicted.unit = "ratio"


class FixedPointContraction(Bench):
    """Iteration counts as the spectral radius ``rho(A)`` approaches 1 (linear
    map, Gaussian ``A``, ``||A||_2 ~ 2 rho``, ``m = 32, n = 1024``): Picard
    needs ``~log(tol)/log(rho)`` plus a transient, Anderson far fewer."""

    params = [["picard", "anderson"], grid([0.5, 0.9], [0.5, 0.9, 0.99])]
    param_names = ["method", "rho"]

    def setup(self, method, rho):
        self.p = forward_problem(32, 1024)
        self.p.A = with_spectral_radius(self.p.A, rho)
        self.kw = {"method": method, "tol": TOL}
        self.result = strict(db.fixed_point, self.p.X, self.p.A, self.p.B, **self.kw)
        self.predicted = predicted_iters(contraction_rate(self.p.A), TOL)

    def time_fixed_point(self, method, rho):
        db.fixed_point(self.p.X, self.p.A, self.p.B, **self.kw)

    def track_iterations(self, method, rho):
        return self.result.n_iter

    track_iterations.unit = "iterations"

    def track_iterations_over_predicted(self, method, rho):
        return self.result.n_iter / self.predicted

    track_iterations_over_predicted.unit = "ratio"
