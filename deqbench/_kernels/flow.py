"""Compiled gradient flow ``dP/dt = -grad L(P)``: Dormand-Prince 5(4), adaptive step.

Each right-hand side is one loss/gradient evaluation of :mod:`.model`
(per sample with warm-started solves, or sufficient statistics). The
embedded 4th-order solution gives the local error estimate; the 5th-order one
is propagated (local extrapolation) and its last stage is reused as the first
stage of the next step (FSAL). Step control: the mixed error norm
``sqrt(mean((err / (atol + rtol max(|P|, |P_new|)))^2)) <= 1``, new step
``h * clip(0.9 err^(-1/5), 0.2, 10)`` (no growth right after a rejection).

Every exit is certain: a step size that is not above ``MIN_STEP max(|t|, h_1)``
(``h_1`` the first step; NaN included) ends the run with ``STEP_TOO_SMALL``, and
each rejection shrinks ``h`` by a factor of at least ``1 / 0.9``, so every step
is reached or refused after finitely many tries (docs/theory.md §5, step floor).
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from .._jit import jit
from .model import (
    H_ADJ,
    H_EXCESS,
    H_FP,
    H_GRAD,
    H_LOSS,
    H_STEP,
    H_T,
    H_TRACE,
    axpy,
    drift_trace,
    loss_and_grad,
    record_last_good,
    record_step,
    recorder,
    sumsq,
    workspaces,
)
from .status import (
    CONVERGED,
    DIVERGED,
    FINISHED,
    FIXED_POINT_FAILED,
    FP_FAILED,
    MAX_STEPS,
    OK,
    RUNNING,
    STEP_TOO_SMALL,
)

#: Integration settings of :func:`dopri_run`: final time, Dormand-Prince
#: tolerances, first step (0: automatic), cap on accepted steps, the loss
#: that counts as converged (negative: off), the divergence factor on
#: ``L_0``, and the history cadences (in accepted steps).
Integration = namedtuple("Integration", ["t_end", "rtol", "atol", "h0", "max_steps",
                                         "stop_loss", "divergence_factor", "record_every",
                                         "spectral_every"])

# Dormand-Prince 5(4) tableau
_C = np.array([0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0])
_A = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [1 / 5, 0.0, 0.0, 0.0, 0.0, 0.0],
        [3 / 40, 9 / 40, 0.0, 0.0, 0.0, 0.0],
        [44 / 45, -56 / 15, 32 / 9, 0.0, 0.0, 0.0],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0.0, 0.0],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0.0],
        [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
    ]
)
# b (5th order) is the last row of _A; E = b - b_hat (4th order), 7 stages
_E = np.array(
    [71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]
)
SAFETY = 0.9
MIN_FACTOR = 0.2
MAX_FACTOR = 10.0
FAIL_FACTOR = 0.25  # step shrink after a failed (non-finite / unsolved) stage
MIN_STEP = 1e-14
"""Smallest step, relative to ``max(|t|, h_1)``: below it ``t + h`` hardly moves ``t``
(45 eps); relative to ``t`` and not to ``t_end``, so that a distant ``t_end`` does
not forbid the small steps the flow needs near ``t = 0``."""
INITIAL_STEP = 1e-6
"""First step when Hairer's rule has nothing to go on (vanishing or overflowing norms)."""


@jit
def _rhs(model, A, B, solve, stats, ws, sw, gA, gB, KA, KB):
    """``(KA, KB) <- -grad L(A, B)``, solves warm-started from the previous
    evaluation; returns ``(loss, excess, fp_iters, adj_iters, outcome)``."""
    out = loss_and_grad(model, A, B, solve, stats, True, ws, sw, gA, gB)
    KA[:, :] = 0.0
    KB[:, :] = 0.0
    axpy(KA, -1.0, gA)
    axpy(KB, -1.0, gB)
    return out


@jit
def _err_norm(P, Pn, EP, atol, rtol, acc):
    for i in range(P.shape[0]):
        for j in range(P.shape[1]):
            s = atol + rtol * max(abs(P[i, j]), abs(Pn[i, j]))
            acc += (EP[i, j] / s) ** 2
    return acc


@jit
def _scaled_sq(P, F, atol, rtol):
    s0 = 0.0
    s1 = 0.0
    for i in range(P.shape[0]):
        for j in range(P.shape[1]):
            sc = atol + rtol * abs(P[i, j])
            s0 += (P[i, j] / sc) ** 2
            s1 += (F[i, j] / sc) ** 2
    return s0, s1


#: What an integration carries between :func:`dopri_run` calls: the work
#: buffers (warm starts), the recorder, the stage buffers (``KA[0]``, ``KB[0]``
#: the slope at the current point, FSAL), ``fl`` = (t, h, L0, loss, excess, first
#: step) of the current accepted point and ``ints`` = (accepted, rejected, evaluations,
#: records written, whether the last accepted point is recorded, whether the
#: last try was rejected, fp_iters, adj_iters, status).
FlowState = namedtuple("FlowState", ["ws", "sw", "rec", "As", "Bs", "An", "Bn", "EA", "EB",
                                     "KA", "KB", "gA", "gB", "fl", "ints"])
_T, _H, _L0, _LOSS, _EXCESS, _H1 = 0, 1, 2, 3, 4, 5
_ACC, _REJ, _EV, _NREC, _GOOD, _REJECTED, _KF, _KB, _STATUS = 0, 1, 2, 3, 4, 5, 6, 7, 8
#: Indices the caller reads: ``fl[TIME]``, ``ints[ACCEPTED]``, ``ints[REJECTED]``,
#: ``ints[EVALS]``, ``ints[RECORDS]``.
TIME, ACCEPTED, REJECTED, EVALS, RECORDS = _T, _ACC, _REJ, _EV, _NREC


@jit
def dopri_start(model, A, B, solve, stats, integ, H):
    """The :data:`FlowState` of an integration from ``(A, B)``, history into
    ``H``: the first gradient evaluation and the initial step size (``integ.h0``,
    or Hairer's rule on the scaled norms of ``P`` and ``f(P)``). A failed first
    evaluation sets the status (``FIXED_POINT_FAILED`` or ``DIVERGED``)."""
    m, d = B.shape
    rtol, atol = integ.rtol, integ.atol
    ws, sw = workspaces(model, m, solve, stats)
    rec = recorder(H, A, B, integ.record_every, integ.spectral_every)
    dt = A.dtype  # the parameters' dtype; error norms accumulate in float64
    KA = np.zeros((7, m, m), dt)
    KB = np.zeros((7, m, d), dt)
    gA = np.empty((m, m), dt)
    gB = np.empty((m, d), dt)
    fl = np.full(6, np.nan)
    ints = np.zeros(9, np.int64)
    ints[_STATUS] = RUNNING
    ints[_EV] = 1
    fl[_T] = 0.0
    loss, excess, kf, kb, outcome = _rhs(model, A, B, solve, stats, ws, sw, gA, gB, KA[0],
                                         KB[0])
    if outcome != OK:
        ints[_STATUS] = FIXED_POINT_FAILED if outcome == FP_FAILED else DIVERGED
    fl[_L0] = loss
    fl[_LOSS] = loss
    fl[_EXCESS] = excess
    ints[_KF] = kf
    ints[_KB] = kb
    if integ.h0 > 0.0:
        h = integ.h0
    else:
        a0, a1 = _scaled_sq(A, KA[0], atol, rtol)
        b0, b1 = _scaled_sq(B, KB[0], atol, rtol)
        n_par = m * (m + d)
        s0 = np.sqrt((a0 + b0) / n_par)
        s1 = np.sqrt((a1 + b1) / n_par)
        h = INITIAL_STEP if (s0 < 1e-5 or s1 < 1e-5) else 0.01 * s0 / s1
        if not (0.0 < h < np.inf):  # norms that overflowed (atol, rtol near 0): NaN or inf
            h = INITIAL_STEP
    h = min(h, integ.t_end)
    fl[_H] = h
    fl[_H1] = h
    return FlowState(ws, sw, rec, np.empty((m, m), dt), np.empty((m, d), dt),
                     np.empty((m, m), dt), np.empty((m, d), dt), np.empty((m, m), dt),
                     np.empty((m, d), dt), KA, KB, gA, gB, fl, ints)


@jit
def dopri_run(model, A, B, solve, stats, integ, state, n_stop, stop):
    """Integrate the gradient flow from the state's current point ``(A, B)``
    (in place) towards ``integ.t_end``, until the run ends or ``n_stop``
    steps are accepted (status ``RUNNING``: call again to go on). With
    ``stop`` the current point is recorded as the last row and the run ends
    there (after Ctrl-C; the returned status is then the one the point would
    have had, ``RUNNING`` if none).

    Records accepted step ``j`` (time ``t_j``) into ``H`` when
    ``j % record_every == 0`` and at the end; matrix quantities when
    ``j % spectral_every == 0`` and at the end. Loss, gradient norm and
    iteration counts of a row are those of the evaluation at ``(t_j, P_j)``.
    The counters and ``t`` are in ``state.ints`` and ``state.fl``.

    Returns the status.
    """
    ints, fl = state.ints, state.fl
    if ints[_STATUS] != RUNNING:
        return ints[_STATUS]
    m, d = B.shape
    t_end, rtol, atol = integ.t_end, integ.rtol, integ.atol
    ws, sw, rec = state.ws, state.sw, state.rec
    row = rec.row
    A0, B0 = rec.A0, rec.B0
    As, Bs, An, Bn, EA, EB = state.As, state.Bs, state.An, state.Bn, state.EA, state.EB
    KA, KB, gA, gB = state.KA, state.KB, state.gA, state.gB
    n_par = m * (m + d)
    nrec = ints[_NREC]
    n_acc = ints[_ACC]
    n_rej = ints[_REJ]
    n_ev = ints[_EV]
    kf, kb = ints[_KF], ints[_KB]
    good_recorded = ints[_GOOD] != 0
    rejected_last = ints[_REJECTED] != 0
    t, h, L0, loss, excess, h1 = fl[_T], fl[_H], fl[_L0], fl[_LOSS], fl[_EXCESS], fl[_H1]
    fp_failed = False
    status = RUNNING
    loss_n = excess_n = np.nan
    kf_n = kb_n = 0
    while True:
        if n_acc >= n_stop and not stop:
            break
        # the current accepted point (t, A, B) with loss / K[0]
        row[:] = np.nan
        row[H_STEP] = n_acc
        row[H_T] = t
        row[H_LOSS] = loss
        row[H_EXCESS] = excess
        row[H_GRAD] = np.sqrt(sumsq(KA[0]) + sumsq(KB[0]))
        row[H_TRACE] = drift_trace(A, B, A0, B0)
        row[H_FP] = kf
        row[H_ADJ] = kb
        reached = integ.stop_loss >= 0.0 and loss <= integ.stop_loss
        done = t >= t_end
        diverged = L0 > 0.0 and loss > integ.divergence_factor * L0
        final = reached or done or diverged or n_acc >= integ.max_steps or stop
        nrec, good_recorded = record_step(rec, nrec, final, n_acc, A, B)
        if diverged:
            status = DIVERGED
            break
        if reached:
            status = CONVERGED
            break
        if done:
            status = FINISHED
            break
        if n_acc >= integ.max_steps:
            status = MAX_STEPS
            break
        if stop:
            break
        # attempt steps from (t, A, B) until one is accepted
        accepted = False
        while not accepted:
            if not h > MIN_STEP * max(abs(t), h1):  # NaN ends here too
                status = STEP_TOO_SMALL
                break
            last_try = t + h >= t_end
            if last_try:
                h = t_end - t
            failed = False
            for s in range(1, 7):
                As[:, :] = A
                Bs[:, :] = B
                for j in range(s):
                    a = _A[s, j]
                    if a != 0.0:
                        axpy(As, h * a, KA[j])
                        axpy(Bs, h * a, KB[j])
                ls, es, kfs, kbs, oc = _rhs(model, As, Bs, solve, stats, ws, sw, gA, gB, KA[s],
                                            KB[s])
                n_ev += 1
                if oc == FP_FAILED:
                    fp_failed = True
                if oc != OK:
                    failed = True
                    break
                if s == 6:
                    # the 5th-order solution is stage 7's argument (FSAL)
                    An[:, :] = As
                    Bn[:, :] = Bs
                    loss_n, excess_n, kf_n, kb_n = ls, es, kfs, kbs
            if failed:
                n_rej += 1
                h *= FAIL_FACTOR
                rejected_last = True
                continue
            EA[:, :] = 0.0
            EB[:, :] = 0.0
            for j in range(7):
                e = _E[j]
                if e != 0.0:
                    axpy(EA, h * e, KA[j])
                    axpy(EB, h * e, KB[j])
            acc = _err_norm(A, An, EA, atol, rtol, 0.0)
            acc = _err_norm(B, Bn, EB, atol, rtol, acc)
            err = np.sqrt(acc / n_par)
            if not np.isfinite(err):
                n_rej += 1
                h *= FAIL_FACTOR
                rejected_last = True
                continue
            if err <= 1.0:
                fac = MAX_FACTOR if err == 0.0 else min(MAX_FACTOR,
                                                       max(MIN_FACTOR, SAFETY * err ** -0.2))
                if rejected_last:
                    fac = min(fac, 1.0)
                t = t_end if last_try else t + h
                A[:, :] = An
                B[:, :] = Bn
                KA[0][:, :] = KA[6]
                KB[0][:, :] = KB[6]
                loss, excess, kf, kb = loss_n, excess_n, kf_n, kb_n
                n_acc += 1
                h *= fac
                rejected_last = False
                fp_failed = False
                accepted = True
            else:
                n_rej += 1
                h *= max(MIN_FACTOR, SAFETY * err ** -0.2)
                rejected_last = True
        if not accepted:
            if fp_failed:
                status = FIXED_POINT_FAILED
            nrec = record_last_good(rec, nrec, good_recorded, A, B)
            good_recorded = True
            break
    ints[_ACC] = n_acc
    ints[_REJ] = n_rej
    ints[_EV] = n_ev
    ints[_NREC] = nrec
    ints[_GOOD] = 1 if good_recorded else 0
    ints[_REJECTED] = 1 if rejected_last else 0
    ints[_KF] = kf
    ints[_KB] = kb
    ints[_STATUS] = status
    fl[_T] = t
    fl[_H] = h
    fl[_LOSS] = loss
    fl[_EXCESS] = excess
    return status
