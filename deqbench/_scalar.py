"""Private driver of the scalar-equilibrium kernels (:mod:`deqbench._kernels.scalar`):
the paper's deep equilibrium single-index model ``y = sigma(<w, x> + b y)``.

:func:`solve_scalar` solves the equilibria of a data set by safeguarded
Newton; :func:`train_scalar` runs gradient descent on
``L = sum_i (y_i - Y_i)^2 / (2 n)`` in one compiled loop. Validate, convert,
call: the kernels know nothing of this layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from . import _validate as v
from ._kernels import scalar as _k
from ._kernels.status import RUN_NAMES, SOLVE_NAMES
from ._threads import single_threaded_blas
from .activations import get_activation

__all__ = ["ScalarTrainResult", "loss_and_grad_scalar", "solve_scalar", "train_scalar",
           "BACKWARDS"]

#: Backward factors replacing ``1 / (1 - a)``: exact, JFB (``1``), damped Neumann.
BACKWARDS = {"exact": _k.EXACT, "jfb": _k.JFB, "neumann": _k.NEUMANN}
HISTORY = {"step": _k.H_STEP, "loss": _k.H_LOSS, "grad_norm": _k.H_GRAD,
           "newton_max": _k.H_NEWTON_MAX, "newton_mean": _k.H_NEWTON_MEAN,
           "residual": _k.H_RESIDUAL, "eval_loss": _k.H_EVAL_LOSS,
           "param_error": _k.H_PARAM_ERROR, "b": _k.H_B}
DIVERGENCE_FACTOR = 1e4  # deqbench.DIVERGENCE_FACTOR


@dataclass
class ScalarTrainResult:
    """``w``, ``b`` at the end (the last good step on failure); ``status`` one of
    ``converged`` (stop_loss), ``max_steps``, ``diverged``, ``fixed_point_failed``;
    ``solve_status`` the failed solve's (``not_unique``: the uniqueness guard);
    ``history`` 1-D arrays by name (``theta``: rows ``(w, b)`` when recorded);
    ``n_steps`` the last evaluated step."""

    w: np.ndarray
    b: float
    status: str
    solve_status: str
    history: dict
    n_steps: int


def _link(activation) -> _k.Link:
    act = get_activation(activation)
    dmin, dmax = act.derivative_bounds()
    vlo, vhi = act.value_bounds()
    return _k.Link(act.code, act.param, float(dmin), float(dmax), float(vlo), float(vhi),
                   float(act.curvature_bound()))


def _feps(dtype) -> float:
    return _k.FLOOR_EPS * float(np.finfo(dtype).eps)


def _opts(*, lr=0.0, steps=0, stop_loss=-1.0, tol, max_iter, dtype, kind=_k.EXACT, terms=0,
          damping=1.0, predict=True, record_every=1, threads=None) -> _k.ScalarOpts:
    threads = numba.get_num_threads() if threads is None else threads
    return _k.ScalarOpts(float(lr), int(steps), float(stop_loss), DIVERGENCE_FACTOR, float(tol),
                         int(max_iter), _feps(dtype), int(kind), int(terms), float(damping),
                         bool(predict), int(record_every), int(threads))


def solve_scalar(X, w, b, activation="identity", tol=1e-12, y0=None, *, max_iter=100,
                 threads=None):
    """Equilibria ``y_i = sigma(<w, x_i> + b y_i)`` by safeguarded Newton.

    Returns ``(y, iters, status)``: ``iters`` the residual evaluations per
    sample, ``status`` one of ``converged``, ``max_iter``, ``not_unique``
    (``1 - b sigma'`` is not of one sign over the range of ``sigma'``: no root
    is returned, ``y`` is NaN), ``diverged`` (non-finite values). ``y0`` is the start (default:
    ``sigma(<w, x>)``).
    """
    X = v.as_matrix("X", X)
    n, d = X.shape
    w = v.as_matrix("w", w, ndim=1, shape=(d,), dtype=X.dtype, ref="X")
    b = v.real("b", b)
    tol = v.positive("tol", tol)
    max_iter = v.integer("max_iter", max_iter, minimum=1)
    link = _link(activation)
    P = _k.pack(X)
    if y0 is not None:
        _k.set_field(P, _k.F_Y, v.as_matrix("y0", y0, ndim=1, shape=(n,), dtype=X.dtype,
                                           ref="X"))
    opts = _opts(tol=tol, max_iter=max_iter, dtype=X.dtype, predict=False, threads=threads)
    with single_threaded_blas():
        st = int(_k.solve(link, P, w, b, y0 is not None, opts)[0])
    y = _k.field(P, _k.F_Y)
    rp = _k.field(P, _k.F_RP).astype(np.float64)
    iters = np.where(rp < 0, -rp, max_iter).astype(np.int64)
    if st != _k.CONVERGED:
        y[:] = np.nan
        iters[:] = 0 if st == _k.NOT_UNIQUE else iters
    return y, iters, SOLVE_NAMES[st]


def _backward(backward, neumann_terms, neumann_damping):
    """``(kind, terms, damping)`` of a backward argument, checked."""
    kind = BACKWARDS[v.choice("backward", backward, BACKWARDS)]
    if kind == _k.NEUMANN:
        if neumann_terms is None:
            raise ValueError("neumann_terms must be given for backward='neumann' (the highest "
                             "power of the series: 1 for the paper's two terms 1 + a)")
        terms = v.integer("neumann_terms", neumann_terms, minimum=0)
        return kind, terms, v.unit_interval("neumann_damping", neumann_damping)
    if neumann_terms is not None or neumann_damping != 1.0:
        raise ValueError(f"neumann_terms and neumann_damping apply to backward='neumann' only, "
                         f"got backward={backward!r}")
    return kind, 0, 1.0


def loss_and_grad_scalar(X, Y, w, b, *, activation="identity", backward="exact",
                         neumann_terms=None, neumann_damping=1.0, tol=1e-12, max_newton=100,
                         threads=None):
    """``(loss, grad_w, grad_b, status, y)`` at ``(w, b)``: ``L = sum (y - Y)^2 / (2 n)``
    and its gradient through the closed-form implicit derivative, ``1 / (1 - a)``
    replaced by the ``backward`` factor (see :func:`train_scalar`). ``status`` is
    the forward solve's; off ``converged`` the loss and gradient are NaN."""
    X = v.as_matrix("X", X)
    n, d = X.shape
    Y = v.as_matrix("Y", Y, ndim=1, shape=(n,), dtype=X.dtype, ref="X")
    w = v.as_matrix("w", w, ndim=1, shape=(d,), dtype=X.dtype, ref="X")
    b = v.real("b", b)
    tol = v.positive("tol", tol)
    max_newton = v.integer("max_newton", max_newton, minimum=1)
    kind, terms, damping = _backward(backward, neumann_terms, neumann_damping)
    link = _link(activation)
    P = _k.pack(X, Y)
    opts = _opts(tol=tol, max_iter=max_newton, dtype=X.dtype, kind=kind, terms=terms,
                 damping=damping, predict=False, threads=threads)
    g = np.full(d + 1, np.nan)
    with single_threaded_blas():
        st, loss = _k.evaluate(link, P, w, b, np.int64(1), opts, g)[:2]
    st = int(st)
    y = _k.field(P, _k.F_Y)
    if st != _k.CONVERGED:
        g[:] = np.nan
        y[:] = np.nan
    return float(loss), g[:d].astype(X.dtype), float(g[d]), SOLVE_NAMES[st], y


def train_scalar(X, Y, w0, b0, *, lr, steps, activation="identity", backward="exact",
                 neumann_terms=None, neumann_damping=1.0, tol=1e-12, max_newton=100,
                 record_every=1, stop_loss=None, X_eval=None, Y_eval=None, target=None,
                 record_theta=False, predict=True, threads=None) -> ScalarTrainResult:
    """Gradient descent ``(w, b) <- (w, b) - lr grad L`` on the scalar DEQ,
    ``steps`` updates in one compiled call.

    Parameters
    ----------
    X, Y : (n, d) and (n,) arrays, float32 or float64 (one dtype).
    w0, b0 : starting parameters (``w0`` of length ``d``).
    lr : step on ``L = sum (y - Y)^2 / (2 n)`` (the paper's ``eta`` is ``lr / 2``).
    backward : ``exact`` (``1 / (1 - a)``), ``jfb`` (``1``) or ``neumann``:
        ``neumann_terms + 1`` steps of the damped series, ``1 + a + ... + a^k``
        at ``neumann_damping = 1`` (``neumann_terms = k`` is the highest power,
        as everywhere in deqbench: the paper's "two terms" is ``k = 1``).
    tol, max_newton : residual tolerance ``|y - sigma(s0 + b y)|`` and
        evaluations per sample and step.
    record_every : history cadence (the last step is always recorded).
    stop_loss : stop once ``L <= stop_loss``.
    X_eval, Y_eval : evaluation set; ``eval_loss`` at recorded steps.
    target : ``w*`` (length ``d``, ``b* = 0``) or ``(w*, b*)``; ``param_error``.
    record_theta : also keep ``(w, b)`` at recorded steps (``history["theta"]``).
    predict : start each Newton solve from the first-order change of the last
        solution instead of the last solution itself (same roots to ``tol``).

    Notes
    -----
    The implicit gradient is the closed form of docs/theory.md (single-index
    DEQ); see :mod:`deqbench._kernels.scalar` for the solver and its
    uniqueness guard.
    """
    X = v.as_matrix("X", X)
    n, d = X.shape
    dt = X.dtype
    Y = v.as_matrix("Y", Y, ndim=1, shape=(n,), dtype=dt, ref="X")
    w = v.as_matrix("w0", w0, ndim=1, shape=(d,), dtype=dt, ref="X").copy()
    bb = np.array([v.real("b0", b0)], dt)
    lr = v.positive("lr", lr)
    steps = v.integer("steps", steps, minimum=0)
    tol = v.positive("tol", tol)
    max_newton = v.integer("max_newton", max_newton, minimum=1)
    record_every = v.integer("record_every", record_every, minimum=1)
    stop = -1.0 if stop_loss is None else v.positive("stop_loss", stop_loss, allow_zero=True)
    kind, terms, damping = _backward(backward, neumann_terms, neumann_damping)
    if (X_eval is None) != (Y_eval is None):
        raise ValueError("X_eval and Y_eval must be given together")
    if X_eval is not None:
        Xe = v.as_matrix("X_eval", X_eval, shape=(None, d), dtype=dt, ref="X")
        Ye = v.as_matrix("Y_eval", Y_eval, ndim=1, shape=(Xe.shape[0],), dtype=dt, ref="X")
    else:
        Xe, Ye = np.empty((0, d), dt), np.empty(0, dt)
    if target is None:
        tgt = np.empty(0)
    else:
        t = v.as_float64("target", target, ndim=1)
        if t.shape[0] not in (d, d + 1):
            raise ValueError(f"target must have length d = {d} (w*, with b* = 0) or d + 1 "
                             f"(w*, b*), got {t.shape[0]}")
        tgt = np.append(t, 0.0) if t.shape[0] == d else t
    if not isinstance(record_theta, (bool, np.bool_)):
        raise TypeError(f"record_theta must be a bool, got {record_theta!r}")
    if not isinstance(predict, (bool, np.bool_)):
        raise TypeError(f"predict must be a bool, got {predict!r}")
    link = _link(activation)
    rows = steps // record_every + 2
    H = np.full((rows, _k.NCOL), np.nan)
    T = np.full((rows, d + 1), np.nan) if record_theta else np.empty((0, 0))
    opts = _opts(lr=lr, steps=steps, stop_loss=stop, tol=tol, max_iter=max_newton, dtype=dt,
                 kind=kind, terms=terms, damping=damping, predict=bool(predict),
                 record_every=record_every, threads=threads)
    P = _k.pack(X, Y)
    E = _k.pack(Xe, Ye)
    state = _k.gd_state(d, dt)
    with single_threaded_blas():
        status, last, nrec = _k.gd_run(link, P, E, w, bb, tgt, opts, state, H, T, steps + 1)
    hist = {name: H[:nrec, col].copy() for name, col in HISTORY.items()}
    hist["step"] = hist["step"].astype(np.int64)
    if record_theta:
        hist["theta"] = T[:nrec].copy()
    solve_status = SOLVE_NAMES[int(state.ints[5])] if status == _k.FIXED_POINT_FAILED else \
        "converged"
    return ScalarTrainResult(w=w, b=float(bb[0]), status=RUN_NAMES[int(status)],
                             solve_status=solve_status, history=hist, n_steps=int(last))
