"""Compiled gradient descent: a trajectory in a few compiled calls.

:func:`gd_run` runs the loop from a :data:`GDState` up to a given step and
can be called again to go on: the caller runs a long trajectory in slices of
a fraction of a second and checks for Ctrl-C between them. The loop
evaluates the loss and gradient with :func:`.model.loss_and_grad`
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
    H_ADJ,
    H_EXCESS,
    H_FP,
    H_GRAD,
    H_LOSS,
    H_STEP,
    H_TRACE,
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
from .status import (
    CONVERGED,
    DIVERGED,
    FIXED_POINT_FAILED,
    FP_FAILED,
    MAX_STEPS,
    NONFINITE,
    OK,
    RUNNING,
)

#: The step schedule of :func:`gd`: learning rate, number of steps, the loss
#: that counts as converged (negative: off), the divergence factor on ``L_0``,
#: whether solves start from the previous step's solution, and the cadences of
#: the history (every ``record_every`` steps) and of its matrix quantities.
Schedule = namedtuple("Schedule", ["lr", "steps", "stop_loss", "divergence_factor",
                                   "warm_start", "record_every", "spectral_every"])


#: What a run carries between :func:`gd_run` calls: the work buffers (warm
#: starts, the certificate's vector), the recorder, the last evaluated
#: parameters ``Ap``, ``Bp``, the gradient buffers, ``ints`` = (next step
#: ``k``, last evaluated step, records written, whether step ``last`` is
#: recorded, status) and ``L0`` (length 1).
GDState = namedtuple("GDState", ["ws", "sw", "rec", "Ap", "Bp", "gA", "gB", "ints", "L0"])

_K, _LAST, _NREC, _GOOD, _STATUS = 0, 1, 2, 3, 4


@jit
def gd_start(model, A, B, solve, stats, schedule, H):
    """The :data:`GDState` of a run starting at ``(A, B)``, history into ``H``."""
    m = A.shape[0]
    ws, sw = workspaces(model, m, solve, stats)
    rec = recorder(H, A, B, schedule.record_every, schedule.spectral_every)
    ints = np.zeros(5, np.int64)
    ints[_STATUS] = RUNNING
    L0 = np.full(1, np.nan)  # the loss is accumulated in float64 whatever the dtype
    return GDState(ws, sw, rec, A.copy(), B.copy(), np.zeros_like(A), np.zeros_like(B), ints,
                   L0)


@jit
def gd_run(model, A, B, solve, stats, schedule, state, k_stop):
    """Updates ``P <- P - lr grad L(P)`` in place on ``A``, ``B``, from step
    ``state.ints[0]`` until the run ends or step ``k_stop`` is reached (then
    ``A``, ``B`` hold step ``k_stop``, not yet evaluated, and the status is
    ``RUNNING``: call again to go on, or :func:`gd_stop`).

    Records step ``k`` into ``H`` when ``k % record_every == 0`` and at the
    last step; the matrix quantities when also ``k % spectral_every == 0`` or
    at the last step (NaN otherwise). On failure ``A``, ``B`` are restored to
    the last parameters whose evaluation succeeded and that step is the last
    row. Returns ``(status, last_step, n_records)``.
    """
    ws, sw, rec, Ap, Bp, gA, gB, ints = (state.ws, state.sw, state.rec, state.Ap, state.Bp,
                                         state.gA, state.gB, state.ints)
    row = rec.row
    k = ints[_K]
    last = ints[_LAST]
    nrec = ints[_NREC]
    good_recorded = ints[_GOOD] != 0
    L0 = state.L0[0]
    status = RUNNING
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
                good_recorded = True
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
def gd_stop(state, A, B):
    """End a run that :func:`gd_run` left ``RUNNING``: ``A``, ``B`` back to the
    last evaluated step, recorded as the last row unless it already was (no
    step evaluated: nothing changes). Returns ``(last_step, n_records)``."""
    ints = state.ints
    nrec = ints[_NREC]
    if ints[_STATUS] == RUNNING and ints[_K] > 0:
        A[:, :] = state.Ap
        B[:, :] = state.Bp
        nrec = record_last_good(state.rec, nrec, ints[_GOOD] != 0, A, B)
        ints[_NREC] = nrec
        ints[_GOOD] = 1
        ints[_K] = ints[_LAST]
    return ints[_LAST], nrec
