"""Fixed-point solvers for maps of the form ``Z -> h(Z @ M + U)``.

One form serves the forward solve and the adjoint solve:

* forward:  ``M = A^T``, ``U = X B^T``, ``h = phi`` (activation code);
* adjoint:  ``M = A``, ``U = G``, ``h = D * .`` (``MASK``; identity when linear),
  solved for ``Mu = D * Lam`` (THEORY.md section 4).

Every solver works in place on ``Z`` (initial guess in, answer out), takes its
work buffers from the caller, allocates nothing in its loop and returns
``(n_iter, residual, status)``. ``hist[k]`` is the relative residual
``||h(Z_k M + U) - Z_k||_F / ||h(Z_k M + U)||_F`` of iterate ``k``; the
returned ``Z`` is the iterate whose residual is reported.
"""

from __future__ import annotations

import numpy as np

from .._jit import jit, prange, twins
from .activations import IDENTITY, MASK, act

CONVERGED = 0
MAX_ITER = 1
DIVERGED = 2  # non-finite values or residual growth beyond GROWTH
GROWTH = 1e8  # absolute residual may not exceed GROWTH x the first one

_TINY = 1e-300

#: Widths up to this take the fused row kernel (:func:`_fused_small`): the gemm is
#: done in the kernel, four rows per sweep of ``M``, with ``h``, the residual and
#: the damping applied while the rows are in L1. At such widths a BLAS call costs
#: more in thread hand-offs than in arithmetic (measured on 2 shared cores, load 5:
#: (8192 x 32) @ (32 x 32) takes 11.8 ms in 2-thread OpenBLAS, 2.3 ms in 1-thread
#: OpenBLAS and 2.4 ms fused, the pass included).
SMALL_M = 48

#: The elementwise passes (after the gemm, Anderson's mix and Gram products, the
#: loss kernels) go parallel only from this many elements on. A pass streams its
#: arrays once: serially it is a few percent of the gemm beside it (2.9 ms vs
#: ~40 ms at n = 8192, m = 256), while a parallel region must wait for both
#: threads to be scheduled, which on a busy machine costs a time slice (measured:
#: 15 ms for the same pass in prange at load 5 on 2 cores, whatever its size).
#: Below this size the serial pass is never the bottleneck.
PASS_PARALLEL_MIN = 1 << 22


@jit(inline="always")
def _finish(Z, code, param, D, T, i, beta):
    """Row ``i`` of ``T`` holds ``Z M + U``: apply ``h``, mix, return ``(dd, ff)``."""
    m = T.shape[1]
    t = T[i]
    z = Z[i]
    dd = 0.0
    ff = 0.0
    if code == IDENTITY:
        for j in range(m):
            v = t[j]
            r = v - z[j]
            dd += r * r
            ff += v * v
            t[j] = z[j] + beta * r
    elif code == MASK:
        dr = D[i]
        for j in range(m):
            v = dr[j] * t[j]
            r = v - z[j]
            dd += r * r
            ff += v * v
            t[j] = z[j] + beta * r
    else:
        for j in range(m):
            v = act(code, param, t[j])
            r = v - z[j]
            dd += r * r
            ff += v * v
            t[j] = z[j] + beta * r
    return dd, ff


@jit(inline="always")
def _finish_anderson(Z, code, param, D, Fs, Gs, i):
    """Row ``i`` of ``Fs`` holds ``Z M + U``: ``Fs <- h(.)``, ``Gs <- Fs - Z``."""
    m = Fs.shape[1]
    f = Fs[i]
    g = Gs[i]
    z = Z[i]
    dd = 0.0
    ff = 0.0
    for j in range(m):
        t = f[j]
        if code == IDENTITY:
            v = t
        elif code == MASK:
            v = D[i, j] * t
        else:
            v = act(code, param, t)
        r = v - z[j]
        f[j] = v
        g[j] = r
        dd += r * r
        ff += v * v
    return dd, ff


@jit
def _rows_small(Z, M, U, T):
    """``T <- Z M + U`` without BLAS for narrow ``M``: four rows of ``T`` accumulate
    per sweep of ``M``, so each row of ``M`` is loaded once for four rows."""
    n, m = T.shape
    n4 = n - n % 4
    for i in range(0, n4, 4):
        t0 = T[i]
        t1 = T[i + 1]
        t2 = T[i + 2]
        t3 = T[i + 3]
        for j in range(m):
            t0[j] = U[i, j]
            t1[j] = U[i + 1, j]
            t2[j] = U[i + 2, j]
            t3[j] = U[i + 3, j]
        for k in range(m):
            a0 = Z[i, k]
            a1 = Z[i + 1, k]
            a2 = Z[i + 2, k]
            a3 = Z[i + 3, k]
            mk = M[k]
            for j in range(m):
                w = mk[j]
                t0[j] += a0 * w
                t1[j] += a1 * w
                t2[j] += a2 * w
                t3[j] += a3 * w
    for i in range(n4, n):
        t = T[i]
        for j in range(m):
            t[j] = U[i, j]
        for k in range(m):
            a = Z[i, k]
            mk = M[k]
            for j in range(m):
                t[j] += a * mk[j]


_BLOCK = 64  # rows per block of the fused kernels (64 x 48 doubles: 24 KiB per array)


@jit
def _fused_small(Z, M, U, code, param, D, T, beta):
    """:func:`evaluate` for ``m <= SMALL_M``, serial, fused per block of rows."""
    n = T.shape[0]
    dd = 0.0
    ff = 0.0
    for i0 in range(0, n, _BLOCK):
        i1 = min(i0 + _BLOCK, n)
        _rows_small(Z[i0:i1], M, U[i0:i1], T[i0:i1])
        for i in range(i0, i1):
            a, b = _finish(Z, code, param, D, T, i, beta)
            dd += a
            ff += b
    return dd, ff


@jit
def _anderson_eval_small(Z, M, U, code, param, D, Fs, Gs):
    """:func:`_anderson_eval` for ``m <= SMALL_M``, serial, fused per block of rows."""
    n = Fs.shape[0]
    dd = 0.0
    ff = 0.0
    for i0 in range(0, n, _BLOCK):
        i1 = min(i0 + _BLOCK, n)
        _rows_small(Z[i0:i1], M, U[i0:i1], Fs[i0:i1])
        for i in range(i0, i1):
            a, b = _finish_anderson(Z, code, param, D, Fs, Gs, i)
            dd += a
            ff += b
    return dd, ff


def _evaluate(Z, M, U, code, param, D, T, beta):
    np.dot(Z, M, T)
    n, m = T.shape
    dd = 0.0
    ff = 0.0
    if code == IDENTITY:
        for i in prange(n):
            for j in range(m):
                v = T[i, j] + U[i, j]
                r = v - Z[i, j]
                dd += r * r
                ff += v * v
                T[i, j] = Z[i, j] + beta * r
    elif code == MASK:
        for i in prange(n):
            for j in range(m):
                v = D[i, j] * (T[i, j] + U[i, j])
                r = v - Z[i, j]
                dd += r * r
                ff += v * v
                T[i, j] = Z[i, j] + beta * r
    else:
        for i in prange(n):
            for j in range(m):
                v = act(code, param, T[i, j] + U[i, j])
                r = v - Z[i, j]
                dd += r * r
                ff += v * v
                T[i, j] = Z[i, j] + beta * r
    return dd, ff


_evaluate_s, _evaluate_p = twins(_evaluate)


@jit
def evaluate(Z, M, U, code, param, D, T, beta):
    """``T <- Z + beta (h(Z M + U) - Z)``; return ``(||h - Z||^2, ||h||^2)``.

    ``m <= SMALL_M``: gemm and pass fused per block of rows, serial. Wider: one
    BLAS gemm (BLAS's threads), then one fused pass over the samples, parallel
    only from ``PASS_PARALLEL_MIN`` elements on.
    """
    if Z.shape[1] <= SMALL_M:
        return _fused_small(Z, M, U, code, param, D, T, beta)
    if Z.size >= PASS_PARALLEL_MIN:
        return _evaluate_p(Z, M, U, code, param, D, T, beta)
    return _evaluate_s(Z, M, U, code, param, D, T, beta)


@jit
def relative(dd, ff):
    """Relative residual from squared norms; 0 when both vanish."""
    if ff > _TINY:
        return np.sqrt(dd / ff)
    return 0.0 if dd <= _TINY else np.inf


@jit
def picard(Z, M, U, code, param, D, T, tol, max_iter, beta, hist):
    """Damped Picard ``Z <- (1 - beta) Z + beta h(Z M + U)``; ``T`` is work space."""
    cur = Z
    nxt = T
    r0 = -1.0
    res = np.inf
    status = MAX_ITER
    k = 0
    while True:
        dd, ff = evaluate(cur, M, U, code, param, D, nxt, beta)
        if not (np.isfinite(dd) and np.isfinite(ff)):
            status = DIVERGED
            break
        res = relative(dd, ff)
        hist[k] = res
        if r0 < 0.0:
            r0 = np.sqrt(dd)
        if res <= tol:
            status = CONVERGED
            break
        if np.sqrt(dd) > GROWTH * r0 and r0 > 0.0:
            status = DIVERGED
            break
        if k >= max_iter:
            break
        cur, nxt = nxt, cur
        k += 1
    if cur is not Z:
        Z[:, :] = cur
    return k, res, status


@jit
def _small_spd_solve(H, k, b, L):
    """Solve ``H[:k,:k] x = b[:k]`` in place in ``b`` by Cholesky into ``L``.

    Returns False if ``H`` is not numerically positive definite.
    """
    for i in range(k):
        for j in range(i + 1):
            s = H[i, j]
            for p in range(j):
                s -= L[i, p] * L[j, p]
            if i == j:
                if not s > 0.0:
                    return False
                L[i, i] = np.sqrt(s)
            else:
                L[i, j] = s / L[j, j]
    for i in range(k):
        s = b[i]
        for p in range(i):
            s -= L[i, p] * b[p]
        b[i] = s / L[i, i]
    for i in range(k - 1, -1, -1):
        s = b[i]
        for p in range(i + 1, k):
            s -= L[p, i] * b[p]
        b[i] = s / L[i, i]
    return True


def _anderson_eval(Z, M, U, code, param, D, Fs, Gs):
    """``Fs <- h(Z M + U)``, ``Gs <- Fs - Z``; return ``(||Gs||^2, ||Fs||^2)``."""
    np.dot(Z, M, Fs)
    n, m = Fs.shape
    dd = 0.0
    ff = 0.0
    for i in prange(n):
        for j in range(m):
            t = Fs[i, j] + U[i, j]
            if code == IDENTITY:
                v = t
            elif code == MASK:
                v = D[i, j] * t
            else:
                v = act(code, param, t)
            r = v - Z[i, j]
            Fs[i, j] = v
            Gs[i, j] = r
            dd += r * r
            ff += v * v
    return dd, ff


def _dot(P, Q):
    n, m = P.shape
    s = 0.0
    for i in prange(n):
        for j in range(m):
            s += P[i, j] * Q[i, j]
    return s


def _anderson_mix(Z, Fh, Gh, alpha, slots, beta):
    """``Z <- sum_j alpha_j (F_j - (1 - beta) G_j)``; return ``||Z||^2``."""
    n, m = Z.shape
    zz = 0.0
    for i in prange(n):
        for j in range(m):
            s = 0.0
            for p in range(slots):
                s += alpha[p] * (Fh[p, i, j] - (1.0 - beta) * Gh[p, i, j])
            Z[i, j] = s
            zz += s * s
    return zz


_anderson_eval_s, _anderson_eval_p = twins(_anderson_eval)
_dot_s, _dot_p = twins(_dot)
_anderson_mix_s, _anderson_mix_p = twins(_anderson_mix)


@jit
def anderson(Z, M, U, code, param, D, Fh, Gh, GG, work, tol, max_iter, beta, ridge, hist):
    """Anderson acceleration (type II) with history ``Fh.shape[0]``.

    ``Fh``, ``Gh``: ``(k, n, m)`` ring buffers of map values and residuals;
    ``GG``: ``(k, k)`` Gram matrix of residuals; ``work``: ``(2k + 2, k)``.
    The least-squares weights solve ``(GG / max diag + ridge I) w = 1``,
    ``alpha = w / sum(w)``; ``beta`` mixes map values and iterates.
    """
    kmax = Fh.shape[0]
    par = Z.size >= PASS_PARALLEL_MIN
    small = Z.shape[1] <= SMALL_M
    H = work[:kmax, :]
    L = work[kmax : 2 * kmax, :]
    w = work[2 * kmax]
    r0 = -1.0
    res = np.inf
    status = MAX_ITER
    k = 0
    while True:
        s = k % kmax
        if small:
            dd, ff = _anderson_eval_small(Z, M, U, code, param, D, Fh[s], Gh[s])
        elif par:
            dd, ff = _anderson_eval_p(Z, M, U, code, param, D, Fh[s], Gh[s])
        else:
            dd, ff = _anderson_eval_s(Z, M, U, code, param, D, Fh[s], Gh[s])
        if not (np.isfinite(dd) and np.isfinite(ff)):
            status = DIVERGED
            break
        res = relative(dd, ff)
        hist[k] = res
        if r0 < 0.0:
            r0 = np.sqrt(dd)
        if res <= tol:
            status = CONVERGED
            break
        if np.sqrt(dd) > GROWTH * r0 and r0 > 0.0:
            status = DIVERGED
            break
        if k >= max_iter:
            break
        slots = min(k + 1, kmax)
        GG[s, s] = dd
        for p in range(slots):
            if p != s:
                g = _dot_p(Gh[s], Gh[p]) if par else _dot_s(Gh[s], Gh[p])
                GG[s, p] = g
                GG[p, s] = g
        hmax = 0.0
        for p in range(slots):
            hmax = max(hmax, GG[p, p])
        if hmax <= 0.0:
            hmax = 1.0
        for p in range(slots):
            for q in range(slots):
                H[p, q] = GG[p, q] / hmax
            H[p, p] += ridge
            w[p] = 1.0
        ok = _small_spd_solve(H, slots, w, L)
        total = 0.0
        for p in range(slots):
            total += w[p]
        if not ok or not np.isfinite(total) or total == 0.0:
            # degenerate history: fall back to a plain damped step from the newest slot
            for p in range(slots):
                w[p] = 0.0
            w[s] = 1.0
            total = 1.0
        for p in range(slots):
            w[p] /= total
        if par:
            zz = _anderson_mix_p(Z, Fh, Gh, w, slots, beta)
        else:
            zz = _anderson_mix_s(Z, Fh, Gh, w, slots, beta)
        if not np.isfinite(zz):
            # restore the last finite iterate: X_s = F_s - G_s
            Z[:, :] = Fh[s]
            Z -= Gh[s]
            status = DIVERGED
            break
        k += 1
    return k, res, status


@jit
def direct_linear(C, U, Z):
    """Exact linear fixed point: ``Z = U C^{-T}`` (LU), i.e. ``C Z^T = U^T``."""
    Z[:, :] = np.linalg.solve(C, np.ascontiguousarray(U.T)).T
