"""Fixed-point solvers for maps of the form ``Z -> h(Z @ M + U)``.

One form serves the forward solve and the adjoint solve:

* forward:  ``M = A^T``, ``U = X B^T``, ``h = phi`` (activation code);
* adjoint:  ``M = A``, ``U = G``, ``h = D * .`` (``MASK``; identity when linear),
  solved for ``Mu = D * Lam`` (docs/theory.md §4).

Every solver works in place on ``Z`` (initial guess in, answer out), takes its
work buffers from the caller, allocates nothing in its loop and returns
``(n_iter, residual, status)``. Arrays are float32 or float64 (one dtype per
call, numba compiles one specialisation each); the squared norms behind the
residual are squared and accumulated in float64 whatever the dtype (no float32
value underflows them). ``hist[k]`` is the relative residual
``||h(Z_k M + U) - Z_k||_F / ||h(Z_k M + U)||_F`` of iterate ``k`` (Picard:
of the batch whose stopping groups of rows hold iterate ``min(k, k_g)``, each
group stopping on its own, :func:`picard`); the returned ``Z`` is the iterate
whose residual is reported.

The block sizes and the gemm come from the settings vector ``tune``
(:mod:`.blocks`; ``None``: the built-in ones); no result depends on them
beyond rounding.
"""

from __future__ import annotations

import numpy as np

from .._jit import jit, pjit, prange, twins
from .activations import IDENTITY, MASK, h_row
from .blocks import block_rows, flat, gemm, gemm_rows, group_rows, pass_parallel
from .status import CONVERGED, DIVERGED, MAX_ITER, RUNNING, UNDERFLOW

GROWTH = 1e8  # absolute residual may not exceed GROWTH x the first one (else DIVERGED)
ROUND = 32
"""Evaluations a Picard block makes per visit while it sits in cache
(:func:`picard`): the history's work space is ``ROUND`` entries per thread,
whatever ``max_iter``, and each block's rows come from memory once a round."""
MINIMISER_SHARE = 0.5
"""Anderson evaluates the least-squares minimiser itself once its predicted
relative residual is at most this share of ``tol`` (:func:`anderson`)."""

TINY = float(np.finfo(np.float64).tiny)
"""float64's smallest normal number: the floor of the stopping rule (:data:`.status.UNDERFLOW`)."""
_WORSE = np.array([0, 2, 3, 1])  # rank of CONVERGED, MAX_ITER, DIVERGED, UNDERFLOW


@jit(inline="always")
def _finish(Z, U, code, param, D, T, i0, i1, beta):
    """Rows ``i0:i1`` of ``T`` hold ``Z M``: ``T <- Z + beta (h(Z M + U) - Z)``;
    return the block's ``(||h - Z||^2, ||h||^2)`` (flat loops, see :func:`~.blocks.flat`).

    The identity and ``MASK`` maps have no activation to evaluate: their add
    (and mask) joins the residual loop, one pass over the block instead of
    two (same arithmetic, faster at small ``m``: ``results/calibrate/README.md``)."""
    t = flat(T[i0:i1])
    z = flat(Z[i0:i1])
    u = flat(U[i0:i1])
    dd = 0.0
    ff = 0.0
    if code == IDENTITY:
        for j in range(t.shape[0]):
            v = t[j] + u[j]
            r = v - z[j]
            dd += np.float64(r) * np.float64(r)
            ff += np.float64(v) * np.float64(v)
            t[j] = z[j] + beta * r
        return dd, ff
    if code == MASK:
        d = flat(D[i0:i1])
        for j in range(t.shape[0]):
            v = d[j] * (t[j] + u[j])
            r = v - z[j]
            dd += np.float64(r) * np.float64(r)
            ff += np.float64(v) * np.float64(v)
            t[j] = z[j] + beta * r
        return dd, ff
    h_row(code, param, t, u, t)
    for j in range(t.shape[0]):
        v = t[j]
        r = v - z[j]
        dd += np.float64(r) * np.float64(r)
        ff += np.float64(v) * np.float64(v)
        t[j] = z[j] + beta * r
    return dd, ff


@jit(inline="always")
def _finish_anderson(Z, U, code, param, D, Fs, Gs, i0, i1):
    """Rows ``i0:i1`` of ``Fs`` hold ``Z M``: ``Fs <- h(Z M + U)``, ``Gs <- Fs - Z``."""
    f = flat(Fs[i0:i1])
    g = flat(Gs[i0:i1])
    z = flat(Z[i0:i1])
    h_row(code, param, f, flat(U[i0:i1]), flat(D[i0:i1]) if code == MASK else f)
    dd = 0.0
    ff = 0.0
    for j in range(f.shape[0]):
        v = f[j]
        r = v - z[j]
        g[j] = r
        dd += np.float64(r) * np.float64(r)
        ff += np.float64(v) * np.float64(v)
    return dd, ff


def _evaluate(Z, M, U, code, param, D, T, beta, rows, tune=None):
    n = T.shape[0]
    dd = 0.0
    ff = 0.0
    for b in prange((n + rows - 1) // rows):
        i0 = b * rows
        i1 = min(i0 + rows, n)
        gemm(Z[i0:i1], M, T[i0:i1], tune)
        a, c = _finish(Z, U, code, param, D, T, i0, i1, beta)
        dd += a
        ff += c
    return dd, ff


def _anderson_eval(Z, M, U, code, param, D, Fs, Gs, rows, tune=None):
    n = Fs.shape[0]
    dd = 0.0
    ff = 0.0
    for b in prange((n + rows - 1) // rows):
        i0 = b * rows
        i1 = min(i0 + rows, n)
        gemm(Z[i0:i1], M, Fs[i0:i1], tune)
        a, c = _finish_anderson(Z, U, code, param, D, Fs, Gs, i0, i1)
        dd += a
        ff += c
    return dd, ff


_evaluate_s, _evaluate_p = twins(_evaluate)
_anderson_eval_s, _anderson_eval_p = twins(_anderson_eval)


@jit
def evaluate(Z, M, U, code, param, D, T, beta):
    """``T <- Z + beta (h(Z M + U) - Z)``; return ``(||h - Z||^2, ||h||^2)``.

    Per block of :func:`~.blocks.block_rows` rows: one single-threaded BLAS
    gemm, then the activation, the residual norms and the damping while the
    block is in cache; blocks go to numba's threads when there are two or more.
    The built-in block rows and gemm (one evaluation: the residual checks of
    the callers; the solvers' own evaluations read the settings in force).
    """
    rows = block_rows(Z.shape[0], Z.shape[1])
    if Z.shape[0] > rows:
        return _evaluate_p(Z, M, U, code, param, D, T, beta, rows)
    return _evaluate_s(Z, M, U, code, param, D, T, beta, rows)


@jit
def anderson_eval(Z, M, U, code, param, D, Fs, Gs, tune=None):
    """``Fs <- h(Z M + U)``, ``Gs <- Fs - Z``; return ``(||Gs||^2, ||Fs||^2)``,
    block by block as :func:`evaluate`, with the settings ``tune``."""
    rows = block_rows(Z.shape[0], Z.shape[1], tune)
    if Z.shape[0] > rows:
        return _anderson_eval_p(Z, M, U, code, param, D, Fs, Gs, rows, tune)
    return _anderson_eval_s(Z, M, U, code, param, D, Fs, Gs, rows, tune)


@jit
def relative(dd, ff):
    """Relative residual from squared norms; 0 when both vanish."""
    if ff > 0.0:
        return np.sqrt(dd / ff)
    return 0.0 if dd == 0.0 else np.inf


@jit(inline="always")
def _rule(dd, ff, k, r0, tol, max_iter, n):
    """The stopping rule on one evaluation's squared norms of ``n`` entries:
    ``(status, r0)``, ``r0`` the first absolute residual (negative before the first
    call). The rule met with ``tol^2 ff < n TINY`` is ``UNDERFLOW``: each squared
    entry rounds by up to half a subnormal step, ``n TINY eps / 2`` in all, which
    is then more than ``eps`` of the threshold ``tol^2 ff`` (docs/theory.md §3)."""
    if not (np.isfinite(dd) and np.isfinite(ff)):
        return DIVERGED, r0
    if r0 < 0.0:
        r0 = np.sqrt(dd)
    if relative(dd, ff) <= tol:
        return (CONVERGED if tol * tol * ff >= n * TINY else UNDERFLOW), r0
    if np.sqrt(dd) > GROWTH * r0 and r0 > 0.0:
        return DIVERGED, r0
    if k >= max_iter:
        return MAX_ITER, r0
    return RUNNING, r0


@jit
def stopping(dd, ff, k, r0, res, tol, max_iter, hist, n):
    """Anderson's and Broyden's stopping rule (:func:`_rule` on ``n`` entries, as each
    Picard group's), after map evaluation ``k``.

    ``dd = ||F(Z_k) - Z_k||^2``, ``ff = ||F(Z_k)||^2``; ``r0`` is the first
    absolute residual (negative before the first call), ``res`` the last
    finite relative residual. Records ``hist[k]`` (NaN when not finite);
    returns ``(status, res, r0)`` (``res`` kept when this evaluation is not
    finite) with status ``RUNNING``
    while the iteration should go on, else ``CONVERGED`` (relative residual
    ``<= tol``), ``DIVERGED`` (non-finite, or the absolute residual above
    ``GROWTH`` times the first), ``MAX_ITER`` (``k == max_iter``) or
    ``UNDERFLOW`` (the rule holds on norms too small to tell).
    """
    status, r0 = _rule(dd, ff, k, r0, tol, max_iter, n)
    if not (np.isfinite(dd) and np.isfinite(ff)):
        hist[k] = np.nan
        return status, res, r0
    res = relative(dd, ff)
    hist[k] = res
    return status, res, r0


@jit
def all_zero(a):
    """Whether every entry of a C-contiguous array is exactly zero."""
    f = flat(a)
    for j in range(f.shape[0]):
        if f[j] != 0.0:
            return False
    return True


@jit
def _picard_lane(Z, M, U, code, param, D, T, tol, max_iter, beta, rows, group, j0, r0s, sums,
                 out, lane, tune):
    """Lane ``lane``'s share of one round (:func:`_picard_blocks`): blocks
    ``lane, lane + lanes, ...`` iterated from their next evaluation up to
    evaluation ``j0 + ROUND - 1`` or their stop, each in cache meanwhile.

    A block is ``max(1, rows // group)`` stopping groups of ``group`` rows
    (:func:`~.blocks.group_rows`); its running groups share their next
    evaluation and are iterated together, gemms of at most ``rows`` rows over
    each run of consecutive running groups, and each group stops on its own
    rule (its iterates are its rows of the batch iteration's, whatever the
    blocks). For evaluation ``j0 + i`` of a group it adds ``(dd, ff, 1)`` to
    ``sums[lane, i, :3]``, and a stopped group's last ``(dd, ff)`` to
    ``sums[lane, i + 1, 3:]`` (it keeps them for every later evaluation).
    ``out[g] = (next evaluation, status)``, ``r0s[g]`` the group's first
    absolute residual (negative before it). Compiled once and called by the
    serial and the parallel round alike: as the body of a ``prange`` loop it
    was compiled into both twins (three loops of :func:`_finish`, every
    activation), a longer cold start (``results/calibrate/README.md``).
    """
    n = Z.shape[0]
    lanes = sums.shape[0]
    ng = out.shape[0]
    per = max(1, rows // group)
    nb = (ng + per - 1) // per
    for b in range(lane, nb, lanes):
        g0 = b * per
        g1 = min(g0 + per, ng)
        k = np.int64(-1)
        for g in range(g0, g1):
            if out[g, 1] == RUNNING:
                k = out[g, 0]
                break
        while k >= 0 and k < j0 + ROUND:
            cur = Z if k % 2 == 0 else T
            nxt = T if k % 2 == 0 else Z
            g = g0
            while g < g1:  # the gemms, over each run of running groups
                if out[g, 1] != RUNNING:
                    g += 1
                    continue
                h = g + 1
                while h < g1 and out[h, 1] == RUNNING:
                    h += 1
                e = min(h * group, n)
                for s in range(g * group, e, rows):
                    gemm(cur[s:min(s + rows, e)], M, nxt[s:min(s + rows, e)], tune)
                g = h
            i = k - j0
            going = False
            for g in range(g0, g1):
                if out[g, 1] != RUNNING:
                    continue
                i0 = g * group
                i1 = min(i0 + group, n)
                d = D[i0:i1] if code == MASK else D[0:1]
                dd, ff = _finish(cur[i0:i1], U[i0:i1], code, param, d, nxt[i0:i1], 0, i1 - i0,
                                 beta)
                sums[lane, i, 0] += dd
                sums[lane, i, 1] += ff
                sums[lane, i, 2] += 1.0
                status, r0 = _rule(dd, ff, k, r0s[g], tol, max_iter, (i1 - i0) * Z.shape[1])
                if status == UNDERFLOW and ff == 0.0 and all_zero(cur[i0:i1]) \
                        and all_zero(nxt[i0:i1]):
                    status = CONVERGED  # Z = 0 = F(Z) exactly, not a residual lost to underflow
                r0s[g] = r0
                if status == RUNNING:
                    out[g, 0] = k + 1
                    going = True
                    continue
                out[g, 0] = k
                out[g, 1] = status
                sums[lane, i + 1, 3] += dd
                sums[lane, i + 1, 4] += ff
                if k % 2 == 1:
                    # the reported iterate is in T: Z gets it, T its evaluation
                    zf = flat(Z[i0:i1])
                    xf = flat(T[i0:i1])
                    for j in range(zf.shape[0]):
                        v = zf[j]
                        zf[j] = xf[j]
                        xf[j] = v
            k = k + 1 if going else np.int64(-1)


@pjit
def _picard_blocks(Z, M, U, code, param, D, T, tol, max_iter, beta, rows, group, j0, r0s, sums,
                   out, tune):
    """One round of :func:`picard`: every running block iterated up to
    evaluation ``j0 + ROUND - 1`` or its stop, one lane per thread
    (:func:`_picard_lane`; lanes own their blocks and their sums: no races)."""
    for lane in prange(sums.shape[0]):
        _picard_lane(Z, M, U, code, param, D, T, tol, max_iter, beta, rows, group, j0, r0s,
                     sums, out, np.int64(lane), tune)


@jit(fastmath=False)
def _batch_history(sums, j0, held, hist):
    """``hist[j0 + i]`` for every evaluation ``j0 + i`` of the round that any
    block made, from :func:`_picard_blocks`' lane sums; ``held``: the stopped
    blocks' ``(dd, ff)`` so far, updated. Returns the last index written (``j0 - 1``
    if none). Compiled without fast-math: under ``reassoc`` with ``nsz`` LLVM
    turned a NaN block norm in these running sums into a finite residual (seen
    here)."""
    last = j0 - 1
    for i in range(ROUND + 1):
        dd = 0.0
        ff = 0.0
        count = 0.0
        for lane in range(sums.shape[0]):
            held[0] += sums[lane, i, 3]
            held[1] += sums[lane, i, 4]
            if i < ROUND:
                dd += sums[lane, i, 0]
                ff += sums[lane, i, 1]
                count += sums[lane, i, 2]
        if count == 0.0:
            continue
        dd += held[0]
        ff += held[1]
        last = j0 + i
        hist[last] = relative(dd, ff) if np.isfinite(dd) and np.isfinite(ff) else np.nan
    return last


@jit
def picard(Z, M, U, code, param, D, T, tol, max_iter, beta, hist, threads, rows=0, tune=None):
    """Damped Picard ``Z <- (1 - beta) Z + beta h(Z M + U)``; ``T`` is work space.

    Block-resident: each block of :func:`~.blocks.block_rows` rows (of the
    settings ``tune``) is iterated ``ROUND`` evaluations at a time while its
    rows of ``Z``, ``U`` and ``T`` stay in cache; blocks go to ``threads``
    lanes (numba's thread count, which a cached kernel cannot read; any count
    gives the same ``Z``). The stopping rule ``||F(Z_g) - Z_g|| <= tol
    ||F(Z_g)||`` is met by each stopping group ``g`` of
    :func:`~.blocks.group_rows` rows on its own, a fixed split of the rows that
    the blocks are built from (whole groups, or a group in several gemms), so
    that neither ``Z`` nor the counts depend on the blocks (docs/theory.md §3).
    Samples are independent, so a group's iterates are exactly its rows of the
    batch iteration's, and the groups' rules together imply the batch rule;
    easy groups stop early. ``hist[k]`` is the relative residual of the batch
    whose groups hold iterate ``min(k, k_g)``; the iteration count returned is
    the largest ``k_g``, the status the worst (diverged, max_iter, underflow), the
    residual that of the returned ``Z`` (the last finite entry of ``hist``
    when a group went non-finite).

    ``rows``: rows per block, :func:`~.blocks.block_rows` of ``tune`` when not
    positive (``python -m tools.calibrate --picard`` and ``deqbench
    calibrate`` time other sizes).

    On return ``Z`` holds each group's reported iterate and ``T`` its
    evaluation ``Z + beta (h(Z M + U) - Z)``: the nonlinear adjoint reads
    ``h'`` off it instead of paying another gemm (:func:`~.gradients.output_derivative`).
    """
    n = Z.shape[0]
    if rows <= 0:
        rows = block_rows(n, Z.shape[1], tune)
    group = group_rows(n, Z.shape[1])
    ng = max((n + group - 1) // group, 1)
    per = max(1, rows // group)
    lanes = max(1, min(threads, (ng + per - 1) // per))
    sums = np.empty((lanes, ROUND + 1, 5))
    out = np.zeros((ng, 2), np.int64)
    out[:, 1] = RUNNING
    r0s = np.full(ng, -1.0)
    held = np.zeros(2)
    k = 0
    j0 = np.int64(0)
    while True:
        sums[:] = 0.0
        if lanes > 1:
            _picard_blocks(Z, M, U, code, param, D, T, tol, max_iter, beta, rows, group, j0,
                           r0s, sums, out, tune)
        else:
            _picard_lane(Z, M, U, code, param, D, T, tol, max_iter, beta, rows, group, j0, r0s,
                         sums, out, np.int64(0), tune)
        k = max(k, _batch_history(sums, j0, held, hist))
        running = False
        for g in range(ng):
            running = running or out[g, 1] == RUNNING
        if not running:
            break
        j0 += ROUND
    status = CONVERGED
    for g in range(ng):  # the worst: diverged, max_iter, underflow
        s = out[g, 1]
        if _WORSE[s] > _WORSE[status]:
            status = s
    res = np.inf
    for j in range(k, -1, -1):
        if np.isfinite(hist[j]):
            res = hist[j]
            break
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


def _dot(P, Q, rows):
    n = P.shape[0]
    s = 0.0
    for b in prange((n + rows - 1) // rows):
        i0 = b * rows
        i1 = min(i0 + rows, n)
        p = flat(P[i0:i1])
        q = flat(Q[i0:i1])
        sb = 0.0
        for j in range(p.shape[0]):
            sb += p[j] * q[j]
        s += sb
    return s


def _anderson_mix(Z, Fh, Gh, alpha, slots, beta, rows):
    """``Z <- sum_p alpha_p (F_p - (1 - beta) G_p)``; return ``||Z||^2``. Block by
    block, one slot at a time, so every inner loop is a flat vectorised axpy."""
    n = Z.shape[0]
    zz = 0.0
    for b in prange((n + rows - 1) // rows):
        i0 = b * rows
        i1 = min(i0 + rows, n)
        z = flat(Z[i0:i1])
        z[:] = 0.0
        for p in range(slots):
            a = alpha[p]
            c = a * (1.0 - beta)
            f = flat(Fh[p, i0:i1])
            if beta == 1.0:  # undamped (the default): the residuals are not read
                for j in range(z.shape[0]):
                    z[j] += a * f[j]
            else:
                g = flat(Gh[p, i0:i1])
                for j in range(z.shape[0]):
                    z[j] += a * f[j] - c * g[j]
        zb = 0.0
        for j in range(z.shape[0]):
            zb += z[j] * z[j]
        zz += zb
    return zz


_dot_s, _dot_p = twins(_dot)
_anderson_mix_s, _anderson_mix_p = twins(_anderson_mix)


@jit
def anderson(Z, M, U, code, param, D, Fh, Gh, GG, work, tol, max_iter, beta, ridge, hist,
             tune=None):
    """Anderson acceleration (type II) with history ``Fh.shape[0]``.

    ``Fh``, ``Gh``: ``(k, n, m)`` ring buffers of map values and residuals;
    ``GG``: ``(k, k)`` Gram matrix of residuals; ``work``: ``(2k + 2, k)``.
    The least-squares weights: ``alpha = w / sum(w)`` with ``w = D^-1 v``,
    ``(D^-1 GG D^-1 + ridge I) v = D^-1 1`` and ``D = diag(GG)^(1/2)`` (the ridge
    relative to each residual's size); ``beta`` mixes map values and iterates.
    Once the minimiser's predicted relative residual ``||sum_p alpha_p G_p|| /
    ||F||`` is at most ``MINIMISER_SHARE tol``, the next iterate is the
    minimiser ``sum_p alpha_p Z_p`` itself (mix 0; Walker and Ni: Anderson's
    iterate is one map step from the GMRES iterate, a step that multiplies its
    residual by ``A^T`` on a linear map, docs/theory.md §3). Block rows,
    gemm and the parallel crossover of its passes: the settings ``tune``.
    """
    kmax = Fh.shape[0]
    par = pass_parallel(Z.size, tune)
    rows = block_rows(Z.shape[0], Z.shape[1], tune)
    H = work[:kmax, :]
    L = work[kmax : 2 * kmax, :]
    w = work[2 * kmax]
    scale = work[2 * kmax + 1]
    r0 = -1.0
    res = np.inf
    k = np.int64(0)
    minimiser = False  # whether Z is the last window's minimiser (mix 0)
    while True:
        s = k % kmax
        dd, ff = anderson_eval(Z, M, U, code, param, D, Fh[s], Gh[s], tune)
        status, res, r0 = stopping(dd, ff, k, r0, res, tol, max_iter, hist, Z.size)
        if status == UNDERFLOW and ff == 0.0 and all_zero(Z) and all_zero(Fh[s]):
            status = CONVERGED  # Z = 0 = F(Z) exactly
        if status != RUNNING:
            break
        slots = min(k + 1, kmax)
        GG[s, s] = dd
        for p in range(slots):
            if p != s:
                g = _dot_p(Gh[s], Gh[p], rows) if par else _dot_s(Gh[s], Gh[p], rows)
                GG[s, p] = g
                GG[p, s] = g
        # Jacobi scaling H = D^-1 GG D^-1, D = diag(||G_p||): unit diagonal, so the
        # ridge is relative to each residual's own size (on a linear map the
        # residuals scale like rho(A)^k: a ridge relative to the largest erases
        # the small ones, docs/theory.md §3); GG^-1 1 = D^-1 H^-1 D^-1 1
        for p in range(slots):
            g = GG[p, p]
            scale[p] = np.sqrt(g) if g > 0.0 else 1.0
        for p in range(slots):
            for q in range(slots):
                H[p, q] = GG[p, q] / (scale[p] * scale[q])
            H[p, p] += ridge
            w[p] = 1.0 / scale[p]
        ok = _small_spd_solve(H, slots, w, L)
        total = 0.0
        for p in range(slots):
            w[p] /= scale[p]
            total += w[p]
        if not ok or not np.isfinite(total) or total == 0.0:
            # degenerate history: fall back to a plain damped step from the newest slot
            for p in range(slots):
                w[p] = 0.0
            w[s] = 1.0
            total = 1.0
        for p in range(slots):
            w[p] /= total
        # the minimiser's own residual ||sum_p alpha_p G_p||^2 = alpha^T GG alpha (O(k^2)):
        # when it is below MINIMISER_SHARE tol ||F||, evaluate the minimiser Zbar = sum_p
        # alpha_p Z_p itself (mix 0) rather than F(Zbar): on a linear map F(Zbar)'s
        # residual is Zbar's times A^T plus rounding, which for large ||A|| undoes the
        # convergence (docs/theory.md §3); never twice in a row (no new direction)
        mix = beta
        if not minimiser:
            gbar = 0.0
            for p in range(slots):
                for q in range(slots):
                    gbar += w[p] * w[q] * GG[p, q]
            if gbar <= (MINIMISER_SHARE * tol) ** 2 * ff:
                mix = 0.0
        minimiser = mix == 0.0
        if par:
            zz = _anderson_mix_p(Z, Fh, Gh, w, slots, mix, rows)
        else:
            zz = _anderson_mix_s(Z, Fh, Gh, w, slots, mix, rows)
        if not np.isfinite(zz):
            # restore the last finite iterate: X_s = F_s - G_s
            Z[:, :] = Fh[s]
            Z -= Gh[s]
            status = DIVERGED
            break
        k += 1
    return k, res, status


@jit
def direct_linear(C, U, Z, tune=None):
    """Exact linear fixed point ``Z = U C^{-T}``: ``C^{-1}`` by LU (``m^3``, in
    ``C``'s dtype, float64 from the callers), rounded to ``U``'s dtype, then one
    gemm by row blocks (``2 m^2 n``, as the training loop's direct step)."""
    m = C.shape[0]
    CiT = np.empty((m, m), U.dtype)
    CiT[:, :] = np.linalg.inv(C).T
    gemm_rows(U, CiT, Z, tune)
