"""Elementwise activations and derivatives, dispatched on an integer code.

Codes are shared with :mod:`deqbench.activations`; ``param`` is the slope of
leaky ReLU and ignored by the others. ``MASK`` is not an activation: the
"map" ``v -> D * v`` with a fixed array ``D`` turns the nonlinear adjoint
equation into the same ``Z = h(Z M + U)`` form as the forward solve.
"""

from __future__ import annotations

import math

from .._jit import jit

IDENTITY = 0
LEAKY_RELU = 1
TANH = 2
SIGMOID = 3
SOFTPLUS = 4
RELU = 5
GELU = 6
MASK = -1

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


@jit(inline="always")
def act(code, param, x):
    if code == IDENTITY:
        return x
    if code == LEAKY_RELU:
        return x if x >= 0.0 else param * x
    if code == TANH:
        return math.tanh(x)
    if code == SIGMOID:
        if x >= 0.0:
            return 1.0 / (1.0 + math.exp(-x))
        e = math.exp(x)
        return e / (1.0 + e)
    if code == SOFTPLUS:
        return max(x, 0.0) + math.log1p(math.exp(-abs(x)))
    if code == RELU:
        return x if x > 0.0 else 0.0
    if code == GELU:
        return 0.5 * x * (1.0 + math.erf(x * _INV_SQRT2))
    return math.nan


@jit(inline="always")
def dact(code, param, x):
    if code == IDENTITY:
        return 1.0
    if code == LEAKY_RELU:
        return 1.0 if x >= 0.0 else param
    if code == TANH:
        t = math.tanh(x)
        return 1.0 - t * t
    if code == SIGMOID or code == SOFTPLUS:
        # softplus' = sigmoid
        if x >= 0.0:
            s = 1.0 / (1.0 + math.exp(-x))
        else:
            e = math.exp(x)
            s = e / (1.0 + e)
        return s * (1.0 - s) if code == SIGMOID else s
    if code == RELU:
        return 1.0 if x > 0.0 else 0.0
    if code == GELU:
        return 0.5 * (1.0 + math.erf(x * _INV_SQRT2)) + x * _INV_SQRT2PI * math.exp(-0.5 * x * x)
    return math.nan
