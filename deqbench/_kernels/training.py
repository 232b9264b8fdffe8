"""Compiled gradient descent: one call runs a whole trajectory.

The loop evaluates the loss and gradient with :func:`.model.loss_and_grad`
(per sample, warm-starting each solve from the previous step's fixed point
and adjoint, or by sufficient statistics), on work buffers allocated once at
the top, and writes the quantities of docs/theory.md (conservation law,
conditioning, rates) into the caller's history matrix through a
:data:`.model.Recorder`.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from .._jit import jit
from .model import (
    CONVERGED,
    DIVERGED,
    FIXED_POINT_FAILED,
    FP_FAILED,
    H_ADJ,
    H_EXCESS,
    H_FP,
    H_GRAD,
    H_LOSS,
    H_STEP,
    H_TRACE,
    MAX_STEPS,
    NONFINITE,
    OK,
    all_finite,
    axpy,
    drift_trace,
    loss_and_grad,
    record_last_good,
    record_step,
    recorder,
    sumsq,
    workspaces,
)

#: The step schedule of :func:`gd`: learning rate, number of steps, the loss
#: that counts as converged (negative: off), the divergence factor on ``L_0``,
#: whether solves start from the previous step's solution, and the cadences of
#: the history (every ``record_every`` steps) and of its matrix quantities.
Schedule = namedtuple("Schedule", ["lr", "steps", "stop_loss", "divergence_factor",
                                   "warm_start", "record_every", "spectral_every"])


@jit
def gd(model, A, B, solve, stats, schedule, H):
    """``schedule.steps`` updates ``P <- P - lr grad L(P)`` in place on ``A``, ``B``.

    Records step ``k`` into ``H`` when ``k % record_every == 0`` and at the
    last step; the matrix quantities when also ``k % spectral_every == 0`` or
    at the last step (NaN otherwise). On failure ``A``, ``B`` are restored to
    the last parameters whose evaluation succeeded and that step is the last
    row. Returns ``(status, last_step, n_records)``.
    """
    m, d = B.shape
    ws, sw = workspaces(model, m, solve, stats)
    rec = recorder(H, A, B, schedule.record_every, schedule.spectral_every)
    row = rec.row
    Ap = A.copy()
    Bp = B.copy()
    gA = np.zeros((m, m), A.dtype)
    gB = np.zeros((m, d), A.dtype)
    nrec = 0
    good_recorded = False
    status = MAX_STEPS
    L0 = np.nan
    k = 0
    last = 0
    while True:
        loss, excess, kf, kb, outcome = loss_and_grad(model, A, B, solve, stats,
                                                      schedule.warm_start and k > 0, ws, sw,
                                                      gA, gB)
        if outcome == OK and k > 0 and L0 > 0.0 and loss > schedule.divergence_factor * L0:
            outcome = NONFINITE
        if outcome != OK:
            status = FIXED_POINT_FAILED if outcome == FP_FAILED else DIVERGED
            if k > 0:
                A[:, :] = Ap
                B[:, :] = Bp
                nrec = record_last_good(rec, nrec, good_recorded, A, B)
            break
        if k == 0:
            L0 = loss
        last = k
        row[:] = np.nan
        row[H_STEP] = k
        row[H_LOSS] = loss
        row[H_EXCESS] = excess
        row[H_GRAD] = np.sqrt(sumsq(gA) + sumsq(gB))
        row[H_TRACE] = drift_trace(A, B, rec.A0, rec.B0)
        row[H_FP] = kf
        row[H_ADJ] = kb
        reached = schedule.stop_loss >= 0.0 and loss <= schedule.stop_loss
        final = reached or k >= schedule.steps
        nrec, good_recorded = record_step(rec, nrec, final, k, A, B)
        if reached:
            status = CONVERGED
            break
        if final:
            status = MAX_STEPS
            break
        Ap[:, :] = A
        Bp[:, :] = B
        axpy(A, -schedule.lr, gA)
        axpy(B, -schedule.lr, gB)
        if not (all_finite(A) and all_finite(B)):
            status = DIVERGED
            A[:, :] = Ap
            B[:, :] = Bp
            nrec = record_last_good(rec, nrec, good_recorded, A, B)
            break
        k += 1
    return status, last, nrec
