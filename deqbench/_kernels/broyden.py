"""Broyden's method for ``Z = h(Z M + U)`` (the solver of the original DEQ work,
Bai, Kolter and Koltun 2019, and TorchDEQ's default), one inverse-Jacobian
estimate per sample (docs/theory.md §3, Broyden).

Root finding on the residual ``g(z) = h(z M + U) - z`` of each row ``z``
(sample) of ``Z``. Each sample keeps its own estimate ``H = -I + sum_j u_j
v_j^T`` of ``g'(z)^{-1}`` (``-I``: the inverse Jacobian of ``g`` when ``h``
is constant; the first step is a Picard step) and moves by the full
quasi-Newton step ``z <- z - H g(z)``, no line search. After each step, with
``dz`` the step taken and ``dg`` the change of ``g``, "good" Broyden's update
(Sherman-Morrison form of the rank-one secant update of the Jacobian) adds the
pair ``v = H^T dz``, ``u = (dz - H dg) / (v . dg)``; a pair whose ``|v . dg|``
is at most ``SKIP ||v|| ||dg||`` (or not finite) is stored as zero (the update
is skipped for that sample). Memory: ``k`` pairs, ``2 k`` arrays of ``(n, m)``
(the history slots of :mod:`.solvers`); when they are full the estimate
restarts from ``-I``.

Per sample, not on the flattened ``(n m)`` vector: the batch map is
separable, its Jacobian block diagonal with one ``m x m`` block per sample
(``diag(h') M^T``), so a rank-one update of the flattened estimate learns one
direction of ``n`` unrelated blocks per step and needs more steps as ``n``
grows, and one badly conditioned sample steers every other sample's steps;
per sample each estimate converges on its own ``m x m`` block at the same
``O(k n m)`` flops per step (``n k`` dot products of length ``m`` instead of
``k`` of length ``n m``) and the same memory. This is TorchDEQ's own layout
(``broyden_solver`` flattens each batch element, keeping the batch axis, and
takes its inner products per element). The samples step in lockstep; the
stopping rule is the batch rule of every other solver
(:func:`~.fixed_point.stopping`: ``||F(Z) - Z||_F <= tol ||F(Z)||_F``, a
``DIVERGED`` status on a non-finite evaluation or growth beyond ``GROWTH``
times the first residual, ``MAX_ITER``), where TorchDEQ stops on the worst
sample's relative residual.

Restart instead of TorchDEQ's ring (which overwrites the oldest pair once
its history, ``max_iter`` pairs by default, is full): the remaining pairs
were each computed against an estimate that included the dropped one, so
the ring's estimate is no Broyden estimate at all, and with a short history
it diverged on contractive maps where the restarted one converges.

Work: each iteration is one gemm and the activation per row block (as
every solver), then one pass over the history per row; arrays in the dtype
of ``Z``, inner products accumulated in float64.
"""

from __future__ import annotations

import numpy as np

from .._jit import jit, prange, twins
from .activations import MASK, h_row
from .blocks import PASS_PARALLEL_MIN, block_rows, flat
from .fixed_point import all_zero, stopping
from .status import CONVERGED, RUNNING, UNDERFLOW

SKIP = 1e-10
"""A secant pair with ``|v . dg| <= SKIP ||v|| ||dg||`` is not added (its ``u``
would be unbounded)."""


def _evaluate(X, M, U, code, param, D, G, rows):
    """``G <- h(X M + U) - X`` by row blocks; return ``(||G||^2, ||h(X M + U)||^2)``."""
    n = X.shape[0]
    dd = 0.0
    ff = 0.0
    for b in prange((n + rows - 1) // rows):
        i0 = b * rows
        i1 = min(i0 + rows, n)
        np.dot(X[i0:i1], M, G[i0:i1])
        g = flat(G[i0:i1])
        x = flat(X[i0:i1])
        h_row(code, param, g, flat(U[i0:i1]), flat(D[i0:i1]) if code == MASK else g)
        bd = 0.0
        bf = 0.0
        for j in range(g.shape[0]):
            v = g[j]
            r = v - x[j]
            g[j] = r
            bd += np.float64(r) * np.float64(r)  # squared in float64 (float32 data too)
            bf += np.float64(v) * np.float64(v)
        dd += bd
        ff += bf
    return dd, ff


def _step(Xc, Xp, Gn, Gp, Uh, Vh, used, first, coef, rows):
    """Per sample: unless ``first``, the secant pair of the step from ``Xp`` to ``Xc``
    (``dz = Xc - Xp``, ``dg = Gn - Gp``) enters slot ``used`` of ``Uh``, ``Vh``;
    then ``Xp <- Xc - H Gn``, the next iterate, with ``H = -I + sum_j u_j v_j^T``
    over the slots in use. ``coef``: ``(blocks, 2 k)`` float64 scratch, a row per
    block. Every loop over ``m`` is a flat axpy or dot (slot ``used`` is the
    accumulator of the new pair: not yet part of ``H``)."""
    n, m = Xc.shape
    k = Uh.shape[0]
    for b in prange((n + rows - 1) // rows):
        c = coef[b]
        for i in range(b * rows, min(b * rows + rows, n)):
            xc = Xc[i]
            xp = Xp[i]
            gn = Gn[i]
            slots = used
            if not first:
                gp = Gp[i]
                for j in range(used):  # v_j . dg and u_j . dz
                    vj = Vh[j, i]
                    uj = Uh[j, i]
                    a = 0.0
                    s = 0.0
                    for e in range(m):
                        a += vj[e] * (gn[e] - gp[e])
                        s += uj[e] * (xc[e] - xp[e])
                    c[j] = a
                    c[k + j] = s
                u = Uh[used, i]
                v = Vh[used, i]
                for e in range(m):  # v = H^T dz = -dz + sum_j (u_j . dz) v_j
                    dz = xc[e] - xp[e]
                    v[e] = -dz
                    u[e] = dz + (gn[e] - gp[e])  # dz - H dg, H dg = -dg + sum_j (v_j . dg) u_j
                for j in range(used):
                    a = c[j]
                    s = c[k + j]
                    uj = Uh[j, i]
                    vj = Vh[j, i]
                    for e in range(m):
                        v[e] += s * vj[e]
                        u[e] -= a * uj[e]
                den = 0.0
                vv = 0.0
                gg = 0.0
                for e in range(m):
                    dg = gn[e] - gp[e]
                    den += v[e] * dg
                    vv += v[e] * v[e]
                    gg += dg * dg
                if np.isfinite(den) and abs(den) > SKIP * np.sqrt(vv * gg):
                    inv = 1.0 / den
                    for e in range(m):
                        u[e] *= inv
                else:
                    for e in range(m):
                        u[e] = 0.0
                        v[e] = 0.0
                slots = used + 1
            for j in range(slots):  # v_j . g
                vj = Vh[j, i]
                a = 0.0
                for e in range(m):
                    a += vj[e] * gn[e]
                c[j] = a
            for e in range(m):  # z - H g = z + g - sum_j (v_j . g) u_j
                xp[e] = xc[e] + gn[e]
            for j in range(slots):
                a = c[j]
                uj = Uh[j, i]
                for e in range(m):
                    xp[e] -= a * uj[e]


_evaluate_s, _evaluate_p = twins(_evaluate)
_step_s, _step_p = twins(_step)


@jit
def broyden(Z, M, U, code, param, D, T, Uh, Vh, tol, max_iter, hist):
    """Broyden's method on ``Z -> h(Z M + U)`` in place on ``Z`` (initial guess in);
    return ``(n_iter, residual, status)`` (module docstring).

    ``T``: ``(n, m)`` work space (the second iterate buffer); ``Uh``, ``Vh``:
    ``(k, n, m)``, the ``k`` secant pairs; ``hist[j]`` the relative residual of
    iterate ``j``. The returned ``Z`` is the last iterate whose evaluation was
    finite, ``n_iter`` its index and ``residual`` its relative residual.
    """
    n, m = Z.shape
    k = Uh.shape[0]
    rows = block_rows(n, m)
    par = Z.size >= PASS_PARALLEL_MIN and n > rows
    coef = np.empty((max((n + rows - 1) // rows, 1), 2 * k))
    Gn = np.empty_like(Z)
    Gp = np.empty_like(Z)
    Xc = Z
    Xp = T
    r0 = -1.0
    res = np.inf
    used = np.int64(0)
    it = np.int64(0)
    in_t = False  # whether Xc is T
    while True:
        if par:
            dd, ff = _evaluate_p(Xc, M, U, code, param, D, Gn, rows)
        else:
            dd, ff = _evaluate_s(Xc, M, U, code, param, D, Gn, rows)
        status, res, r0 = stopping(dd, ff, it, r0, res, tol, max_iter, hist, Z.size)
        if status == UNDERFLOW and ff == 0.0 and all_zero(Xc) and all_zero(Gn):
            status = CONVERGED  # Z = 0 = F(Z) exactly
        if status != RUNNING:
            break
        first = it == 0
        if not first and used == k:
            used = 0  # restart from H = -I
        if par:
            _step_p(Xc, Xp, Gn, Gp, Uh, Vh, used, first, coef, rows)
        else:
            _step_s(Xc, Xp, Gn, Gp, Uh, Vh, used, first, coef, rows)
        if not first:
            used += 1
        Xc, Xp = Xp, Xc
        Gn, Gp = Gp, Gn
        in_t = not in_t
        it += 1
    if it > 0 and not (np.isfinite(dd) and np.isfinite(ff)):
        in_t = not in_t  # the last iterate whose evaluation was finite: Xp
        it -= 1
    if in_t:
        Z[:, :] = T
    return it, res, status
