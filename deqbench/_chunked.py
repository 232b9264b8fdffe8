"""Computations over row blocks of the data (issue 11): the sufficient
statistics of the linear model in one streaming pass (docs/theory.md §8),
and the driver that runs the forward solve, adjoint solve and loss of every
model block by block. The driver is handed the work of one block (a callable
from the public call above it) and combines the blocks' outcomes; it imports
none of the public calls.

Samples are independent (each ``z_i`` solves its own fixed point), so a block
solved to ``||F(Z_b) - Z_b|| <= tol ||F(Z_b)||`` for every block meets the
batch rule ``||F(Z) - Z|| <= tol ||F(Z)||`` too. Block sums (gradients, loss,
statistics) are combined pairwise."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from ._results import BlockStats, FixedPointResult, GradResult, LossAndGrad
from ._source import BlockSource, ReadError, blocks, check_chunk, is_out_of_core, open_source
from ._warnings import ConvergenceWarning, warn

__all__ = ["PairwiseSum", "SufficientStats", "adjoint_blocks", "forward_blocks",
           "loss_and_grad_blocks", "resolve", "row_bytes", "stats_row_bytes",
           "sufficient_stats"]


class PairwiseSum:
    """Running sum of arrays combined pairwise (a binary counter of partial sums).

    After ``k`` additions the rounding error of the total grows like
    ``log2(k)`` ulps instead of ``k`` for a plain running sum, with at most
    ``log2(k) + 1`` partial sums held. The partial sums are float64 whatever the
    dtype of the terms (float32 block gradients are summed in float64 on purpose;
    the callers round the total back to the data's dtype).
    """

    def __init__(self):
        self._stack: list[tuple[int, np.ndarray]] = []

    def add(self, a: np.ndarray) -> None:
        a = np.asarray(a, dtype=np.float64)
        size = 1
        while self._stack and self._stack[-1][0] == size:
            with np.errstate(over="ignore", invalid="ignore"):  # beyond float64: inf, NaN
                a = self._stack.pop()[1] + a
            size *= 2
        self._stack.append((size, a))

    def total(self) -> np.ndarray:
        if not self._stack:
            raise ValueError("PairwiseSum.total of an empty sum")
        out = self._stack[-1][1].copy()  # smallest partials first
        with np.errstate(over="ignore", invalid="ignore"):
            for _, a in reversed(self._stack[:-1]):
                out += a
        return out


class SufficientStats(NamedTuple):
    """``Sxx = X^T X / n`` (d, d), ``Syx = Y^T X / n`` (m, d), ``yy = ||Y||_F^2 / n``."""

    Sxx: np.ndarray
    Syx: np.ndarray
    yy: float
    n: int

    def least_squares(self):
        """Minimum-norm ``W*`` (m, d) of ``min_W ||X W^T - Y||^2 / 2n`` and ``L*``.

        ``L* = (yy - <W*, Syx>) / 2`` (clipped at 0) carries an absolute error of
        order ``eps * yy``: the residuals themselves would need a second pass.
        Statistics that overflowed (data whose squares exceed float64) give NaN
        ``W*`` and ``L*``: the loss there is not finite, which a training run then
        reports as ``"diverged"`` (as it does for such data in memory).
        """
        if not (np.isfinite(self.Sxx).all() and np.isfinite(self.Syx).all()
                and np.isfinite(self.yy)):
            return np.full(self.Syx.shape, np.nan), np.nan
        Wt = np.linalg.lstsq(self.Sxx, self.Syx.T, rcond=None)[0]
        W = np.ascontiguousarray(Wt.T)
        L = 0.5 * (self.yy - float(np.sum(W * self.Syx)))
        return W, max(L, 0.0)


def sufficient_stats(X: BlockSource, Y: BlockSource, chunk: int) -> SufficientStats:
    """One pass over ``X``, ``Y`` in blocks of ``chunk`` rows (next block read ahead).

    Each block's ``X_b^T X_b``, ``Y_b^T X_b`` and ``||Y_b||^2`` is one BLAS call
    (threaded), and the block sums are combined by :class:`PairwiseSum`. The
    statistics are float64 whatever the data's dtype: float32 blocks are
    converted (one block at a time) before their products.
    Raises :class:`~deqbench._source.ReadError` if a block cannot be read.
    """
    sxx, syx, yy = PairwiseSum(), PairwiseSum(), PairwiseSum()
    with np.errstate(over="ignore", invalid="ignore"):  # overflow: inf, then a status
        for _, _, (Xb, Yb) in blocks([X, Y], chunk):
            Xb, Yb = Xb.astype(np.float64, copy=False), Yb.astype(np.float64, copy=False)
            sxx.add(Xb.T @ Xb)
            syx.add(Yb.T @ Xb)
            yy.add(np.array([np.vdot(Yb, Yb)]))
        n = X.n
        Sxx = sxx.total() / n
        Sxx = 0.5 * (Sxx + Sxx.T)  # exactly symmetric
        return SufficientStats(np.ascontiguousarray(Sxx), syx.total() / n,
                               float(yy.total()[0]) / n, n)


# --- evaluation in row blocks ------------------------------------------------------

_RANK = {"converged": 0, "truncated": 0, "inaccurate": 1, "underflow": 1, "max_iter": 2,
         "diverged": 3, "read_error": 4}


def row_bytes(d: int, m: int, anderson_history: int, dtype) -> int:
    """Bytes a block of the evaluation keeps per row: the data row, ``U``, ``Z``,
    ``T``, ``G``, ``Mu``, ``D`` and Anderson's two histories, all in the data's
    ``dtype``."""
    return (d + (6 + 2 * anderson_history) * m) * np.dtype(dtype).itemsize


def stats_row_bytes(d: int, m: int, dtype) -> int:
    """Bytes a block of :func:`sufficient_stats` keeps per row: the ``X`` and ``Y``
    rows as read, plus their float64 copies when the data is float32."""
    size = np.dtype(dtype).itemsize
    return (d + m) * (size if size == 8 else size + 8)


def resolve(X, B, chunk, anderson_history):
    """``(source, chunk)`` for evaluation in blocks, or ``(None, None)`` for the
    unchunked path (``chunk=None`` with in-memory ``X``). ``chunk=None`` with
    ``X`` on disk means ``"auto"``. Call after the parameters are validated."""
    if chunk is None and not is_out_of_core(X):
        return None, None
    m, d = B.shape
    src = open_source("X", X, shape=(None, d), dtype=B.dtype)
    chunk = check_chunk("auto" if chunk is None else chunk, src.n,
                        row_bytes(d, m, anderson_history, B.dtype))
    return src, chunk


class _Blocks:
    """Per-block outcomes of one solve: iterations, residual, status, history."""

    def __init__(self, chunk):
        self.chunk, self.iters, self.worst, self.failed = chunk, [], None, 0

    def add(self, n_iter, residual, status, history):
        self.iters.append(n_iter)
        self.failed += status not in ("converged", "truncated")
        key = (_RANK[status], residual if np.isfinite(residual) else np.inf)
        if self.worst is None or key >= self.worst[0]:
            self.worst = (key, residual, status, history)

    def summary(self):
        """``(n_iter, residual, status, history, BlockStats)`` of the whole solve."""
        _, residual, status, history = self.worst
        stats = BlockStats(self.chunk, len(self.iters), int(max(self.iters)),
                           float(np.mean(self.iters)))
        return int(max(self.iters)), residual, status, history, stats

    def read_error(self):
        it = int(max(self.iters)) if self.iters else 0
        return it, np.inf, "read_error", np.array([np.inf]), None


def _quiet(fn, *args):
    """``fn(*args)`` with its ConvergenceWarnings held back (one summary is
    issued for all blocks)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn(*args)


def _warn_blocks(what, bl: _Blocks, status, residual, tol):
    if status in ("converged", "truncated"):
        return
    warn(f"{what} did not converge in {bl.failed} of {len(bl.iters)} row blocks of "
         f"{bl.chunk} rows: worst status={status!r}, largest block residual {residual:.3e} > "
         f"tol {tol:.1e}; returning the last finite iterates", stacklevel=4)


def forward_blocks(Xs, m, dtype, z0, chunk, solve_block, method, tol, what="fixed_point"):
    """:func:`deqbench.fixed_point` block by block: ``Z`` (n, m) of ``dtype`` assembled,
    work memory ``O(chunk (m + d))``. ``solve_block(Xb, z0_b)`` solves one block
    (``z0_b`` None without ``z0``) and returns its :class:`FixedPointResult`. Rows
    after a read error keep their initial guess."""
    n = Xs.n
    Z = np.zeros((n, m), dtype) if z0 is None else z0.copy()
    bl = _Blocks(chunk)
    try:
        for s, e, (Xb,) in blocks([Xs], chunk):
            r = _quiet(solve_block, Xb, Z[s:e] if z0 is not None else None)
            Z[s:e] = r.z
            bl.add(r.n_iter, r.residual, r.status, r.history)
    except ReadError as exc:
        warn(f"{what}: {exc}; rows from {exc.start} on keep their initial guess",
             stacklevel=3)
        k, res, status, hist, stats = bl.read_error()
        return FixedPointResult(Z, k, res, False, status, hist, method, stats)
    k, res, status, hist, stats = bl.summary()
    _warn_blocks(f"{what}(method={method!r})", bl, status, res, tol)
    return FixedPointResult(Z, k, res, status == "converged", status, hist, method, stats)


def adjoint_blocks(Xs, Z, G, adj0, d, chunk, grad_block, method, tol):
    """:func:`deqbench.implicit_grad` block by block (gradients summed pairwise).
    ``grad_block(Xb, Z_b, G_b, adj0_b)`` solves one block (``adj0_b`` None without
    ``adj0``) and returns its :class:`GradResult`; ``d`` is the width of ``X``."""
    n, m = Z.shape
    dtype = Z.dtype
    Mu = np.zeros((n, m), dtype) if adj0 is None else adj0.copy()
    gA, gB = PairwiseSum(), PairwiseSum()
    bl = _Blocks(chunk)
    try:
        for s, e, (Xb,) in blocks([Xs], chunk):
            r = _quiet(grad_block, Xb, Z[s:e], G[s:e], Mu[s:e] if adj0 is not None else None)
            Mu[s:e] = r.adjoint
            gA.add(r.grad_A)
            gB.add(r.grad_B)
            bl.add(r.n_iter, r.residual, r.status, r.history)
    except ReadError as exc:
        warn(f"implicit_grad: {exc}; the gradients are NaN", stacklevel=3)
        k, res, status, hist, stats = bl.read_error()
        nan = np.full((m, m), np.nan, dtype), np.full((m, d), np.nan, dtype)
        return GradResult(*nan, Mu, k, res, False, status, hist, method, stats)
    k, res, status, hist, stats = bl.summary()
    _warn_blocks(f"implicit_grad(method={method!r})", bl, status, res, tol)
    return GradResult(gA.total().astype(dtype), gB.total().astype(dtype), Mu, k, res,
                      status in ("converged", "truncated"), status, hist, method, stats)


def loss_and_grad_blocks(Xs, Ys, m, d, dtype, z0, adj0, chunk, block, solver, grad_solver,
                         tol):
    """:func:`deqbench.loss_and_grad` block by block: forward solve, loss, adjoint
    solve and gradient of each block, summed pairwise with weights ``n_b / n``.
    ``block(Xb, Yb, w, z0_b, adj0_b)`` does one block's work and returns its forward
    :class:`FixedPointResult`, its loss (unweighted) and the :class:`GradResult` of
    the loss weighted by ``w``. Memory ``O(chunk (m + d) + m^2 + m d)``; ``z`` and
    ``adjoint`` are not kept (None). A read error gives NaN loss and gradients with
    status ``"read_error"``."""
    n = Xs.n
    loss, gA, gB = PairwiseSum(), PairwiseSum(), PairwiseSum()
    fb, ab = _Blocks(chunk), _Blocks(chunk)
    try:
        for s, e, (Xb, Yb) in blocks([Xs, Ys], chunk):
            w = (e - s) / n
            f, lb, r = _quiet(block, Xb, Yb, w, None if z0 is None else z0[s:e],
                              None if adj0 is None else adj0[s:e])
            fb.add(f.n_iter, f.residual, f.status, f.history)
            loss.add(np.array([lb * w]))
            ab.add(r.n_iter, r.residual, r.status, r.history)
            gA.add(r.grad_A)
            gB.add(r.grad_B)
    except ReadError as exc:
        warn(f"loss_and_grad: {exc}; the loss and gradients are NaN", stacklevel=3)
        fk, _, _, _, fs = fb.read_error()
        ak, _, _, _, as_ = ab.read_error()
        return LossAndGrad(np.nan, np.full((m, m), np.nan, dtype),
                           np.full((m, d), np.nan, dtype), fk, ak,
                           np.inf, np.inf, "read_error", "read_error", False, None, None, fs,
                           as_)
    fk, fres, fstatus, _, fs = fb.summary()
    ak, ares, astatus, _, as_ = ab.summary()
    _warn_blocks(f"loss_and_grad(solver={solver!r})", fb, fstatus, fres, tol)
    _warn_blocks(f"loss_and_grad(grad_solver={grad_solver!r})", ab, astatus, ares, tol)
    return LossAndGrad(float(loss.total()[0]), gA.total().astype(dtype),
                       gB.total().astype(dtype), fk, ak, fres, ares,
                       fstatus, astatus, fstatus == "converged"
                       and astatus in ("converged", "truncated"), None, None, fs, as_)
