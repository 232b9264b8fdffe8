"""Continuous-time gradient flow ``dP/dt = -grad L(P)`` (docs/theory.md §5 and §7).

:func:`flow` integrates the flow with a compiled adaptive Dormand-Prince 5(4)
method (:mod:`deqbench._kernels.flow`) and records the same history as
:func:`deqbench.train`, against time ``t``. Along the exact flow ``Q`` is
constant and ``L(t) - L* <= (L(0) - L*) exp(-mu t)``; what the integrator
keeps of that is measured on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _validate as v
from ._kernels import flow as _kf
from ._kernels import model as _m
from ._kernels.status import RUN_NAMES
from ._options import SolverOptions
from ._registry import EXACT_ADJOINT
from ._threads import single_threaded_blas
from ._training import (
    DIVERGENCE_FACTOR,
    FAILED_STATUSES,
    HISTORY_KEYS,
    history_dict,
    history_rows,
    initial_failure,
    prepare,
    run_sliced,
    warn_status,
)
from .activations import Activation

__all__ = ["FLOW_HISTORY_KEYS", "FlowResult", "flow"]

FLOW_HISTORY_KEYS = (*HISTORY_KEYS, "t")
EXACT_GRAD = EXACT_ADJOINT


@dataclass(frozen=True)
class FlowResult:
    """Outcome of :func:`flow`.

    Attributes
    ----------
    A, B : final parameters (the last accepted point; always finite)
    status : str
        ``"finished"`` (``t_end`` reached), ``"converged"`` (loss <=
        ``stop_loss``), ``"max_steps"``, ``"diverged"`` (loss above
        ``DIVERGENCE_FACTOR * L_0``), ``"fixed_point_failed"`` (the step size
        collapsed because solves kept failing, or because ``solver`` is not
        certified to solve the fixed point beyond that point, docs/theory.md
        §3), ``"step_too_small"`` (the tries of the next step were rejected down
        to the floor ``1e-14 max(|t|, h_1)``, ``h_1`` the first step:
        docs/theory.md §5, step floor) or ``"interrupted"`` (Ctrl-C; only on
        :attr:`~deqbench.TrainInterrupted.result`).
    history : dict of 1-D arrays
        The keys of :func:`deqbench.train` plus ``t``; ``step`` counts
        accepted steps.
    t : float
        Time reached.
    n_steps, n_rejected, n_evals : int
        Accepted steps, rejected steps, gradient evaluations.
    sufficient_stats : bool
    L_star : float
    spectral_every : int
    """

    A: np.ndarray
    B: np.ndarray
    status: str
    history: dict = field(repr=False)
    t: float
    n_steps: int
    n_rejected: int
    n_evals: int
    sufficient_stats: bool
    L_star: float
    spectral_every: int


def flow(
    model: str,
    X,
    Y,
    A0,
    B0,
    *,
    t_end: float,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    u=None,
    activation: str | Activation = "identity",
    solver: str = "picard",
    options: SolverOptions | None = None,
    tol: float | None = None,
    max_steps: int = 100_000,
    record_every: int | None = 1,
    stop_loss: float | None = None,
    sufficient_stats="auto",
    L_star: float | None = None,
    h0: float | None = None,
    max_iter: int | None = None,
    damping: float | None = None,
    anderson_history: int | None = None,
    anderson_ridge: float | None = None,
    spectral_every="auto",
) -> FlowResult:
    """Integrate the gradient flow ``dA/dt = -grad_A L``, ``dB/dt = -grad_B L`` to ``t_end``.

    Parameters
    ----------
    model, X, Y, A0, B0, u, activation
        As in :func:`deqbench.train`; ``single_index`` runs as ``nonlinear`` with
        ``m = 1`` (Newton's fused loop is :func:`deqbench.train`'s).
    t_end : float > 0
    rtol, atol : float > 0
        Tolerances of the Dormand-Prince 5(4) error control (mixed norm,
        see :mod:`deqbench._kernels.flow`).
    solver : {"picard", "anderson", "direct", "broyden"}
        Forward and adjoint solver (exact gradients only); solves are
        warm-started from the previous evaluation.
    options : SolverOptions, optional
        Per-solve options (:class:`~deqbench.SolverOptions`; ``neumann_terms``
        is not read).
    tol : float, optional
        Solve tolerance (also ``options.tol``); default ``min(1e-10, 1e-3 rtol)`` in float64 so that
        solve error stays below the integration error, 1e-5 in float32 (the
        dtype of ``X``, ``Y``, ``A0``, ``B0``; choose ``rtol`` accordingly).
    max_steps : int
        Cap on accepted steps.
    record_every, stop_loss, sufficient_stats, L_star, spectral_every
        As in :func:`deqbench.train`, counted in accepted steps.
    h0 : float, optional
        First step size (default: Hairer's initial-step rule).
    max_iter, damping, anderson_history, anderson_ridge
        The other options as keywords, as in :func:`~deqbench.fixed_point`.

    Returns
    -------
    FlowResult

    Raises
    ------
    TrainInterrupted
        On Ctrl-C (SIGINT), within about :data:`~deqbench._training.SLICE_SECONDS`
        plus one step, as in :func:`deqbench.train`: a
        :class:`KeyboardInterrupt` whose ``result`` is the :class:`FlowResult`
        of the accepted steps (status ``"interrupted"``, the last accepted
        point as the last history row).

    Warns
    -----
    ConvergenceWarning
        When the status is ``"diverged"``, ``"fixed_point_failed"`` or
        ``"step_too_small"``.

    Notes
    -----
    docs/theory.md §5 (``Q`` constant along the flow: its measured drift
    is the integration error) and §7 (``exp(-mu t)`` decay). The integrator
    runs in compiled slices of about ``SLICE_SECONDS`` (Python checks for
    Ctrl-C between them), as :func:`deqbench.train` does.
    """
    t_end = v.positive("t_end", t_end)
    rtol = v.positive("rtol", rtol)
    atol = v.positive("atol", atol)
    max_steps = v.integer("max_steps", max_steps, minimum=1, maximum=v.MAX_STEPS)
    h0 = 0.0 if h0 is None else v.positive("h0", h0)
    run = prepare(
        model, X, Y, A0, B0, u=u, activation=activation, solver=solver, grad_solver=None,
        tol=tol, max_iter=max_iter, damping=damping, neumann_terms=None, options=options,
        default_tol=min(1e-10, 1e-3 * rtol),
        anderson_history=anderson_history, anderson_ridge=anderson_ridge,
        sufficient_stats=sufficient_stats, L_star=L_star, record_every=record_every,
        stop_loss=stop_loss, spectral_every=spectral_every, grad_methods=EXACT_GRAD,
    )
    rec = run.record_every
    if rec == 0:
        rec = max_steps + 1
    H = np.full((history_rows(max_steps, record_every, rec, _m.NCOL_FLOW, "max_steps"),
                 _m.NCOL_FLOW), np.nan)
    integ = _kf.Integration(t_end=t_end, rtol=rtol, atol=atol, h0=h0, max_steps=max_steps,
                            stop_loss=run.stop_loss, divergence_factor=DIVERGENCE_FACTOR,
                            record_every=rec, spectral_every=run.spectral_every)
    with single_threaded_blas():
        state = _kf.dopri_start(run.model, run.A, run.B, run.solve, run.stats, integ, H)

        def advance(n_stop, stop=False):
            return _kf.dopri_run(run.model, run.A, run.B, run.solve, run.stats, integ, state,
                                 n_stop, stop)

        def interrupted():
            advance(0, True)  # the current accepted point becomes the last row
            return _result(run, "interrupted", state, H)

        status = run_sliced(advance, lambda: int(state.ints[_kf.ACCEPTED]), interrupted,
                            "flow")
    status = RUN_NAMES[status]
    res = _result(run, status, state, H)
    n_rec = int(state.ints[_kf.RECORDS])
    failed_at_start = status in FAILED_STATUSES and n_rec == 0
    reason = initial_failure(run.A, run.solve, status) if failed_at_start else ""
    warn_status("flow", status, res.n_steps, reason)
    return res


def _result(run, status: str, state, H) -> FlowResult:
    ints = state.ints
    return FlowResult(
        A=run.A,
        B=run.B,
        status=status,
        history=history_dict(H, int(ints[_kf.RECORDS]), FLOW_HISTORY_KEYS, run.excess_shift),
        t=float(state.fl[_kf.TIME]),
        n_steps=int(ints[_kf.ACCEPTED]),
        n_rejected=int(ints[_kf.REJECTED]),
        n_evals=int(ints[_kf.EVALS]),
        sufficient_stats=bool(run.stats.use),
        L_star=run.L_star,
        spectral_every=int(run.spectral_every),
    )
