"""Implicit (adjoint) gradients, exact and inexact (docs/theory.md §4).

Default suite: the exact adjoints (Picard, Anderson) of the linear and the
nonlinear (tanh) model at ``m = 32``, ``n = N_AT[32]``; counts and errors of
every adjoint method and model (no noise, so a wider grid). ``DEQBENCH_FULL=1``
adds the inexact and direct adjoints, ``readout``, more widths and
``loss_and_grad`` timings (forward + backward: the sum of the two timed
parts, so the default suite leaves it out).
"""

from __future__ import annotations

import numpy as np

import deqbench as db

from .common import N_AT, Bench, Tracked, dloss_dz, full_only, grid, problem, rel_err, strict

#: Adjoint methods of ``implicit_grad``; ``jfb`` and ``neumann`` are inexact.
METHODS = ["picard", "anderson", "direct", "jfb", "neumann"]
MODELS = ["linear", "readout", "nonlinear"]
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


PARAMS = [
    grid(["picard", "anderson"], METHODS),
    grid(["linear", "nonlinear"], MODELS),
    grid([32], [16, 32, 128]),
]
PARAM_NAMES = ["method", "model", "m"]
#: Errors and counts cost no noise: every method and model.
METRIC_PARAMS = [METHODS, MODELS, PARAMS[2]]


def setup_adjoint(method, model, m):
    """Problem (``n = N_AT[m]``), fixed point to 1e-13, ``G = dL/dZ``, options;
    the first solve."""
    p = problem(model, m, N_AT[m], rho=0.5)
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

    def setup(self, method, model, m):
        self.p, self.Z, self.G, self.kw, _ = setup_adjoint(method, model, m)

    def time_implicit_grad(self, method, model, m):
        db.implicit_grad(self.p.X, self.p.A, self.p.B, self.Z, self.G, **self.kw)


class ImplicitGradAccuracy(Tracked):
    """Accuracy and counts of the adjoint solves of ``ImplicitGrad``.

    ``gradient_rel_error``: ``||g - g_exact|| / ||g_exact||`` over
    ``(grad_A, grad_B)``; about ``tol`` for the exact methods, the truncation
    error for ``jfb`` and ``neumann``. ``adjoint_iterations``: ``n_iter`` of
    the adjoint (``k + 1`` for ``neumann``, 1 for ``jfb``, 0 for ``direct``), exact.
    """

    params = METRIC_PARAMS
    param_names = PARAM_NAMES
    tracks = {"gradient_rel_error": "relative error", "adjoint_iterations": "iterations"}

    def setup_cache(self):
        return self.sweep()

    def measure(self, method, model, m):
        p, Z, G, _, res = setup_adjoint(method, model, m)
        g = np.concatenate([res.grad_A.ravel(), res.grad_B.ravel()])
        return {
            "gradient_rel_error": rel_err(g, exact_gradient(p, Z, G)),
            "adjoint_iterations": res.n_iter,
        }


class NeumannTerms(Tracked):
    """Gradient error of the k-term Neumann (phantom) gradient against the exact
    one, linear model, ``||A||_2 = 0.5``, ``m = 32, n = 2048``: falls like
    ``rho(A)^(k+1)``. (Its time is ``ImplicitGrad``'s under ``DEQBENCH_FULL=1``.)"""

    params = [grid([1, 5, 20], [0, 1, 2, 5, 10, 20, 50])]
    param_names = ["k"]
    tracks = {"gradient_rel_error": "relative error"}

    def setup_cache(self):
        return self.sweep()

    def measure(self, k):
        p = problem("linear", 32, 2048, rho=0.5)
        Z = strict(db.fixed_point, p.X, p.A, p.B, tol=1e-13).z
        G = dloss_dz(p, Z)
        res = db.implicit_grad(p.X, p.A, p.B, Z, G, method="neumann", neumann_terms=k)
        g = np.concatenate([res.grad_A.ravel(), res.grad_B.ravel()])
        return {"gradient_rel_error": rel_err(g, exact_gradient(p, Z, G))}


@full_only
class LossAndGrad(Bench):
    """Forward + backward: ``loss_and_grad`` per model and gradient solver
    (forward Picard), cold-started."""

    params = [
        MODELS,
        ["picard", "anderson", "jfb", "neumann"],
        [16, 32, 128],
    ]
    param_names = ["model", "grad_solver", "m"]

    def setup(self, model, grad_solver, m):
        p = problem(model, m, N_AT[m], rho=0.5)
        self.p = p
        solver = "anderson" if grad_solver == "anderson" else "picard"
        self.kw = dict(p.model_kwargs(), solver=solver, grad_solver=grad_solver, tol=TOL)
        strict(db.loss_and_grad, model, p.X, p.Y, p.A, p.B, **self.kw)

    def time_loss_and_grad(self, model, grad_solver, m):
        db.loss_and_grad(self.p.model, self.p.X, self.p.Y, self.p.A, self.p.B, **self.kw)
