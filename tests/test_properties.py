"""Bad input through the public calls (issue 31): whatever the shapes, dtypes, scales
(1e-300 to 1e300), NaN/Inf entries and option values, every call returns a result
whose status is truthful (checked against NumPy where cheap: a converged fixed point
satisfies its equation to its tolerance, relative to a safe scale), or raises a
``ValueError``/``TypeError`` whose message names an argument: never another
exception, never a stray warning, never a hang (each example runs under an alarm;
the compiled loops of train and flow return to Python between slices)."""

from __future__ import annotations

import contextlib
import math
import re
import signal
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import deqbench as db
from deqbench import theory

EXAMPLES = settings(max_examples=600, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ALARM_S = 60
OURS = (db.ConvergenceWarning, db.PrecisionWarning)
ACTIVATIONS = ["identity", "tanh", "relu", "leaky_relu(0.3)", "gelu", "sigmoid", "softplus",
               "smooth_leaky(0.5)"]
SCALES = [1e-300, 1e-200, 1e-160, 1e-100, 1e-20, 1e-3, 1.0, 1.0, 1.0, 1e3, 1e20, 1e100,
          1e160, 1e300]
SCALES32 = [1e-30, 1e-20, 1e-3, 1.0, 1.0, 1.0, 1e3, 1e20, 1e30]
STATUSES = {"converged", "max_iter", "diverged", "underflow", "inaccurate", "truncated"}
RUN_STATUSES = {"converged", "max_steps", "diverged", "fixed_point_failed", "finished",
                "step_too_small", "read_error"}


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    """Every kernel the examples reach, compiled (or loaded from the cache) before the
    alarm runs: a first compile takes minutes on a loaded machine, and an alarm that
    fires inside numba's compiler leaves it broken."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for dt in (np.float64, np.float32):
            X, Y, _ = db.data.linear_teacher(12, 3, 2, seed=0)
            A, B = db.data.init_params(3, 2, scale_A=0.5, scale_B=1.0, seed=1)
            X, Y, A, B = (a.astype(dt) for a in (X, Y, A, B))
            y = Y[:, 0].copy()
            for method in ("picard", "anderson", "broyden", "direct"):
                for chunk in (None, 5):
                    db.fixed_point(X, A, B, method=method, chunk=chunk)
            Z = db.fixed_point(X, A, B).z
            for method in ("picard", "anderson", "broyden", "direct", "jfb", "neumann"):
                for chunk in (None, 5):
                    db.implicit_grad(X, A, B, Z, Z, method=method, chunk=chunk)
                    db.implicit_grad(X, A, B, Z, Z, method=method, chunk=chunk,
                                     activation="identity" if method == "direct" else "tanh")
            for model, act, yy in (("linear", "identity", Y), ("readout", "tanh", y),
                                   ("nonlinear", "tanh", Y)):
                for solver in ("picard", "anderson", "broyden"):
                    db.loss_and_grad(model, X, yy, A, B, activation=act, solver=solver)
                    for ss in (False, "auto"):
                        db.train(model, X, yy, A, B, lr=0.01, steps=2, activation=act,
                                 solver=solver, sufficient_stats=ss if model == "linear"
                                 else False)
                if model != "nonlinear":
                    db.flow(model, X, yy, A, B, t_end=0.01, activation=act)
            # the scalar kernels of the paper's model (model="single_index", Newton)
            A1, B1 = A[:1, :1].copy(), B[:1].copy()
            db.fixed_point(X, A1, B1, activation="tanh", method="newton")
            for gs in (None, "jfb", "neumann"):
                db.loss_and_grad("single_index", X, y, A1, B1, activation="tanh",
                                 grad_solver=gs)
                db.train("single_index", X, y, A1, B1, lr=0.01, steps=2, activation="tanh",
                         grad_solver=gs)
    yield


class Hang(Exception):
    """An example that did not answer within ALARM_S seconds."""


@contextlib.contextmanager
def _alarm(seconds: int):
    def ring(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _names(message: str, names) -> bool:
    return any(re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", message) for n in names)


def call(fn, names, *args, **kwargs):
    """``fn(*args, **kwargs)``: its result, or the ``ValueError``/``TypeError`` it raised
    once checked to name one of ``names``; any other exception, or a warning that is not
    deqbench's, fails the example."""
    with _alarm(ALARM_S), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = fn(*args, **kwargs)
        except (ValueError, TypeError) as exc:
            assert _names(str(exc), names), f"{type(exc).__name__} names no argument: {exc}"
            out = exc
    what = str(out)[:50] if isinstance(out, Exception) else ""
    event(f"{getattr(fn, '__name__', fn)}: {type(out).__name__} {what}")
    stray = [f"{w.category.__name__}: {w.message}" for w in caught
             if not issubclass(w.category, OURS)]
    assert not stray, stray
    return out


def _norm(x) -> float:
    """Frobenius norm without overflow or underflow (scaled by the largest entry)."""
    x = np.asarray(x, dtype=np.float64)
    big = float(np.max(np.abs(x))) if x.size else 0.0
    if not 0.0 < big < math.inf:
        return big  # 0, inf or NaN
    return big * float(np.linalg.norm(x / big))


# --- strategies -------------------------------------------------------------------------


@st.composite
def arrays(draw, shape, scale=None, dtype=None, bad=True):
    """A seeded Gaussian array times a scale, in a drawn dtype (rarely an unsupported
    one), with a NaN or Inf poked in now and then."""
    seed = draw(st.integers(0, 2**32 - 1))
    if dtype is None:
        dtype = draw(st.sampled_from([np.float64] * 6 + [np.float32] * 3 + (
            [np.float16, np.int64, np.complex128, np.bool_] if bad else [])))
    if scale is None:  # float32's range unless bad (beyond it: a non-finite input)
        scale = draw(st.sampled_from(SCALES if bad or np.dtype(dtype) != np.float32
                                     else SCALES32))
    a = np.random.default_rng(seed).standard_normal(shape) * scale
    if bad and a.size and draw(st.integers(0, 3)) == 0:
        a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf,
                                                                          -np.inf]))
    with np.errstate(all="ignore"):
        return a.astype(dtype)


@st.composite
def problems(draw, bad=True):
    """``(X, A, B)``: sizes 1-16, 1-4, 1-4; ``A`` of spectral norm drawn from 0 to 10."""
    n, d, m = draw(st.integers(1, 16)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([np.float64] * 3 + [np.float32]))
    R = draw(arrays((m, m), scale=1.0, dtype=np.float64, bad=False))
    rho = draw(st.sampled_from([0.0, 0.3, 0.7, 0.95, 0.999, 1.5, 10.0]))
    nrm = np.linalg.norm(R, 2)
    A = (R * (rho / nrm) if nrm > 0 else R).astype(dtype)
    scales_B = [1e-150, 1e-3, 1.0, 1.0, 1e100] if dtype == np.float64 else [1e-3, 1.0, 1e10]
    B = draw(arrays((m, d), scale=draw(st.sampled_from(scales_B)), dtype=dtype, bad=False))
    odd = bad and draw(st.integers(0, 5)) == 0  # now and then another dtype, NaN or Inf
    X = draw(arrays((n, d), dtype=None if odd else dtype, bad=odd))
    return X, A, B


@st.composite
def options(draw, valid: dict, bad: dict):
    """Keyword arguments drawn from ``valid``; in one draw of four, one of them is
    replaced by a value from ``bad`` (so that most examples reach the computation)."""
    kw = {k: draw(strategy) for k, strategy in valid.items()}
    if bad and draw(st.integers(0, 3)) == 0:
        key = draw(st.sampled_from(sorted(bad)))
        kw[key] = draw(bad[key])
    return kw


VALID_TOL = st.sampled_from([None, None, 1e-12, 1e-10, 1e-6, 1e-3, 0.5, 1e-300])
BAD_TOL = st.sampled_from([0.0, -1.0, 1.0, 10.0, math.nan, math.inf, "x", True])
VALID_ITER = st.sampled_from([1, 2, 50, 300, 300, np.int64(40)])
BAD_ITER = st.sampled_from([0, -3, 2**63, 10**12, 1.5, True, None])
ACT = st.sampled_from([*ACTIVATIONS, "identity", "identity"])
BAD_ACT = st.sampled_from(["bogus", "leaky_relu(2)", 3, None])
SOLVE_OK = dict(tol=VALID_TOL, max_iter=VALID_ITER, activation=ACT,
                damping=st.sampled_from([1.0, 1.0, 0.5, 0.1]),
                anderson_history=st.sampled_from([1, 5, 5]),
                chunk=st.sampled_from([None, None, None, 1, 7, "auto"]))
SOLVE_BAD = dict(tol=BAD_TOL, max_iter=BAD_ITER, activation=BAD_ACT,
                 damping=st.sampled_from([0.0, 1.5, math.nan, -1, "x"]),
                 anderson_history=st.sampled_from([0, 10**6, 2.0]),
                 chunk=st.sampled_from([0, 10**9, "x", 2.5]))


def _phi(activation):
    try:
        return db.get_activation(activation)
    except (ValueError, TypeError):
        return None


def _check_fixed_point(z, X, A, B, act, tol, dtype, shape_scale=1.0):
    """A converged ``z`` satisfies ``||F(z) - z|| <= tol ||F(z)||`` in float64, up to the
    rounding of the dtype it was computed in."""
    z64, X64, A64, B64 = (np.asarray(a, dtype=np.float64) for a in (z, X, A, B))
    with np.errstate(all="ignore"):
        U = X64 @ B64.T
        F = act(z64 @ A64.T + U)
        r = _norm(F - z64)
    eps = float(np.finfo(dtype).eps)
    m, d = B64.shape
    slack = 64 * (m + d + 4) * eps * (_norm(z64) * _norm(A64) + _norm(U) + _norm(F)
                                      + _norm(X64) * _norm(B64))
    assert r <= tol * _norm(F) * (1 + 1e-6) + slack, (r, tol * _norm(F), slack)


def _dtype_of(X, A):
    a = np.asarray(A)
    return a.dtype if a.dtype in (np.float32, np.float64) else np.dtype(np.float64)


def _tol_used(tol, dtype):
    return {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}[np.dtype(dtype)] \
        if tol is None else float(tol)


# --- the solvers ------------------------------------------------------------------------


@EXAMPLES
@given(problems(), st.sampled_from(["picard"] * 3 + ["anderson"] * 2 + ["broyden", "direct",
                                                                         "bogus"]),
       options(SOLVE_OK, SOLVE_BAD))
def test_fixed_point(prob, method, kw):
    X, A, B = prob
    res = call(db.fixed_point, ["X", "A", "B", "method", *kw], X, A, B, method=method, **kw)
    if isinstance(res, Exception):
        return
    assert res.status in STATUSES and res.converged == (res.status == "converged")
    assert isinstance(res.n_iter, int) and res.n_iter >= 0
    assert np.isfinite(res.z).all(), "the last finite iterate"
    if res.converged:
        dt = _dtype_of(X, A)
        tol = _tol_used(kw["tol"], dt)
        assert res.residual <= tol
        _check_fixed_point(res.z, X, A, B, _phi(kw["activation"]), tol, dt)


GRAD_OK = {**{k: SOLVE_OK[k] for k in ("tol", "max_iter", "activation", "chunk")},
           "neumann_terms": st.sampled_from([0, 3])}
GRAD_BAD = {**{k: SOLVE_BAD[k] for k in ("tol", "max_iter", "activation", "chunk")},
            "neumann_terms": st.sampled_from([-1, 10**12, 2.5])}


@EXAMPLES
@given(problems(), st.sampled_from(["picard", "anderson", "broyden", "direct", "jfb", "neumann",
                                    "x"]),
       options(GRAD_OK, GRAD_BAD), st.data())
def test_implicit_grad(prob, method, kw, data):
    X, A, B = prob
    n, m = np.shape(X)[0], np.shape(A)[0]
    Z = data.draw(arrays((n, m), dtype=_dtype_of(X, A), bad=False))
    G = data.draw(arrays((n, m), dtype=_dtype_of(X, A), bad=data.draw(st.booleans())))
    res = call(db.implicit_grad, ["X", "A", "B", "Z", "G", "method", *kw], X, A, B, Z, G,
               method=method, **kw)
    if isinstance(res, Exception):
        return
    assert res.status in STATUSES
    assert res.converged == (res.status in ("converged", "truncated"))
    if res.converged and method not in ("jfb", "neumann") and \
            _phi(kw["activation"]).is_identity:
        # the adjoint equation Mu = Mu A + G, by the fixed-point check with X = G, B = I
        dt = _dtype_of(X, A)
        _check_fixed_point(res.adjoint, G, np.asarray(A).T, np.eye(m), _phi("identity"),
                           _tol_used(kw["tol"], dt), dt)


LOSS_OK = {**{k: SOLVE_OK[k] for k in ("tol", "max_iter", "activation")},
           "solver": st.sampled_from(["picard", "anderson", "broyden", "direct"]),
           "grad_solver": st.sampled_from([None, None, "picard", "jfb", "neumann", "direct",
                                           "broyden"])}
LOSS_BAD = {**{k: SOLVE_BAD[k] for k in ("tol", "max_iter", "activation")},
            "solver": st.sampled_from(["newton", 1]), "grad_solver": st.just("magic")}


@EXAMPLES
@given(problems(), st.sampled_from(["linear", "linear", "readout", "nonlinear", "x"]),
       options(LOSS_OK, LOSS_BAD), st.data())
def test_loss_and_grad(prob, model, kw, data):
    X, A, B = prob
    _fit_activation(model, kw, data)
    n, m = np.shape(X)[0], np.shape(A)[0]
    Y = data.draw(arrays((n,) if model == "readout" else (n, m), dtype=_dtype_of(X, A),
                         bad=data.draw(st.booleans())))
    res = call(db.loss_and_grad, ["model", "X", "Y", "A", "B", *kw], model, X, Y, A, B, **kw)
    if isinstance(res, Exception):
        return
    assert res.fp_status in STATUSES and res.adj_status in STATUSES
    fp_ok = res.fp_status == "converged"
    assert res.converged == (fp_ok and res.adj_status in ("converged", "truncated"))
    if fp_ok and model in ("linear", "nonlinear"):
        dt = _dtype_of(X, A)
        phi = _phi(kw["activation"]) if model == "nonlinear" else _phi("identity")
        _check_fixed_point(res.z, X, A, B, phi, _tol_used(kw["tol"], dt), dt)
        with np.errstate(all="ignore"):  # the loss is the loss of the returned z
            diff = np.asarray(res.z, np.float64) - np.asarray(Y, np.float64)
            big = float(np.max(np.abs(diff))) if diff.size else 0.0
            want = 0.5 * big * big * float(np.sum((diff / big) ** 2)) / n if big > 0 else 0.0
        if math.isfinite(want) and want > 1e-250:
            assert res.loss == pytest.approx(want, rel=1e-4 if dt == np.float32 else 1e-10)


RUN_OK = dict(
    tol=VALID_TOL, max_iter=st.sampled_from([50, 300]), activation=ACT,
    record_every=st.sampled_from([1, 3, None]), stop_loss=st.sampled_from([None, None, 0.1]),
    sufficient_stats=st.sampled_from(["auto", "auto", True, False, np.False_]),
    spectral_every=st.sampled_from(["auto", 1, 2]),
)
RUN_BAD = dict(
    tol=BAD_TOL, max_iter=BAD_ITER, activation=BAD_ACT,
    record_every=st.sampled_from([0, 2**63, 1.0]), stop_loss=st.sampled_from([-1.0, math.nan]),
    sufficient_stats=st.sampled_from([1, 1.0, None, "yes"]),
    spectral_every=st.sampled_from([0, 2**63, "x"]),
)
TRAIN_OK = {**RUN_OK, "solver": st.sampled_from(["picard", "anderson", "broyden", "direct"]),
            "lr": st.sampled_from([1e-3, 0.1, 0.1, 1.0, 100.0]),
            "steps": st.sampled_from([1, 5, 20])}
TRAIN_BAD = {**RUN_BAD, "solver": st.just("newton"),
             "lr": st.sampled_from([0.0, -1.0, math.inf]),
             "steps": st.sampled_from([0, 2**63, 2.0])}


@EXAMPLES
@given(problems(), st.sampled_from(["linear", "linear", "readout", "nonlinear"]),
       options(TRAIN_OK, TRAIN_BAD), st.data())
def test_train(prob, model, kw, data):
    X, A, B = prob
    _fit_activation(model, kw, data)
    n, m = np.shape(X)[0], np.shape(A)[0]
    Y = data.draw(arrays((n,) if model == "readout" else (n, m), dtype=_dtype_of(X, A),
                         bad=data.draw(st.booleans())))
    res = call(db.train, ["model", "X", "Y", "A0", "B0", *kw], model, X, Y, A, B, **kw)
    if isinstance(res, Exception):
        return
    _check_run(res, kw, steps=kw["steps"])


FLOW_OK = {**RUN_OK, "t_end": st.sampled_from([1e-3, 1.0, 1.0, 1e12, 1e300]),
           "rtol": st.sampled_from([1e-8, 1e-3, 1e-200]),
           "atol": st.sampled_from([1e-10, 1e-3, 1e-200]),
           "max_steps": st.sampled_from([5, 50])}
FLOW_BAD = {**RUN_BAD, "t_end": st.sampled_from([0.0, math.nan, -1.0]),
            "rtol": st.sampled_from([0.0, -1e-3]), "atol": st.just(math.inf),
            "max_steps": st.sampled_from([0, 2**63])}


@EXAMPLES
@given(problems(), st.sampled_from(["linear", "linear", "readout"]),
       options(FLOW_OK, FLOW_BAD), st.data())
def test_flow(prob, model, kw, data):
    X, A, B = prob
    _fit_activation(model, kw, data)
    n, m = np.shape(X)[0], np.shape(A)[0]
    Y = data.draw(arrays((n,) if model == "readout" else (n, m), dtype=_dtype_of(X, A),
                         bad=data.draw(st.booleans())))
    res = call(db.flow, ["model", "X", "Y", "A0", "B0", *kw], model, X, Y, A, B, **kw)
    if isinstance(res, Exception):
        return
    _check_run(res, kw, steps=kw["max_steps"])
    assert 0.0 <= res.t <= kw["t_end"]
    if res.status == "finished":
        assert res.t == pytest.approx(kw["t_end"])


def _fit_activation(model, kw, data):
    """The linear model takes the identity only: keep another activation one time in
    eight (a named error), else make it the identity."""
    if model == "linear" and kw["activation"] in ACTIVATIONS and data.draw(st.integers(0, 7)):
        kw["activation"] = "identity"


def _check_run(res, kw, steps):
    assert res.status in RUN_STATUSES, res.status
    assert np.isfinite(res.A).all() and np.isfinite(res.B).all(), "always finite"
    h = res.history
    assert len({len(v) for v in h.values()}) == 1
    assert 0 <= res.n_steps <= steps
    if res.status == "max_steps":
        assert res.n_steps == steps
    if res.status == "converged":
        assert h["loss"][-1] <= kw["stop_loss"]
    if len(h["loss"]) and res.status != "diverged":
        assert np.isfinite(h["loss"]).all()


# --- the paper's model: a scalar state, Newton ------------------------------------------

SCALAR_OK = dict(tol=VALID_TOL, max_iter=VALID_ITER,
                 activation=st.sampled_from([*ACTIVATIONS, "skip_tanh(0.25)"]),
                 grad_solver=st.sampled_from([None, None, "newton", "direct", "jfb", "neumann"]),
                 neumann_terms=st.sampled_from([0, 1, 3]),
                 neumann_damping=st.sampled_from([1.0, 0.5, 0.25]))
SCALAR_BAD = dict(tol=BAD_TOL, max_iter=BAD_ITER, activation=BAD_ACT,
                  grad_solver=st.sampled_from(["picard", "magic", 1]),
                  neumann_terms=st.sampled_from([-1, 10**12, 2.5]),
                  neumann_damping=st.sampled_from([0.0, 1.5, math.nan, "x"]))
# b across the uniqueness guards (tanh b < 1, sigmoid b < 4) and beyond contraction
SCALAR_B = st.sampled_from([-40.0, -1.0, 0.0, 0.5, 0.99, 1.0, 3.99, 4.0, 10.0])


def _check_scalar_roots(z, X, A, B, act, tol, dtype):
    """A converged Newton solve: ``|z_i - sigma(<w, x_i> + b z_i)| <= tol`` for every
    sample in float64, up to the rounding of the residual's terms in ``dtype``."""
    z64, X64 = np.asarray(z, np.float64)[:, 0], np.asarray(X, np.float64)
    w, b = np.asarray(B, np.float64)[0], float(np.asarray(A, np.float64)[0, 0])
    with np.errstate(all="ignore"):
        terms = np.abs(X64 * w).sum(axis=1) + abs(b) * np.abs(z64)
        s = X64 @ w + b * z64
        F = act(s)
        r = np.abs(z64 - F)
    eps = float(np.finfo(dtype).eps)
    slope = max(abs(q) for q in act.derivative_bounds())
    slack = 16 * (X64.shape[1] + 4) * eps * (np.abs(z64) + np.abs(F) + slope * terms)
    bad = ~(r <= tol * (1 + 1e-6) + slack)
    assert not bad.any(), (r[bad], slack[bad])


@EXAMPLES
@given(problems(), SCALAR_B, options(SCALAR_OK, SCALAR_BAD), st.data())
def test_scalar_state(prob, b, kw, data):
    X, A, B = prob
    dt = _dtype_of(X, A)
    if data.draw(st.integers(0, 7)):  # mostly the paper's shapes; else the rename's error
        A, B = np.array([[b]], dtype=dt), np.asarray(B)[:1].copy()
    n = np.shape(X)[0]
    fkw = {k: kw[k] for k in ("tol", "max_iter", "activation")}
    res = call(db.fixed_point, ["X", "A", "B", "method", *fkw], X, A, B, method="newton",
               **fkw)
    if not isinstance(res, Exception):
        assert res.status in {"converged", "max_iter", "diverged", "not_unique"}, res.status
        assert res.converged == (res.status == "converged") and np.isfinite(res.z).all()
        if res.converged:
            _check_scalar_roots(res.z, X, A, B, _phi(kw["activation"]),
                                _tol_used(kw["tol"], dt), dt)
    Y = data.draw(arrays((n,), dtype=dt, bad=data.draw(st.booleans())))
    names = ["model", "X", "Y", "A", "B", *kw]
    res = call(db.loss_and_grad, names, "single_index", X, Y, A, B, **kw)
    if not isinstance(res, Exception):
        assert res.fp_status in {"converged", "max_iter", "diverged", "not_unique"}
        assert res.converged == (res.fp_status == "converged")
        if res.converged:
            assert res.adj_status in ("converged", "truncated")
            assert np.isfinite(res.grad_A).all() or not np.isfinite(res.loss)
            _check_scalar_roots(res.z, X, A, B, _phi(kw["activation"]),
                                _tol_used(kw["tol"], dt), dt)
    steps = data.draw(st.sampled_from([1, 3]))
    lr = data.draw(st.sampled_from([1e-3, 0.1, 10.0]))
    res = call(db.train, ["model", "X", "Y", "A0", "B0", "lr", *kw], "single_index", X, Y,
               A, B, lr=lr, steps=steps, **kw)
    if not isinstance(res, Exception):
        _check_run(res, {"stop_loss": None}, steps=steps)


# --- theory and data --------------------------------------------------------------------

NUMBER = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 0.5, 1e-300, 1e300, math.nan, math.inf,
                                    1 - 1e-16, None, "x", True]),
                   st.floats(allow_nan=False, allow_infinity=False, width=64))


def _picard_count(lam, tol, cap):
    z, k = 0.0, 0
    while k <= cap:
        f = lam * z + 1.0
        if abs(f - z) <= tol * abs(f):
            return k
        z, k = f, k + 1
    return None


@EXAMPLES
@given(NUMBER, NUMBER, st.one_of(st.none(), NUMBER))
def test_predicted_fp_iters(rate, tol, gap):
    k = call(theory.predicted_fp_iters, ["rate", "tol", "gap"], rate, tol, gap=gap)
    if isinstance(k, Exception):
        return
    assert k == math.inf or (k >= 1 and k == int(k))
    if gap is None and 0 < rate < 1 and 1e-12 <= tol < 1 and k < 5000:
        # the scalar map (above the rounding floor, where floating point ends it early)
        want = _picard_count(rate, tol, 6000)
        assert want is not None and abs(k - max(want, 1)) <= 1


@EXAMPLES
@given(NUMBER, st.sampled_from([1, 30, 10**4, 0, -1, 2.5, None]))
def test_certified_rate(tol, max_iter):
    r = call(theory.certified_rate, ["tol", "max_iter"], tol, max_iter)
    if not isinstance(r, Exception):
        assert 0.0 <= r < 1.0


@EXAMPLES
@given(st.integers(1, 12), st.integers(1, 4), st.integers(1, 3), st.data())
def test_least_squares_and_fits(n, d, m, data):
    X = data.draw(arrays((n, d)))
    Y = data.draw(arrays(data.draw(st.sampled_from([(n, m), (n,), (n + 1, m), (n, m, 1)]))))
    out = call(theory.least_squares, ["X", "Y"], X, Y)
    if not isinstance(out, Exception):
        W, L = out
        assert W.shape == ((d,) if np.ndim(Y) == 1 else (m, d)) and (L >= 0 or math.isnan(L))
    x = data.draw(st.lists(NUMBER, min_size=0, max_size=6))
    y = data.draw(st.lists(NUMBER, min_size=0, max_size=6))
    out = call(theory.loglog_fit, ["x", "y"], x, y)
    if not isinstance(out, Exception):
        assert len(out) == 2
    losses = data.draw(st.lists(NUMBER, min_size=0, max_size=8))
    steps = data.draw(st.one_of(st.none(), st.lists(NUMBER, min_size=0, max_size=8)))
    out = call(theory.empirical_factor, ["losses", "L_star", "steps"], losses,
               data.draw(NUMBER), steps)
    if not isinstance(out, Exception):
        assert math.isnan(out) or out >= 0
    out = call(theory.rate_check, ["losses", "L_star", "predicted", "steps"], losses,
               data.draw(NUMBER), data.draw(NUMBER), steps)
    if not isinstance(out, Exception):
        assert out["verdict"] in ("holds", "local", "violated", "vacuous", "not applicable",
                                  "no fit")


@EXAMPLES
@given(problems(), st.data())
def test_theory_matrices(prob, data):
    X, A, B = prob
    Q = call(theory.invariant, ["A", "B"], A, B)
    if not isinstance(Q, Exception) and np.isfinite(Q).all():
        np.testing.assert_array_equal(Q, Q.T)
    m = np.shape(A)[0] if np.ndim(A) == 2 else 1
    W = data.draw(arrays((m, data.draw(st.integers(1, 3)))))
    Qs = data.draw(arrays((m, m)))
    call(theory.conditioning_bounds, ["Q", "W"], Qs, W)
    call(theory.drift_bound, ["lr", "L0", "LK"], data.draw(NUMBER), data.draw(NUMBER),
         data.draw(NUMBER))
    call(theory.drift_gain_bounds, ["lr", "smoothness"], data.draw(NUMBER), data.draw(NUMBER))
    call(theory.pl_constant, ["model", "X", "Q", "u", "activation"],
         data.draw(st.sampled_from(["linear", "readout", "x"])), X, Qs)


@EXAMPLES
@given(st.sampled_from([1, 5, 0, -1, 10**12, 2.5, None]), st.sampled_from([1, 3, 0, 10**9]),
       st.sampled_from([1, 2, 0, 10**9]), NUMBER, NUMBER,
       st.sampled_from([0, 7, -1, 2**70, 1.5, "s", None, np.random.SeedSequence(3)]))
def test_data_builders(n, d, m, noise, scale, seed):
    out = call(db.data.linear_teacher, ["n", "d", "m", "noise", "seed"], n, d, m, noise=noise,
               seed=seed)
    if not isinstance(out, Exception):
        X, Y, W = out
        assert X.shape == (n, d) and Y.shape == (n, m) and W.shape == (m, d)
        if noise == 0.0:
            np.testing.assert_allclose(Y, X @ W.T, rtol=1e-12, atol=1e-12)
    out = call(db.data.init_params, ["d", "m", "scale_A", "scale_B", "seed"], d, m,
               scale_A=scale, scale_B=1.0, seed=seed)
    if not isinstance(out, Exception):
        A0, B0 = out
        assert A0.shape == (m, m) and B0.shape == (m, d)
        assert np.isfinite(A0).all() and np.isfinite(B0).all()
        if scale > 1e-290:  # (subnormal entries cannot hold a norm to 9 digits)
            assert np.linalg.norm(A0 / scale, 2) == pytest.approx(1.0, rel=1e-9)
