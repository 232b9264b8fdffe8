"""Implicit (adjoint) gradients and model losses (docs/theory.md §2 and §4)."""

from __future__ import annotations

import numba
import numpy as np

from . import _scalar
from . import _validate as v
from ._calibration import tune
from ._chunked import adjoint_blocks, loss_and_grad_blocks, resolve
from ._fixed_point import (
    check_linear,
    check_params,
    direct,
    dummy,
    input_term,
    solve,
    solve_forward,
    warn_failure,
)
from ._kernels import gradients as _g
from ._kernels.activations import IDENTITY, MASK, has_output_derivative
from ._kernels.blocks import gemm_tn
from ._kernels.status import CONVERGED, DIVERGED, SOLVE_NAMES
from ._options import SolverOptions, resolve_options
from ._registry import ADJOINT, FORWARD, MODELS, RENAMED, SOLVERS, Solver, choose_model
from ._results import GradResult, LossAndGrad
from ._source import is_out_of_core, open_source
from ._threads import blas_single_threaded
from ._warnings import warn
from .activations import Activation, get_activation

__all__ = ["implicit_grad", "loss_and_grad"]

GRAD_METHODS = ADJOINT


@blas_single_threaded
def implicit_grad(
    X,
    A,
    B,
    Z,
    G,
    *,
    activation: str | Activation = "identity",
    method: str = "picard",
    options: SolverOptions | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    damping: float | None = None,
    adj0=None,
    neumann_terms: int | None = None,
    neumann_damping: float | None = None,
    anderson_history: int | None = None,
    anderson_ridge: float | None = None,
    chunk: int | str | None = None,
) -> GradResult:
    """Gradients ``dL/dA``, ``dL/dB`` through the fixed point ``Z``, given ``G = dL/dZ``.

    Solves the adjoint equation ``Mu = D * (Mu A + G)`` with ``D = phi'(Z A^T + X B^T)``
    (``D = 1`` for the linear map), then ``dL/dA = Mu^T Z`` and ``dL/dB = Mu^T X``.

    Parameters
    ----------
    X, A, B : as in :func:`~deqbench.fixed_point`
        (all arrays of the call share one dtype, float32 or float64)
    Z : (n, m)
        The fixed point (from :func:`~deqbench.fixed_point`).
    G : (n, m)
        ``dL/dZ``.
    method : {"picard", "anderson", "direct", "broyden", "newton", "jfb", "neumann"}
        Exact: ``picard`` (with ``damping``), ``anderson`` (``anderson_history``,
        ``anderson_ridge``), ``direct`` (linear maps, LU), ``broyden``
        (``anderson_history`` secant pairs per sample), ``newton`` (a scalar
        state, ``m = 1``: the closed form ``Mu = D G / (1 - b D)`` per sample,
        any ``phi``; docs/theory.md §12). Inexact: ``jfb`` (Jacobian-free,
        ``Lam = G``) and ``neumann`` (``Lam = G (I + A + ... + A^k)`` with
        ``k = neumann_terms``: the truncated series has ``k + 1`` terms, ``I``
        included; with ``neumann_damping = lam < 1`` the damped series
        ``lam G sum_{j <= k} ((1 - lam) I + lam A)^j``, docs/theory.md §4).
    options : SolverOptions, optional
        ``tol``, ``max_iter``, ``damping``, ``anderson_history``,
        ``anderson_ridge``, ``neumann_terms`` and ``neumann_damping``
        (``neumann`` only): see :class:`~deqbench.SolverOptions`.
    tol, max_iter, damping, neumann_terms, neumann_damping, anderson_history, anderson_ridge
        The same options as keywords (None: the value of ``options``, else the
        :class:`~deqbench.SolverOptions` default).
    adj0 : (n, m), optional
        Initial adjoint (warm start), e.g. the previous ``GradResult.adjoint``.
    chunk : int in [1, n], "auto" or None
        Solve the adjoint in row blocks, as in :func:`~deqbench.fixed_point`
        (``X`` may then be on disk); gradients are summed over the blocks.

    Warns
    -----
    ConvergenceWarning
        When an exact method does not converge.

    Notes
    -----
    docs/theory.md §4. Non-convergence of an exact method gives
    ``converged=False``.
    """
    A, B = check_params(A, B)
    act = get_activation(activation)
    v.choice("method", method, GRAD_METHODS)
    spec = SOLVERS[method]
    spec.check_state(A.shape[0], "method")
    opts = resolve_options(options, A.dtype, tol=tol, max_iter=max_iter, damping=damping,
                           anderson_history=anderson_history, anderson_ridge=anderson_ridge,
                           neumann_terms=neumann_terms, neumann_damping=neumann_damping)
    Xs, chunk = resolve(X, B, chunk, opts.anderson_history)
    if Xs is None:
        X = v.as_matrix("X", X, shape=(None, B.shape[1]), dtype=A.dtype)
    n, m = (X.shape[0] if Xs is None else Xs.n), A.shape[0]
    Z = v.as_matrix("Z", Z, shape=(n, m), dtype=A.dtype)
    G = v.as_matrix("G", G, shape=(n, m), dtype=A.dtype)
    if adj0 is not None:
        adj0 = v.as_matrix("adj0", adj0, shape=(n, m), dtype=A.dtype)
    check_linear(spec, act)
    if Xs is None:
        return _adjoint(X, A, B, Z, G, act, spec, opts, adj0)
    return adjoint_blocks(Xs, Z, G, adj0, B.shape[1], chunk,
                          lambda Xb, Zb, Gb, adj0b: _adjoint(Xb, A, B, Zb, Gb, act, spec, opts,
                                                             adj0b),
                          method, opts.tol)


def reusable(act, U, last):
    """``(U, last)`` of :func:`solve_forward`, each kept only when :func:`_adjoint` will
    read it, so that the rest is freed before the adjoint solve runs: nothing for the
    identity, ``last`` alone when ``h'`` can be read off it (tanh, sigmoid after Picard),
    else ``U``."""
    if act.is_identity:
        return None, None
    if last is not None and has_output_derivative(act.code):
        return None, last
    return U, None


def _adjoint(X, A, B, Z, G, act, spec: Solver, opts: SolverOptions, adj0, U=None, last=None):
    """:func:`implicit_grad` on validated arguments of one dtype (``adj0`` too).

    From :func:`loss_and_grad`: ``U = X B^T`` and ``last``, the forward Picard solve's
    evaluation of ``Z`` (:func:`solve_forward`), spare the gemms of ``h'(Z A^T + U)``:
    tanh and sigmoid read it off ``last`` (in place), the others reuse ``U``.
    """
    n, m = Z.shape
    if act.is_identity:
        code, D = IDENTITY, dummy(Z.dtype)
    elif last is not None and has_output_derivative(act.code):
        code, D = MASK, last
        _g.output_derivative(Z, last, act.code, opts.damping, D, tune())
    else:
        code, D = MASK, np.empty((n, m), Z.dtype)
        U = input_term(X, B) if U is None else U
        _g.preactivation_derivative(Z, np.ascontiguousarray(A.T), U, act.code, act.param, D,
                                    tune())
    if spec.scalar_kernel:
        Mu, res, status = _closed_form_adjoint(Z, G, A, D if code == MASK else None)
        hist, n_iter = np.array([res]), 0
    elif spec.linear_only:
        Mu, res, status = direct(np.eye(m) - A.T, G, A, opts.tol, "implicit_grad")
        hist, n_iter = np.array([res]), 0
    else:
        # a truncated series always starts from zero
        fresh = adj0 is None or spec.inexact
        Mu = np.zeros((n, m), Z.dtype) if fresh else adj0.copy()
        n_iter, res, code_, hist = solve(spec, A, G, code, act.param, D, Mu, opts,
                                         terms=spec.terms(opts))
        if spec.inexact:
            status = "truncated" if code_ != DIVERGED else "diverged"
        else:
            status = SOLVE_NAMES[code_]
            if code_ != CONVERGED:
                warn_failure(f"implicit_grad(method={spec.name!r})", status, n_iter, res,
                             opts.tol)
    grad_A = np.empty((m, m), Z.dtype)
    grad_B = np.empty((m, X.shape[1]), Z.dtype)
    threads = numba.get_num_threads()
    gemm_tn(Mu, Z, grad_A, threads)
    gemm_tn(Mu, X, grad_B, threads)
    converged = status in ("converged", "truncated")
    return GradResult(grad_A, grad_B, Mu, n_iter, res, converged, status, hist, spec.name)


def _closed_form_adjoint(Z, G, A, D):
    """The exact adjoint of a scalar state (``m = 1``, ``A = [[b]]``) per sample,
    ``Mu = D G / (1 - b D)`` (``D = phi'``, None for the identity): ``(Mu, residual of
    Mu = D (Mu b + G), status)``, with a warning and a zero adjoint where ``1 - b D``
    vanishes."""
    b = float(A[0, 0])
    D = np.ones_like(Z) if D is None else D
    Mu, status = _scalar.adjoint(D, G, b)
    with np.errstate(all="ignore"):
        F = D * (Mu * b + G)
        nf = float(np.linalg.norm(F))
        res = float(np.linalg.norm(F - Mu)) / nf if nf > 0.0 else 0.0
    if status != "converged":
        warn(f"implicit_grad(method='newton'): 1 - b phi' vanishes (b = {b:.6g}) or the "
             "adjoint overflows at some sample: status 'diverged', a zero adjoint")
        res = np.inf
    return Mu, res, status


@blas_single_threaded
def loss_and_grad(
    model: str,
    X,
    Y,
    A,
    B,
    *,
    u=None,
    activation: str | Activation = "identity",
    solver: str | None = None,
    grad_solver: str | None = None,
    options: SolverOptions | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    damping: float | None = None,
    z0=None,
    adj0=None,
    neumann_terms: int | None = None,
    neumann_damping: float | None = None,
    anderson_history: int | None = None,
    anderson_ridge: float | None = None,
    chunk: int | str | None = None,
) -> LossAndGrad:
    """Loss ``L = (1/2n) sum_i loss_i`` of a DEQ model and its implicit gradient.

    Parameters
    ----------
    model : {"linear", "readout", "nonlinear", "single_index"}
        docs/theory.md §2. ``linear``: ``yhat = z``, ``Y`` is ``(n, m)``.
        ``readout``: ``yhat = sigma(u . z)`` with the link ``sigma =
        activation`` and linear fixed point, ``Y`` is ``(n,)``. ``nonlinear``:
        ``z = phi(A z + B x)`` with ``phi = activation``, ``Y`` is ``(n, m)``.
        ``single_index``: the paper's model ``y = sigma(<w, x> + b y)``, one
        scalar state per sample, ``A = [[b]]`` ``(1, 1)``, ``B = w^T``
        ``(1, d)``, ``Y`` is ``(n,)`` or ``(n, 1)``; the loss
        ``sum (y - Y)^2 / (2 n)`` is half the paper's risk, so the paper's step
        ``eta`` is ``lr = 2 eta`` (docs/theory.md §12).
    X : (n, d), Y : (n, m) or (n,)
        Data and targets: arrays, ``np.memmap`` arrays or paths of float32 or
        float64 ``.npy`` files, of the dtype of ``A``, ``B`` (read in row blocks, the
        next one while the current one computes).
    A : (m, m), B : (m, d)
        Parameters.
    u : (m,) array, optional
        Read-out of ``readout``; default ``(1, ..., 1) / sqrt(m)``.
    solver : {"picard", "anderson", "direct", "broyden", "newton"}
        Forward solver (default ``"newton"`` for ``single_index``, else
        ``"picard"``; ``"newton"`` needs ``m = 1``); ``grad_solver`` (default:
        the same) may also be ``"jfb"`` or ``"neumann"`` (series up to
        ``A^neumann_terms``, damped by ``neumann_damping``). ``single_index``
        with ``"newton"`` is one pass of the scalar kernels: ``grad_solver``
        ``"newton"`` or ``"direct"`` (the exact gradient in closed form),
        ``"jfb"`` or ``"neumann"`` (the backward factors of docs/theory.md
        §12); its other solvers run it as ``nonlinear`` with ``m = 1``.
    options : SolverOptions, optional
        The options of both solves (:class:`~deqbench.SolverOptions`).
    tol, max_iter, damping, anderson_history, anderson_ridge, neumann_terms, neumann_damping
        The same options as keywords, as in :func:`~deqbench.implicit_grad`.
    z0, adj0 : (n, m), optional
        Warm starts for the forward and adjoint solves.
    chunk : int in [1, n], "auto" or None
        Evaluate in blocks of ``chunk`` rows: forward solve (each block to the
        rule ``||F(Z_b) - Z_b|| <= tol ||F(Z_b)||``), loss, adjoint solve and
        gradient per block, summed; memory ``O(chunk (m + d) + m^2 + m d)``
        whatever ``n`` (``z``, ``adjoint`` are then None). ``"auto"``:
        :func:`deqbench._source.auto_chunk`. None: unchunked for in-memory
        data, ``"auto"`` for data on disk.

    Returns
    -------
    LossAndGrad
        On a read error of data on disk: NaN loss and gradients, statuses
        ``"read_error"`` (with a ConvergenceWarning). ``single_index`` with
        ``"newton"``: ``fp_iters`` the Newton evaluations of the slowest
        sample, ``fp_residual`` the largest absolute residual, ``adj_iters``
        0 and ``adj_residual`` 0 (closed form); after a failed forward solve
        the loss and gradients are NaN and both statuses are the forward's.

    Warns
    -----
    ConvergenceWarning
        When the forward or an exact adjoint solve does not converge.
    """
    kind = MODELS[choose_model(model)]
    A, B = check_params(A, B)
    m = A.shape[0]
    check_scalar_state(model, A, u)
    act = get_activation(activation)
    check_activation(kind, act)
    solver = kind.default_solver if solver is None else solver
    grad_solver = solver if grad_solver is None else grad_solver
    v.choice("solver", solver, FORWARD)
    v.choice("grad_solver", grad_solver, GRAD_METHODS)
    fused = kind.scalar_state and solver == "newton"
    if fused:  # the scalar pass: its adjoints only (a ValueError names them)
        backward = _scalar.fused_adjoint(grad_solver)
        if grad_solver == "direct":  # the exact solve of a scalar adjoint: its closed form
            grad_solver = "newton"
    fwd_spec, adj_spec = SOLVERS[solver], SOLVERS[grad_solver]
    fwd_spec.check_state(m, "solver")
    adj_spec.check_state(m, "grad_solver")
    opts = resolve_options(options, A.dtype, tol=tol, max_iter=max_iter, damping=damping,
                           anderson_history=anderson_history, anderson_ridge=anderson_ridge,
                           neumann_terms=neumann_terms, neumann_damping=neumann_damping)
    if fused and chunk is None and not is_out_of_core(X) and not is_out_of_core(Y):
        return _single_index(X, Y, A, B, act, backward, opts, z0)
    if chunk is None and is_out_of_core(Y):
        chunk = "auto"
    Xs, chunk = resolve(X, B, chunk, opts.anderson_history)
    if Xs is None:
        X = v.as_matrix("X", X, shape=(None, B.shape[1]), dtype=A.dtype)
    n = X.shape[0] if Xs is None else Xs.n
    z0 = None if z0 is None else v.as_matrix("z0", z0, shape=(n, m), dtype=A.dtype)
    adj0 = None if adj0 is None else v.as_matrix("adj0", adj0, shape=(n, m), dtype=A.dtype)
    phi = act if kind.activation == "map" else get_activation("identity")
    if adj_spec.linear_only and not phi.is_identity:
        raise ValueError(f"grad_solver={grad_solver!r} solves linear maps only "
                         f"(model={model!r})")
    if Xs is not None:
        one = kind.readout or kind.scalar_state  # single_index: Y (n,) on disk
        if kind.scalar_state and not is_out_of_core(Y) and np.ndim(Y) == 2:
            Y = np.asarray(Y)[:, 0] if np.shape(Y)[1:] == (1,) else Y
        Ys = open_source("Y", Y, ndim=1 if one else 2, shape=(n,) if one else (n, m),
                         dtype=A.dtype)
        u = check_readout(model, u, m, A.dtype)

        def block(Xb, Yb, w, z0b, adj0b):
            if kind.scalar_state:
                Yb = Yb.reshape(-1, 1)
            return _loss_and_grad(Xb, Yb, u, A, B, kind, act, phi, fwd_spec, adj_spec, opts,
                                  z0b, adj0b, w)

        return loss_and_grad_blocks(Xs, Ys, m, B.shape[1], A.dtype, z0, adj0, chunk, block,
                                    solver, grad_solver, opts.tol)
    Y, u = check_targets(model, Y, u, n, m, A.dtype)
    fwd, loss, grad = _loss_and_grad(X, Y, u, A, B, kind, act, phi, fwd_spec, adj_spec, opts, z0,
                                     adj0)
    Z = fwd.z
    return LossAndGrad(
        loss=float(loss),
        grad_A=grad.grad_A,
        grad_B=grad.grad_B,
        fp_iters=fwd.n_iter,
        adj_iters=grad.n_iter,
        fp_residual=fwd.residual,
        adj_residual=grad.residual,
        fp_status=fwd.status,
        adj_status=grad.status,
        converged=fwd.converged and grad.converged,
        z=Z,
        adjoint=grad.adjoint,
    )


def _loss_and_grad(X, Y, u, A, B, kind, act, phi, fwd_spec, adj_spec, opts, z0, adj0, w=None):
    """One evaluation on validated arguments (the whole data, or one row block of
    it with weight ``w``): ``(forward result, loss, GradResult)``; the gradient is
    that of ``w`` times the loss when ``w`` is given."""
    fwd, U, last = solve_forward(X, A, B, phi, fwd_spec, opts, z0)
    U, last = reusable(phi, U, last)
    Z = fwd.z
    G = np.empty(Z.shape, Z.dtype)
    if kind.readout:
        loss = _g.readout_loss(Z, Y, u, act.code, act.param, G, tune())
    else:
        loss = _g.residual_loss(Z, Y, G, tune())
    if w is not None:
        G *= w
    return fwd, loss, _adjoint(X, A, B, Z, G, phi, adj_spec, opts, adj0, U, last)


def _single_index(X, Y, A, B, act, backward, opts, z0) -> LossAndGrad:
    """:func:`loss_and_grad` of ``single_index`` by Newton: one pass of the scalar
    kernels (:func:`deqbench._scalar.evaluate`), the gradient in closed form with the
    backward factor ``backward``, the adjoint ``Mu = (y - Y) phi' f(b phi') / n``
    (docs/theory.md §12)."""
    X = v.as_matrix("X", X, shape=(None, B.shape[1]), dtype=A.dtype)
    n = X.shape[0]
    Y = check_targets("single_index", Y, None, n, 1, A.dtype)[0][:, 0].copy()
    y0 = None if z0 is None else v.as_matrix("z0", z0, shape=(n, 1), dtype=A.dtype)[:, 0].copy()
    w, b = np.ascontiguousarray(B[0]), float(A[0, 0])
    terms = opts.neumann_terms if backward == _scalar.NEUMANN else 0
    lam = opts.neumann_damping if backward == _scalar.NEUMANN else 1.0
    st, loss, gw, gb, y, itmax, rmax, D = _scalar.evaluate(
        X, Y, w, b, act, kind=backward, terms=terms, damping=lam, tol=opts.tol,
        max_iter=opts.max_iter, y0=y0)
    status = SOLVE_NAMES[st]
    dt = A.dtype
    if st != CONVERGED:
        why = (_scalar.guard_rule(act, b) if st == _scalar.NOT_UNIQUE else
               f"tol {opts.tol:.1e} not reached within max_iter={opts.max_iter} evaluations"
               if status == "max_iter" else
               f"non-finite values (X w beyond {dt}, or an iterate)")
        warn(f"loss_and_grad(model='single_index', solver='newton'): status={status!r}: "
             f"{why}; the loss and gradients are NaN")
        Mu = np.full(n, np.nan, dt)
        adj_status, conv = status, False
    else:
        Mu = (((y - Y) / n) * D * _scalar.backward_factor(backward, terms, lam, b * D)
              ).astype(dt)
        adj_status, conv = ("converged" if backward == _scalar.EXACT else "truncated"), True
    return LossAndGrad(
        loss=loss, grad_A=np.array([[gb]], dt), grad_B=gw[None, :].copy(), fp_iters=itmax,
        adj_iters=0, fp_residual=rmax, adj_residual=0.0 if conv else np.nan, fp_status=status,
        adj_status=adj_status, converged=conv, z=y[:, None].copy(), adjoint=Mu[:, None].copy())


def check_scalar_state(model, A, u) -> None:
    """A call of ``single_index`` spelled for the read-out model that had its name
    (``u`` given, or ``A`` not ``(1, 1)``) is :data:`~deqbench._registry.RENAMED`."""
    if MODELS[model].scalar_state and (u is not None or A.shape != (1, 1)):
        raise ValueError(RENAMED)


def check_activation(kind, act) -> None:
    """A model without an activation (:attr:`~._registry.Model.activation`) takes
    the identity only."""
    if kind.activation == "identity" and not act.is_identity:
        raise ValueError(f"activation must be 'identity' for model={kind.name!r}, got "
                         f"{str(act)!r}")


def check_targets(model, Y, u, n, m, dtype, ref="A"):
    """Validate targets (and ``u``) for ``model``; return ``(Y, u)`` in ``dtype``
    (the dtype of the parameter ``ref``); ``single_index`` takes ``Y`` of shape
    ``(n,)`` or ``(n, 1)`` and returns it as ``(n, 1)``."""
    if MODELS[model].scalar_state:
        if u is not None:
            raise ValueError(RENAMED)
        if np.ndim(Y) == 1:
            return (v.as_matrix("Y", Y, ndim=1, shape=(n,), dtype=dtype, ref=ref).reshape(n, 1),
                    None)
        if np.ndim(Y) != 2 or np.shape(Y)[1] != 1:
            raise ValueError(f"Y must have shape ({n},) or ({n}, 1) for model='single_index', "
                             f"got shape {np.shape(Y)}")
        return v.as_matrix("Y", Y, shape=(n, 1), dtype=dtype, ref=ref), None
    if MODELS[model].readout:
        return (v.as_matrix("Y", Y, ndim=1, shape=(n,), dtype=dtype, ref=ref),
                check_readout(model, u, m, dtype, ref))
    check_readout(model, u, m, dtype, ref)
    return v.as_matrix("Y", Y, shape=(n, m), dtype=dtype, ref=ref), None


def check_readout(model, u, m, dtype, ref="A"):
    """The read-out ``u`` of a model with one (readout; default ``(1, ..., 1) /
    sqrt(m)``); None for the other models, where passing one is an error."""
    if not MODELS[model].readout:
        if u is not None:
            users = " or ".join(f"model={name!r}" for name, k in MODELS.items() if k.readout)
            raise ValueError(f"u is only used by {users}, got model={model!r}")
        return None
    if u is None:
        return np.full(m, 1.0 / np.sqrt(m), dtype)
    return v.as_matrix("u", u, ndim=1, shape=(m,), dtype=dtype, ref=ref)
