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

from .._jit import PARALLEL_MIN_SIZE, jit, prange, twins
from .activations import IDENTITY, MASK, act

CONVERGED = 0
MAX_ITER = 1
DIVERGED = 2  # non-finite values or residual growth beyond GROWTH
GROWTH = 1e8  # absolute residual may not exceed GROWTH x the first one

_TINY = 1e-300


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

    One BLAS gemm, then one fused pass over the samples (parallel when large).
    """
    if Z.size >= PARALLEL_MIN_SIZE:
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
    par = Z.size >= PARALLEL_MIN_SIZE
    H = work[:kmax, :]
    L = work[kmax : 2 * kmax, :]
    w = work[2 * kmax]
    r0 = -1.0
    res = np.inf
    status = MAX_ITER
    k = 0
    while True:
        s = k % kmax
        if par:
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
