"""Adjoint set-up, parameter gradients and model losses (docs/theory.md §2 and §4).

Each kernel streams its arrays once per step; element passes go parallel
only from ``PASS_PARALLEL_MIN`` elements on, gemm + pass kernels work in row
blocks like :mod:`.fixed_point` (see :mod:`.blocks`); both read the settings
vector ``tune`` (``None``: the built-in settings).
"""

from __future__ import annotations

import numpy as np

from .._jit import jit, prange, twins
from .activations import act, dact, dh_from_output_row, dh_row
from .blocks import block_rows, flat, gemm, pass_parallel


def _preactivation_derivative(Z, AT, U, code, param, D, rows, tune=None):
    n, m = D.shape
    for b in prange((n + rows - 1) // rows):
        i0 = b * rows
        i1 = min(i0 + rows, n)
        gemm(Z[i0:i1], AT, D[i0:i1], tune)
        dh_row(code, param, flat(D[i0:i1]), flat(U[i0:i1]))


_preactivation_derivative_s, _preactivation_derivative_p = twins(_preactivation_derivative)


@jit
def preactivation_derivative(Z, AT, U, code, param, D, tune=None):
    """``D <- phi'(Z A^T + U)`` (``D`` doubles as the gemm output), by row blocks."""
    rows = block_rows(Z.shape[0], Z.shape[1], tune)
    if Z.shape[0] > rows:
        return _preactivation_derivative_p(Z, AT, U, code, param, D, rows, tune)
    return _preactivation_derivative_s(Z, AT, U, code, param, D, rows, tune)


def _output_derivative(Z, T, code, beta, D, rows):
    n = D.shape[0]
    inv_beta = 1.0 / beta
    for b in prange((n + rows - 1) // rows):
        i0 = b * rows
        i1 = min(i0 + rows, n)
        d = flat(D[i0:i1])
        y = flat(T[i0:i1])
        if beta != 1.0:
            z = flat(Z[i0:i1])
            for j in range(d.shape[0]):
                d[j] = z[j] + (y[j] - z[j]) * inv_beta
            y = d
        dh_from_output_row(code, y, d)


_output_derivative_s, _output_derivative_p = twins(_output_derivative)


@jit
def output_derivative(Z, T, code, beta, D, tune=None):
    """``D <- phi'(Z A^T + U)`` without the gemm, from the last Picard evaluation of ``Z``,
    ``T = Z + beta (phi(Z A^T + U) - Z)`` (:func:`~.fixed_point.picard` leaves it there),
    for the activations of :func:`~.activations.has_output_derivative`. One element pass
    where :func:`preactivation_derivative` pays a gemm as costly as a map evaluation; the
    values agree to rounding (``phi`` recovered from ``T``, within an ulp when
    ``beta = 1``)."""
    rows = block_rows(D.shape[0], D.shape[1], tune)
    if pass_parallel(D.size, tune) and D.shape[0] > rows:
        return _output_derivative_p(Z, T, code, beta, D, rows)
    return _output_derivative_s(Z, T, code, beta, D, rows)


def _residual_loss(Z, Y, G, rows):
    n = Z.shape[0]
    inv_n = 1.0 / n
    total = 0.0
    for b in prange((n + rows - 1) // rows):
        i0 = b * rows
        i1 = min(i0 + rows, n)
        z = flat(Z[i0:i1])
        y = flat(Y[i0:i1])
        g = flat(G[i0:i1])
        tb = 0.0
        for j in range(z.shape[0]):
            r = z[j] - y[j]
            g[j] = r * inv_n
            tb += np.float64(r) * np.float64(r)  # squared in float64 (float32 data too)
        total += tb
    return 0.5 * total * inv_n


_residual_loss_s, _residual_loss_p = twins(_residual_loss)


@jit
def residual_loss(Z, Y, G, tune=None):
    """Squared loss ``||Z - Y||^2 / 2n``; ``G <- (Z - Y) / n``."""
    rows = block_rows(Z.shape[0], Z.shape[1], tune)
    if pass_parallel(Z.size, tune):
        return _residual_loss_p(Z, Y, G, rows)
    return _residual_loss_s(Z, Y, G, rows)


def _readout_loss(Z, y, u, code, param, G):
    n, m = Z.shape
    inv_n = 1.0 / n
    total = 0.0
    for i in prange(n):
        s = 0.0
        for j in range(m):
            s += Z[i, j] * u[j]
        r = act(code, param, s) - y[i]
        c = r * dact(code, param, s) * inv_n
        for j in range(m):
            G[i, j] = c * u[j]
        total += np.float64(r) * np.float64(r)
    return 0.5 * total * inv_n


_readout_loss_s, _readout_loss_p = twins(_readout_loss)


@jit
def readout_loss(Z, y, u, code, param, G, tune=None):
    """``yhat = sigma(Z u)``, loss ``sum (yhat - y)^2 / 2n``;
    ``G <- outer(r sigma'(s), u) / n``."""
    if pass_parallel(Z.size, tune):
        return _readout_loss_p(Z, y, u, code, param, G)
    return _readout_loss_s(Z, y, u, code, param, G)


def _readout_predict(Z, u, code, param, out):
    n, m = Z.shape
    for i in prange(n):
        s = 0.0
        for j in range(m):
            s += Z[i, j] * u[j]
        out[i] = act(code, param, s)


_readout_predict_s, _readout_predict_p = twins(_readout_predict)


@jit
def readout_predict(Z, u, code, param, out, tune=None):
    """``out <- sigma(Z u)``."""
    if pass_parallel(Z.size, tune):
        return _readout_predict_p(Z, u, code, param, out)
    return _readout_predict_s(Z, u, code, param, out)
