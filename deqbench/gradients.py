"""Implicit (adjoint) gradients and model losses (THEORY.md sections 2 and 4)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _validate as v
from ._kernels import fixed_point as _fp
from ._kernels import gradients as _g
from ._kernels.activations import IDENTITY, MASK
from .activations import Activation, get_activation
from .fixed_point import (
    STATUS,
    check_model,
    check_solver,
    direct,
    forward,
    solve,
    warn_failure,
)

GRAD_METHODS = ("picard", "anderson", "direct", "jfb", "neumann")
MODELS = ("linear", "single_index", "nonlinear")
_DUMMY = np.zeros((1, 1))


@dataclass(frozen=True)
class GradResult:
    """Implicit gradient of a loss through the fixed point.

    Attributes
    ----------
    grad_A : (m, m), grad_B : (m, d)
    adjoint : (n, m)
        ``Mu = D * Lam`` (THEORY.md section 4); equals ``Lam`` for linear maps.
        Pass it back as ``adj0`` to warm-start the next adjoint solve.
    n_iter, residual, converged, status, history, method
        As in :class:`~deqbench.FixedPointResult`, for the adjoint equation.
        For ``"jfb"``/``"neumann"`` the status is ``"truncated"`` and the
        residual says how far the inexact adjoint is from the exact one.
    """

    grad_A: np.ndarray
    grad_B: np.ndarray
    adjoint: np.ndarray = field(repr=False)
    n_iter: int
    residual: float
    converged: bool
    status: str
    history: np.ndarray = field(repr=False)
    method: str


def implicit_grad(
    A,
    B,
    X,
    Z,
    G,
    *,
    activation: str | Activation = "identity",
    method: str = "picard",
    tol: float = 1e-10,
    max_iter: int = 10_000,
    damping: float = 1.0,
    adj0=None,
    k: int = 5,
    **method_options,
) -> GradResult:
    """Gradients ``dL/dA``, ``dL/dB`` through the fixed point ``Z``, given ``G = dL/dZ``.

    Solves the adjoint equation ``Mu = D * (Mu A + G)`` with ``D = phi'(Z A^T + X B^T)``
    (``D = 1`` for the linear map), then ``dL/dA = Mu^T Z`` and ``dL/dB = Mu^T X``.

    Parameters
    ----------
    A, B, X : as in :func:`~deqbench.fixed_point`
    Z : (n, m)
        The fixed point (from :func:`~deqbench.fixed_point`).
    G : (n, m)
        ``dL/dZ``.
    method : {"picard", "anderson", "direct", "jfb", "neumann"}
        Exact: ``picard`` (with ``damping``), ``anderson`` (options ``m``,
        ``ridge``), ``direct`` (linear maps, LU). Inexact: ``jfb`` (Jacobian-free,
        ``Lam = G``) and ``neumann`` (``Lam = G (I + A + ... + A^k)``, ``k`` terms).
    adj0 : (n, m), optional
        Initial adjoint (warm start), e.g. the previous ``GradResult.adjoint``.

    Notes
    -----
    THEORY.md section 4. Non-convergence of an exact method gives
    ``converged=False`` and a ``RuntimeWarning``.
    """
    A, B, X = check_model(A, B, X)
    n, m = X.shape[0], A.shape[0]
    Z = v.as_matrix("Z", Z, shape=(n, m))
    G = v.as_matrix("G", G, shape=(n, m))
    act = get_activation(activation)
    tol, max_iter, beta = check_solver(method, tol, max_iter, damping, GRAD_METHODS)
    if method in ("jfb", "neumann"):
        k = 0 if method == "jfb" else v.integer("k", k, minimum=0)
    if method == "direct" and not act.is_identity:
        raise ValueError(
            f"method='direct' solves linear maps only, got activation={str(act)!r}"
        )
    return _adjoint(A, B, X, Z, G, act, method, tol, max_iter, beta, adj0, k, method_options)


def _adjoint(A, B, X, Z, G, act, method, tol, max_iter, beta, adj0, k, options):
    n, m = Z.shape
    if act.is_identity:
        code, D = IDENTITY, _DUMMY
    else:
        code, D = MASK, np.empty((n, m))
        with np.errstate(over="ignore", invalid="ignore"):
            U = X @ B.T
        _g.preactivation_derivative(Z, np.ascontiguousarray(A.T), U, act.code, act.param, D)
    if method == "direct":
        v.no_extra("direct", options)
        Mu, res, status = direct(np.eye(m) - A.T, G, A, tol, "implicit_grad")
        hist, n_iter = np.array([res]), 0
    elif method in ("jfb", "neumann"):
        v.no_extra(method, options)
        Mu = np.zeros((n, m))
        hist = np.full(k + 2, np.nan)
        n_iter, res, code_ = _fp.picard(Mu, A, G, code, act.param, D, np.empty_like(Mu),
                                        0.0, k + 1, 1.0, hist)
        status = "truncated" if code_ != _fp.DIVERGED else "diverged"
        hist = hist[: n_iter + 1]
    else:
        Mu = np.zeros((n, m)) if adj0 is None else v.as_matrix("adj0", adj0, shape=(n, m)).copy()
        n_iter, res, code_, hist = solve(A, G, code, act.param, D, Mu, method=method, tol=tol,
                                         max_iter=max_iter, beta=beta, options=dict(options))
        status = STATUS[code_]
        if code_ != _fp.CONVERGED:
            warn_failure(f"implicit_grad(method={method!r})", status, n_iter, res, tol)
    with np.errstate(over="ignore", invalid="ignore"):
        grad_A = Mu.T @ Z
        grad_B = Mu.T @ X
    converged = status in ("converged", "truncated")
    return GradResult(grad_A, grad_B, Mu, n_iter, res, converged, status, hist, method)


def loss_and_grad(
    model: str,
    A,
    B,
    X,
    Y,
    *,
    u=None,
    activation: str | Activation = "identity",
    solver: str = "picard",
    grad_solver: str | None = None,
    tol: float = 1e-10,
    max_iter: int = 10_000,
    damping: float = 1.0,
    z0=None,
    adj0=None,
    k: int = 5,
    **solver_options,
):
    """Loss ``L = (1/2n) sum_i loss_i`` of a DEQ model and its implicit gradient.

    Parameters
    ----------
    model : {"linear", "single_index", "nonlinear"}
        THEORY.md section 2. ``linear``: ``yhat = z``, ``Y`` is ``(n, m)``.
        ``single_index``: ``yhat = sigma(u . z)`` with the link ``sigma =
        activation`` and linear fixed point, ``Y`` is ``(n,)``. ``nonlinear``:
        ``z = phi(A z + B x)`` with ``phi = activation``, ``Y`` is ``(n, m)``.
    u : (m,) array, optional
        Read-out of ``single_index``; default ``(1, ..., 1) / sqrt(m)``.
    solver : {"picard", "anderson", "direct"}
        Forward solver; ``grad_solver`` (default: the same) may also be
        ``"jfb"`` or ``"neumann"`` (``k`` terms).
    z0, adj0 : (n, m), optional
        Warm starts for the forward and adjoint solves.
    solver_options
        Anderson options ``m``, ``ridge`` (used by both solves).

    Returns
    -------
    loss : float
    grad_A : (m, m)
    grad_B : (m, d)
    info : dict
        ``fp_iters, adj_iters, fp_residual, adj_residual, fp_status, adj_status,
        converged`` and the arrays ``z`` and ``adjoint`` for warm starts.
    """
    v.choice("model", model, MODELS)
    A, B, X = check_model(A, B, X)
    n, m = X.shape[0], A.shape[0]
    act = get_activation(activation)
    if model == "linear" and not act.is_identity:
        raise ValueError(f"activation must be 'identity' for model='linear', got {str(act)!r}")
    grad_solver = solver if grad_solver is None else grad_solver
    tol, max_iter, beta = check_solver(solver, tol, max_iter, damping)
    v.choice("grad_solver", grad_solver, GRAD_METHODS)
    if grad_solver in ("jfb", "neumann"):
        k = 0 if grad_solver == "jfb" else v.integer("k", k, minimum=0)
    Y, u = check_targets(model, Y, u, n, m)
    phi = act if model == "nonlinear" else get_activation("identity")
    if grad_solver == "direct" and not phi.is_identity:
        raise ValueError("grad_solver='direct' solves linear maps only (model='nonlinear')")
    fwd = forward(A, B, X, phi, solver, tol, max_iter, beta, z0, dict(solver_options))
    Z = fwd.z
    G = np.empty((n, m))
    if model == "single_index":
        loss = _g.single_index_loss(Z, Y, u, act.code, act.param, G)
    else:
        loss = _g.residual_loss(Z, Y, G)
    grad = _adjoint(A, B, X, Z, G, phi, grad_solver, tol, max_iter, beta, adj0, k,
                    dict(solver_options))
    info = {
        "fp_iters": fwd.n_iter,
        "adj_iters": grad.n_iter,
        "fp_residual": fwd.residual,
        "adj_residual": grad.residual,
        "fp_status": fwd.status,
        "adj_status": grad.status,
        "converged": fwd.converged and grad.converged,
        "z": Z,
        "adjoint": grad.adjoint,
    }
    return float(loss), grad.grad_A, grad.grad_B, info


def check_targets(model, Y, u, n, m):
    """Validate targets (and ``u``) for ``model``; return float64 ``(Y, u)``."""
    if model == "single_index":
        Y = v.as_matrix("Y", Y, ndim=1, shape=(n,))
        if u is None:
            u = np.full(m, 1.0 / np.sqrt(m))
        else:
            u = v.as_matrix("u", u, ndim=1, shape=(m,))
        return Y, u
    if u is not None:
        raise ValueError(f"u is only used by model='single_index', got model={model!r}")
    return v.as_matrix("Y", Y, shape=(n, m)), None
