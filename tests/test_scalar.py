"""Scalar equilibria ``y = sigma(<w, x> + b y)`` (the paper's single-index DEQ):
safeguarded Newton against Brent's method and bisection, the uniqueness guard,
the closed-form implicit gradient and its backward factors against finite
differences and their closed forms, and the fused GD loop against a plain NumPy
loop (tests/naive.py)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

import deqbench as db
from deqbench._kernels import scalar as K
from deqbench._scalar import loss_and_grad_scalar, solve_scalar, train_scalar
from tests import naive

# b inside the uniqueness guard: increasing g on (lo, hi); decreasing on the
# second interval where the link's derivative is bounded below by a positive number
GUARDED = {
    "identity": [(-3.0, 0.9), (1.1, 4.0)],
    "tanh": [(-3.0, 0.95)],
    "sigmoid": [(-8.0, 3.8)],
    "skip_tanh(0.5)": [(-3.0, 0.6), (1.05, 3.0)],
    "softplus": [(-3.0, 0.95)],
    "gelu": [(-7.0, 0.85)],
    "smooth_leaky(0.3)": [(-3.0, 0.95), (3.4, 6.0)],
    "leaky_relu(0.2)": [(-3.0, 0.95), (5.1, 8.0)],
    "relu": [(-3.0, 0.95)],
}


def _gmin(name, b):
    lo, hi = db.get_activation(name).derivative_bounds()
    return min(abs(1 - b * lo), abs(1 - b * hi))


def _problem(seed, n=40, d=3, scale=1.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), scale * rng.standard_normal(d) / np.sqrt(d)


# --- forward -----------------------------------------------------------------------


@settings(deadline=None, max_examples=60)
@given(name=st.sampled_from(sorted(GUARDED)), branch=st.integers(0, 1),
       frac=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1),
       scale=st.sampled_from([0.1, 1.0, 4.0]))
def test_newton_matches_brent(name, branch, frac, seed, scale):
    intervals = GUARDED[name]
    lo, hi = intervals[branch % len(intervals)]
    b = lo + frac * (hi - lo)
    X, w = _problem(seed, scale=scale)
    tol = 1e-12
    y, iters, status = solve_scalar(X, w, b, name, tol=tol)
    assert status == "converged" and iters.min() >= 1
    act = db.get_activation(name)
    s0 = X @ w
    gmin = _gmin(name, b)
    for i, u in enumerate(s0):
        g = lambda z, u=u: z - naive.act(name, u + b * z)  # noqa: E731
        r = abs(g(0.0)) / gmin + 1.0  # |y* - 0| <= |g(0)| / min |g'|
        root = brentq(g, -r, r, xtol=1e-15, rtol=1e-15)
        # |y - y*| <= |g(y)| / gmin, plus rounding of the two evaluations
        assert abs(y[i] - root) <= tol / gmin * 1.01 + 1e-13 * (1 + abs(root)), (i, u)
    res = np.abs(y - naive.act(name, s0 + b * y, act.slope))
    assert res.max() <= tol + 1e-14 * (1 + np.abs(y).max() + np.abs(s0).max())


@pytest.mark.parametrize("name, b", [("tanh", 0.9), ("sigmoid", 3.9), ("identity", 1.5),
                                     ("skip_tanh(0.25)", -2.0), ("softplus", 0.5)])
def test_newton_matches_bisection_to_the_tolerance(name, b):
    X, w = _problem(1, n=300, d=4, scale=3.0)
    ref = naive.scalar_roots(name, X @ w, b)
    for tol in (1e-6, 1e-10, 1e-13):
        y, _, status = solve_scalar(X, w, b, name, tol=tol)
        assert status == "converged"
        assert np.abs(y - ref).max() <= tol / _gmin(name, b) + 1e-14 * (1 + np.abs(ref).max())


def test_identity_is_the_closed_form_in_one_evaluation():
    X, w = _problem(2, n=100)
    for b in (-2.0, 0.3, 0.999, 1.001, 3.0):
        y, iters, status = solve_scalar(X, w, b, "identity")
        assert status == "converged" and (iters == 1).all()
        np.testing.assert_allclose(y, X @ w / (1 - b), rtol=1e-14, atol=1e-300)


def test_a_sample_is_solved_alike_in_any_block():
    """Lock-step sweeps leave converged samples alone: a sample's root and count
    do not depend on the others in its block."""
    X, w = _problem(3, n=300, d=4, scale=4.0)
    y, iters, _ = solve_scalar(X, w, 0.8, "tanh")
    for i in (0, 17, 255, 256, 299):
        yi, ki, _ = solve_scalar(X[i:i + 1], w, 0.8, "tanh")
        assert yi[0] == y[i] and ki[0] == iters[i]


# --- uniqueness guard ----------------------------------------------------------------


@pytest.mark.parametrize("name, b, sign", [
    ("tanh", 0.999, 1), ("tanh", 1.0, 0), ("tanh", -50.0, 1),
    ("sigmoid", 3.999, 1), ("sigmoid", 4.0, 0), ("sigmoid", 6.0, 0),
    ("identity", 0.999, 1), ("identity", 1.0, 0), ("identity", 1.001, -1),
    ("skip_tanh(0.5)", 0.66, 1), ("skip_tanh(0.5)", 0.7, 0), ("skip_tanh(0.5)", 1.0, 0),
    ("skip_tanh(0.5)", 1.01, -1),
    ("gelu", -7.7, 1), ("gelu", -7.8, 0), ("gelu", 0.88, 1), ("gelu", 0.89, 0),
    ("relu", 0.99, 1), ("relu", 1.0, 0), ("relu", 2.0, 0),
])
def test_guard_table(name, b, sign):
    """1 - b sigma' of one sign for every sigma' in [dmin, dmax] (docs: sigmoid b < 4,
    tanh b < 1, identity b != 1, skip_tanh(eps) b < 1 / (1 + eps) or b > 1,
    gelu 1 / dmin < b < 1 / dmax)."""
    lo, hi = db.get_activation(name).derivative_bounds()
    got, gmin = K.guard(b, lo, hi)
    assert got == sign
    if sign:
        assert gmin == pytest.approx(min(abs(1 - b * lo), abs(1 - b * hi)))


def test_guard_refuses_an_equation_with_three_roots():
    """sigmoid, b = 6, s0 = -2.9: y = sigmoid(-2.9 + 6 y) has three roots, so a root
    finder could return any of them; the solver refuses (a status, no root)."""
    grid = np.linspace(0.0, 1.0, 100001)
    g = grid - naive.act("sigmoid", -2.9 + 6.0 * grid)
    assert np.count_nonzero(g[:-1] * g[1:] < 0) == 3
    X = np.array([[1.0], [-1.0], [3.0]])
    y, iters, status = solve_scalar(X, np.array([-2.9]), 6.0, "sigmoid")
    assert status == "not_unique" and np.isnan(y).all() and (iters == 0).all()
    # Newton from different starts does land on different roots there
    roots = set()
    for y0 in (0.01, 0.5, 0.99):
        z = y0
        for _ in range(100):
            v = naive.act("sigmoid", -2.9 + 6.0 * z)
            z -= (z - v) / (1 - 6.0 * v * (1 - v))
        roots.add(round(z, 9))
    assert len(roots) == 3
    assert loss_and_grad_scalar(X, np.zeros(3), np.array([-2.9]), 6.0,
                                activation="sigmoid")[3] == "not_unique"


def test_a_run_that_leaves_the_guard_stops_at_the_last_good_step():
    """tanh with targets at 1 pushes b up through 1: the run stops with the solve
    status naming the guard, at the last parameters whose solve was certified."""
    rng = np.random.default_rng(4)
    X = np.abs(rng.standard_normal((50, 2)))
    Y = np.ones(50)
    r = train_scalar(X, Y, np.array([0.1, 0.1]), 0.5, lr=0.5, steps=500, activation="tanh",
                     record_theta=True)
    assert r.status == "fixed_point_failed" and r.solve_status == "not_unique"
    assert r.b < 1.0 and 0 < r.n_steps < 500
    h = r.history
    assert h["step"][-1] == r.n_steps and h["b"][-1] == r.b
    np.testing.assert_array_equal(h["theta"][-1], np.r_[r.w, r.b])
    # the next step would have crossed b = 1
    _, gw, gb, status, _ = loss_and_grad_scalar(X, Y, r.w, r.b, activation="tanh")
    assert status == "converged" and r.b - 0.5 * gb >= 1.0


# --- warm starts ---------------------------------------------------------------------


@pytest.mark.parametrize("name, b", [("tanh", 0.7), ("sigmoid", 3.0), ("skip_tanh(0.5)", 0.5),
                                     ("softplus", -1.0), ("gelu", 0.5)])
def test_warm_start_needs_fewer_evaluations_and_finds_the_same_root(name, b):
    X, w = _problem(5, n=200, d=3, scale=2.0)
    y, cold, _ = solve_scalar(X, w, b, name, tol=1e-13)
    w2, b2 = w * (1 + 1e-4), b + 1e-4
    yc, kc, _ = solve_scalar(X, w2, b2, name, tol=1e-13)
    yw, kw, status = solve_scalar(X, w2, b2, name, tol=1e-13, y0=y)
    assert status == "converged" and kw.sum() < kc.sum() and kw.max() <= 3
    assert np.abs(yw - yc).max() <= 2e-13 / _gmin(name, b2) + 1e-15
    # a start far from the root (outside sigma's range, or huge) still converges
    for y0 in (np.full(200, 1e6), np.full(200, -1e6), np.sin(100 * np.arange(200.0))):
        yf, _, status = solve_scalar(X, w2, b2, name, tol=1e-13, y0=y0)
        assert status == "converged"
        assert np.abs(yf - yc).max() <= 2e-13 / _gmin(name, b2) + 1e-15


def test_max_iter_and_non_finite_values_are_statuses():
    X, w = _problem(6, n=30, scale=3.0)
    y, _, status = solve_scalar(X, w, 0.9, "tanh", max_iter=1)
    assert status == "max_iter" and np.isnan(y).all()
    y, _, status = solve_scalar(X * 1e10, w * 1e300, 0.5, "softplus")  # s0 overflows
    assert status == "diverged"  # non-finite values
    r = train_scalar(X, np.zeros(30), w, 0.9, lr=0.1, steps=5, activation="tanh", max_newton=1)
    assert r.status == "fixed_point_failed" and r.solve_status == "max_iter"
    assert r.n_steps == 0 and len(r.history["loss"]) == 0 and np.array_equal(r.w, w)


# --- gradients and backward factors ------------------------------------------------


@pytest.mark.parametrize("name, b", [("identity", 0.4), ("identity", 1.6), ("tanh", 0.6),
                                     ("tanh", -1.5), ("sigmoid", 2.5), ("skip_tanh(0.5)", 0.3),
                                     ("softplus", 0.5), ("smooth_leaky(0.3)", -0.5)])
def test_exact_gradient_matches_finite_differences_and_the_reference(name, b):
    X, w = _problem(7, n=60, d=3)
    Y = np.random.default_rng(8).standard_normal(60)
    L, gw, gb, status, y = loss_and_grad_scalar(X, Y, w, b, activation=name, tol=1e-13)
    assert status == "converged"
    Lr, gwr, gbr = naive.scalar_loss_grad(name, X, Y, w, b)
    assert L == pytest.approx(Lr, rel=1e-12)
    scale = np.linalg.norm(np.r_[gwr, gbr])
    assert np.linalg.norm(np.r_[gw - gwr, gb - gbr]) <= 1e-10 * scale
    h = 1e-6
    theta = np.r_[w, b]
    fd = np.empty_like(theta)
    for j in range(theta.size):
        tp, tm = theta.copy(), theta.copy()
        tp[j] += h
        tm[j] -= h
        lp = loss_and_grad_scalar(X, Y, tp[:-1], tp[-1], activation=name, tol=1e-13)[0]
        lm = loss_and_grad_scalar(X, Y, tm[:-1], tm[-1], activation=name, tol=1e-13)[0]
        fd[j] = (lp - lm) / (2 * h)
    assert np.abs(fd - np.r_[gw, gb]).max() <= 1e-7 * max(scale, 1.0)


A = np.linspace(-0.95, 0.95, 39)
FACTORS = [
    (K.EXACT, 0, 1.0, lambda a: 1 / (1 - a)),
    (K.JFB, 0, 1.0, lambda a: np.ones_like(a)),
    (K.NEUMANN, 0, 1.0, lambda a: np.ones_like(a)),  # JFB as the one-term series
    (K.NEUMANN, 1, 1.0, lambda a: 1 + a),  # the paper's "two terms"
    (K.NEUMANN, 2, 1.0, lambda a: 1 + a + a * a),  # "three terms"
    (K.NEUMANN, 1, 0.5, lambda a: 0.75 + 0.25 * a),  # "two terms, lambda = 1/2"
    (K.NEUMANN, 3, 0.3, lambda a: 0.3 * sum((0.7 + 0.3 * a) ** j for j in range(4))),
]


@pytest.mark.parametrize("kind, terms, damping, closed", FACTORS)
def test_backward_factor_closed_forms(kind, terms, damping, closed):
    got = np.array([K.factor(kind, terms, damping, a) for a in A])
    np.testing.assert_allclose(got, closed(A), rtol=1e-14)
    # the damped iteration mu <- (1 - lam) mu + lam (a mu + 1), written out
    if kind == K.NEUMANN:
        mu = np.zeros_like(A)
        for _ in range(terms + 1):
            mu = (1 - damping) * mu + damping * (A * mu + 1)
        np.testing.assert_allclose(got, mu, rtol=1e-14)


BACKWARDS = [("jfb", None, 1.0, lambda a: np.ones_like(a)),
             ("neumann", 1, 1.0, lambda a: 1 + a),
             ("neumann", 2, 1.0, lambda a: 1 + a + a * a),
             ("neumann", 1, 0.5, lambda a: 0.75 + 0.25 * a)]


@pytest.mark.parametrize("backward, terms, damping, closed", BACKWARDS)
@pytest.mark.parametrize("name, b", [("tanh", 0.6), ("sigmoid", -2.0), ("skip_tanh(0.25)", 0.5)])
def test_approximate_gradients_are_their_backward_factor(backward, terms, damping, closed,
                                                         name, b):
    X, w = _problem(9, n=50, d=3)
    Y = np.random.default_rng(10).standard_normal(50)
    _, gw, gb, status, _ = loss_and_grad_scalar(X, Y, w, b, activation=name, backward=backward,
                                                neumann_terms=terms, neumann_damping=damping,
                                                tol=1e-13)
    _, gwr, gbr = naive.scalar_loss_grad(name, X, Y, w, b, backward=closed)
    assert status == "converged"
    np.testing.assert_allclose(np.r_[gw, gb], np.r_[gwr, gbr], rtol=1e-10,
                               atol=1e-12 * np.linalg.norm(np.r_[gwr, gbr]))


@pytest.mark.parametrize("b", [-0.3, 0.5, 0.9, 1.5])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_linear_model_k_terms_give_one_minus_b_to_the_k_times_the_exact_gradient(b, k):
    """identity link: a = b for every sample, the k-term series is (1 - b^k) / (1 - b),
    so the gradient is (1 - b^k) times the exact one (the paper's Appendix A.3)."""
    X, w = _problem(11, n=40, d=2)
    Y = np.random.default_rng(12).standard_normal(40)
    _, gw, gb, _, _ = loss_and_grad_scalar(X, Y, w, b, activation="identity")
    kw = dict(backward="neumann", neumann_terms=k - 1) if k > 1 else dict(backward="jfb")
    _, gwk, gbk, _, _ = loss_and_grad_scalar(X, Y, w, b, activation="identity", **kw)
    np.testing.assert_allclose(np.r_[gwk, gbk], (1 - b**k) * np.r_[gw, gb], rtol=1e-12,
                               atol=1e-14)


# --- the fused gradient-descent loop -----------------------------------------------


def _teacher(seed, n, d, name, b_teacher=0.0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    xi = rng.standard_normal(d)
    xi /= np.linalg.norm(xi)
    Y = naive.scalar_roots(name, X @ xi, b_teacher)
    return X, Y, xi, rng


RUNS = [("tanh", "exact", None, 1.0, 0.4), ("tanh", "neumann", 1, 0.5, 0.4),
        ("tanh", "jfb", None, 1.0, 0.4), ("sigmoid", "exact", None, 1.0, 2.0),
        ("skip_tanh(0.25)", "exact", None, 1.0, 0.1), ("identity", "neumann", 2, 1.0, 0.1)]


@pytest.mark.parametrize("name, backward, terms, damping, lr", RUNS)
@pytest.mark.parametrize("predict", [True, False])
def test_fused_gd_follows_the_numpy_loop(name, backward, terms, damping, lr, predict):
    X, Y, xi, rng = _teacher(13, 150, 4, name)
    w0 = xi + 0.3 * rng.standard_normal(4)
    b0 = 0.15
    steps = 300
    closed = {("exact", None, 1.0): None, ("jfb", None, 1.0): lambda a: np.ones_like(a),
              ("neumann", 1, 0.5): lambda a: 0.75 + 0.25 * a,
              ("neumann", 2, 1.0): lambda a: 1 + a + a * a}[(backward, terms, damping)]
    ws, bs, losses = naive.scalar_gd(name, X, Y, w0, b0, lr, steps, backward=closed)
    r = train_scalar(X, Y, w0, b0, lr=lr, steps=steps, activation=name, backward=backward,
                     neumann_terms=terms, neumann_damping=damping, predict=predict,
                     record_theta=True, tol=1e-13)
    assert r.status == "max_steps" and r.n_steps == steps
    h = r.history
    np.testing.assert_array_equal(h["step"], np.arange(steps + 1))
    # a root within tol moves L by |y - Y| tol: relative 1e-9 where |y - Y| ~ 1e-4
    np.testing.assert_allclose(h["loss"], losses, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(h["theta"], np.c_[ws, bs], rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.r_[r.w, r.b], np.r_[ws[-1], bs[-1]], rtol=0, atol=1e-10)
    assert (h["residual"] <= 1e-13).all() and (h["newton_max"] >= 1).all()
    assert (h["newton_mean"] <= h["newton_max"]).all()


def test_history_cadence_evaluation_loss_and_parameter_error():
    X, Y, xi, rng = _teacher(14, 120, 3, "tanh")
    Xe = rng.standard_normal((90, 3))
    Ye = np.tanh(Xe @ xi)
    w0 = xi + 0.2 * rng.standard_normal(3)
    r = train_scalar(X, Y, w0, 0.1, lr=0.4, steps=50, activation="tanh", record_every=7,
                     X_eval=Xe, Y_eval=Ye, target=xi, record_theta=True)
    h = r.history
    np.testing.assert_array_equal(h["step"], [0, 7, 14, 21, 28, 35, 42, 49, 50])
    for k, theta in enumerate(h["theta"]):
        ye = naive.scalar_roots("tanh", Xe @ theta[:-1], theta[-1])
        assert h["eval_loss"][k] == pytest.approx(np.mean((ye - Ye) ** 2) / 2, rel=1e-8)
        assert h["param_error"][k] == pytest.approx(np.linalg.norm(theta - np.r_[xi, 0.0]),
                                                    rel=1e-12)
        assert h["b"][k] == theta[-1]
    assert h["param_error"][-1] < h["param_error"][0]
    r2 = train_scalar(X, Y, w0, 0.1, lr=0.4, steps=50, activation="tanh", record_every=7,
                      target=np.r_[xi, 0.5])
    np.testing.assert_array_equal(h["loss"], r2.history["loss"])
    assert np.isnan(r2.history["eval_loss"]).all()
    assert (r2.history["param_error"] != h["param_error"]).all()


def test_stop_loss_and_divergence():
    X, Y, xi, rng = _teacher(15, 80, 3, "identity")
    r = train_scalar(X, Y, xi + 0.1, 0.2, lr=0.2, steps=5000, activation="identity",
                     stop_loss=1e-8)
    assert r.status == "converged" and r.history["loss"][-1] <= 1e-8 < r.history["loss"][-2]
    # from next to the minimum (L_0 ~ 1e-11) a far too long step passes 1e4 L_0
    r = train_scalar(X, Y, xi + 1e-5, 0.0, lr=50.0, steps=100, activation="identity",
                     record_theta=True)
    assert r.status == "diverged" and 0 < r.n_steps < 100
    h = r.history
    assert h["step"][-1] == r.n_steps and np.isfinite(h["loss"]).all()
    np.testing.assert_array_equal(h["theta"][-1], np.r_[r.w, r.b])
    assert h["loss"][-1] <= db.DIVERGENCE_FACTOR * h["loss"][0]


def test_results_do_not_depend_on_the_thread_count():
    X, Y, xi, rng = _teacher(16, 3000, 8, "tanh")
    w0 = xi + 0.2 * rng.standard_normal(8)
    runs = [train_scalar(X, Y, w0, 0.1, lr=0.4, steps=30, activation="tanh", threads=t)
            for t in (1, 2)]
    np.testing.assert_array_equal(runs[0].w, runs[1].w)
    assert runs[0].b == runs[1].b
    for key in ("loss", "grad_norm", "newton_mean", "residual"):
        np.testing.assert_array_equal(runs[0].history[key], runs[1].history[key])


# --- float32 -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "skip_tanh(0.25)", "identity"])
def test_float32_follows_the_float64_reference(name):
    X, Y, xi, rng = _teacher(17, 100, 3, name)
    w0 = xi + 0.2 * rng.standard_normal(3)
    X32, Y32, w32 = X.astype(np.float32), Y.astype(np.float32), w0.astype(np.float32)
    X6, Y6, w6 = X32.astype(float), Y32.astype(float), w32.astype(float)
    lr = 2.0 if name == "sigmoid" else 0.2
    ws, bs, losses = naive.scalar_gd(name, X6, Y6, w6, 0.1, lr, 20)
    r = train_scalar(X32, Y32, w32, 0.1, lr=lr, steps=20, activation=name, tol=1e-6)
    assert r.status == "max_steps" and r.w.dtype == np.float32
    np.testing.assert_allclose(r.history["loss"], losses, rtol=1e-4)
    np.testing.assert_allclose(r.w, ws[-1], rtol=1e-4, atol=1e-5)
    y, _, status = solve_scalar(X32, w32, 0.1, name, tol=1e-6)
    assert status == "converged" and y.dtype == np.float32
    ref = naive.scalar_roots(name, X6 @ w6, 0.1)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
    # a float64 tolerance below float32's reach converges at the rounding floor
    assert solve_scalar(X32, w32, 0.1, name, tol=1e-12)[2] == "converged"


# --- input checks --------------------------------------------------------------------


def test_bad_input_names_the_argument():
    X, w = _problem(18, n=10, d=2)
    Y = np.zeros(10)
    kw = dict(lr=0.1, steps=3)
    cases = [
        (dict(lr=0.0), ValueError, "lr must be > 0"),
        (dict(steps=-1), ValueError, "steps must be >= 0"),
        (dict(backward="newton"), ValueError, "backward must be one of"),
        (dict(backward="neumann"), ValueError, "neumann_terms must be given"),
        (dict(backward="neumann", neumann_terms=1, neumann_damping=1.5), ValueError,
         r"neumann_damping must be in \(0, 1\]"),
        (dict(neumann_terms=2), ValueError, "apply to backward='neumann' only"),
        (dict(tol=-1.0), ValueError, "tol must be > 0"),
        (dict(max_newton=0), ValueError, "max_newton must be >= 1"),
        (dict(record_every=0), ValueError, "record_every must be >= 1"),
        (dict(X_eval=X), ValueError, "X_eval and Y_eval must be given together"),
        (dict(target=np.zeros(5)), ValueError, "target must have length d = 2"),
        (dict(activation="skip_tanh"), ValueError, "skip_tanh needs its eps"),
        (dict(record_theta=1), TypeError, "record_theta must be a bool"),
    ]
    for extra, err, match in cases:
        args = {**kw, **extra}
        with pytest.raises(err, match=match):
            train_scalar(X, Y, w, 0.1, **args)
    with pytest.raises(ValueError, match=r"Y must have shape \(10,\)"):
        train_scalar(X, np.zeros(9), w, 0.1, **kw)
    with pytest.raises(ValueError, match=r"w0 must have shape \(2,\)"):
        train_scalar(X, Y, np.zeros(3), 0.1, **kw)
    with pytest.raises(TypeError, match="Y has dtype float32 but X has dtype float64"):
        train_scalar(X, Y.astype(np.float32), w, 0.1, **kw)
    with pytest.raises(ValueError, match="b0 must be finite"):
        train_scalar(X, Y, w, math.inf, **kw)
    with pytest.raises(ValueError, match="X must be finite"):
        solve_scalar(np.full((2, 2), np.nan), w, 0.1)
    with pytest.raises(ValueError, match=r"y0 must have shape \(10,\)"):
        solve_scalar(X, w, 0.1, y0=np.zeros(3))


def test_a_run_in_slices_is_the_run_in_one_call():
    """gd_run stops at k_stop (RUNNING) and goes on from there, as train does for
    Ctrl-C; gd_stop ends a stopped run at its last evaluated step."""
    from deqbench._scalar import HISTORY, _link, _opts

    X, Y, xi, rng = _teacher(19, 90, 3, "tanh")
    w0 = xi + 0.2 * rng.standard_normal(3)
    whole = train_scalar(X, Y, w0, 0.1, lr=0.4, steps=40, activation="tanh", record_every=3,
                         record_theta=True)
    link = _link("tanh")
    opts = _opts(lr=0.4, steps=40, tol=1e-12, max_iter=100, dtype=X.dtype, record_every=3)
    P, E = K.pack(X, Y), K.pack(np.empty((0, 3)), np.empty(0))
    w, bb, tgt = w0.copy(), np.array([0.1]), np.empty(0)
    H, T = np.full((16, K.NCOL), np.nan), np.full((16, 4), np.nan)
    state = K.gd_state(3, X.dtype)
    for k_stop in (1, 7, 8, 23):
        status, _, _ = K.gd_run(link, P, E, w, bb, tgt, opts, state, H, T, k_stop)
        assert status == K.RUNNING and state.ints[0] == k_stop
    status, last, nrec = K.gd_run(link, P, E, w, bb, tgt, opts, state, H, T, 41)
    assert status == K.MAX_STEPS and last == 40
    np.testing.assert_array_equal(np.r_[w, bb], np.r_[whole.w, whole.b])
    np.testing.assert_array_equal(H[:nrec, HISTORY["loss"]], whole.history["loss"])
    np.testing.assert_array_equal(T[:nrec], whole.history["theta"])
    # stopped with step 11's parameters not yet evaluated: back to step 10's, the last
    # evaluated step, recorded as the last row (its cadence skipped it)
    w, bb, P = w0.copy(), np.array([0.1]), K.pack(X, Y)  # P holds no warm start
    H, T = np.full((16, K.NCOL), np.nan), np.full((16, 4), np.nan)
    state = K.gd_state(3, X.dtype)
    K.gd_run(link, P, E, w, bb, tgt, opts, state, H, T, 11)
    last, nrec = K.gd_stop(link, E, w, bb, tgt, opts, state, H, T)
    assert last == 10 and H[nrec - 1, HISTORY["step"]] == 10
    np.testing.assert_array_equal(np.r_[w, bb], T[nrec - 1])
    assert not np.array_equal(T[nrec - 1], T[nrec - 2])
    np.testing.assert_array_equal(H[:nrec - 1, HISTORY["loss"]], whole.history["loss"][:4])


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_s0_beyond_the_dtype_partway_through_a_fused_run_is_diverged(act):
    """A step that leaves (w, b) finite but X w beyond float64: a saturating sigma would
    settle every sample at +-1 (or 0, 1) and the run would go on as if converged."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((40, 3)) * 1e200
    w = rng.standard_normal(3) * 1e-200  # s0 of order 1 at step 0
    Y = np.full(40, 0.5)
    r = train_scalar(X, Y, w, 0.2, lr=1.0, steps=5, activation=act, record_every=1)
    assert r.status == "fixed_point_failed" and r.solve_status == "diverged"
    # step 1 is the one that could not be solved: the run ends on step 0's parameters
    assert r.n_steps == 0 and r.b == 0.2
    np.testing.assert_array_equal(r.w, w)
