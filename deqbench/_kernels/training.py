"""Compiled training loops: one call runs a whole gradient-descent trajectory.

The loop calls the forward / adjoint kernels of :mod:`.fixed_point` and the
loss kernels of :mod:`.gradients` on work buffers allocated once at the top,
warm-starts each solve from the previous step's fixed point and adjoint, and
writes the quantities of THEORY.md sections 5-7 into a caller-allocated
history matrix (one row per recorded step, columns ``H_*``).

Two ways to get ``(L, grad_A, grad_B)`` at given parameters:

* :func:`sample_eval` - per sample: forward fixed point, loss, adjoint fixed
  point, ``grad_A = Mu^T Z``, ``grad_B = Mu^T X`` (THEORY.md section 4);
* :func:`suffstats_eval` - linear model, squared loss: only ``Sigma_xx`` and
  the least-squares solution ``W*`` enter (THEORY.md section 8), so the cost
  of a step does not depend on ``n``.

Spectral quantities use LAPACK through numba's own bindings (values only:
``dgesdd`` with ``jobz='N'``, ``dgeev`` without vectors), which stay cacheable.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.np.linalg import _LAPACK, ensure_lapack

from .._jit import jit
from . import fixed_point as _fp
from . import gradients as _g
from .activations import IDENTITY, MASK
from .blocks import gemm_rows, gemm_tn

ensure_lapack()
_gesdd = _LAPACK().numba_ez_gesdd(types.float64)
_rgeev = _LAPACK().numba_ez_rgeev(types.float64)
_KIND = ord("d")
_JOB_N = ord("N")

# models
LINEAR = 0
SINGLE_INDEX = 1
NONLINEAR = 2

# solvers (forward: PICARD, ANDERSON, DIRECT; adjoint: all)
PICARD = 0
ANDERSON = 1
DIRECT = 2
JFB = 3
NEUMANN = 4

# outcome of one loss/gradient evaluation
OK = 0
FP_FAILED = 1
NONFINITE = 2

# run status
CONVERGED = 0
MAX_STEPS = 1
DIVERGED = 2
FIXED_POINT_FAILED = 3
FINISHED = 4  # flow: t_end reached
STEP_TOO_SMALL = 5  # flow: step size underflow

# history columns
H_STEP = 0
H_LOSS = 1
H_EXCESS = 2
H_GRAD = 3
H_DRIFT = 4
H_TRACE = 5
H_SMIN = 6
H_SMAX = 7
H_RHO = 8
H_FP = 9
H_ADJ = 10
H_T = 11  # flow only
NCOL = 11
NCOL_FLOW = 12


# --- work space -------------------------------------------------------------


@jit
def sample_workspace(n, m, d, nonlinear, anderson_slots, hist_len):
    """Buffers of :func:`sample_eval`, allocated once per run.

    ``(AT, BT, Ci, U, Z, Mu, G, D, T, Fh, Gh, GG, work, hist)``; ``Z`` and
    ``Mu`` start at zero and carry the warm starts between calls.
    """
    AT = np.empty((m, m))
    BT = np.empty((d, m))
    Ci = np.empty((m, m))
    U = np.empty((n, m))
    Z = np.zeros((n, m))
    Mu = np.zeros((n, m))
    G = np.empty((n, m))
    D = np.empty((n, m)) if nonlinear else np.empty((1, 1))
    T = np.empty((n, m))
    k = max(anderson_slots, 1)
    if anderson_slots > 0:
        Fh = np.empty((k, n, m))
        Gh = np.empty((k, n, m))
    else:
        Fh = np.empty((1, 1, 1))
        Gh = np.empty((1, 1, 1))
    GG = np.zeros((k, k))
    work = np.zeros((2 * k + 1, k))
    hist = np.empty(hist_len)
    return AT, BT, Ci, U, Z, Mu, G, D, T, Fh, Gh, GG, work, hist


@jit
def suffstats_workspace(m, d):
    """Buffers of :func:`suffstats_eval`: ``(C, Ci, W, DW, P)``."""
    return np.empty((m, m)), np.empty((m, m)), np.empty((m, d)), np.empty((m, d)), np.empty((m, d))


@jit
def spectral_workspace(m, d):
    """Buffers of :func:`record_heavy`: ``(Pm, Rt, S, acpy, wr, wi, dummy)``."""
    return (
        np.empty((m, m + d)),
        np.empty((m + d, m)),
        np.empty((m, m)),
        np.empty((m, m)),
        np.empty(m),
        np.empty(m),
        np.empty(1),
    )


# --- small helpers ------------------------------------------------------------


@jit
def sumsq(P):
    s = 0.0
    for x in P.ravel():
        s += x * x
    return s


@jit
def axpy(Y, alpha, X):
    """``Y <- Y + alpha X`` in place (no temporary)."""
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] += alpha * X[i, j]


@jit
def all_finite(P):
    for x in P.ravel():
        if not np.isfinite(x):
            return False
    return True


@jit
def _invert_c(A, Ci):
    """``Ci <- (I - A)^{-1}``; False if singular or non-finite."""
    m = A.shape[0]
    C = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            C[i, j] = -A[i, j]
        C[i, i] += 1.0
    try:
        Ci[:, :] = np.linalg.inv(C)
    except Exception:  # singular to machine precision
        return False
    return all_finite(Ci)


@jit
def frobenius_q0(A0, B0):
    """``||Q_0||_F`` with ``Q_0 = (I - A0)(I - A0)^T + B0 B0^T`` (THEORY.md section 5)."""
    m = A0.shape[0]
    C = -A0
    for i in range(m):
        C[i, i] += 1.0
    Q = np.dot(C, C.T) + np.dot(B0, B0.T)
    return np.sqrt(sumsq(Q))


@jit
def drift_trace(A, B, A0, B0):
    """``tr(Q - Q_0) = sum (C - C0) o (C + C0) + sum (B - B0) o (B + B0)``, O(m(m + d)).

    Written in differences so that a small drift is not lost to cancellation.
    """
    m, d = B.shape
    s = 0.0
    for i in range(m):
        for j in range(m):
            dc = A0[i, j] - A[i, j]
            sc = -(A0[i, j] + A[i, j])
            if i == j:
                sc += 2.0
            s += dc * sc
        for j in range(d):
            s += (B[i, j] - B0[i, j]) * (B[i, j] + B0[i, j])
    return s


@jit
def record_heavy(A, B, A0, B0, q0_norm, sp, row):
    """Matrix quantities of a recorded step into ``row`` (every ``spectral_every`` steps).

    ``invariant_drift = ||Q - Q_0||_F / ||Q_0||_F`` with ``Q - Q_0 = S + S^T``,
    ``S = [dC, dB] [mid C, mid B]^T`` (one gemm, accurate for small drift);
    the extreme singular values of ``I - A`` and the spectral radius of ``A``.
    """
    Pm, Rt, S, acpy, wr, wi, dummy = sp
    m, d = B.shape
    for i in range(m):
        for j in range(m):
            Pm[i, j] = A0[i, j] - A[i, j]
            Rt[j, i] = -0.5 * (A0[i, j] + A[i, j])
        Rt[i, i] += 1.0
        for j in range(d):
            Pm[i, m + j] = B[i, j] - B0[i, j]
            Rt[m + j, i] = 0.5 * (B[i, j] + B0[i, j])
    np.dot(Pm, Rt, S)  # Rt stored transposed: a plain gemm, no transposed operand
    f = 0.0
    for i in range(m):
        for j in range(m):
            q = S[i, j] + S[j, i]
            f += q * q
    row[H_DRIFT] = np.sqrt(f) / q0_norm if q0_norm > 0.0 else np.nan
    # singular values of C = I - A (column-major copy: C^T has the same ones)
    for i in range(m):
        for j in range(m):
            acpy[i, j] = -A[i, j]
        acpy[i, i] += 1.0
    r = _gesdd(_KIND, _JOB_N, m, m, acpy.ctypes, m, wr.ctypes, dummy.ctypes, 1, dummy.ctypes, 1)
    if r == 0:
        row[H_SMAX] = wr[0]
        row[H_SMIN] = wr[m - 1]
    # eigenvalues of A: dgeev on the column-major copy (A^T in C order)
    for i in range(m):
        for j in range(m):
            acpy[j, i] = A[i, j]
    r = _rgeev(_KIND, _JOB_N, _JOB_N, m, acpy.ctypes, m, wr.ctypes, wi.ctypes,
               dummy.ctypes, 1, dummy.ctypes, 1)
    if r == 0:
        rho = 0.0
        for i in range(m):
            rho = max(rho, np.hypot(wr[i], wi[i]))
        row[H_RHO] = rho


# --- loss and gradient at given parameters ------------------------------------


@jit
def _iterate(solver, Z, M, U, code, param, D, T, Fh, Gh, GG, work, tol, max_iter, beta, ridge,
             hist):
    """Picard or Anderson on ``Z -> h(Z M + U)`` in place; returns ``(n_iter, status)``."""
    if solver == PICARD:
        k, res, st = _fp.picard(Z, M, U, code, param, D, T, tol, max_iter, beta, hist)
    else:
        k, res, st = _fp.anderson(Z, M, U, code, param, D, Fh, Gh, GG, work, tol, max_iter,
                                  beta, ridge, hist)
    return k, st


@jit
def sample_eval(model, A, B, X, Y2, y1, u, code, param, fsolver, gsolver, tol, max_iter,
                beta, ridge, nk, warm, ws, gA, gB):
    """Loss and exact (or truncated) implicit gradient, sample by sample.

    ``Z``/``Mu`` in ``ws`` are the initial guesses when ``warm`` (and are
    reset to zero otherwise). Returns ``(loss, fp_iters, adj_iters, outcome)``.
    """
    AT, BT, Ci, U, Z, Mu, G, D, T, Fh, Gh, GG, work, hist = ws
    m = A.shape[0]
    for i in range(m):
        for j in range(m):
            AT[j, i] = A[i, j]
    for i in range(m):
        for j in range(B.shape[1]):
            BT[j, i] = B[i, j]
    gemm_rows(X, BT, U)
    fcode = code if model == NONLINEAR else IDENTITY
    have_inv = False
    # forward
    kf = 0
    if fsolver == DIRECT:
        if not _invert_c(A, Ci):
            return np.nan, 0, 0, FP_FAILED
        have_inv = True
        gemm_rows(U, Ci.T, Z)
        if not all_finite(Z):
            return np.nan, 0, 0, FP_FAILED
    else:
        if not warm:
            Z[:, :] = 0.0
        kf, st = _iterate(fsolver, Z, AT, U, fcode, param, D, T, Fh, Gh, GG, work, tol,
                          max_iter, beta, ridge, hist)
        if st != _fp.CONVERGED:
            return np.nan, kf, 0, FP_FAILED
    # loss and dL/dZ
    if model == SINGLE_INDEX:
        loss = _g.single_index_loss(Z, y1, u, code, param, G)
    else:
        loss = _g.residual_loss(Z, Y2, G)
    if not np.isfinite(loss):
        return loss, kf, 0, NONFINITE
    # adjoint
    acode = IDENTITY
    if model == NONLINEAR:
        _g.preactivation_derivative(Z, AT, U, code, param, D)
        acode = MASK
    kb = 0
    if gsolver == DIRECT:
        if not have_inv and not _invert_c(A, Ci):
            return np.nan, kf, 0, FP_FAILED
        gemm_rows(G, Ci, Mu)
    elif gsolver == JFB or gsolver == NEUMANN:
        Mu[:, :] = 0.0
        kb, res, st = _fp.picard(Mu, A, G, acode, param, D, T, 0.0, nk + 1, 1.0, hist)
        if st == _fp.DIVERGED:
            return np.nan, kf, kb, FP_FAILED
    else:
        if not warm:
            Mu[:, :] = 0.0
        kb, st = _iterate(gsolver, Mu, A, G, acode, param, D, T, Fh, Gh, GG, work, tol,
                          max_iter, beta, ridge, hist)
        if st != _fp.CONVERGED:
            return np.nan, kf, kb, FP_FAILED
    gemm_tn(Mu, Z, gA)
    gemm_tn(Mu, X, gB)
    return loss, kf, kb, OK


@jit
def suffstats_eval(A, B, Sxx, Wstar, Lstar, ssw, gA, gB):
    """Linear model, squared loss, cost independent of ``n`` (THEORY.md section 8).

    ``W = C^{-1} B``, ``G_W = (W - W*) Sigma_xx`` (= ``W Sigma_xx - Sigma_yx``
    because ``W* Sigma_xx = Sigma_yx``), ``grad_B = C^{-T} G_W``,
    ``grad_A = grad_B W^T``; ``L - L* = <G_W, W - W*> / 2`` is computed without
    cancellation. Returns ``(loss, excess, outcome)``.
    """
    C, Ci, W, DW, P = ssw
    if not _invert_c(A, Ci):
        return np.nan, np.nan, NONFINITE
    np.dot(Ci, B, W)
    m, d = W.shape
    for i in range(m):
        for j in range(d):
            DW[i, j] = W[i, j] - Wstar[i, j]
    np.dot(DW, Sxx, P)
    ex = 0.0
    for i in range(m):
        for j in range(d):
            ex += P[i, j] * DW[i, j]
    ex *= 0.5
    np.dot(Ci.T, P, gB)
    np.dot(gB, W.T, gA)
    if not np.isfinite(ex):
        return np.nan, np.nan, NONFINITE
    return Lstar + ex, ex, OK


# --- the gradient-descent loop --------------------------------------------------


@jit
def _write_row(H, r, row):
    for c in range(row.shape[0]):
        H[r, c] = row[c]


@jit
def record_step(H, nrec, row, good, final, k, record_every, spectral_every, A, B, A0, B0, q0,
                sp):
    """Write step ``k``'s ``row`` when it is due (the matrix quantities of
    :func:`record_heavy` on the ``spectral_every`` cadence and at the final
    step); otherwise keep it in ``good``. Returns ``(nrec, recorded)``."""
    if final or k % record_every == 0:
        if final or k % spectral_every == 0:
            record_heavy(A, B, A0, B0, q0, sp, row)
        _write_row(H, nrec, row)
        return nrec + 1, True
    good[:] = row
    return nrec, False


@jit
def flush_good(H, nrec, good, recorded, A, B, A0, B0, q0, sp):
    """On failure, record the last good step unless it already was; returns ``nrec``."""
    if recorded:
        return nrec
    record_heavy(A, B, A0, B0, q0, sp, good)
    _write_row(H, nrec, good)
    return nrec + 1


@jit
def gd(model, A, B, X, Y2, y1, u, code, param, use_ss, Sxx, Wstar, Lstar,
       fsolver, gsolver, tol, max_iter, beta, ridge, anderson_slots, nk, warm,
       lr, steps, stop_loss, div_factor, record_every, spectral_every, H):
    """``steps`` gradient-descent updates ``P <- P - lr grad L(P)`` in place on ``A``, ``B``.

    Records step ``k`` into ``H`` when ``k % record_every == 0`` and at the
    last step; the matrix quantities of :func:`record_heavy` when also
    ``k % spectral_every == 0`` or at the last step (NaN otherwise). On
    failure ``A``, ``B`` are restored to the last parameters whose evaluation
    succeeded and that step is the last row.

    Returns ``(status, last_step, n_records)``.
    """
    n, d = X.shape
    m = A.shape[0]
    nonlinear = model == NONLINEAR
    if use_ss:
        ws = sample_workspace(1, m, d, False, 0, 1)
    else:
        ws = sample_workspace(n, m, d, nonlinear, anderson_slots, max(max_iter, nk + 1) + 2)
    ssw = suffstats_workspace(m, d)
    sp = spectral_workspace(m, d)
    A0 = A.copy()
    B0 = B.copy()
    Ap = A.copy()
    Bp = B.copy()
    gA = np.zeros((m, m))
    gB = np.zeros((m, d))
    row = np.empty(NCOL)
    good = np.empty(NCOL)
    q0 = frobenius_q0(A0, B0)
    nrec = 0
    good_recorded = False
    status = MAX_STEPS
    L0 = np.nan
    k = 0
    last = 0
    while True:
        kf = 0
        kb = 0
        if use_ss:
            loss, excess, outcome = suffstats_eval(A, B, Sxx, Wstar, Lstar, ssw, gA, gB)
        else:
            loss, kf, kb, outcome = sample_eval(model, A, B, X, Y2, y1, u, code, param, fsolver,
                                                gsolver, tol, max_iter, beta, ridge, nk,
                                                warm and k > 0, ws, gA, gB)
            excess = loss - Lstar
        gn2 = np.nan
        if outcome == OK:
            gn2 = sumsq(gA) + sumsq(gB)
            if not (np.isfinite(loss) and np.isfinite(gn2)):
                outcome = NONFINITE
            elif k > 0 and L0 > 0.0 and loss > div_factor * L0:
                outcome = NONFINITE
        if outcome != OK:
            status = FIXED_POINT_FAILED if outcome == FP_FAILED else DIVERGED
            if k > 0:
                A[:, :] = Ap
                B[:, :] = Bp
                nrec = flush_good(H, nrec, good, good_recorded, A, B, A0, B0, q0, sp)
            break
        if k == 0:
            L0 = loss
        last = k
        row[:] = np.nan
        row[H_STEP] = k
        row[H_LOSS] = loss
        row[H_EXCESS] = excess
        row[H_GRAD] = np.sqrt(gn2)
        row[H_TRACE] = drift_trace(A, B, A0, B0)
        row[H_FP] = kf
        row[H_ADJ] = kb
        reached = stop_loss >= 0.0 and loss <= stop_loss
        final = reached or k >= steps
        nrec, good_recorded = record_step(H, nrec, row, good, final, k, record_every,
                                          spectral_every, A, B, A0, B0, q0, sp)
        if reached:
            status = CONVERGED
            break
        if final:
            status = MAX_STEPS
            break
        Ap[:, :] = A
        Bp[:, :] = B
        axpy(A, -lr, gA)
        axpy(B, -lr, gB)
        if not (all_finite(A) and all_finite(B)):
            status = DIVERGED
            A[:, :] = Ap
            B[:, :] = Bp
            nrec = flush_good(H, nrec, good, good_recorded, A, B, A0, B0, q0, sp)
            break
        k += 1
    return status, last, nrec
