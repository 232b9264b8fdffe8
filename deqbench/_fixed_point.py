"""Forward solve of a DEQ: the fixed point ``Z = phi(Z A^T + X B^T)`` (docs/theory.md §3)."""

from __future__ import annotations

import numba
import numpy as np

from . import _scalar
from . import _validate as v
from ._calibration import tune
from ._chunked import forward_blocks, resolve
from ._kernels import fixed_point as _fp
from ._kernels import solvers as _ks
from ._kernels.activations import IDENTITY
from ._kernels.blocks import gemm_rows
from ._kernels.status import CONVERGED, DIVERGED, NOT_UNIQUE, SOLVE_NAMES
from ._options import SolverOptions, resolve_options, tol_floor
from ._registry import FORWARD, SOLVERS, Solver
from ._results import FixedPointResult
from ._threads import blas_single_threaded
from ._warnings import warn
from .activations import Activation, get_activation

__all__ = ["fixed_point", "tol_floor"]

METHODS = FORWARD


def dummy(dtype) -> np.ndarray:
    """A (1, 1) placeholder for the unused ``D`` of a kernel, in the kernel's dtype
    (numba specialises on it; one dtype per call keeps one specialisation)."""
    return np.zeros((1, 1), dtype)


def solve(spec: Solver, M, U, code, param, D, Z, opts: SolverOptions, T=None, terms=0):
    """Run solver ``spec`` on the map ``Z -> h(Z M + U)`` in place on ``Z``, through
    the kernels' one dispatch (:func:`deqbench._kernels.solvers.iterate`), with the
    work space its registry entry names.

    Shared by the forward and adjoint solves. Returns ``(n_iter, residual,
    status_code, history)``. ``T``: the ``(n, m)`` work array (allocated when
    None and the solver needs one); after Picard it holds the evaluation of the
    returned ``Z`` (:func:`~._kernels.fixed_point.picard`). ``terms``: the
    highest power of a truncated series.
    """
    n, m = Z.shape
    if spec.inexact:
        hist = np.full(terms + 2, np.nan)
    else:
        hist = np.empty(opts.max_iter + 1)  # the kernels write every entry they report
    if T is None:
        T = np.empty_like(Z) if "T" in spec.workspace else dummy(Z.dtype)
    k = spec.slots(opts)
    if k:
        Fh = np.empty((k, n, m), Z.dtype)
        Gh = np.empty((k, n, m), Z.dtype)
        GG = np.zeros((k, k))
        work = np.zeros((2 * k + 2, k))
    else:
        Fh = Gh = np.empty((1, 1, 1), Z.dtype)
        GG = work = np.zeros((1, 1))
    damping = spec.series_damping(opts) if spec.inexact else opts.damping
    it, res, status = _ks.iterate(spec.code, Z, M, U, code, param, D, T, Fh, Gh, GG, work, hist,
                                  opts.tol, opts.max_iter, damping, opts.anderson_ridge,
                                  terms, numba.get_num_threads(), tune())
    return it, res, status, hist[: it + 1].copy()


def warn_failure(what: str, status: str, n_iter: int, residual: float, tol: float) -> None:
    if status == "underflow":
        warn(f"{what} stopped with status='underflow' after {n_iter} iterations: its values "
             "are too small for float64's squared norms to tell whether the relative residual "
             f"is below tol {tol:.1e}; returning the last iterate (scale the data up by a "
             "power of two)", stacklevel=3)
        return
    warn(
        f"{what} did not converge: status={status!r} after {n_iter} iterations, "
        f"relative residual {residual:.3e} > tol {tol:.1e}; returning the last finite iterate",
        stacklevel=3,
    )


def check_model(X, A, B, names=("A", "B")):
    """Validate ``X (n, d)``, ``A (m, m)``, ``B (m, d)``; return ``(X, A, B)`` as
    C-contiguous arrays of one dtype, float32 or float64 (not copies where they
    already are). ``names`` are the caller's names for ``A`` and ``B`` in error
    messages."""
    A, B = check_params(A, B, names)
    X = v.as_matrix("X", X, shape=(None, B.shape[1]), dtype=A.dtype, ref=names[0])
    return X, A, B


def check_params(A, B, names=("A", "B")):
    """The parameter half of :func:`check_model`: ``A (m, m)``, ``B (m, d)``, of one
    dtype; ``A``'s dtype is then the dtype of the call (every other array must match)."""
    a, b = names
    A = v.as_matrix(a, A)
    m = A.shape[0]
    if A.shape[1] != m:
        raise ValueError(f"{a} must be square (m, m), got shape {A.shape}")
    return A, v.as_matrix(b, B, shape=(m, None), dtype=A.dtype, ref=a)


@blas_single_threaded
def fixed_point(
    X,
    A,
    B,
    *,
    activation: str | Activation = "identity",
    method: str = "picard",
    options: SolverOptions | None = None,
    tol: float | None = None,
    max_iter: int | None = None,
    damping: float | None = None,
    z0=None,
    anderson_history: int | None = None,
    anderson_ridge: float | None = None,
    chunk: int | str | None = None,
) -> FixedPointResult:
    """Solve ``Z = phi(Z A^T + X B^T)`` for ``Z`` of shape ``(n, m)``.

    Parameters
    ----------
    X : (n, d), A : (m, m), B : (m, d) arrays of floats
        Data, then parameters (the order of every deqbench call), all float32
        or all float64: the computation runs in that dtype (other real floats
        are converted to float64; a mix is a ``TypeError``). ``X`` may
        also be an ``np.memmap`` or the path of a ``.npy`` file
        (read in row blocks, see ``chunk``).
    activation : str or Activation
        ``phi``; ``"identity"`` gives the linear DEQ.
    method : {"picard", "anderson", "direct", "broyden", "newton"}
        ``"picard"``: damped iteration ``Z <- (1 - damping) Z + damping F(Z)``,
        each cache-sized block of rows iterated until it meets the rule below
        on its own rows (which implies it for the batch; ``n_iter`` is then
        the largest block count, ``history[k]`` the residual of the batch
        whose blocks hold iterate ``min(k, k_b)``; docs/theory.md §3).
        ``"anderson"``: Anderson acceleration (``anderson_history``,
        ``anderson_ridge``). ``"direct"``: exact LU solve, linear only.
        ``"broyden"``: Broyden's method, one inverse-Jacobian estimate per
        sample kept as ``anderson_history`` secant pairs (restarted when
        full), full steps; the batch rule below; no ``damping``.
        ``"newton"``: a scalar state only (``m = 1``, ``A = [[b]]``), any
        ``phi``: safeguarded (bracketed) Newton per sample, stopping where
        ``|z_i - phi(b z_i + <B, x_i>)| <= tol`` for every sample (the
        paper's absolute residual, not the rule below), ``max_iter``
        evaluations per sample; it refuses, with status ``"not_unique"``,
        a ``b`` outside its uniqueness guard (``1 - b phi'`` of one sign
        over the range of ``phi'``: tanh ``b < 1``, sigmoid ``b < 4``,
        identity ``b != 1``; docs/theory.md §12).
    options : SolverOptions, optional
        ``tol`` (stop when ``||F(Z) - Z||_F / ||F(Z)||_F <= tol``; default
        1e-10 in float64, 1e-5 in float32), ``max_iter``, ``damping``,
        ``anderson_history``, ``anderson_ridge``: see
        :class:`~deqbench.SolverOptions`.
    tol, max_iter, damping, anderson_history, anderson_ridge
        The same options as keywords (None: the value of ``options``, else the
        :class:`~deqbench.SolverOptions` default).
    z0 : (n, m) array, optional
        Initial guess (warm start); zeros by default.
    chunk : int in [1, n], "auto" or None
        Solve in blocks of ``chunk`` rows, each to the rule above on its own
        rows (hence the whole batch too); work memory ``O(chunk (m + d) +
        m^2 + m d)`` besides ``z``. ``"auto"``: :func:`deqbench._source.auto_chunk`.
        None: one block for in-memory ``X``, ``"auto"`` for ``X`` on disk.
        Anderson mixes per block, so its iterates differ from the unchunked
        ones (the fixed point agrees to the tolerance).

    Returns
    -------
    FixedPointResult
        With ``blocks`` (per-block iteration statistics) when chunked.

    Warns
    -----
    ConvergenceWarning
        When the status is not ``"converged"``.

    Notes
    -----
    docs/theory.md §3. Failure (``max_iter`` reached, non-finite values,
    residual growth beyond 1e8 x the first residual) returns
    ``converged=False`` with the last finite iterate.
    """
    A, B = check_params(A, B)
    act = get_activation(activation)
    v.choice("method", method, METHODS)
    spec = SOLVERS[method]
    spec.check_state(A.shape[0], "method")
    opts = resolve_options(options, A.dtype, tol=tol, max_iter=max_iter, damping=damping,
                           anderson_history=anderson_history, anderson_ridge=anderson_ridge)
    Xs, chunk = resolve(X, B, chunk, opts.anderson_history)
    if Xs is None:
        X = v.as_matrix("X", X, shape=(None, B.shape[1]), dtype=A.dtype)
        if z0 is not None:
            z0 = v.as_matrix("z0", z0, shape=(X.shape[0], A.shape[0]), dtype=A.dtype)
        return forward(X, A, B, act, spec, opts, z0)
    check_linear(spec, act)
    if z0 is not None:
        z0 = v.as_matrix("z0", z0, shape=(Xs.n, A.shape[0]), dtype=A.dtype)
    return forward_blocks(Xs, A.shape[0], A.dtype, z0, chunk,
                          lambda Xb, z0b: forward(Xb, A, B, act, spec, opts, z0b),
                          method, opts.tol)


def check_linear(spec: Solver, act) -> None:
    """A solver of linear maps only (:attr:`~._registry.Solver.linear_only`) with a
    nonlinear ``phi`` is a ``ValueError``."""
    if spec.linear_only and not act.is_identity:
        raise ValueError(f"method={spec.name!r} solves linear maps only, got "
                         f"activation={str(act)!r} (use 'picard' or 'anderson')")


def forward(X, A, B, act, spec: Solver, opts: SolverOptions, z0) -> FixedPointResult:
    """:func:`fixed_point` on validated arguments."""
    return solve_forward(X, A, B, act, spec, opts, z0)[0]


def solve_forward(X, A, B, act, spec: Solver, opts: SolverOptions, z0):
    """:func:`forward`, and what an adjoint solve can reuse: ``(result, U, T)``, with
    ``U = X B^T`` and, after a solver that keeps its evaluation (Picard), ``T`` the
    evaluation ``z + damping (h(z A^T + U) - z)`` of ``result.z`` (None after the others)."""
    n, m = X.shape[0], A.shape[0]
    if spec.scalar_kernel:
        return newton_forward(X, A, B, act, opts, z0), None, None
    U = input_term(X, B)
    if not np.isfinite(U).all():  # beyond the dtype: a saturating phi would hide it
        Z = np.zeros((n, m), X.dtype) if z0 is None else z0.copy()
        warn(f"fixed_point(method={spec.name!r}): X B^T overflows {X.dtype} (its entries "
             "exceed the dtype's range): status='diverged', no iteration", stacklevel=3)
        return (FixedPointResult(Z, 0, np.inf, False, "diverged", np.array([np.inf]),
                                 spec.name), U, None)
    if spec.linear_only:
        check_linear(spec, act)
        Z, res, status = direct(np.eye(m) - A, U, np.ascontiguousarray(A.T), opts.tol,
                                "fixed_point")
        return (FixedPointResult(Z, 0, res, status == "converged", status, np.array([res]),
                                 spec.name), U, None)
    Z = np.zeros((n, m), X.dtype) if z0 is None else z0.copy()
    T = np.empty_like(Z) if spec.keeps_evaluation else None
    k, res, code, hist = solve(spec, np.ascontiguousarray(A.T), U, act.code, act.param,
                               dummy(Z.dtype), Z, opts, T=T)
    status = SOLVE_NAMES[code]
    if code != CONVERGED:
        warn_failure(f"fixed_point(method={spec.name!r})", status, k, res, opts.tol)
    return FixedPointResult(Z, k, res, code == CONVERGED, status, hist, spec.name), U, T


def newton_forward(X, A, B, act, opts: SolverOptions, z0) -> FixedPointResult:
    """The fixed point of a scalar state (``m = 1``) per sample by safeguarded Newton
    (:func:`deqbench._scalar.newton`): ``tol`` the absolute residual of each sample,
    ``max_iter`` its evaluations; on failure the start (``z0``, else zeros) where no
    finite iterate is left, with a warning naming the status (the uniqueness rule
    for ``not_unique``)."""
    w, b = np.ascontiguousarray(B[0]), float(A[0, 0])
    start = None if z0 is None else np.ascontiguousarray(z0[:, 0])
    y, iters, code, res = _scalar.newton(X, w, b, act, tol=opts.tol, max_iter=opts.max_iter,
                                         y0=start)
    status = SOLVE_NAMES[code]
    k = int(iters.max()) if iters.size else 0
    if code != CONVERGED:
        bad = ~np.isfinite(y)
        y[bad] = 0.0 if start is None else start[bad]
        with np.errstate(all="ignore"):
            res = float(np.max(np.abs(y - act(X @ w + b * y)), initial=0.0))
        if code == NOT_UNIQUE:
            warn(f"fixed_point(method='newton'): status='not_unique': "
                 f"{_scalar.guard_rule(act, b)}; returning the start")
        elif code == DIVERGED:
            warn("fixed_point(method='newton') stopped with status='diverged': non-finite "
                 f"values (X B^T beyond {X.dtype}, or an iterate); returning the start where "
                 "no finite iterate is left")
        else:
            warn(f"fixed_point(method='newton') did not converge: status={status!r} after "
                 f"{k} evaluations of the slowest sample, largest residual {res:.3e} > tol "
                 f"{opts.tol:.1e}; returning the last finite iterate")
    return FixedPointResult(y[:, None].copy(), k, res, code == CONVERGED, status,
                            np.array([res]), "newton")


def input_term(X, B):
    """``U = X B^T`` by row blocks (overflow: :func:`solve_forward` stops with a status)."""
    U = np.empty((X.shape[0], B.shape[0]), X.dtype)
    gemm_rows(X, np.ascontiguousarray(B.T), U, tune())
    return U


def map_residual(Z, M, U, code, param, D) -> float:
    """Relative residual of ``Z`` for the map ``Z -> h(Z M + U)``."""
    T = np.empty_like(Z)
    dd, ff = _fp.evaluate(Z, M, U, code, param, D, T, 1.0)
    return float(_fp.relative(dd, ff))


def direct(C, U, M, tol, what):
    """Exact linear solve ``Z = U C^{-T}`` checked by its residual for ``Z = Z M + U``.

    ``C`` is float64 whatever the dtype of ``U`` (the inverse is formed in float64,
    then rounded to U's dtype for the gemm). A singular or ill-conditioned ``C`` is a
    status (with a warning), not an exception.
    """
    Z = np.zeros_like(U)
    try:
        _fp.direct_linear(C, U, Z, tune())
    except np.linalg.LinAlgError:
        Z[:] = 0.0
        warn(f"{what}(method='direct'): I - A is singular", stacklevel=3)
        return Z, np.inf, "diverged"
    if not np.isfinite(Z).all():
        Z[:] = 0.0
        res = np.inf
    else:
        res = map_residual(Z, M, U, IDENTITY, 0.0, dummy(Z.dtype))
    if res <= tol:
        return Z, res, "converged"
    status = "diverged" if not np.isfinite(res) else "inaccurate"
    warn(
        f"{what}(method='direct'): relative residual {res:.3e} > tol {tol:.1e} "
        "(I - A is ill-conditioned)",
        stacklevel=3,
    )
    return Z, res, status
