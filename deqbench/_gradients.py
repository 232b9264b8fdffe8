"""Implicit (adjoint) gradients and model losses (docs/theory.md §2 and §4)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numba
import numpy as np

from . import _validate as v
from ._fixed_point import (
    METHODS,
    BlockStats,
    SolverOptions,
    check_options,
    check_params,
    direct,
    dummy,
    input_term,
    solve,
    solve_forward,
    warn_failure,
)
from ._kernels import fixed_point as _fp
from ._kernels import gradients as _g
from ._kernels.activations import IDENTITY, MASK, has_output_derivative
from ._kernels.blocks import gemm_tn
from ._kernels.status import CONVERGED, DIVERGED, SOLVE_NAMES
from ._threads import blas_single_threaded
from .activations import Activation, get_activation

__all__ = ["GradResult", "LossAndGrad", "implicit_grad", "loss_and_grad"]

GRAD_METHODS = ("picard", "anderson", "direct", "jfb", "neumann")
MODELS = ("linear", "single_index", "nonlinear")


@dataclass(frozen=True)
class GradResult:
    """Implicit gradient of a loss through the fixed point.

    Attributes
    ----------
    grad_A : (m, m), grad_B : (m, d)
    adjoint : (n, m)
        ``Mu = D * Lam`` (docs/theory.md §4); equals ``Lam`` for linear maps.
        Pass it back as ``adj0`` to warm-start the next adjoint solve.
    n_iter, residual, converged, status, history, method
        As in :class:`~deqbench.FixedPointResult`, for the adjoint equation.
        For ``"jfb"``/``"neumann"`` the status is ``"truncated"`` and the
        residual says how far the inexact adjoint is from the exact one.
    blocks : BlockStats or None
        Per-block statistics of a solve in row blocks (``chunk=``), with the
        conventions of :class:`~deqbench.FixedPointResult`.
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
    blocks: BlockStats | None = None


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
    tol: float | None = None,
    max_iter: int = 10_000,
    damping: float = 1.0,
    adj0=None,
    neumann_terms: int = 5,
    anderson_history: int = 5,
    anderson_ridge: float = 1e-10,
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
    method : {"picard", "anderson", "direct", "jfb", "neumann"}
        Exact: ``picard`` (with ``damping``), ``anderson`` (``anderson_history``,
        ``anderson_ridge``), ``direct`` (linear maps, LU). Inexact: ``jfb``
        (Jacobian-free, ``Lam = G``) and ``neumann``
        (``Lam = G (I + A + ... + A^k)`` with ``k = neumann_terms``: the
        truncated series has ``k + 1`` terms, ``I`` included).
    adj0 : (n, m), optional
        Initial adjoint (warm start), e.g. the previous ``GradResult.adjoint``.
    neumann_terms : int >= 0
        The highest power ``k`` of the truncated Neumann series (``neumann`` only).
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
    from ._chunked import adjoint_blocks, resolve

    A, B = check_params(A, B)
    act = get_activation(activation)
    v.choice("method", method, GRAD_METHODS)
    opts = check_options(tol, max_iter, damping, anderson_history, anderson_ridge, A.dtype)
    Xs, chunk = resolve(X, B, chunk, opts.anderson_history)
    if Xs is None:
        X = v.as_matrix("X", X, shape=(None, B.shape[1]), dtype=A.dtype)
    n, m = (X.shape[0] if Xs is None else Xs.n), A.shape[0]
    Z = v.as_matrix("Z", Z, shape=(n, m), dtype=A.dtype)
    G = v.as_matrix("G", G, shape=(n, m), dtype=A.dtype)
    if adj0 is not None:
        adj0 = v.as_matrix("adj0", adj0, shape=(n, m), dtype=A.dtype)
    nk = _neumann_terms(method, neumann_terms)
    if method == "direct" and not act.is_identity:
        raise ValueError(
            f"method='direct' solves linear maps only, got activation={str(act)!r}"
        )
    if Xs is None:
        return _adjoint(X, A, B, Z, G, act, method, opts, adj0, nk)
    return adjoint_blocks(Xs, A, B, Z, G, act, method, opts, adj0, nk, chunk)


def _neumann_terms(method, neumann_terms) -> int:
    """Power of the truncated series: 0 for ``jfb``, checked ``neumann_terms`` for ``neumann``."""
    if method == "neumann":
        return v.integer("neumann_terms", neumann_terms, minimum=0)
    return 0


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


def _adjoint(X, A, B, Z, G, act, method, opts: SolverOptions, adj0, nk, U=None, last=None):
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
        _g.output_derivative(Z, last, act.code, opts.damping, D)
    else:
        code, D = MASK, np.empty((n, m), Z.dtype)
        U = input_term(X, B) if U is None else U
        _g.preactivation_derivative(Z, np.ascontiguousarray(A.T), U, act.code, act.param, D)
    if method == "direct":
        Mu, res, status = direct(np.eye(m) - A.T, G, A, opts.tol, "implicit_grad")
        hist, n_iter = np.array([res]), 0
    elif method in ("jfb", "neumann"):
        Mu = np.zeros((n, m), Z.dtype)
        hist = np.full(nk + 2, np.nan)
        n_iter, res, code_ = _fp.picard(Mu, A, G, code, act.param, D, np.empty_like(Mu),
                                        0.0, nk + 1, 1.0, hist, numba.get_num_threads())
        status = "truncated" if code_ != DIVERGED else "diverged"
        hist = hist[: n_iter + 1]
    else:
        Mu = np.zeros((n, m), Z.dtype) if adj0 is None else adj0.copy()
        n_iter, res, code_, hist = solve(A, G, code, act.param, D, Mu, method=method, opts=opts)
        status = SOLVE_NAMES[code_]
        if code_ != CONVERGED:
            warn_failure(f"implicit_grad(method={method!r})", status, n_iter, res, opts.tol)
    grad_A = np.empty((m, m), Z.dtype)
    grad_B = np.empty((m, X.shape[1]), Z.dtype)
    threads = numba.get_num_threads()
    gemm_tn(Mu, Z, grad_A, threads)
    gemm_tn(Mu, X, grad_B, threads)
    converged = status in ("converged", "truncated")
    return GradResult(grad_A, grad_B, Mu, n_iter, res, converged, status, hist, method)


@dataclass(frozen=True)
class LossAndGrad:
    """Loss and implicit gradient of a model at given parameters.

    Unpacks as ``loss, grad_A, grad_B, info = loss_and_grad(...)``, where
    ``info`` is :attr:`info`, a dict of the remaining fields.

    Attributes
    ----------
    loss : float
        ``L = (1/2n) sum_i loss_i``.
    grad_A : (m, m), grad_B : (m, d)
    fp_iters, adj_iters : int
        Iterations of the forward and adjoint solves.
    fp_residual, adj_residual : float
    fp_status, adj_status : str
        As in :class:`~deqbench.FixedPointResult` and :class:`GradResult`.
    converged : bool
        Both solves converged (an inexact gradient counts as converged).
    z, adjoint : (n, m) or None
        Fixed point and adjoint, to warm-start the next call (``z0``, ``adj0``);
        None when evaluated in row blocks (``chunk=``: memory independent of n).
    fp_blocks, adj_blocks : BlockStats or None
        Per-block iteration statistics of the forward and adjoint solves in row
        blocks; then ``fp_iters``/``adj_iters`` are the largest block counts and
        the residuals the largest block residuals.
    """

    loss: float
    grad_A: np.ndarray = field(repr=False)
    grad_B: np.ndarray = field(repr=False)
    fp_iters: int
    adj_iters: int
    fp_residual: float
    adj_residual: float
    fp_status: str
    adj_status: str
    converged: bool
    z: np.ndarray | None = field(repr=False)
    adjoint: np.ndarray | None = field(repr=False)
    fp_blocks: BlockStats | None = None
    adj_blocks: BlockStats | None = None

    @property
    def info(self) -> dict:
        """Every field but ``loss``, ``grad_A`` and ``grad_B``, as a dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)[3:]}

    def __iter__(self):
        return iter((self.loss, self.grad_A, self.grad_B, self.info))


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
    solver: str = "picard",
    grad_solver: str | None = None,
    tol: float | None = None,
    max_iter: int = 10_000,
    damping: float = 1.0,
    z0=None,
    adj0=None,
    neumann_terms: int = 5,
    anderson_history: int = 5,
    anderson_ridge: float = 1e-10,
    chunk: int | str | None = None,
) -> LossAndGrad:
    """Loss ``L = (1/2n) sum_i loss_i`` of a DEQ model and its implicit gradient.

    Parameters
    ----------
    model : {"linear", "single_index", "nonlinear"}
        docs/theory.md §2. ``linear``: ``yhat = z``, ``Y`` is ``(n, m)``.
        ``single_index``: ``yhat = sigma(u . z)`` with the link ``sigma =
        activation`` and linear fixed point, ``Y`` is ``(n,)``. ``nonlinear``:
        ``z = phi(A z + B x)`` with ``phi = activation``, ``Y`` is ``(n, m)``.
    X : (n, d), Y : (n, m) or (n,)
        Data and targets: arrays, ``np.memmap`` arrays or paths of float32 or
        float64 ``.npy`` files, of the dtype of ``A``, ``B`` (read in row blocks, the
        next one while the current one computes).
    A : (m, m), B : (m, d)
        Parameters.
    u : (m,) array, optional
        Read-out of ``single_index``; default ``(1, ..., 1) / sqrt(m)``.
    solver : {"picard", "anderson", "direct"}
        Forward solver; ``grad_solver`` (default: the same) may also be
        ``"jfb"`` or ``"neumann"`` (series up to ``A^neumann_terms``).
    tol, max_iter, damping, anderson_history, anderson_ridge
        As in :func:`~deqbench.fixed_point`, for both solves.
    z0, adj0 : (n, m), optional
        Warm starts for the forward and adjoint solves.
    neumann_terms : int >= 0
        As in :func:`~deqbench.implicit_grad`.
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
        ``"read_error"`` (with a ConvergenceWarning).

    Warns
    -----
    ConvergenceWarning
        When the forward or an exact adjoint solve does not converge.
    """
    from ._chunked import loss_and_grad_blocks, resolve
    from ._source import is_out_of_core, open_source

    v.choice("model", model, MODELS)
    A, B = check_params(A, B)
    m = A.shape[0]
    act = get_activation(activation)
    if model == "linear" and not act.is_identity:
        raise ValueError(f"activation must be 'identity' for model='linear', got {str(act)!r}")
    grad_solver = solver if grad_solver is None else grad_solver
    v.choice("solver", solver, METHODS)
    v.choice("grad_solver", grad_solver, GRAD_METHODS)
    opts = check_options(tol, max_iter, damping, anderson_history, anderson_ridge, A.dtype)
    nk = _neumann_terms(grad_solver, neumann_terms)
    if chunk is None and is_out_of_core(Y):
        chunk = "auto"
    Xs, chunk = resolve(X, B, chunk, opts.anderson_history)
    if Xs is None:
        X = v.as_matrix("X", X, shape=(None, B.shape[1]), dtype=A.dtype)
    n = X.shape[0] if Xs is None else Xs.n
    z0 = None if z0 is None else v.as_matrix("z0", z0, shape=(n, m), dtype=A.dtype)
    adj0 = None if adj0 is None else v.as_matrix("adj0", adj0, shape=(n, m), dtype=A.dtype)
    phi = act if model == "nonlinear" else get_activation("identity")
    if grad_solver == "direct" and not phi.is_identity:
        raise ValueError("grad_solver='direct' solves linear maps only (model='nonlinear')")
    if Xs is not None:
        single = model == "single_index"
        Ys = open_source("Y", Y, ndim=1 if single else 2, shape=(n,) if single else (n, m),
                         dtype=A.dtype)
        u = check_readout(model, u, m, A.dtype)
        return loss_and_grad_blocks(model, Xs, Ys, A, B, u, act, phi, solver, grad_solver, opts,
                                    z0, adj0, nk, chunk)
    Y, u = check_targets(model, Y, u, n, m, A.dtype)
    fwd, U, last = solve_forward(X, A, B, phi, solver, opts, z0)
    U, last = reusable(phi, U, last)
    Z = fwd.z
    G = np.empty((n, m), Z.dtype)
    if model == "single_index":
        loss = _g.single_index_loss(Z, Y, u, act.code, act.param, G)
    else:
        loss = _g.residual_loss(Z, Y, G)
    grad = _adjoint(X, A, B, Z, G, phi, grad_solver, opts, adj0, nk, U, last)
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


def check_targets(model, Y, u, n, m, dtype, ref="A"):
    """Validate targets (and ``u``) for ``model``; return ``(Y, u)`` in ``dtype``
    (the dtype of the parameter ``ref``)."""
    if model == "single_index":
        return (v.as_matrix("Y", Y, ndim=1, shape=(n,), dtype=dtype, ref=ref),
                check_readout(model, u, m, dtype, ref))
    check_readout(model, u, m, dtype, ref)
    return v.as_matrix("Y", Y, shape=(n, m), dtype=dtype, ref=ref), None


def check_readout(model, u, m, dtype, ref="A"):
    """The read-out ``u`` of single_index (default ``(1, ..., 1) / sqrt(m)``);
    None for the other models, where passing one is an error."""
    if model != "single_index":
        if u is not None:
            raise ValueError(f"u is only used by model='single_index', got model={model!r}")
        return None
    if u is None:
        return np.full(m, 1.0 / np.sqrt(m), dtype)
    return v.as_matrix("u", u, ndim=1, shape=(m,), dtype=dtype, ref=ref)
