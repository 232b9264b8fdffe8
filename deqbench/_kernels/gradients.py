"""Adjoint set-up, parameter gradients and model losses (THEORY.md sections 2 and 4)."""

from __future__ import annotations

import numpy as np

from .._jit import pjit, prange
from .activations import act, dact


@pjit
def preactivation_derivative(Z, AT, U, code, param, D):
    """``D <- phi'(Z A^T + U)`` (``D`` doubles as the gemm output)."""
    np.dot(Z, AT, D)
    n, m = D.shape
    for i in prange(n):
        for j in range(m):
            D[i, j] = dact(code, param, D[i, j] + U[i, j])


@pjit
def residual_loss(Z, Y, G):
    """Squared loss ``||Z - Y||^2 / 2n``; ``G <- (Z - Y) / n``."""
    n, m = Z.shape
    inv_n = 1.0 / n
    total = 0.0
    for i in prange(n):
        for j in range(m):
            r = Z[i, j] - Y[i, j]
            G[i, j] = r * inv_n
            total += r * r
    return 0.5 * total * inv_n


@pjit
def single_index_loss(Z, y, u, code, param, G):
    """``yhat = sigma(Z u)``, loss ``sum (yhat - y)^2 / 2n``;
    ``G <- outer(r sigma'(s), u) / n``."""
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
        total += r * r
    return 0.5 * total * inv_n


@pjit
def single_index_predict(Z, u, code, param, out):
    n, m = Z.shape
    for i in prange(n):
        s = 0.0
        for j in range(m):
            s += Z[i, j] * u[j]
        out[i] = act(code, param, s)
