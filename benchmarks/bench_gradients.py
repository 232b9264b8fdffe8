"""Implicit (adjoint) gradients, exact and inexact (THEORY.md section 4)."""

from __future__ import annotations

import numpy as np

import deqbench as db

from .common import Bench, cached, dloss_dz, grid, problem, rel_err, strict, sweep

#: Adjoint methods of ``implicit_grad``; ``jfb`` and ``neumann`` are inexact.
METHODS = ["picard", "anderson", "direct", "jfb", "neumann"]
MODELS = ["linear", "single_index", "nonlinear"]
TOL = 1e-10


def exact_gradient(p, Z, G):
    """Reference gradient: LU adjoint for linear maps, Picard to 1e-14 otherwise."""
    method = "direct" if p.phi == "identity" else "picard"
    ref = strict(
        db.implicit_grad,
        p.X,
        p.A,
        p.B,
        Z,
        G,
        activation=p.phi,
        method=method,
        tol=1e-14,
        max_iter=100_000,
    )
    return np.concatenate([ref.grad_A.ravel(), ref.grad_B.ravel()])


PARAMS = [METHODS, MODELS, grid([32], [16, 32, 128]), grid([2048], [2048, 16384])]
PARAM_NAMES = ["method", "model", "m", "n"]


def setup_adjoint(method, model, m, n):
    """Problem, fixed point to 1e-13, ``G = dL/dZ``, options; the first solve."""
    p = problem(model, m, n, rho=0.5)
    if method == "direct" and p.phi != "identity":
        raise NotImplementedError("method='direct' solves linear maps only")
    Z = strict(db.fixed_point, p.X, p.A, p.B, activation=p.phi, tol=1e-13).z
    G = dloss_dz(p, Z)
    kw = {"activation": p.phi, "method": method, "tol": TOL}
    return p, Z, G, kw, strict(db.implicit_grad, p.X, p.A, p.B, Z, G, **kw)


class ImplicitGrad(Bench):
    """Backward pass only: ``implicit_grad`` at a fixed point solved to 1e-13;
    ``jfb`` (``Lam = G``) and ``neumann`` (``k = 5``) are inexact."""

    params = PARAMS
    param_names = PARAM_NAMES

    def setup(self, method, model, m, n):
        self.p, self.Z, self.G, self.kw, _ = setup_adjoint(method, model, m, n)

    def time_implicit_grad(self, method, model, m, n):
        db.implicit_grad(self.p.X, self.p.A, self.p.B, self.Z, self.G, **self.kw)


class ImplicitGradAccuracy:
    """Accuracy of the gradients timed by ``ImplicitGrad``.

    ``track_gradient_rel_error``: ``||g - g_exact|| / ||g_exact||`` over
    ``(grad_A, grad_B)`` (lower is better); about ``tol`` for the exact methods,
    the truncation error for ``jfb`` and ``neumann``. ``track_adjoint_iterations``:
    adjoint iterations (``k + 1`` for ``neumann``, 1 for ``jfb``, 0 for ``direct``).
    """

    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 600.0

    def measure(self, method, model, m, n):
        p, Z, G, _, res = setup_adjoint(method, model, m, n)
        g = np.concatenate([res.grad_A.ravel(), res.grad_B.ravel()])
        return {"error": rel_err(g, exact_gradient(p, Z, G)), "iters": res.n_iter}

    def setup_cache(self):
        return sweep(self)

    def setup(self, cache, *params):
        cached(cache, params)

    def track_gradient_rel_error(self, cache, *params):
        return cached(cache, params)["error"]

    track_gradient_rel_error.unit = "relative error"

    def track_adjoint_iterations(self, cache, *params):
        return cached(cache, params)["iters"]

    track_adjoint_iterations.unit = "iterations"


class NeumannTerms(Bench):
    """Gradient error of the k-term Neumann (phantom) gradient against the exact
    one, linear model, ``||A||_2 = 0.5``: falls like ``rho(A)^(k+1)``."""

    params = [grid([1, 5, 20], [0, 1, 2, 5, 10, 20, 50])]
    param_names = ["k"]

    def setup(self, k):
        p = problem("linear", 32, 2048, rho=0.5)
        self.p = p
        self.Z = strict(db.fixed_point, p.X, p.A, p.B, tol=1e-13).z
        self.G = dloss_dz(p, self.Z)
        self.result = db.implicit_grad(
            p.X, p.A, p.B, self.Z, self.G, method="neumann", neumann_terms=k
        )

    def time_neumann_grad(self, k):
        p = self.p
        db.implicit_grad(p.X, p.A, p.B, self.Z, self.G, method="neumann", neumann_terms=k)

    def track_gradient_rel_error(self, k):
        g = np.concatenate([self.result.grad_A.ravel(), self.result.grad_B.ravel()])
        return rel_err(g, exact_gradient(self.p, self.Z, self.G))

    track_gradient_rel_error.unit = "relative error"


class LossAndGrad(Bench):
    """Forward + backward: ``loss_and_grad`` per model and gradient solver
    (forward Picard), cold-started."""

    params = [
        MODELS,
        ["picard", "anderson", "jfb", "neumann"],
        grid([32], [16, 32, 128]),
        grid([2048], [2048, 16384]),
    ]
    param_names = ["model", "grad_solver", "m", "n"]

    def setup(self, model, grad_solver, m, n):
        p = problem(model, m, n, rho=0.5)
        self.p = p
        solver = "anderson" if grad_solver == "anderson" else "picard"
        self.kw = dict(p.model_kwargs(), solver=solver, grad_solver=grad_solver, tol=TOL)
        strict(db.loss_and_grad, model, p.X, p.Y, p.A, p.B, **self.kw)

    def time_loss_and_grad(self, model, grad_solver, m, n):
        db.loss_and_grad(self.p.model, self.p.X, self.p.Y, self.p.A, self.p.B, **self.kw)
