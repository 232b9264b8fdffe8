"""Private driver of the scalar-equilibrium kernels (:mod:`deqbench._kernels.scalar`):
the paper's deep equilibrium single-index model ``y = sigma(<w, x> + b y)``.

:func:`solve_scalar` solves the equilibria of a data set by safeguarded
Newton; :func:`train_scalar` runs gradient descent on
``L = sum_i (y_i - Y_i)^2 / (2 n)`` in one compiled loop. Validate, convert,
call: the kernels know nothing of this layer.

The public calls reach the same kernels through :func:`newton` (the forward
solve of ``fixed_point(method="newton")`` for any ``m = 1`` map),
:func:`evaluate` (``loss_and_grad("single_index")``), :func:`adjoint` (the
closed-form adjoint of ``implicit_grad(method="newton")``), and
``deqbench._training`` drives ``gd_run`` for ``train("single_index")``
(sliced for Ctrl-C; its history from :func:`matrix_history`). This module
imports none of the public layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from . import _validate as v
from ._kernels import scalar as _k
from ._kernels.status import RUN_NAMES, SOLVE_NAMES
from ._registry import ADJOINT
from ._threads import single_threaded_blas
from .activations import get_activation

__all__ = ["BACKWARDS", "FUSED_ADJOINTS", "ScalarTrainResult", "adjoint", "evaluate",
           "fused_adjoint", "guard_rule", "loss_and_grad_scalar", "matrix_history", "newton",
           "solve_scalar", "train_scalar"]

EXACT, JFB, NEUMANN = _k.EXACT, _k.JFB, _k.NEUMANN
NOT_UNIQUE = _k.NOT_UNIQUE
#: Backward factors replacing ``1 / (1 - a)``: exact, JFB (``1``), damped Neumann.
BACKWARDS = {"exact": _k.EXACT, "jfb": _k.JFB, "neumann": _k.NEUMANN}
HISTORY = {"step": _k.H_STEP, "loss": _k.H_LOSS, "grad_norm": _k.H_GRAD,
           "newton_max": _k.H_NEWTON_MAX, "newton_mean": _k.H_NEWTON_MEAN,
           "residual": _k.H_RESIDUAL, "eval_loss": _k.H_EVAL_LOSS,
           "param_error": _k.H_PARAM_ERROR, "b": _k.H_B}
DIVERGENCE_FACTOR = 1e4  # deqbench.DIVERGENCE_FACTOR
#: The adjoints (``grad_solver``) the scalar pass computes, by backward kind: the
#: exact one in closed form (``newton``, and ``direct``, whose exact solve it is), JFB,
#: and the damped truncated series.
FUSED_ADJOINTS = {"newton": _k.EXACT, "direct": _k.EXACT, "jfb": _k.JFB,
                  "neumann": _k.NEUMANN}


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
    """The kernels' :data:`~deqbench._kernels.scalar.Link` of an activation (name or
    :class:`~deqbench.Activation`)."""
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


#: The kernels' :data:`~deqbench._kernels.scalar.Link` and
#: :data:`~deqbench._kernels.scalar.ScalarOpts` builders, for the loop that
#: ``deqbench._training`` drives.
kernel_link = _link
kernel_options = _opts


def rule(act) -> str:
    """The uniqueness rule of ``act``'s scalar equilibria, in words."""
    dmin, dmax = act.derivative_bounds()
    return (f"a root of y = sigma(s0 + b y) is unique where 1 - b sigma' keeps one sign for "
            f"sigma' in [{dmin:.6g}, {dmax:.6g}] (the range of {act}'s derivative)")


def guard_rule(activation, b: float) -> str:
    """Why ``y = sigma(s0 + b y)`` has no certified unique root at ``b``, in words
    (the status ``not_unique``; docs/theory.md §12)."""
    act = get_activation(activation)
    dmin, dmax = act.derivative_bounds()
    return (f"the uniqueness guard fails at b = {b:.6g}: {rule(act)}, and 1 - b {dmin:.6g} = "
            f"{1.0 - b * dmin:.6g}, 1 - b {dmax:.6g} = {1.0 - b * dmax:.6g} do not; no root "
            "is returned (docs/theory.md §12)")


def newton(X, w, b: float, activation, *, tol: float, max_iter: int, y0=None, threads=None):
    """Equilibria ``y_i = sigma(<w, x_i> + b y_i)`` by safeguarded Newton, on validated
    arrays (``X`` ``(n, d)`` C-contiguous, ``w`` ``(d,)`` and ``y0`` ``(n,)`` of its dtype).

    Returns ``(y, iters, status, residual)``: ``y`` as the kernels leave it (the
    start ``y0``, else zeros, when ``not_unique``: no solve is made), the residual
    evaluations per sample (0 when ``not_unique``), the status code and
    ``max_i |y_i - sigma(s0_i + b y_i)|`` (NaN unless converged).
    """
    link = _link(activation)
    P = _k.pack(X)
    if y0 is not None:
        _k.set_field(P, _k.F_Y, y0)
    opts = _opts(tol=tol, max_iter=max_iter, dtype=X.dtype, predict=False, threads=threads)
    with single_threaded_blas():
        st, _, _, rmax = _k.solve(link, P, w, float(b), y0 is not None, opts)
    st = int(st)
    y = _k.field(P, _k.F_Y)
    rp = _k.field(P, _k.F_RP).astype(np.float64)
    iters = np.where(rp < 0, -rp, max_iter).astype(np.int64)
    if st == _k.NOT_UNIQUE:
        iters[:] = 0
    return y, iters, st, float(rmax) if st == _k.CONVERGED else float("nan")


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
    tol = v.tolerance("tol", tol)
    max_iter = v.integer("max_iter", max_iter, minimum=1, maximum=v.MAX_ITERATIONS)
    if y0 is not None:
        y0 = v.as_matrix("y0", y0, ndim=1, shape=(n,), dtype=X.dtype, ref="X")
    y, iters, st, _ = newton(X, w, b, activation, tol=tol, max_iter=max_iter, y0=y0,
                             threads=threads)
    if st != _k.CONVERGED:
        y[:] = np.nan
    return y, iters, SOLVE_NAMES[st]


def backward_factor(kind: int, terms: int, damping: float, a) -> np.ndarray:
    """The factor that replaces ``1 / (1 - a)`` (the kernels' ``factor``, elementwise in
    NumPy: ``terms + 1`` steps of ``mu <- (1 - damping + damping a) mu + damping``)."""
    a = np.asarray(a, dtype=np.float64)
    if kind == _k.EXACT:
        return 1.0 / (1.0 - a)
    if kind == _k.JFB:
        return np.ones_like(a)
    q = 1.0 - damping + damping * a
    mu = np.zeros_like(a)
    for _ in range(terms + 1):
        mu = q * mu + damping
    return mu


def evaluate(X, Y, w, b: float, activation, *, kind: int, terms: int, damping: float,
             tol: float, max_iter: int, y0=None, threads=None):
    """Loss ``sum (y - Y)^2 / (2 n)`` and gradient at ``(w, b)`` in one pass of the
    kernels, on validated arrays (as :func:`newton`; ``Y`` ``(n,)``), the backward
    ``(kind, terms, damping)`` (:data:`BACKWARDS` kinds).

    Returns ``(status, loss, grad_w, grad_b, y, max evaluations, residual, sigma')``
    (``sigma'`` at each root, the one the gradient used); off ``converged`` the loss,
    gradient, ``y`` and ``sigma'`` are NaN, and ``s0`` beyond the dtype is ``diverged``.
    """
    n, d = X.shape
    link = _link(activation)
    P = _k.pack(X, Y)
    if y0 is not None:  # a solution at this b to start from
        _k.set_field(P, _k.F_Y, y0)
        P.ints[0] = 1
        P.prev[0] = float(b)
    opts = _opts(tol=tol, max_iter=max_iter, dtype=X.dtype, kind=kind, terms=terms,
                 damping=damping, predict=False, threads=threads)
    g = np.full(d + 1, np.nan)
    with single_threaded_blas():
        st, loss, itmax, _, rmax = _k.evaluate(link, P, w, float(b), np.int64(1), opts, g)
    st = int(st)
    y = _k.field(P, _k.F_Y)
    # the kernels keep c = sigma' / (1 - b sigma') per sample (the warm start's slope),
    # not sigma' itself: sigma' = c / (1 + b c)
    c = _k.field(P, _k.F_C).astype(np.float64)
    D = (c / (1.0 + float(b) * c)).astype(X.dtype)
    if st != _k.CONVERGED:
        g[:] = np.nan
        y[:] = np.nan
        D[:] = np.nan
        loss = rmax = np.nan
    return (st, float(loss), g[:d].astype(X.dtype), float(g[d]), y, int(itmax), float(rmax),
            D)


def adjoint(D, G, b: float, kind: int = _k.EXACT, terms: int = 0, damping: float = 1.0):
    """The adjoint ``Mu = D f(b D) G`` of a scalar state per sample, ``f`` the
    backward factor (exact: ``1 / (1 - b D)``, the solution of ``Mu = D (b Mu + G)``),
    with ``D = phi'`` at the fixed point. Returns ``(Mu, status)``: ``"diverged"``
    (and zeros) where ``1 - b D`` vanishes or a value is not finite."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        Mu = (D * backward_factor(kind, terms, damping, b * D) * G).astype(G.dtype)
    if not np.isfinite(Mu).all():
        return np.zeros_like(G), "diverged"
    return Mu, "converged"


def _backward(backward, neumann_terms, neumann_damping):
    """``(kind, terms, damping)`` of a backward argument, checked."""
    kind = BACKWARDS[v.choice("backward", backward, BACKWARDS)]
    if kind == _k.NEUMANN:
        if neumann_terms is None:
            raise ValueError("neumann_terms must be given for backward='neumann' (the highest "
                             "power of the series: 1 for the paper's two terms 1 + a)")
        terms = v.integer("neumann_terms", neumann_terms, minimum=0,
                          maximum=v.MAX_ITERATIONS)
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
    tol = v.tolerance("tol", tol)
    max_newton = v.integer("max_newton", max_newton, minimum=1,
                            maximum=v.MAX_ITERATIONS)
    kind, terms, damping = _backward(backward, neumann_terms, neumann_damping)
    st, loss, gw, gb, y, _, _, _ = evaluate(X, Y, w, b, activation, kind=kind, terms=terms,
                                         damping=damping, tol=tol, max_iter=max_newton,
                                         threads=threads)
    return loss, gw, gb, SOLVE_NAMES[st], y


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
    steps = v.integer("steps", steps, minimum=0, maximum=v.MAX_STEPS)
    tol = v.tolerance("tol", tol)
    max_newton = v.integer("max_newton", max_newton, minimum=1,
                            maximum=v.MAX_ITERATIONS)
    record_every = v.integer("record_every", record_every, minimum=1,
                            maximum=v.MAX_STEPS)
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


# --- train("single_index"): the fused loop behind the public call ------------------------


def matrix_history(H, T, nrec, w0, b0, L_star, spectral_every):
    """The :func:`deqbench.train` history of a scalar run: its kernel columns, and the
    matrix quantities of ``A = [[b]]``, ``B = w^T`` from the recorded ``(w, b)``."""
    Hh, th = H[:nrec], T[:nrec]
    d = th.shape[1] - 1
    step = Hh[:, _k.H_STEP].astype(np.int64)
    W, b = th[:, :d], th[:, d]
    w0 = np.asarray(w0, dtype=np.float64)
    # tr(Q - Q0), Q = (1 - b)^2 + |w|^2, in the differences (no cancellation at small drift)
    trace = (b0 - b) * (2.0 - b - b0) + np.sum((W - w0) * (W + w0), axis=1)
    q0 = (1.0 - b0) ** 2 + float(w0 @ w0)
    heavy = (step % spectral_every == 0) | (np.arange(nrec) == nrec - 1)
    nan = np.full(nrec, np.nan)
    loss = Hh[:, _k.H_LOSS].copy()
    return {
        "step": step,
        "loss": loss,
        "excess_loss": loss - L_star,
        "grad_norm": Hh[:, _k.H_GRAD].copy(),
        "invariant_drift": np.where(heavy, np.abs(trace) / q0 if q0 > 0 else nan, nan),
        "drift_trace": trace,
        "sigma_min": np.where(heavy, np.abs(1.0 - b), nan),
        "sigma_max": np.where(heavy, np.abs(1.0 - b), nan),
        "spectral_radius": np.where(heavy, np.abs(b), nan),
        "fp_iters": Hh[:, _k.H_NEWTON_MAX].astype(np.int64),
        "adj_iters": np.zeros(nrec, np.int64),
    }


def fused_adjoint(grad_solver) -> int:
    """The backward kind of ``grad_solver`` (None: the forward's, ``newton``) in the
    scalar pass; a ``ValueError`` for an adjoint it does not compute."""
    grad_solver = "newton" if grad_solver is None else grad_solver
    v.choice("grad_solver", grad_solver, ADJOINT)
    if grad_solver in FUSED_ADJOINTS:
        return FUSED_ADJOINTS[grad_solver]
    raise ValueError(
        f"grad_solver={grad_solver!r} is not an adjoint of the scalar loop: model='single_index' "
        f"with solver='newton' takes {sorted(FUSED_ADJOINTS)} (the exact adjoint in closed form "
        "by 'newton' or 'direct', 'jfb', 'neumann'); for an iterative adjoint pass "
        "solver='picard', 'anderson' or 'broyden' (the nonlinear model with m = 1)")
