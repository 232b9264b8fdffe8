"""Implicit (adjoint) gradients, exact and inexact (THEORY.md section 4)."""

from __future__ import annotations

import numpy as np

import deqbench as db

from .common import Bench, dloss_dz, grid, problem, rel_err, strict

#: Adjoint methods of ``implicit_grad``; ``jfb`` and ``neumann`` are inexact.
METHODS = ["picard", "anderson", "direct", "jfb", "neumann"]
MODELS = ["linear", "single_index", "nonlinear"]
TOL = 1e-10


def exact_gradient(p, Z, G):
    """Reference gradient: LU adjoint for linear maps, Picard to 1e-14 otherwise."""
    method = "direct" if p.phi == "identity" else "picard"
    ref = strict(
        db.implicit_grad,
        p.A,
        p.B,
        p.X,
        Z,
        G,
        activation=p.phi,
        method=method,
        tol=1e-14,
        max_iter=100_000,
    )
    return np.concatenate([ref.grad_A.ravel(), ref.grad_B.ravel()])


class ImplicitGrad(Bench):
    """Backward pass only: ``implicit_grad`` at a fixed point solved to 1e-13.

    ``track_gradient_rel_error``: ``||g - g_exact|| / ||g_exact||`` over
    ``(grad_A, grad_B)`` (lower is better); about ``tol`` for the exact methods,
    the truncation error for ``jfb`` (``Lam = G``) and ``neumann`` (``k = 5``).
    """

    params = [METHODS, MODELS, grid([16, 64], [16, 64, 256]), grid([2048], [2048, 16384])]
    param_names = ["method", "model", "m", "n"]

    def setup(self, method, model, m, n):
        p = problem(model, m, n, rho=0.5)
        if method == "direct" and p.phi != "identity":
            raise NotImplementedError("method='direct' solves linear maps only")
        self.p = p
        self.Z = strict(db.fixed_point, p.A, p.B, p.X, activation=p.phi, tol=1e-13).z
        self.G = dloss_dz(p, self.Z)
        self.kw = {"activation": p.phi, "method": method, "tol": TOL}
        self.result = strict(db.implicit_grad, p.A, p.B, p.X, self.Z, self.G, **self.kw)

    def time_implicit_grad(self, method, model, m, n):
        db.implicit_grad(self.p.A, self.p.B, self.p.X, self.Z, self.G, **self.kw)

    def track_gradient_rel_error(self, method, model, m, n):
        g = np.concatenate([self.result.grad_A.ravel(), self.result.grad_B.ravel()])
        return rel_err(g, exact_gradient(self.p, self.Z, self.G))

    track_gradient_rel_error.unit = "relative error"

    def track_adjoint_iterations(self, method, model, m, n):
        return self.result.n_iter

    track_adjoint_iterations.unit = "iterations"


class NeumannTerms(Bench):
    """Gradient error of the k-term Neumann (phantom) gradient against the exact
    one, linear model, ``||A||_2 = 0.5``: falls like ``rho(A)^(k+1)``."""

    params = [grid([1, 5, 20], [0, 1, 2, 5, 10, 20, 50])]
    param_names = ["k"]

    def setup(self, k):
        p = problem("linear", 32, 2048, rho=0.5)
        self.p = p
        self.Z = strict(db.fixed_point, p.A, p.B, p.X, tol=1e-13).z
        self.G = dloss_dz(p, self.Z)
        self.result = db.implicit_grad(p.A, p.B, p.X, self.Z, self.G, method="neumann", k=k)

    def time_neumann_grad(self, k):
        db.implicit_grad(self.p.A, self.p.B, self.p.X, self.Z, self.G, method="neumann", k=k)

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
        grid([16, 64], [16, 64, 256]),
        grid([2048], [2048, 16384]),
    ]
    param_names = ["model", "grad_solver", "m", "n"]

    def setup(self, model, grad_solver, m, n):
        p = problem(model, m, n, rho=0.5)
        self.p = p
        solver = "anderson" if grad_solver == "anderson" else "picard"
        self.kw = dict(p.model_kwargs(), solver=solver, grad_solver=grad_solver, tol=TOL)
        strict(db.loss_and_grad, model, p.A, p.B, p.X, p.Y, **self.kw)

    def time_loss_and_grad(self, model, grad_solver, m, n):
        db.loss_and_grad(self.p.model, self.p.A, self.p.B, self.p.X, self.p.Y, **self.kw)
