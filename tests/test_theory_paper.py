"""deqbench.theory, the paper's scalar model (docs/theory.md §12): every formula against
brute-force numerics (scipy root finding per sample, finite differences of the loss,
simulated iterations, quadrature)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad
from scipy.optimize import brentq

import deqbench as db
from deqbench import theory
from tests import naive

# --- brute-force references ----------------------------------------------------------


def equilibrium(X, w, b, act):
    """z_i = sigma(<w, x_i> + b z_i), one bracketed root per sample (scipy's brentq)."""
    out = []
    for s0 in X @ w:
        def g(y, s0=s0):
            return y - naive.act(act, s0 + b * y)
        lo, hi = -1.0, 1.0
        while g(lo) > 0:
            lo *= 2.0
        while g(hi) < 0:
            hi *= 2.0
        out.append(brentq(g, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps))
    return np.array(out)


def loss(X, y, theta, act):
    z = equilibrium(X, theta[:-1], theta[-1], act)
    return 0.5 * float(np.mean((z - y) ** 2))


def fd_gradient(X, y, theta, act, h=1e-6):
    g = np.zeros(theta.size)
    for j in range(theta.size):
        e = np.zeros(theta.size)
        e[j] = h
        g[j] = (loss(X, y, theta + e, act) - loss(X, y, theta - e, act)) / (2 * h)
    return g


def fd_hessian(X, y, theta, act, h=1e-4):
    """Second central differences of the loss itself."""
    p = theta.size
    H = np.zeros((p, p))
    for i in range(p):
        for j in range(p):
            ei, ej = np.eye(p)[i] * h, np.eye(p)[j] * h
            H[i, j] = (loss(X, y, theta + ei + ej, act) - loss(X, y, theta + ei - ej, act)
                       - loss(X, y, theta - ei + ej, act)
                       + loss(X, y, theta - ei - ej, act)) / (4 * h * h)
    return 0.5 * (H + H.T)


def _problem(seed, n=30, d=2, act="tanh"):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    xi = rng.standard_normal(d)
    xi /= np.linalg.norm(xi)
    return X, xi, naive.act(act, X @ xi)


# --- backward factors -----------------------------------------------------------------


def test_backward_factors_are_their_series():
    a = np.linspace(-2.5, 0.9, 35)
    np.testing.assert_allclose(theory.backward_factor(a), 1 / (1 - a), rtol=1e-15)
    np.testing.assert_array_equal(theory.backward_factor(a, "jfb"), np.ones_like(a))
    for k in range(5):
        series = sum(a**j for j in range(k + 1))
        np.testing.assert_allclose(theory.backward_factor(a, "neumann", neumann_terms=k),
                                   series, rtol=1e-13, atol=1e-15)
        for lam in (0.25, 0.5, 1.0):
            damped = lam * sum((1 - lam + lam * a) ** j for j in range(k + 1))
            np.testing.assert_allclose(theory.backward_factor(a, "damped_neumann",
                                                              neumann_terms=k, damping=lam),
                                       damped, rtol=1e-13, atol=1e-15)
    # the paper's two named rules
    np.testing.assert_allclose(theory.backward_factor(a, "neumann"), 1 + a)
    np.testing.assert_allclose(theory.backward_factor(a, "damped_neumann"), 0.75 + 0.25 * a)
    # the damped series tends to the exact factor (multiplier 0.95 at b = 0.9)
    b = np.linspace(-0.9, 0.9, 7)
    np.testing.assert_allclose(theory.backward_factor(b, "damped_neumann", neumann_terms=2000),
                               1 / (1 - b), rtol=1e-12)


def test_backward_roots_against_numpy_roots():
    for k in range(7):
        for backward, lam in (("neumann", 1.0), ("damped_neumann", 0.5),
                              ("damped_neumann", 0.3)):
            coef = np.polynomial.Polynomial([1.0 - lam, lam])
            poly = lam * sum((coef**j for j in range(k + 1)), np.polynomial.Polynomial([0.0]))
            roots = poly.roots()
            real = np.sort(roots[np.abs(roots.imag) < 1e-7].real)
            got = theory.backward_roots(backward, neumann_terms=k, damping=lam)
            np.testing.assert_allclose(got, real, atol=1e-7)
            for r in got:
                assert abs(theory.backward_factor(r, backward, neumann_terms=k,
                                                  damping=lam)) < 1e-12
    assert theory.backward_roots("exact").size == 0 and theory.backward_roots("jfb").size == 0
    assert theory.backward_roots("neumann").tolist() == [-1.0]
    assert theory.backward_roots("neumann", neumann_terms=2).size == 0  # 1 + a + a^2 > 0
    assert theory.backward_roots("damped_neumann").tolist() == [-3.0]


def test_backward_validation():
    with pytest.raises(ValueError, match="backward must be one of"):
        theory.backward_factor(0.1, "neumann2")
    with pytest.raises(ValueError, match="neumann_terms must be >= 0, got -1"):
        theory.backward_factor(0.1, "neumann", neumann_terms=-1)
    with pytest.raises(ValueError, match=r"damping must be in \(0, 1\], got 0"):
        theory.backward_factor(0.1, "damped_neumann", damping=0)
    with pytest.raises(ValueError, match="a must differ from 1"):
        theory.backward_factor([0.5, 1.0])
    with pytest.raises(ValueError, match="a must be finite"):
        theory.backward_factor([np.nan])


# --- the implicit gradient ------------------------------------------------------------


@pytest.mark.parametrize(("act", "b"), [("tanh", 0.3), ("sigmoid", -2.0), ("identity", 0.6),
                                        ("skip_tanh(0.5)", -0.4), ("softplus", 0.2)])
def test_scalar_gradient_matches_finite_differences(act, b):
    X, xi, _ = _problem(1, act=act)
    y = naive.act(act, X @ xi) + 0.1 * np.sin(np.arange(X.shape[0]))  # non-zero residuals
    w = xi + np.array([0.3, -0.2])
    z = equilibrium(X, w, b, act)
    gw, gb = theory.scalar_gradient(X, y, w, b, z, activation=act)
    fd = fd_gradient(X, y, np.r_[w, b], act)
    np.testing.assert_allclose(np.r_[gw, gb], fd, rtol=1e-6, atol=1e-9)
    # the paper's risk has no 1/2
    pw, pb = theory.scalar_gradient(X, y, w, b, z, activation=act, convention="paper")
    np.testing.assert_allclose(np.r_[pw, pb], 2 * np.r_[gw, gb], rtol=1e-15)


@pytest.mark.parametrize(("grad_solver", "k", "backward"),
                         [(None, 5, "exact"), ("jfb", 0, "jfb"), ("neumann", 1, "neumann"),
                          ("neumann", 2, "neumann"), ("neumann", 3, "neumann")])
def test_scalar_gradient_is_deqbench_nonlinear_m1(grad_solver, k, backward):
    """The same numbers as deqbench's adjoint (and its JFB / Neumann) with m = 1."""
    X, xi, y = _problem(2, n=40, d=3, act="tanh")
    w, b = xi + 0.2, 0.4
    kw = {} if grad_solver is None else {"grad_solver": grad_solver, "neumann_terms": k}
    r = db.loss_and_grad("nonlinear", X, y[:, None].copy(), np.array([[b]]), w[None, :].copy(),
                         activation="tanh", tol=1e-14, **kw)
    gw, gb = theory.scalar_gradient(X, y, w, b, r.z[:, 0], activation="tanh",
                                    backward=backward, neumann_terms=k)
    np.testing.assert_allclose(np.r_[gw, gb], np.r_[r.grad_B[0], r.grad_A[0, 0]],
                               rtol=1e-11, atol=1e-15)


def test_scalar_state_validation():
    X, xi, y = _problem(3)
    with pytest.raises(ValueError, match="z must solve z = sigma"):
        theory.scalar_jacobian(X, xi, 0.3, np.tanh(X @ xi), activation="tanh")
    with pytest.raises(ValueError, match="z \\(the equilibrium\\) is needed when b != 0"):
        theory.scalar_gradient(X, y, xi, 0.3, activation="tanh")
    with pytest.raises(ValueError, match="w must have shape"):
        theory.scalar_jacobian(X, np.ones(3), 0.0, activation="tanh")
    with pytest.raises(ValueError, match="convention must be one of"):
        theory.zero_risk_hessian(X, xi, convention="half")
    with pytest.raises(TypeError, match="b must be a real number"):
        theory.scalar_jacobian(X, xi, "0", activation="tanh")


# --- the zero-risk point and its Hessian ---------------------------------------------


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "skip_tanh(0.25)"])
def test_zero_risk_hessian_is_the_hessian_at_the_target(act):
    X, xi, y = _problem(4, n=25, d=2, act=act)
    theta = np.r_[xi, 0.0]
    assert loss(X, y, theta, act) < 1e-30  # (xi, 0) is a zero-risk point
    H = theory.zero_risk_hessian(X, xi, activation=act)
    np.testing.assert_allclose(H, fd_hessian(X, y, theta, act), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(theory.zero_risk_hessian(X, xi, activation=act,
                                                        convention="paper"), 2 * H, rtol=1e-15)
    assert np.linalg.eigvalsh(H)[0] > 0  # [X, sigma(X xi)] has independent columns


def test_zero_risk_hessian_is_not_the_hessian_where_residuals_are_not_zero():
    """The Gauss-Newton form needs r = 0: elsewhere it misses sum r_i Hess z_i."""
    X, xi, _ = _problem(5, n=25, d=2)
    y = np.tanh(X @ xi) + 0.3
    GN = theory.zero_risk_hessian(X, xi, activation="tanh")
    assert np.max(np.abs(GN - fd_hessian(X, y, np.r_[xi, 0.0], "tanh"))) > 1e-3


def test_linear_zero_risk_line_is_flat():
    """Identity link: the zero-risk set is w = xi (1 - b), a null direction of the Hessian;
    one feature: lambda+ = mean(x^2) (1 + phi^2) / (1 - b)^2."""
    x = np.random.default_rng(6).uniform(0, 1, 50)
    b = 0.58
    c = 2 * (1 - b)
    H = theory.zero_risk_hessian(x[:, None], np.array([c]), b, 2 * x)
    lam = np.linalg.eigvalsh(H)
    assert abs(lam[0]) < 1e-14 * lam[1]
    np.testing.assert_allclose(lam[1], np.mean(x**2) * 5 / (1 - b) ** 2, rtol=1e-13)
    np.testing.assert_allclose(H, fd_hessian(x[:, None], 2 * x, np.array([c, b]), "identity"),
                               rtol=1e-5)
    direction = np.array([-2.0, 1.0]) / math.sqrt(5)  # d(c, b) along c = 2 (1 - b)
    assert np.linalg.norm(H @ direction) < 1e-12


# --- local rates ------------------------------------------------------------------------


@settings(deadline=None, max_examples=40)
@given(st.integers(0, 10_000), st.floats(0.05, 1.9))
def test_gd_local_rate_is_the_contraction_of_the_linearised_iteration(seed, frac):
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    lam = np.sort(rng.uniform(0.05, 1.0, 4))
    H = Q @ np.diag(lam) @ Q.T
    lr = frac / lam[-1]
    q = theory.gd_local_rate(H, lr)
    M = np.eye(4) - lr * H
    # every error contracts by at most q per step, and the slowest one by exactly q
    e0 = rng.standard_normal(4)
    e = e0.copy()
    for k in range(1, 201):
        e = M @ e
        assert np.linalg.norm(e) <= q**k * np.linalg.norm(e0) * (1 + 1e-9) + 1e-300
    slow = Q[:, np.argmax(np.abs(1 - lr * lam))]
    assert np.linalg.norm(M @ slow) == pytest.approx(q, rel=1e-12)
    assert q == pytest.approx(np.max(np.abs(np.linalg.eigvals(M))), rel=1e-12)


def test_gd_local_rate_leaves_out_flat_directions():
    H = np.diag([1e-12, 0.5, 2.0])  # a rounding-level eigenvalue along a set of minima
    assert theory.gd_local_rate(H, 0.1) == pytest.approx(0.95)
    assert theory.gd_local_rate(H, 0.1, rank_tol=0.0) == pytest.approx(1.0)
    assert theory.gd_local_rate(H, 0.9) == pytest.approx(0.8)  # |1 - 0.9 * 2| > |1 - 0.45|
    with pytest.raises(ValueError, match="no eigenvalue above rank_tol"):
        theory.gd_local_rate(np.zeros((2, 2)), 0.1)
    with pytest.raises(ValueError, match="lr must be > 0"):
        theory.gd_local_rate(H, 0.0)


def test_step_matrix_gives_the_rate_of_approximate_gradient_descent():
    """Run JFB / two-term GD on a realizable tanh problem (NumPy loop, brentq equilibria)
    from near (xi, 0): the error contracts by max |1 - lr mu(J_f^T J / n)|."""
    X, xi, y = _problem(7, n=40, d=2)
    target = np.r_[xi, 0.0]
    for backward, k in (("exact", 1), ("jfb", 0), ("neumann", 1)):
        M = theory.step_matrix(X, xi, activation="tanh", backward=backward, neumann_terms=k)
        lr = 1.0
        q = theory.gd_local_rate(M, lr)
        theta = target + np.array([1e-4, -2e-4, 3e-4])
        errs = []
        for _ in range(60):
            z = equilibrium(X, theta[:-1], theta[-1], "tanh")
            gw, gb = theory.scalar_gradient(X, y, theta[:-1], theta[-1], z, activation="tanh",
                                            backward=backward, neumann_terms=k)
            theta = theta - lr * np.r_[gw, gb]
            errs.append(np.linalg.norm(theta - target))
        assert errs[-1] / errs[-2] == pytest.approx(q, rel=2e-3), backward
    M = theory.step_matrix(X, xi, activation="tanh")
    np.testing.assert_allclose(M, theory.zero_risk_hessian(X, xi, activation="tanh"),
                               rtol=1e-14)


def test_steps_to_risk_against_a_loop():
    for risk0, level, rate in ((1.0, 1e-10, 0.9), (3e-3, 2e-20, 0.99122), (5.0, 1.0, 0.5)):
        k, r = 0, risk0
        while r > level:
            r *= rate * rate
            k += 1
        assert theory.steps_to_risk(risk0, level, rate) == k
    assert theory.steps_to_risk(1e-3, 1e-2, 0.9) == 0
    assert theory.steps_to_risk(1.0, 1e-2, 1.0) == math.inf
    with pytest.raises(ValueError, match="level must be > 0"):
        theory.steps_to_risk(1.0, 0.0, 0.5)


# --- the two-term stall -----------------------------------------------------------------


@pytest.mark.parametrize(("sxx", "sxy", "c0"), [(1.0, 1.0, math.sqrt(8)), (0.4, 0.7, 6.0)])
def test_stall_rate_against_the_simulated_counterexample(sxx, sxy, c0):
    """Two-term GD on the scalar linear DEQ (plain loop): b -> -1, where 1 + b vanishes,
    at the predicted per-step factor, with a non-zero loss left."""
    lr = 0.04
    c, b = c0, 0.0
    gaps = []
    for _ in range(6000):
        phi = c / (1 - b)
        g = phi * sxx - sxy
        c, b = c - lr * g * (1 + b), b - lr * g * (1 + b) * phi
        gaps.append(b + 1.0)
    assert abs(b + 1.0) < 1e-9 and abs(c / 2 * sxx - sxy) > 1e-3
    q = theory.stall_rate(c, lr, sxx=sxx, sxy=sxy)
    k = int(np.nonzero(np.abs(gaps) < 1e-7)[0][0])  # in the linear regime, above rounding
    assert gaps[k] / gaps[k - 1] == pytest.approx(q, rel=1e-5)


def test_stall_rate_needs_a_root():
    with pytest.raises(ValueError, match="has no real root"):
        theory.stall_rate(2.25, 0.04, neumann_terms=2)
    with pytest.raises(ValueError, match="root must be a real root"):
        theory.stall_rate(2.25, 0.04, root=-0.5)
    assert theory.stall_rate(2.25, 0.04, backward="damped_neumann") == pytest.approx(
        1 - 0.04 * (2.25 / 4 - 1) * (2.25 / 4) * 0.25)


# --- the weak nonlinearity -------------------------------------------------------------


def _sech2(t):
    e = math.exp(-2.0 * abs(t))
    return 4.0 * e / (1.0 + e) ** 2


def test_skip_tanh_curvature_limit_population_against_quadrature():
    s = quad(lambda t: math.exp(-t * t / 2) * _sech2(t) / math.sqrt(2 * math.pi),
             -np.inf, np.inf, epsabs=1e-14)[0]
    t2 = quad(lambda t: math.exp(-t * t / 2) * math.tanh(t) ** 2 / math.sqrt(2 * math.pi),
              -np.inf, np.inf, epsabs=1e-14)[0]
    zt = quad(lambda t: math.exp(-t * t / 2) * t * math.tanh(t) / math.sqrt(2 * math.pi),
              -np.inf, np.inf, epsabs=1e-14)[0]
    assert zt == pytest.approx(s, rel=1e-10)  # Stein's identity
    assert theory.skip_tanh_curvature_limit(convention="paper") == pytest.approx(
        t2 - zt**2, rel=1e-9)
    assert theory.skip_tanh_curvature_limit() == pytest.approx((1 - s - s * s) / 2, rel=1e-9)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_skip_tanh_curvature_limit_empirical_against_eigenvalues(scale):
    """lambda_min(J^T J / n) / eps^2 at small eps, J built by hand, tends to the limit;
    a non-unit xi checks the 1 / (1 + |xi|^2)."""
    X, xi, _ = _problem(8, n=500, d=3)
    xi = scale * xi
    lim = theory.skip_tanh_curvature_limit(X, xi)
    z = X @ xi
    got = []
    for eps in (1e-2, 5e-3):
        J = (1 + eps / np.cosh(z) ** 2)[:, None] * np.column_stack([X, z + eps * np.tanh(z)])
        got.append(np.linalg.eigvalsh(J.T @ J / len(z))[0] / eps**2)
    assert abs(got[1] / lim - 1) < 0.6 * abs(got[0] / lim - 1) + 1e-6  # O(eps) gap
    assert got[1] == pytest.approx(lim, rel=2e-2)
    H = theory.zero_risk_hessian(X, xi, activation="skip_tanh(0.005)")
    assert np.linalg.eigvalsh(H)[0] / 0.005**2 == pytest.approx(got[1], rel=1e-6)
    with pytest.raises(ValueError, match="pass both X and xi"):
        theory.skip_tanh_curvature_limit(X)
