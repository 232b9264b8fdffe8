"""Elementwise activations and derivatives, dispatched on an integer code.

Codes are handed out by the one table of :mod:`deqbench.activations`
(``ACTIVATIONS``); ``param`` is the activation's parameter (the slope of leaky
ReLU and of the smooth leaky link ``a x + (1 - a) softplus(x)``, the ``eps``
of the skip link ``x + eps tanh(x)``, a registered activation's own), ignored
by the others. ``MASK`` is not an activation: the "map" ``v -> D * v`` with a
fixed array ``D`` turns the nonlinear adjoint equation into the same
``Z = h(Z M + U)`` form as the forward solve.

Two kinds of code:

* built-in (``0 <= code < USER``): a branch of its own in :func:`act`,
  :func:`dact` and a loop of its own in :func:`h_row`, :func:`dh_row`, inlined
  arithmetic that LLVM vectorises (:mod:`.vmath`);
* registered (``code >= USER``, :func:`deqbench.register_activation`): slot
  ``code - USER`` of :data:`TABLE`, a C array of function pointers to the
  user's ``sigma`` and ``sigma'`` compiled as ``float64(float64 x, float64
  param)`` C callbacks. The kernels read the table through the linker symbol
  :data:`SYMBOL` (:func:`_registered`), never through an address baked into
  their code, so every kernel keeps its on-disk cache and a function
  registered later (or in another process) is called by the same machine
  code. The cost: one indirect call per element in float64, no inlining, no
  SIMD (the generic loops of :func:`h_row` and :func:`dh_row`).
"""

from __future__ import annotations

import ctypes
import math

import llvmlite.binding as llb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .._jit import jit
from . import vmath as vm

IDENTITY = 0
LEAKY_RELU = 1
TANH = 2
SIGMOID = 3
SOFTPLUS = 4
RELU = 5
GELU = 6
SMOOTH_LEAKY = 7
SKIP_TANH = 8
MASK = -1
USER = 64
"""The first code of a registered activation (slot ``code - USER`` of :data:`TABLE`)."""
SLOTS = 256
"""Registered activations one process can hold."""

SYMBOL = "deqbench_registered_activations_v1"
TABLE = (ctypes.c_void_p * (2 * SLOTS))()
"""Slot ``k``: ``TABLE[2k]`` the address of ``sigma``, ``TABLE[2k + 1]`` that of
``sigma'``, each a C function ``double f(double x, double param)``; filled by
:func:`deqbench.register_activation` before it hands out code ``USER + k``."""
llb.add_symbol(SYMBOL, ctypes.addressof(TABLE))


@intrinsic
def _table_call(typingctx, entry, param, x):
    """``TABLE[entry](x, param)``: the pointer is loaded from the symbol ``SYMBOL``
    at run time (resolved by the linker when a kernel is compiled or loaded from
    the cache), so no address is part of a kernel."""
    sig = types.float64(types.int64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        mod = builder.module
        slot = ir.IntType(8).as_pointer()
        table = mod.globals.get(SYMBOL)
        if table is None:
            table = ir.GlobalVariable(mod, ir.ArrayType(slot, 2 * SLOTS), SYMBOL)
            table.linkage = "external"
        fn = builder.load(builder.gep(table, [ir.Constant(ir.IntType(32), 0), args[0]]))
        fnty = ir.FunctionType(ir.DoubleType(), [ir.DoubleType(), ir.DoubleType()])
        return builder.call(builder.bitcast(fn, fnty.as_pointer()), [args[2], args[1]])

    return sig, codegen


@jit
def _registered(code, derivative, param, x):
    """``sigma(x)`` (``derivative = 0``) or ``sigma'(x)`` (1) of the registered
    activation ``code``, in float64."""
    entry = 2 * (np.int64(code) - USER) + derivative
    return _table_call(entry, np.float64(param), np.float64(x))

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


@jit(inline="always")
def _gelu(x):
    """``x Phi(x)``, with ``Phi(x) = erfc(-x / sqrt 2) / 2``: no ``1 + erf`` cancellation
    in the left tail."""
    return 0.5 * x * math.erfc(-x * _INV_SQRT2)


@jit(inline="always")
def _dgelu(x):
    """``Phi(x) + x phi(x)``."""
    return 0.5 * math.erfc(-x * _INV_SQRT2) + x * _INV_SQRT2PI * math.exp(-0.5 * x * x)


@jit
def act(code, param, x):
    if code == IDENTITY:
        return x
    if code == LEAKY_RELU:
        return x if x >= 0.0 else param * x
    if code == TANH:
        return vm.tanh(x)
    if code == SIGMOID:
        return vm.sigmoid(x)
    if code == SOFTPLUS:
        return vm.softplus(x)
    if code == RELU:
        return 0.0 if x <= 0.0 else x  # NaN stays NaN (a status downstream), not 0
    if code == GELU:
        return _gelu(x)
    if code == SMOOTH_LEAKY:
        # a x + (1 - a) softplus(x), split at 0 so that no term is inf - inf at +-inf
        # (fast-math may distribute (1 - a) x into x - a x)
        if x >= 0.0:
            return x + (1.0 - param) * vm.softplus(-x)
        return param * x + (1.0 - param) * vm.softplus(x)
    if code == SKIP_TANH:
        return x + param * vm.tanh(x)
    if code >= USER:
        return _registered(code, np.int64(0), param, x)
    return math.nan


@jit
def dact(code, param, x):
    if code == IDENTITY:
        return 1.0
    if code == LEAKY_RELU:
        return 1.0 if x >= 0.0 else param
    if code == TANH:
        t = vm.tanh(x)
        return 1.0 - t * t
    if code == SIGMOID or code == SOFTPLUS or code == SMOOTH_LEAKY:
        s = vm.sigmoid(x)  # softplus' = sigmoid; smooth leaky' = a + (1 - a) sigmoid
        if code == SIGMOID:
            return s * (1.0 - s)
        if code == SMOOTH_LEAKY:
            return param + (1.0 - param) * s
        return s
    if code == RELU:
        return 1.0 if x > 0.0 else 0.0
    if code == GELU:
        return _dgelu(x)
    if code == SKIP_TANH:
        t = vm.tanh(x)
        return 1.0 + param * (1.0 - t * t)
    if code >= USER:
        return _registered(code, np.int64(1), param, x)
    return math.nan


@jit
def h_row(code, param, t, u, d):
    """``t <- h(t + u)`` along a row (or a flat block of rows): ``h = act(code)``, or ``d * .`` for
    ``MASK``. Every activation gets a loop of its own, so LLVM vectorises it
    (a loop over the generic :func:`act` dispatch stays scalar; gelu's loop
    stays scalar, there is no SIMD erf).

    Compiled once per dtype and called, not inlined into its callers at numba's
    IR level: inlining these nine loops into every kernel cost most of the cold
    compile time (figures: ``results/calibrate/README.md``)."""
    m = t.shape[0]
    if code == IDENTITY:
        for j in range(m):
            t[j] += u[j]
    elif code == MASK:
        for j in range(m):
            t[j] = d[j] * (t[j] + u[j])
    elif code == TANH:
        for j in range(m):
            t[j] = vm.tanh(t[j] + u[j])
    elif code == SIGMOID:
        for j in range(m):
            t[j] = vm.sigmoid(t[j] + u[j])
    elif code == SOFTPLUS:
        for j in range(m):
            t[j] = vm.softplus(t[j] + u[j])
    elif code == LEAKY_RELU:
        for j in range(m):
            x = t[j] + u[j]
            t[j] = x if x >= 0.0 else param * x
    elif code == RELU:
        for j in range(m):
            x = t[j] + u[j]
            t[j] = 0.0 if x <= 0.0 else x  # NaN stays NaN
    elif code == SMOOTH_LEAKY:
        # branch-free form of act's split: softplus(-|x|) is the log1p(exp(-|x|)) tail
        # of either branch, finite at +-inf
        c = 1.0 - param
        for j in range(m):
            x = t[j] + u[j]
            t[j] = (x if x >= 0.0 else param * x) + c * vm.softplus(-abs(x))
    elif code == GELU:
        for j in range(m):
            t[j] = _gelu(t[j] + u[j])
    elif code == SKIP_TANH:
        for j in range(m):
            x = t[j] + u[j]
            t[j] = x + param * vm.tanh(x)
    else:
        for j in range(m):
            t[j] = act(code, param, t[j] + u[j])


@jit
def has_output_derivative(code):
    """Whether ``phi'(x)`` is a function of ``phi(x)`` alone, evaluated by
    :func:`dh_from_output_row`: tanh' = 1 - tanh^2, sigmoid' = sigmoid (1 - sigmoid),
    the formulas :func:`dh_row` applies to the ``y`` it computes."""
    return code == TANH or code == SIGMOID


@jit
def dh_from_output_row(code, y, d):
    """``d <- phi'(x)`` from ``y = phi(x)`` (``d`` may be ``y``); tanh or sigmoid only."""
    m = d.shape[0]
    if code == TANH:
        for j in range(m):
            v = y[j]
            d[j] = 1.0 - v * v
    else:
        for j in range(m):
            v = y[j]
            d[j] = v * (1.0 - v)


@jit
def dh_row(code, param, t, u):
    """``t <- phi'(t + u)`` along a row (or a flat block of rows); as in
    :func:`h_row`, each activation gets a loop of its own (identity: the generic one)."""
    m = t.shape[0]
    if code == TANH:
        for j in range(m):
            y = vm.tanh(t[j] + u[j])
            t[j] = 1.0 - y * y
    elif code == SIGMOID:
        for j in range(m):
            y = vm.sigmoid(t[j] + u[j])
            t[j] = y * (1.0 - y)
    elif code == SOFTPLUS:
        for j in range(m):
            t[j] = vm.sigmoid(t[j] + u[j])
    elif code == SMOOTH_LEAKY:
        c = 1.0 - param
        for j in range(m):
            t[j] = param + c * vm.sigmoid(t[j] + u[j])
    elif code == LEAKY_RELU:
        for j in range(m):
            t[j] = 1.0 if t[j] + u[j] >= 0.0 else param
    elif code == RELU:
        for j in range(m):
            t[j] = 1.0 if t[j] + u[j] > 0.0 else 0.0
    elif code == GELU:
        for j in range(m):
            t[j] = _dgelu(t[j] + u[j])
    elif code == SKIP_TANH:
        for j in range(m):
            y = vm.tanh(t[j] + u[j])
            t[j] = 1.0 + param * (1.0 - y * y)
    else:
        for j in range(m):
            t[j] = dact(code, param, t[j] + u[j])
