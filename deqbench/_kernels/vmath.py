"""Branch-free elementary functions that LLVM vectorises (SIMD) inside the passes.

Numba lowers ``math.tanh``/``math.exp``/``math.log1p`` to scalar libm calls,
and pip's llvmlite has no SVML, so a pass that applies ``tanh`` ran one
element at a time (W4 of the performance issue). The functions here use only
arithmetic, ``floor``, ``copysign``, selects and an exponent bit-cast, which
the loop vectoriser turns into SIMD code on AVX2 and AVX-512 alike.

They are inlined into kernels compiled with the project's fast-math flags
(``reassoc`` included), so each formula avoids cancellations that
reassociation could undo: ``log1p`` goes through ``atanh`` rather than
Goldberg's ``(1 + e) - 1`` correction (which LLVM folded to ``e``: 1e-3
relative error in ``softplus(-30)``, seen here). The ulp bounds below are
measured through the project's kernels, fast-math flags on.

Accuracy, checked against NumPy on dense grids with tails, zeros, signed
zeros, infinities and NaN (``tests/test_vmath.py``): ``exp`` within 1 ulp on
``[-708, 709]``; ``tanh`` within 3 ulp; ``sigmoid`` within 3 ulp and
``softplus`` within 3 ulp for ``x >= -708`` (below, both return 0, as the
libm versions did, an absolute error under ``4e-308``); ``log1p`` within
2 ulp on ``[0, 1]``. The constants: Taylor coefficients of ``e^r`` to degree
13 on ``|r| <= ln 2 / 2`` (truncation below 1e-17) and a Cody-Waite split
of ``ln 2``. ``tanh`` goes through ``e^{-2|x|} - 1`` built from the same
polynomial (:func:`tanh`): one formula instead of a Cephes rational plus a
second branch, both evaluated in every SIMD lane, is cheaper
(``python -m tools.activation_cost``; ``results/calibrate/README.md``)
for 3 ulp instead of 2 (0.17 <= |x| <= 10, where ``2^k (e^r - 1)`` and
``2^k - 1`` meet in one rounding and ``-m / (2 + m)`` doubles ``m``'s error).

float32: a float32 argument is evaluated by the same float64 formulas (the
constants are float64, so numba promotes) and the result rounded to float32
when the caller stores it. The float64 value is within 3 float64 ulps, that
is ``3 * 2^-29`` float32 ulps, so the stored result is the correctly rounded
float32 value or its neighbour: within 1 float32 ulp everywhere, underflow
to 0 and the subnormals included (``tests/test_vmath.py``, dense float32
grid). The conversions vectorise (``vcvtps2pd``/``vcvtpd2ps``), at half the
float32 lane count; float32 versions of the bit tricks (int32 bit-cast,
bias 127, 23 mantissa bits, shorter polynomials) would double the lanes but
need their own error analysis, not done.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .._jit import jit

_LOG2E = 1.4426950408889634
_LN2_HI = 6.93145751953125e-1
_LN2_LO = 1.42860682030941723212e-6
EXP_MAX = 709.0
EXP_MIN = -708.0


@intrinsic
def _scale2(typingctx, y, k):
    """``y * 2^k`` for an int64 ``k`` in ``[-1022, 1023]``: ``2^k`` is built from
    its bit pattern (biased exponent ``k + 1023``, zero mantissa)."""
    sig = types.float64(types.float64, types.int64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        bits = builder.shl(builder.add(args[1], ir.Constant(i64, 1023)), ir.Constant(i64, 52))
        return builder.fmul(args[0], builder.bitcast(bits, ir.DoubleType()))

    return sig, codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` rounded once (``llvm.fma``): LLVM keeps fused multiply-adds
    as they are under ``reassoc``, where it regroups a plain ``(x - a) - b``."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        return builder.fma(args[0], args[1], args[2])

    return sig, codegen


@jit(inline="always")
def _reduce(x):
    """``(k, r)`` with ``x = k ln 2 + r``, ``|r| <= ln 2 / 2`` (Cody-Waite: ``k ln 2``
    in two parts)."""
    kf = math.floor(x * _LOG2E + 0.5)
    return kf, _fma(-kf, _LN2_LO, _fma(-kf, _LN2_HI, x))


@jit(inline="always")
def _em1_r(r):
    """``(e^r - 1) / r`` on ``|r| <= ln 2 / 2``: Taylor to ``r^12`` (``e^r - 1`` to
    ``r^13``, truncation below ``1.2e-17`` relative)."""
    p = 1.6059043836821613e-10
    p = p * r + 2.08767569878681e-09
    p = p * r + 2.505210838544172e-08
    p = p * r + 2.755731922398589e-07
    p = p * r + 2.7557319223985893e-06
    p = p * r + 2.48015873015873e-05
    p = p * r + 1.984126984126984e-04
    p = p * r + 1.388888888888889e-03
    p = p * r + 8.333333333333333e-03
    p = p * r + 4.1666666666666664e-02
    p = p * r + 1.6666666666666666e-01
    p = p * r + 0.5
    return p * r + 1.0


@jit(inline="always")
def exp(x):
    """``e^x`` for finite ``x`` in ``[EXP_MIN, EXP_MAX]`` (callers clamp)."""
    kf, r = _reduce(x)
    return _scale2(_em1_r(r) * r + 1.0, np.int64(kf))


@jit(inline="always")
def tanh(x):
    """``tanh(x) = -m / (2 + m)`` with ``m = e^{-2|x|} - 1`` in ``(-1, 0]``, the sign of
    ``x`` copied back. ``m = 2^k (e^r - 1) + (2^k - 1)`` in one fused multiply-add:
    for ``k = 0`` it is ``r (e^r - 1) / r``, accurate relative to ``r`` down to the
    subnormals; for ``k < 0``, ``|2^k (e^r - 1)| <= 0.21`` against ``2^k - 1 <= -0.5``
    (exact), so the sum cancels little. One polynomial and one division, no
    branch on ``|x|``."""
    t = abs(x)
    t = t if t < 20.0 else 20.0  # tanh(20) rounds to 1; also maps NaN away from the int cast
    kf, r = _reduce(-2.0 * t)
    s = _scale2(1.0, np.int64(kf))
    m = _fma(s, _em1_r(r) * r, s - 1.0)
    y = math.copysign(-m / (2.0 + m), x)
    return x if x != x else y


@jit(inline="always")
def exp_neg_abs(x):
    """``e^{-|x|}``, 0 below ``e^EXP_MIN`` (as libm underflows); NaN-safe."""
    t = -abs(x)
    e = exp(t if t > EXP_MIN else EXP_MIN)  # the clamp also keeps NaN from the int cast
    return e if t >= EXP_MIN else 0.0


@jit(inline="always")
def sigmoid(x):
    e = exp_neg_abs(x)
    y = (1.0 if x >= 0.0 else e) / (1.0 + e)
    return x if x != x else y


@jit(inline="always")
def log1p(e):
    """``log(1 + e)`` for ``e`` in ``[0, 1]`` (the ``softplus`` tail), as
    ``2 atanh(s)`` with ``s = e / (2 + e)`` in ``[0, 1/3]``: no cancellation
    anywhere, so fast-math reassociation cannot hurt it; the odd series to
    ``s^37`` leaves a truncation below ``1e-17``."""
    s = e / (2.0 + e)
    z = s * s
    p = 1.0 / 37.0
    p = p * z + 1.0 / 35.0
    p = p * z + 1.0 / 33.0
    p = p * z + 1.0 / 31.0
    p = p * z + 1.0 / 29.0
    p = p * z + 1.0 / 27.0
    p = p * z + 1.0 / 25.0
    p = p * z + 1.0 / 23.0
    p = p * z + 1.0 / 21.0
    p = p * z + 1.0 / 19.0
    p = p * z + 1.0 / 17.0
    p = p * z + 1.0 / 15.0
    p = p * z + 1.0 / 13.0
    p = p * z + 1.0 / 11.0
    p = p * z + 1.0 / 9.0
    p = p * z + 1.0 / 7.0
    p = p * z + 1.0 / 5.0
    p = p * z + 1.0 / 3.0
    p = p * z + 1.0
    return 2.0 * s * p


@jit(inline="always")
def softplus(x):
    y = max(x, 0.0) + log1p(exp_neg_abs(x))
    return x if x != x else y
