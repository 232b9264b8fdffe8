"""Forward solve of a DEQ: the fixed point ``Z = phi(Z A^T + X B^T)`` (docs/theory.md §3)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numba
import numpy as np

from . import _validate as v
from ._kernels import fixed_point as _fp
from ._kernels.activations import IDENTITY
from ._kernels.blocks import gemm_rows
from ._kernels.status import CONVERGED, SOLVE_NAMES
from ._threads import blas_single_threaded
from ._warnings import PrecisionWarning, warn
from .activations import Activation, get_activation

__all__ = ["BlockStats", "FixedPointResult", "SolverOptions", "fixed_point", "tol_floor"]

METHODS = ("picard", "anderson", "direct")
DEFAULT_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
"""``tol=None`` per dtype: 1e-10 in float64, 1e-5 (84 eps) in float32."""
TOL_FLOOR_EPS = 8.0
"""The floor of a solve tolerance, in units of the dtype's eps (see :func:`tol_floor`)."""


def tol_floor(dtype) -> float:
    """The smallest ``tol`` a solve in ``dtype`` can be expected to meet:
    ``TOL_FLOOR_EPS * eps`` (9.5e-7 in float32, 1.8e-15 in float64).

    A relative residual ``||F(Z) - Z|| / ||F(Z)||`` evaluated in floating point
    carries rounding of a few eps (one gemm, one activation per entry), so a
    smaller ``tol`` is met by chance or never (docs/theory.md §3).
    """
    return TOL_FLOOR_EPS * float(np.finfo(dtype).eps)


def dummy(dtype) -> np.ndarray:
    """A (1, 1) placeholder for the unused ``D`` of a kernel, in the kernel's dtype
    (numba specialises on it; one dtype per call keeps one specialisation)."""
    return np.zeros((1, 1), dtype)


@dataclass(frozen=True)
class BlockStats:
    """Iterations of a solve done in row blocks (``chunk=``): every block met
    ``||F(Z_b) - Z_b|| <= tol ||F(Z_b)||`` on its own rows."""

    chunk: int
    n_blocks: int
    iters_max: int
    iters_mean: float


@dataclass(frozen=True)
class FixedPointResult:
    """Outcome of an iterative solve.

    Attributes
    ----------
    z : ndarray, shape (n, m)
        The returned iterate (the last finite one on failure).
    n_iter : int
        Updates applied to the initial guess to reach ``z`` (map evaluations - 1;
        Picard: of the row block that needed the most).
    residual : float
        ``||F(z) - z||_F / ||F(z)||_F`` of the returned ``z``.
    converged : bool
        ``residual <= tol`` was reached.
    status : str
        ``"converged"``, ``"max_iter"``, ``"diverged"`` (non-finite values or
        residual growth), ``"inaccurate"`` (a direct solve whose residual exceeds
        ``tol``: ill-conditioned ``I - A``), or ``"truncated"`` (inexact gradients).
    history : ndarray
        Relative residual of every iterate, ``history[-1] == residual``.
    method : str
    blocks : BlockStats or None
        Per-block iteration statistics of a solve in row blocks (``chunk=``);
        then ``n_iter`` is the largest block count, ``residual`` the largest
        block residual (an upper bound on the residual of the whole ``z``),
        ``status`` the worst block status and ``history`` that of the block
        with the largest residual.
    """

    z: np.ndarray
    n_iter: int
    residual: float
    converged: bool
    status: str
    history: np.ndarray = field(repr=False)
    method: str = "picard"
    blocks: BlockStats | None = None

    def error_bound(self, c: float) -> float:
        """A-posteriori bound ``residual / (1 - c)`` on ``||z - z*||_F / ||F(z)||_F``.

        Parameters
        ----------
        c : float in [0, 1)
            A contraction factor of the map IN THE FROBENIUS NORM:
            ``||A||_2`` for the linear map, ``L_phi ||A||_2`` for
            ``phi(Z A^T + U)`` with an ``L_phi``-Lipschitz ``phi``, and
            ``||(1 - beta) I + beta A||_2`` for Picard damped by ``beta``.

        Notes
        -----
        docs/theory.md §3. The spectral radius is NOT such a factor unless ``A``
        is normal: for ``A = [[0.9, 50], [0, -0.9]]`` (``rho(A) = 0.9``) the
        true error was 19 to 26 times ``residual / (1 - rho(A))`` on the instances tried.
        """
        if not 0.0 <= c < 1.0:
            raise ValueError(f"c (a norm contraction factor) must be in [0, 1), got {c!r}")
        return self.residual / (1.0 - c)


class SolverOptions(NamedTuple):
    """Validated options of the iterative solves (forward and adjoint share them).

    ``damping`` in (0, 1] mixes iterate and map value (Picard and Anderson);
    ``anderson_history`` is the number of past residuals Anderson keeps and
    ``anderson_ridge`` its Tikhonov term, relative to the largest squared
    residual in the history.
    """

    tol: float
    max_iter: int
    damping: float
    anderson_history: int
    anderson_ridge: float


def check_options(tol, max_iter, damping, anderson_history, anderson_ridge, dtype,
                  default_tol=None) -> SolverOptions:
    """Validate the solver options shared by every public solver call.

    ``tol=None`` is ``default_tol`` in float64 (:data:`DEFAULT_TOL` when None; never
    below the floor) and ``DEFAULT_TOL`` in float32; a ``tol`` below
    :func:`tol_floor` of ``dtype`` warns (:class:`~deqbench.PrecisionWarning`)
    and is used as given.
    """
    dtype = np.dtype(dtype)
    floor = tol_floor(dtype)
    if tol is None:  # a default never goes below the floor
        tol = DEFAULT_TOL[dtype]
        if default_tol is not None and dtype == np.float64:
            tol = max(default_tol, floor)
    tol = v.positive("tol", tol)
    if tol < floor:
        warnings.warn(f"tol={tol:.3g} is below the floor {floor:.3g} of {dtype} "
                      f"({TOL_FLOOR_EPS:g} x eps = {TOL_FLOOR_EPS:g} x "
                      f"{np.finfo(dtype).eps:.3g}): the solves may stop at max_iter; use "
                      f"tol >= {floor:.3g} or float64 data", PrecisionWarning, stacklevel=4)
    return SolverOptions(
        tol=tol,
        max_iter=v.integer("max_iter", max_iter, minimum=1),
        damping=v.unit_interval("damping", damping),
        anderson_history=v.integer("anderson_history", anderson_history, minimum=1),
        anderson_ridge=v.positive("anderson_ridge", anderson_ridge, allow_zero=True),
    )


def solve(M, U, code, param, D, Z, *, method, opts: SolverOptions, T=None):
    """Run an iterative kernel on the map ``Z -> h(Z M + U)`` in place on ``Z``.

    Shared by the forward and adjoint solves. Returns ``(n_iter, residual,
    status_code, history)``. ``T``: Picard's work array (allocated when None); it
    ends holding the evaluation of the returned ``Z`` (:func:`~._kernels.fixed_point.picard`).
    """
    hist = np.empty(opts.max_iter + 1)  # the kernels write every entry they report
    if method == "picard":
        T = np.empty_like(Z) if T is None else T
        k, res, status = _fp.picard(Z, M, U, code, param, D, T, opts.tol, opts.max_iter,
                                    opts.damping, hist, numba.get_num_threads())
    else:
        mh = opts.anderson_history
        n, m = Z.shape
        Fh = np.empty((mh, n, m), Z.dtype)
        Gh = np.empty((mh, n, m), Z.dtype)
        GG = np.zeros((mh, mh))
        work = np.zeros((2 * mh + 2, mh))
        k, res, status = _fp.anderson(Z, M, U, code, param, D, Fh, Gh, GG, work, opts.tol,
                                      opts.max_iter, opts.damping, opts.anderson_ridge, hist)
    return k, res, status, hist[: k + 1].copy()


def warn_failure(what: str, status: str, n_iter: int, residual: float, tol: float) -> None:
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
    tol: float | None = None,
    max_iter: int = 10_000,
    damping: float = 1.0,
    z0=None,
    anderson_history: int = 5,
    anderson_ridge: float = 1e-10,
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
    method : {"picard", "anderson", "direct"}
        ``"picard"``: damped iteration ``Z <- (1 - damping) Z + damping F(Z)``,
        each cache-sized block of rows iterated until it meets the rule below
        on its own rows (which implies it for the batch; ``n_iter`` is then
        the largest block count, ``history[k]`` the residual of the batch
        whose blocks hold iterate ``min(k, k_b)``; docs/theory.md §3).
        ``"anderson"``: Anderson acceleration (``anderson_history``,
        ``anderson_ridge``). ``"direct"``: exact LU solve, linear only.
    tol : float, optional
        Stop when ``||F(Z) - Z||_F / ||F(Z)||_F <= tol``. Default 1e-10 in
        float64, 1e-5 in float32; below :func:`tol_floor` (``8 eps``: 9.5e-7
        in float32) a :class:`~deqbench.PrecisionWarning` names the floor.
    max_iter : int
    damping : float in (0, 1]
    z0 : (n, m) array, optional
        Initial guess (warm start); zeros by default.
    anderson_history : int >= 1
        Past residuals kept by Anderson acceleration.
    anderson_ridge : float >= 0
        Anderson's Tikhonov term, relative to the largest squared residual kept.
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
    from ._chunked import forward_blocks, resolve

    A, B = check_params(A, B)
    act = get_activation(activation)
    v.choice("method", method, METHODS)
    opts = check_options(tol, max_iter, damping, anderson_history, anderson_ridge, A.dtype)
    Xs, chunk = resolve(X, B, chunk, opts.anderson_history)
    if Xs is None:
        X = v.as_matrix("X", X, shape=(None, B.shape[1]), dtype=A.dtype)
        if z0 is not None:
            z0 = v.as_matrix("z0", z0, shape=(X.shape[0], A.shape[0]), dtype=A.dtype)
        return forward(X, A, B, act, method, opts, z0)
    if method == "direct" and not act.is_identity:
        raise ValueError(f"method='direct' solves linear maps only, got activation={str(act)!r}"
                         " (use 'picard' or 'anderson')")
    if z0 is not None:
        z0 = v.as_matrix("z0", z0, shape=(Xs.n, A.shape[0]), dtype=A.dtype)
    return forward_blocks(Xs, A, B, act, method, opts, z0, chunk)


def forward(X, A, B, act, method, opts: SolverOptions, z0) -> FixedPointResult:
    """:func:`fixed_point` on validated arguments."""
    return solve_forward(X, A, B, act, method, opts, z0)[0]


def solve_forward(X, A, B, act, method, opts: SolverOptions, z0):
    """:func:`forward`, and what an adjoint solve can reuse: ``(result, U, T)``, with
    ``U = X B^T`` and, after Picard, ``T`` the evaluation ``z + damping (h(z A^T + U) - z)``
    of ``result.z`` (None after the other methods)."""
    n, m = X.shape[0], A.shape[0]
    U = input_term(X, B)
    if method == "direct":
        if not act.is_identity:
            raise ValueError(
                f"method='direct' solves linear maps only, got activation={str(act)!r} "
                "(use 'picard' or 'anderson')"
            )
        Z, res, status = direct(np.eye(m) - A, U, np.ascontiguousarray(A.T), opts.tol,
                                "fixed_point")
        return (FixedPointResult(Z, 0, res, status == "converged", status, np.array([res]),
                                 method), U, None)
    Z = np.zeros((n, m), X.dtype) if z0 is None else z0.copy()
    T = np.empty_like(Z) if method == "picard" else None
    k, res, code, hist = solve(np.ascontiguousarray(A.T), U, act.code, act.param, dummy(Z.dtype), Z,
                               method=method, opts=opts, T=T)
    status = SOLVE_NAMES[code]
    if code != CONVERGED:
        warn_failure(f"fixed_point(method={method!r})", status, k, res, opts.tol)
    return FixedPointResult(Z, k, res, code == CONVERGED, status, hist, method), U, T


def input_term(X, B):
    """``U = X B^T`` by row blocks (overflow becomes a status downstream)."""
    U = np.empty((X.shape[0], B.shape[0]), X.dtype)
    gemm_rows(X, np.ascontiguousarray(B.T), U)
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
        _fp.direct_linear(C, U, Z)
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
