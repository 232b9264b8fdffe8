"""Scalar equilibria: the paper's deep equilibrium single-index model.

One scalar state per sample, the activation inside the equilibrium,
``y = sigma(s0 + b y)`` with ``s0 = <w, x>`` (the ``nonlinear`` model at
``m = 1`` with ``A = [[b]]``, ``B = [w^T]``). The generic ``m x m`` kernels pay
a gemm and a Picard loop for what is here a scalar root per sample; this module
solves each root by Newton's method and takes the implicit gradient in closed
form.

Forward solve: per sample, safeguarded Newton on ``g(y) = y - sigma(s0 + b y)``
until ``|g(y)| <= max(tol, floor)``, with ``floor = feps (|y| + |sigma| +
|sigma' s|)`` the rounding level of the residual's terms (``feps`` a few machine
epsilons of the dtype: float32, or a huge ``|y|``, cannot reach an absolute
1e-12). The residual is the paper's, ``|y - sigma(<w, x> + b y)|`` at the
returned ``y``, absolute.

Uniqueness guard (:func:`guard`): with ``sigma'`` in ``[dmin, dmax]`` on the
line, ``g' = 1 - b sigma'`` lies between ``1 - b dmax`` and ``1 - b dmin``.
Where both are ``> 0`` (or both ``< 0``) ``g`` is strictly monotone and the root
unique; otherwise no solve is made and the status is :data:`NOT_UNIQUE`
(sigmoid: ``b < 4``; tanh: ``b < 1``; identity: ``b != 1``;
``skip_tanh(eps)``: ``b < 1 / (1 + eps)`` or ``b > 1``). With ``gmin = min |g'|
> 0`` every iterate brackets the root, ``|y - y*| <= |g(y)| / gmin`` (so a
Newton step, ``|g(y)| / |g'(y)|``, never leaves that bracket); bounded links
also bracket it by their range. From the second evaluation on, each sample
keeps the intersection of its brackets, and a Newton step that leaves it, or
that follows a step which did not halve ``|g|``, is replaced by bisection.

Certified steps: a Newton step ``delta = g(y) / g'(y)`` is accepted without
evaluating ``y - delta`` when ``K |b delta| <= tol``, ``K = sup |sigma''|``
(:meth:`deqbench.activations.Activation.curvature_bound`; ``inf`` at a kink,
so never there): then ``|g(y - delta)| <= K (b delta)^2 / 2`` (Taylor, ``g'' =
-b^2 sigma''``), far below ``tol``, and ``sigma'`` there is within ``tol`` of
``sigma'`` at ``y``, which the gradient uses (the root's own tolerance moves it
by as much). The largest residual reported counts that bound for such samples.

Implicit gradient, per sample, with ``s = s0 + b y``, ``a = b sigma'(s)``:
``dy/dw = sigma'(s) x / (1 - a)``, ``dy/db = sigma'(s) y / (1 - a)``. The
backward variants of the paper's Appendix A.3 replace ``1 / (1 - a)`` by a
backward factor: JFB ``1``; damped Neumann with ``terms`` (the highest power,
deqbench's ``neumann_terms``) and damping ``lam``: ``terms + 1`` steps of
``mu <- (1 - lam) mu + lam (a mu + 1)`` from ``mu = 0``, that is
``lam sum_{j <= terms} (1 - lam + lam a)^j`` (``lam = 1``: ``1 + a + ... +
a^terms``; ``lam = 1/2``, ``terms = 1``: ``0.75 + 0.25 a``).

Loss ``L = sum_i (y_i - Y_i)^2 / (2 n)`` (deqbench's convention; the paper's
risk has no 1/2, so its step ``eta`` is ``lr = 2 eta`` here).

Layout: samples in blocks of :data:`R` rows. A data set is packed once
(:func:`pack`) into ``XT``, each block's ``X`` transposed (``d`` rows of ``R``),
and ``ws``, each block's per-sample fields (``F_*``, ``R`` apiece) in one array:
every loop over a block's samples is then unit-stride over one or two base
arrays at constant offsets, which LLVM vectorises without runtime alias checks
(separate arrays per field left the Newton sweep scalar). Each solve starts
from the last solution moved by its first-order change (``y + c (ds0 + db
y)``, ``c = dy/ds0``), which meets ``tol`` without a Newton step once GD steps
are small. A block's Newton sweeps run in lock-step (converged samples are
left as they are, so a sample's iterates do not depend on its block), and the
sums over samples are per-block partials merged in block order: results do not
depend on the number of threads.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .._jit import jit, prange, twins
from . import vmath as vm
from .activations import IDENTITY, SIGMOID, SKIP_TANH, SOFTPLUS, TANH, act, dact
from .status import (
    CONVERGED,
    DIVERGED,
    FIXED_POINT_FAILED,
    MAX_ITER,
    MAX_STEPS,
    NOT_UNIQUE,
    RUNNING,
)

# backward factor
EXACT = 0
JFB = 1
NEUMANN = 2

# history columns
H_STEP = 0
H_LOSS = 1
H_GRAD = 2  # ||(grad_w, grad_b)||
H_NEWTON_MAX = 3  # residual evaluations of the slowest sample
H_NEWTON_MEAN = 4
H_RESIDUAL = 5  # max_i |y_i - sigma(s0_i + b y_i)|
H_EVAL_LOSS = 6  # sum (y - Y_eval)^2 / (2 n_eval) on the evaluation set
H_PARAM_ERROR = 7  # ||(w, b) - target||
H_B = 8
NCOL = 9

#: Rows of a block: a compile-time constant, so that the fields of a block sit
#: at constant offsets (no runtime alias checks) and the transposed ``X`` block,
#: ``8 d R`` bytes (40 KiB at d = 20), stays in L2 between its two reads.
R = 128
# fields of a block in ``ws``, kept from pass to pass: s0; y; c = dy/ds0 (the
# predictor's slope); target; evaluations (-k once converged at evaluation k,
# NaN once non-finite, else Newton's last |g|: copied from the scratch block
# for :func:`solve` only)
F_S0, F_Y, F_C, F_T, F_RP = 0, 1, 2, 3, 4
NF = 5
# fields of the scratch block, one per thread and reused block after block, so
# that they stay in L1 where fields in ``ws`` would stream through memory every
# pass: s0; y; 1 / (1 - b sigma'); sigma'; evaluations (as F_RP); bracket;
# gradient weight (first the accumulator of s0)
S_S0, S_Y, S_C, S_DV, S_RP, S_LO, S_HI, S_GE = 0, 1, 2, 3, 4, 5, 6, 7
NS = 8
# partials of a block, after its d gradient entries
_P_LOSS, _P_GB, _P_ITMAX, _P_ITSUM, _P_RES, _P_STATUS = 0, 1, 2, 3, 4, 5
P_LEN = 6

#: From this many samples times ``d + 4`` a pass goes to numba's threads.
PARALLEL_MIN = 1 << 14
#: A Newton step is taken only while the last one at least halved ``|g|``.
SHRINK = 0.5
#: ``floor = FLOOR_EPS * eps * (|y| + |sigma| + |sigma' s|)``.
FLOOR_EPS = 4.0

#: Options: ``lr``, ``steps``, ``stop_loss`` (< 0: off), divergence factor on
#: ``L_0``, Newton ``tol`` and ``max_iter``, ``feps`` (the floor's epsilon),
#: backward ``kind``, ``terms``, ``damping``, ``predict`` (first-order warm
#: start), ``record_every``, ``threads``.
ScalarOpts = namedtuple("ScalarOpts", ["lr", "steps", "stop_loss", "divergence_factor", "tol",
                                       "max_iter", "feps", "kind", "terms", "damping",
                                       "predict", "record_every", "threads"])

#: The activation: kernel ``code``, ``param``, ``dmin``, ``dmax`` (range of
#: ``sigma'`` on the line), ``vlo``, ``vhi`` (range of ``sigma``), ``curv``
#: (``sup |sigma''|``, ``inf`` at a kink).
Link = namedtuple("Link", ["code", "param", "dmin", "dmax", "vlo", "vhi", "curv"])

#: A packed data set (:func:`pack`): ``XT`` and ``ws`` as in the module
#: docstring, ``part`` the per-block partials (float64, ``nb x (d + P_LEN)``),
#: ``sc`` one scratch block per thread (``NS x R`` apiece), ``n``, ``d``;
#: ``ints[0]``: whether ``ws`` holds a solution (warm start), ``ints[1]``: passes
#: made (the blocks are visited in alternate directions, so that a pass starts
#: on the blocks the last one left in cache), ``ints[2]``: whether a pass keeps
#: the evaluations per sample (``F_RP``); ``prev[0]``: the ``b`` of that solution.
Packed = namedtuple("Packed", ["XT", "ws", "part", "sc", "n", "d", "ints", "prev"])


def n_blocks(n: int) -> int:
    return -(-n // R)


def pack(X, Y=None) -> Packed:
    """Pack ``X`` (``n x d``, C-contiguous float32 or float64) and targets ``Y``
    into a :data:`Packed` of the same dtype (padding rows are zero)."""
    n, d = X.shape
    nb = n_blocks(n)
    Xp = np.zeros((nb * R, d), X.dtype)
    Xp[:n] = X
    XT = np.ascontiguousarray(Xp.reshape(nb, R, d).transpose(0, 2, 1)).reshape(-1)
    ws = np.zeros((nb, NF, R), X.dtype)
    if Y is not None:
        Yp = np.zeros(nb * R, X.dtype)
        Yp[:n] = Y
        ws[:, F_T, :] = Yp.reshape(nb, R)
    sc = np.zeros(max(numba.config.NUMBA_NUM_THREADS, 1) * NS * R, X.dtype)
    return Packed(XT, ws.reshape(-1), np.zeros((max(nb, 1), d + P_LEN)), sc, n, d,
                  np.zeros(3, np.int64), np.zeros(1))


def field(p: Packed, f: int) -> np.ndarray:
    """Field ``f`` (``F_*``) of every sample, in sample order (a copy)."""
    nb = n_blocks(p.n)
    return p.ws.reshape(nb, NF, R)[:, f, :].reshape(-1)[: p.n].copy()


def set_field(p: Packed, f: int, values) -> None:
    nb = n_blocks(p.n)
    v = np.zeros(nb * R, p.ws.dtype)
    v[: p.n] = values
    p.ws.reshape(nb, NF, R)[:, f, :] = v.reshape(nb, R)


@intrinsic
def _bits(typingctx, x):
    """The bit pattern of a float64 as int64: for ``x >= 0`` its order is the
    order of ``x``, so a max of ``|g|`` becomes an integer max, which LLVM
    vectorises without the ``nnan`` flag the project leaves off."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def _round_as(typingctx, a, x):
    """``x`` (float64) rounded to the dtype of the array ``a``, as storing it in
    ``a`` and reading it back would (a no-op for float64)."""
    sig = types.float64(a, x)

    def codegen(context, builder, signature, args):
        real = context.get_value_type(signature.args[0].dtype)
        if real == ir.DoubleType():
            return args[1]
        return builder.fpext(builder.fptrunc(args[1], real), ir.DoubleType())

    return sig, codegen


@intrinsic
def _from_bits(typingctx, i):
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


# --- the activation at a point ---------------------------------------------------


@jit(inline="always")
def value_and_slope(code, param, s):
    """``(sigma(s), sigma'(s))`` in float64, sharing the transcendental where
    one gives both (tanh, sigmoid, skip_tanh)."""
    if code == TANH:
        t = vm.tanh(s)
        return t, 1.0 - t * t
    if code == SIGMOID:
        t = vm.sigmoid(s)
        return t, t * (1.0 - t)
    if code == SKIP_TANH:
        t = vm.tanh(s)
        return s + param * t, 1.0 + param * (1.0 - t * t)
    if code == IDENTITY:
        return s, 1.0
    if code == SOFTPLUS:
        return vm.softplus(s), vm.sigmoid(s)
    return act(code, param, s), dact(code, param, s)


@jit
def guard(b, dmin, dmax):
    """``(sign, gmin)``: ``sign = +1`` where ``1 - b sigma' > 0`` for every
    ``sigma'`` in ``[dmin, dmax]``, ``-1`` where it is ``< 0`` for all, ``0``
    (uniqueness not certified) otherwise; ``gmin = min |1 - b sigma'|``."""
    g1 = 1.0 - b * dmax
    g2 = 1.0 - b * dmin
    lo = min(g1, g2)
    hi = max(g1, g2)
    if lo > 0.0:
        return 1, lo
    if hi < 0.0:
        return -1, -hi
    return 0, 0.0


@jit
def factor(kind, terms, damping, a):
    """The backward factor that replaces ``1 / (1 - a)`` (module docstring)."""
    if kind == EXACT:
        return 1.0 / (1.0 - a)
    if kind == JFB:
        return 1.0
    q = 1.0 - damping + damping * a
    mu = 0.0
    for _ in range(terms + 1):
        mu = q * mu + damping
    return mu


# --- Newton on a block -----------------------------------------------------------


@jit(inline="always")
def _first(code, param, vlo, vhi, curv, b, sg, ginv, tol, feps, st, m):
    """The first evaluation of every sample of a block. A sample is done
    (``S_RP = -1``) when ``|g| <= tol``, or when its Newton step ``delta`` is
    certified (module docstring); the others take the Newton step inside the
    bracket of this evaluation (``|y - y*| <= |g| / gmin``, and the range of
    sigma). Returns ``(still active, non-finite, bits of the largest |g| (or
    bound) of the done)``."""
    nact = 0
    nbad = 0
    rbits = 0
    for i in range(m):
        yi = float(st[S_Y * R + i])
        s = float(st[S_S0 * R + i]) + b * yi
        v, d = value_and_slope(code, param, s)
        r = yi - v
        ar = abs(r)
        toli = max(tol, feps * (abs(yi) + abs(v) + abs(d * s)))
        conv = ar <= toli
        finite = ar < math.inf
        w = ar * ginv
        below = r * sg > 0.0  # the root is below y
        lo = max(vlo, yi - w) if below else yi
        hi = yi if below else min(vhi, yi + w)
        q = 1.0 / (1.0 - b * d)  # kept: the backward factor of the root (_sums)
        delta = r * q
        p = yi - delta
        inside = (p > lo) & (p < hi)
        bound = 0.5 * curv * (b * delta) * (b * delta)
        cert = inside & (curv * abs(b * delta) <= toli)
        ynew = p if inside else 0.5 * (lo + hi)
        done = finite & (conv | cert)
        go = finite & (not done)
        st[S_DV * R + i] = d
        st[S_C * R + i] = q
        st[S_Y * R + i] = yi if conv else ynew
        st[S_RP * R + i] = ar if go else (-1.0 if finite else math.nan)
        nact += 1 if go else 0
        nbad += 0 if finite else 1
        rbits = max(rbits, _bits(ar if conv else bound) if done else 0)
    return nact, nbad, rbits


@jit(inline="always")
def _again(code, param, vlo, vhi, curv, b, sg, ginv, tol, feps, st, m, k):
    """Evaluation ``k >= 2`` of the samples still active (``S_RP >= 0``),
    bracketed (``S_LO``, ``S_HI``), with bisection where a Newton step leaves
    the bracket or the last step did not halve ``|g|``; done as in
    :func:`_first`."""
    nact = 0
    nbad = 0
    rbits = 0
    for i in range(m):
        rp = float(st[S_RP * R + i])
        active = rp >= 0.0
        yi = float(st[S_Y * R + i])
        s = float(st[S_S0 * R + i]) + b * yi
        v, d = value_and_slope(code, param, s)
        r = yi - v
        ar = abs(r)
        toli = max(tol, feps * (abs(yi) + abs(v) + abs(d * s)))
        conv = ar <= toli
        finite = ar < math.inf
        w = ar * ginv
        below = r * sg > 0.0
        lo0 = float(st[S_LO * R + i])
        hi0 = float(st[S_HI * R + i])
        lo = max(lo0, yi - w) if below else max(lo0, yi)
        hi = min(hi0, yi) if below else min(hi0, yi + w)
        q = 1.0 / (1.0 - b * d)
        delta = r * q
        p = yi - delta
        inside = (p > lo) & (p < hi)
        bound = 0.5 * curv * (b * delta) * (b * delta)
        cert = inside & (curv * abs(b * delta) <= toli)
        newton = inside & (ar <= SHRINK * rp)
        ynew = p if newton | cert else 0.5 * (lo + hi)
        done = active & finite & (conv | cert)
        go = active & finite & (not done)
        st[S_DV * R + i] = d if active else st[S_DV * R + i]
        st[S_C * R + i] = q if active else st[S_C * R + i]
        st[S_Y * R + i] = ynew if (go | (done & (not conv))) else yi
        st[S_LO * R + i] = lo if go else lo0
        st[S_HI * R + i] = hi if go else hi0
        st[S_RP * R + i] = ar if go else (-float(k) if done else (math.nan if active else rp))
        nact += 1 if go else 0
        nbad += 1 if (active & (not finite)) else 0
        rbits = max(rbits, _bits(ar if conv else bound) if done else 0)
    return nact, nbad, rbits


@jit(inline="always")
def _newton(code, param, vlo, vhi, curv, b, sg, ginv, tol, feps, max_iter, st, m):
    nact, nbad, rbits = _first(code, param, vlo, vhi, curv, b, sg, ginv, tol, feps, st, m)
    itsum = m
    k = 1
    if nact > 0:
        for i in range(m):
            st[S_LO * R + i] = vlo
            st[S_HI * R + i] = vhi
    while nact > 0 and nbad == 0 and k < max_iter:
        k += 1
        itsum += nact
        nact, bad, rk = _again(code, param, vlo, vhi, curv, b, sg, ginv, tol, feps, st, m, k)
        nbad += bad
        rbits = max(rbits, rk)
    status = DIVERGED if nbad > 0 else (MAX_ITER if nact > 0 else CONVERGED)
    return status, k, itsum, _from_bits(rbits)


@jit
def solve_block(link, b, sg, ginv, tol, feps, max_iter, st, m):
    """Solve ``y = sigma(s0 + b y)`` for the ``m`` samples of a scratch block
    ``st``, from the start in ``S_Y``; ``sg`` and ``ginv = 1 / gmin`` from
    :func:`guard` (``sg != 0``). Writes ``S_Y``, ``S_DV`` (``sigma'`` at the
    root), ``S_C`` (``1 / (1 - b sigma')`` there) and ``S_RP`` (``-k``: converged
    at evaluation ``k``; NaN: non-finite; ``>= 0``: not converged). Returns
    ``(status, evaluations of the slowest sample, sum of evaluations, max |g|)``."""
    code, param, vlo, vhi, curv = link.code, link.param, link.vlo, link.vhi, link.curv
    if code == IDENTITY:
        return _newton(IDENTITY, param, vlo, vhi, curv, b, sg, ginv, tol, feps, max_iter, st,
                       m)
    if code == TANH:
        return _newton(TANH, param, vlo, vhi, curv, b, sg, ginv, tol, feps, max_iter, st, m)
    if code == SIGMOID:
        return _newton(SIGMOID, param, vlo, vhi, curv, b, sg, ginv, tol, feps, max_iter, st,
                       m)
    if code == SKIP_TANH:
        return _newton(SKIP_TANH, param, vlo, vhi, curv, b, sg, ginv, tol, feps, max_iter, st,
                       m)
    return _newton(code, param, vlo, vhi, curv, b, sg, ginv, tol, feps, max_iter, st, m)


@jit(inline="always")
def _one(code, param, vlo, vhi, curv, b, sg, ginv, tol, feps, exact, predict, db, st, sc, m):
    """The first evaluation of :func:`_first`, for a block it settles at once
    (every sample within ``tol`` or certified, the common case under warm
    starts), fused with the start (``predict``: the last solution moved by its
    first-order change ``c (ds0 + db y)``, clipped to the range of sigma; else
    the start :func:`_start` left in ``sc``) and the backward weights: writes
    ``s0``, ``y`` and the predictor's ``c = sigma' / (1 - a)`` into ``st``,
    ``sigma'`` (not ``exact``) and the weights ``(y - Y) sigma' / (1 - a)``
    (``exact``; else ``y - Y``) into ``sc``, and leaves the start in ``sc``
    for :func:`solve_block` where a sample is not settled. Returns ``(samples
    not settled, bits of the largest |g| (or bound), loss, sum g y, samples whose
    s0 is not finite)``."""
    nout = 0
    nbad = 0
    rbits = 0
    loss = 0.0
    gb = 0.0
    for i in range(m):
        s0 = float(sc[S_S0 * R + i])
        # an s0 beyond the dtype: a saturating sigma would make it look solved
        nbad += 0 if abs(s0) < math.inf else 1
        y0 = float(st[F_Y * R + i])
        y0 += float(st[F_C * R + i]) * (s0 - float(st[F_S0 * R + i]) + db * y0)
        # a select, not a branch: a conditional store in the loop costs more
        sc[S_Y * R + i] = min(max(y0, vlo), vhi) if predict else sc[S_Y * R + i]
        st[F_S0 * R + i] = s0
        yi = float(sc[S_Y * R + i])
        s = s0 + b * yi
        v, d = value_and_slope(code, param, s)
        r = yi - v
        ar = abs(r)
        toli = max(tol, feps * (abs(yi) + abs(v) + abs(d * s)))
        conv = ar <= toli
        finite = ar < math.inf
        w = ar * ginv
        below = r * sg > 0.0
        lo = max(vlo, yi - w) if below else yi
        hi = yi if below else min(vhi, yi + w)
        q = 1.0 / (1.0 - b * d)
        delta = r * q
        p = yi - delta
        inside = (p > lo) & (p < hi)
        bound = 0.5 * curv * (b * delta) * (b * delta)
        cert = inside & (curv * abs(b * delta) <= toli)
        done = finite & (conv | cert)
        # rounded to the dtype, as solve_block leaves them in sc
        yf = _round_as(sc, yi if conv else p)
        d = _round_as(sc, d)
        q = _round_as(sc, q)
        e = yf - float(st[F_T * R + i])
        g = e * d * q
        st[F_Y * R + i] = yf
        st[F_C * R + i] = d * q
        if exact:
            sc[S_GE * R + i] = g
        else:
            sc[S_GE * R + i] = e
            sc[S_DV * R + i] = d
        loss += e * e
        gb += g * yf
        nout += 0 if done else 1
        rbits = max(rbits, _bits(ar if conv else bound) if done else 0)
    return nout, rbits, loss, gb, nbad


@jit(inline="always")
def _settle(link, b, sg, ginv, tol, feps, exact, predict, db, st, sc, m):
    """:func:`_one` for the link's activation (a constant code, as in
    :func:`solve_block`)."""
    code, param, vlo, vhi, curv = link.code, link.param, link.vlo, link.vhi, link.curv
    if code == IDENTITY:
        return _one(IDENTITY, param, vlo, vhi, curv, b, sg, ginv, tol, feps, exact, predict, db,
                    st, sc, m)
    if code == TANH:
        return _one(TANH, param, vlo, vhi, curv, b, sg, ginv, tol, feps, exact, predict, db,
                    st, sc, m)
    if code == SIGMOID:
        return _one(SIGMOID, param, vlo, vhi, curv, b, sg, ginv, tol, feps, exact, predict, db,
                    st, sc, m)
    if code == SKIP_TANH:
        return _one(SKIP_TANH, param, vlo, vhi, curv, b, sg, ginv, tol, feps, exact, predict, db,
                    st, sc, m)
    return _one(code, param, vlo, vhi, curv, b, sg, ginv, tol, feps, exact, predict, db, st,
                sc, m)


# --- one pass over the samples ------------------------------------------------------


@jit(inline="always")
def _start(link, xt, w, b, warm, predict, st, sc, m, d):
    """``s0 = X w`` for a block into the scratch ``sc``, and there the Newton start
    unless :func:`_one` predicts it (``predict``): the last solution
    (``warm``), else ``sigma(s0)``, clipped to the range of sigma; identity
    starts from the closed form ``s0 / (1 - b)`` (one evaluation confirms it)."""
    vlo, vhi = link.vlo, link.vhi
    acc = S_S0 * R
    for i in range(R):  # every row, padding included: a constant trip count
        sc[acc + i] = 0.0
    j0 = 0
    while j0 + 8 <= d:  # eight features a sweep: an eighth of the accumulator traffic
        x = xt[j0 * R:(j0 + 8) * R]  # one base: a single alias check against sc
        w0, w1, w2, w3 = float(w[j0]), float(w[j0 + 1]), float(w[j0 + 2]), float(w[j0 + 3])
        w4, w5, w6, w7 = (float(w[j0 + 4]), float(w[j0 + 5]), float(w[j0 + 6]),
                          float(w[j0 + 7]))
        for i in range(R):
            sc[acc + i] += (((w0 * x[i] + w1 * x[R + i]) + (w2 * x[2 * R + i]
                                                             + w3 * x[3 * R + i]))
                            + ((w4 * x[4 * R + i] + w5 * x[5 * R + i])
                               + (w6 * x[6 * R + i] + w7 * x[7 * R + i])))
        j0 += 8
    while j0 + 4 <= d:
        x = xt[j0 * R:(j0 + 4) * R]
        w0, w1, w2, w3 = float(w[j0]), float(w[j0 + 1]), float(w[j0 + 2]), float(w[j0 + 3])
        for i in range(R):
            sc[acc + i] += (w0 * x[i] + w1 * x[R + i]) + (w2 * x[2 * R + i] + w3 * x[3 * R + i])
        j0 += 4
    for j in range(j0, d):
        wj = float(w[j])
        x = xt[j * R:(j + 1) * R]
        for i in range(R):
            sc[acc + i] += wj * x[i]
    if link.code == IDENTITY:
        inv = 1.0 / (1.0 - b)
        for i in range(m):
            sc[S_Y * R + i] = float(sc[acc + i]) * inv
    elif predict:
        pass
    elif warm:
        for i in range(m):
            sc[S_Y * R + i] = min(max(float(st[F_Y * R + i]), vlo), vhi)
    else:
        for i in range(m):
            sc[S_Y * R + i] = min(max(value_and_slope(link.code, link.param,
                                                      float(sc[acc + i]))[0], vlo), vhi)


@jit(inline="always")
def _settled(exact, st, sc, m):
    """What :func:`_one` writes, from a block that :func:`solve_block` solved.
    Returns ``(loss, sum g y)``."""
    loss = 0.0
    gb = 0.0
    for i in range(m):
        yf = float(sc[S_Y * R + i])
        d = float(sc[S_DV * R + i])
        q = float(sc[S_C * R + i])
        e = yf - float(st[F_T * R + i])
        g = e * d * q
        st[F_Y * R + i] = yf
        st[F_C * R + i] = d * q
        sc[S_GE * R + i] = g if exact else e
        loss += e * e
        gb += g * yf
    return loss, gb


@jit(inline="always")
def _factor_weights(b, opts, st, sc, m):
    """The weights ``e sigma' factor`` of a backward other than the exact one,
    from ``e`` in ``S_GE`` and ``sigma'`` in ``S_DV``. Returns ``sum g y``."""
    lam = opts.damping
    for i in range(m):
        sc[S_LO * R + i] = 1.0 if opts.kind == JFB else 0.0
    for _ in range(opts.terms + 1 if opts.kind == NEUMANN else 0):
        for i in range(m):
            q = 1.0 - lam + lam * b * float(sc[S_DV * R + i])
            sc[S_LO * R + i] = q * float(sc[S_LO * R + i]) + lam
    gb = 0.0
    for i in range(m):
        g = float(sc[S_GE * R + i]) * float(sc[S_DV * R + i]) * float(sc[S_LO * R + i])
        sc[S_GE * R + i] = g
        gb += g * float(st[F_Y * R + i])
    return gb


@jit(inline="always")
def _grad(xt, grad, sc, pr, m, d):
    """``X^T g`` of a block (``grad``) into its partials."""
    if grad:
        ge = sc[S_GE * R:(S_GE + 1) * R]
        j0 = 0
        while j0 + 8 <= d:
            x0, x1, x2, x3 = (xt[(j0 + 0) * R:(j0 + 1) * R], xt[(j0 + 1) * R:(j0 + 2) * R],
                              xt[(j0 + 2) * R:(j0 + 3) * R], xt[(j0 + 3) * R:(j0 + 4) * R])
            x4, x5, x6, x7 = (xt[(j0 + 4) * R:(j0 + 5) * R], xt[(j0 + 5) * R:(j0 + 6) * R],
                              xt[(j0 + 6) * R:(j0 + 7) * R], xt[(j0 + 7) * R:(j0 + 8) * R])
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = 0.0
            for i in range(m):
                g = float(ge[i])
                a0 += g * float(x0[i])
                a1 += g * float(x1[i])
                a2 += g * float(x2[i])
                a3 += g * float(x3[i])
                a4 += g * float(x4[i])
                a5 += g * float(x5[i])
                a6 += g * float(x6[i])
                a7 += g * float(x7[i])
            pr[j0], pr[j0 + 1], pr[j0 + 2], pr[j0 + 3] = a0, a1, a2, a3
            pr[j0 + 4], pr[j0 + 5], pr[j0 + 6], pr[j0 + 7] = a4, a5, a6, a7
            j0 += 8
        while j0 + 4 <= d:
            x0, x1, x2, x3 = (xt[(j0 + 0) * R:(j0 + 1) * R], xt[(j0 + 1) * R:(j0 + 2) * R],
                              xt[(j0 + 2) * R:(j0 + 3) * R], xt[(j0 + 3) * R:(j0 + 4) * R])
            a0 = a1 = a2 = a3 = 0.0
            for i in range(m):
                g = float(ge[i])
                a0 += g * float(x0[i])
                a1 += g * float(x1[i])
                a2 += g * float(x2[i])
                a3 += g * float(x3[i])
            pr[j0], pr[j0 + 1], pr[j0 + 2], pr[j0 + 3] = a0, a1, a2, a3
            j0 += 4
        for j in range(j0, d):
            acc = 0.0
            xj = xt[j * R:(j + 1) * R]
            for i in range(m):
                acc += float(ge[i]) * float(xj[i])
            pr[j] = acc


@jit(inline="always")
def _block(link, P, w, b, db, warm, predict, grad, sg, ginv, opts, keep, sc, blk):
    """Solve block ``blk`` of ``P`` in the scratch ``sc`` and write its partials."""
    n, d = P.n, P.d
    m = min(R, n - blk * R)
    st = P.ws[blk * NF * R:(blk + 1) * NF * R]
    xt = P.XT[blk * d * R:(blk + 1) * d * R]
    pr = P.part[blk]
    exact = opts.kind == EXACT
    predict = warm and predict and link.code != IDENTITY
    _start(link, xt, w, b, warm, predict, st, sc, m, d)
    nout, rbits, loss, gb, nbad = _settle(link, b, sg, ginv, opts.tol, opts.feps, exact,
                                          predict, db, st, sc, m)
    if nbad > 0:
        status, kmax, itsum, rmax = DIVERGED, 1, m, math.nan
        if keep:
            for i in range(m):
                st[F_RP * R + i] = math.nan
    elif nout == 0:
        status, kmax, itsum, rmax = CONVERGED, 1, m, _from_bits(rbits)
        if keep:
            for i in range(m):
                st[F_RP * R + i] = -1.0
    else:
        status, kmax, itsum, rmax = solve_block(link, b, sg, ginv, opts.tol, opts.feps,
                                                opts.max_iter, sc, m)
        if status == CONVERGED:
            loss, gb = _settled(exact, st, sc, m)
        else:  # the last iterates, as a failed solve leaves them
            for i in range(m):
                st[F_Y * R + i] = sc[S_Y * R + i]
        if keep:
            for i in range(m):
                st[F_RP * R + i] = sc[S_RP * R + i]
    for j in range(d + P_LEN):
        pr[j] = 0.0
    pr[d + _P_STATUS] = status
    pr[d + _P_ITMAX] = kmax
    pr[d + _P_ITSUM] = itsum
    pr[d + _P_RES] = rmax
    if status == CONVERGED:
        if not exact:
            gb = _factor_weights(b, opts, st, sc, m)
        pr[d + _P_LOSS] = loss
        pr[d + _P_GB] = gb
        _grad(xt, grad, sc, pr, m, d)


def _pass(link, P, w, b, db, warm, predict, grad, sg, ginv, opts, nt):
    """Solve every block of ``P`` and write its partials: ``nt`` threads, each on a
    run of consecutive blocks with its own scratch block, in the direction
    opposite to the last pass's."""
    nb = (P.n + R - 1) // R
    back = (P.ints[1] & 1) == 1
    keep = P.ints[2] != 0
    for t in prange(nt):
        sc = P.sc[t * NS * R:(t + 1) * NS * R]
        lo = t * nb // nt
        hi = (t + 1) * nb // nt
        for k in range(lo, hi):
            _block(link, P, w, b, db, warm, predict, grad, sg, ginv, opts, keep, sc,
                   lo + hi - 1 - k if back else k)


_pass_s, _pass_p = twins(_pass)


@jit
def evaluate(link, P, w, b, grad, opts, gw):
    """Solve the equilibria of the packed set ``P`` at ``(w, b)``, warm-started
    when ``P`` holds a solution; loss and (``grad``, an int64 flag: a literal
    bool would compile the pass once per value) gradient into ``gw`` (length
    ``d + 1``). Returns ``(status, loss, max evaluations, mean
    evaluations, max |g|)``."""
    n, d = P.n, P.d
    sg, gmin = guard(b, link.dmin, link.dmax)
    if sg == 0:
        return NOT_UNIQUE, math.nan, 0, math.nan, math.nan
    warm = P.ints[0] != 0
    db = b - P.prev[0]
    nb = (n + R - 1) // R
    nt = min(opts.threads, nb, P.sc.shape[0] // (NS * R))
    if nt > 1 and n * (d + 4) >= PARALLEL_MIN:
        _pass_p(link, P, w, b, db, warm, opts.predict, grad, sg, 1.0 / gmin, opts, nt)
    elif nb > 0:
        _pass_s(link, P, w, b, db, warm, opts.predict, grad, sg, 1.0 / gmin, opts,
                np.int64(1))
    P.ints[1] += 1
    part = P.part
    status = CONVERGED
    loss = 0.0
    itmax = 0
    itsum = 0.0
    rmax = 0.0
    for blk in range(nb):
        pr = part[blk]
        st = int(pr[d + _P_STATUS])
        if st == DIVERGED or (st == MAX_ITER and status == CONVERGED):
            status = st
        loss += pr[d + _P_LOSS]
        itmax = max(itmax, int(pr[d + _P_ITMAX]))
        itsum += pr[d + _P_ITSUM]
        rmax = max(rmax, pr[d + _P_RES])
    if status != CONVERGED:
        P.ints[0] = 0  # no solution to start from: the next solve starts cold
        return status, math.nan, itmax, itsum / n, math.nan
    if grad:
        gw[:] = 0.0
        for blk in range(nb):
            pr = part[blk]
            for j in range(d):
                gw[j] += pr[j]
            gw[d] += pr[d + _P_GB]
        for j in range(d + 1):
            gw[j] /= n
    P.ints[0] = 1
    P.prev[0] = b
    return CONVERGED, loss / (2.0 * n), itmax, itsum / n, rmax


@jit
def solve(link, P, w, b, warm, opts):
    """Equilibria of every sample of ``P`` at ``(w, b)`` into its ``F_Y``, and
    the evaluations per sample into ``F_RP`` (``warm``: from ``F_Y`` as it is,
    else from ``sigma(s0)``). Returns
    ``(status, max evaluations, mean evaluations, max |g|)``."""
    P.ints[0] = 1 if warm else 0
    P.ints[2] = 1
    P.prev[0] = b
    st, _, itmax, itmean, rmax = evaluate(link, P, w, b, np.int64(0), opts, np.empty(0))
    P.ints[2] = 0
    return st, itmax, itmean, rmax


# --- the fused gradient-descent loop ------------------------------------------------


#: What a run carries between :func:`gd_run` calls: ``ints`` = (next step,
#: last evaluated step, records written, whether the last good step is recorded,
#: status, solve status of a failure), ``L0`` (length 1), the gradient ``g``, the
#: last good parameters ``wp``, ``bp``, the row of the current step and that of
#: the last good one.
GDState = namedtuple("GDState", ["ints", "L0", "g", "wp", "bp", "row", "good"])
_K, _LAST, _NREC, _GOOD, _STATUS, _SOLVE = 0, 1, 2, 3, 4, 5


def gd_state(d: int, dtype) -> GDState:
    ints = np.zeros(6, np.int64)
    ints[_STATUS] = RUNNING
    return GDState(ints, np.full(1, np.nan), np.zeros(d + 1), np.zeros(d, dtype),
                   np.zeros(1, dtype), np.full(NCOL, np.nan), np.full(NCOL, np.nan))


@jit
def _record(H, T, nrec, row, w, b, link, E, opts, tgt, theta):
    """Write ``row`` as record ``nrec``, with the evaluation loss on ``E`` (when
    it has samples) and the error to ``tgt`` (when it has ``d + 1`` entries) at
    ``(w, b)``; ``T`` gets ``(w, b)`` when ``theta``."""
    d = w.shape[0]
    if E.n > 0:
        st, le = evaluate(link, E, w, b, np.int64(0), opts, np.empty(0))[:2]
        row[H_EVAL_LOSS] = le if st == CONVERGED else math.nan
    if tgt.shape[0] == d + 1:
        e = (b - tgt[d]) ** 2
        for j in range(d):
            e += (float(w[j]) - tgt[j]) ** 2
        row[H_PARAM_ERROR] = math.sqrt(e)
    H[nrec, :] = row
    if theta:
        for j in range(d):
            T[nrec, j] = w[j]
        T[nrec, d] = b
    return nrec + 1


@jit
def gd_run(link, P, E, w, bb, tgt, opts, state, H, T, k_stop):
    """Gradient descent ``(w, b) <- (w, b) - lr grad L`` in place on ``w`` and
    ``bb = [b]`` over the packed training set ``P``, from step ``state.ints[0]``
    until the run ends or step ``k_stop`` (then the status is :data:`RUNNING`:
    call again to go on).

    Every step is one pass over the samples (:func:`evaluate`). Step ``k`` is
    recorded into ``H`` (and ``(w, b)`` into ``T`` when ``T`` has ``d + 1``
    columns) when ``k % record_every == 0`` and at the last step, with the
    evaluation loss on the packed set ``E`` (when it has samples) and the error
    to ``tgt`` (when it has ``d + 1`` entries). Stops at ``steps``, at
    ``stop_loss`` (``>= 0``), on divergence (loss above ``divergence_factor
    L_0``, or non-finite parameters) and on a failed solve (its status in
    ``state.ints[5]``); on failure ``(w, b)`` are the last parameters whose
    step succeeded, recorded as the last row. Returns ``(status, last step,
    records)``.
    """
    d = w.shape[0]
    ints, g, wp, bp, row, good = state.ints, state.g, state.wp, state.bp, state.row, state.good
    k = ints[_K]
    last = ints[_LAST]
    nrec = ints[_NREC]
    good_recorded = ints[_GOOD] != 0
    L0 = state.L0[0]
    theta = T.shape[1] == d + 1
    status = RUNNING
    while True:
        b = float(bb[0])
        st, loss, itmax, itmean, rmax = evaluate(link, P, w, b, np.int64(1), opts, g)
        failed = st != CONVERGED
        if not failed and not (abs(loss) < math.inf):
            failed = True
            st = DIVERGED
        diverged = (not failed) and k > 0 and L0 > 0.0 and loss > opts.divergence_factor * L0
        if failed or diverged:
            status = FIXED_POINT_FAILED if failed else DIVERGED
            ints[_SOLVE] = st if failed else CONVERGED
            if k > 0:
                w[:] = wp
                bb[0] = bp[0]
                if not good_recorded:
                    nrec = _record(H, T, nrec, good, w, float(bb[0]), link, E, opts, tgt, theta)
                    good_recorded = True
            break
        if k == 0:
            L0 = loss
        last = k
        gn = 0.0
        for j in range(d + 1):
            gn += g[j] * g[j]
        row[:] = math.nan
        row[H_STEP] = k
        row[H_LOSS] = loss
        row[H_GRAD] = math.sqrt(gn)
        row[H_NEWTON_MAX] = itmax
        row[H_NEWTON_MEAN] = itmean
        row[H_RESIDUAL] = rmax
        row[H_B] = b
        reached = opts.stop_loss >= 0.0 and loss <= opts.stop_loss
        final = reached or k >= opts.steps
        if final or k % opts.record_every == 0:
            nrec = _record(H, T, nrec, row, w, b, link, E, opts, tgt, theta)
            good_recorded = True
        else:
            good[:] = row
            good_recorded = False
        if reached:
            status = CONVERGED
            break
        if final:
            status = MAX_STEPS
            break
        wp[:] = w
        bp[0] = bb[0]
        finite = True
        for j in range(d):
            w[j] -= opts.lr * g[j]
            finite = finite and abs(float(w[j])) < math.inf
        bb[0] -= opts.lr * g[d]
        if not (finite and abs(float(bb[0])) < math.inf):
            status = DIVERGED
            w[:] = wp
            bb[0] = bp[0]
            if not good_recorded:
                nrec = _record(H, T, nrec, good, w, float(bb[0]), link, E, opts, tgt, theta)
                good_recorded = True
            break
        k += 1
        if k >= k_stop:
            break
    ints[_K] = k
    ints[_LAST] = last
    ints[_NREC] = nrec
    ints[_GOOD] = 1 if good_recorded else 0
    ints[_STATUS] = status
    state.L0[0] = L0
    return status, last, nrec


@jit
def gd_stop(link, E, w, bb, tgt, opts, state, H, T):
    """End a run that :func:`gd_run` left :data:`RUNNING` (an interrupted
    caller): ``(w, b)`` back to the last evaluated step, recorded as the last
    row unless it already was. Returns ``(last step, records)``."""
    ints = state.ints
    nrec = ints[_NREC]
    if ints[_STATUS] == RUNNING and ints[_K] > ints[_LAST]:
        w[:] = state.wp
        bb[0] = state.bp[0]
        if ints[_GOOD] == 0:
            nrec = _record(H, T, nrec, state.good, w, float(bb[0]), link, E, opts, tgt,
                           T.shape[1] == w.shape[0] + 1)
            ints[_NREC] = nrec
            ints[_GOOD] = 1
        ints[_K] = ints[_LAST]
    return ints[_LAST], nrec
