"""Computations over row blocks of the data (issue 11): the sufficient
statistics of the linear model in one streaming pass (THEORY.md section 8)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._source import BlockSource, blocks

__all__ = ["PairwiseSum", "SufficientStats", "sufficient_stats"]


class PairwiseSum:
    """Running sum of arrays combined pairwise (a binary counter of partial sums).

    After ``k`` additions the rounding error of the total grows like
    ``log2(k)`` ulps instead of ``k`` for a plain running sum, with at most
    ``log2(k) + 1`` partial sums held.
    """

    def __init__(self):
        self._stack: list[tuple[int, np.ndarray]] = []

    def add(self, a: np.ndarray) -> None:
        size = 1
        while self._stack and self._stack[-1][0] == size:
            a = self._stack.pop()[1] + a
            size *= 2
        self._stack.append((size, a))

    def total(self) -> np.ndarray:
        if not self._stack:
            raise ValueError("PairwiseSum.total of an empty sum")
        out = self._stack[-1][1].copy()  # smallest partials first
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
        """
        Wt = np.linalg.lstsq(self.Sxx, self.Syx.T, rcond=None)[0]
        W = np.ascontiguousarray(Wt.T)
        L = 0.5 * (self.yy - float(np.sum(W * self.Syx)))
        return W, max(L, 0.0)


def sufficient_stats(X: BlockSource, Y: BlockSource, chunk: int) -> SufficientStats:
    """One pass over ``X``, ``Y`` in blocks of ``chunk`` rows (next block read ahead).

    Each block's ``X_b^T X_b``, ``Y_b^T X_b`` and ``||Y_b||^2`` is one BLAS call
    (threaded), and the block sums are combined by :class:`PairwiseSum`.
    Raises :class:`~deqbench._source.ReadError` if a block cannot be read.
    """
    sxx, syx, yy = PairwiseSum(), PairwiseSum(), PairwiseSum()
    for _, _, (Xb, Yb) in blocks([X, Y], chunk):
        sxx.add(Xb.T @ Xb)
        syx.add(Yb.T @ Xb)
        yy.add(np.array([np.vdot(Yb, Yb)]))
    n = X.n
    Sxx = sxx.total() / n
    Sxx = 0.5 * (Sxx + Sxx.T)  # exactly symmetric
    return SufficientStats(np.ascontiguousarray(Sxx), syx.total() / n, float(yy.total()[0]) / n,
                           n)
