"""deqbench.theory: the formulas of docs/theory.md §3 and §5-§7, checked against
direct computation and against the exact gradients of the library."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deqbench as db
from deqbench import theory
from tests import naive
from tests.conftest import symmetric_with_radius


def _point(seed, m, d, n, scale_A=0.5):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, m))
    A *= scale_A / np.linalg.norm(A, 2)
    B = rng.standard_normal((m, d))
    X = rng.standard_normal((n, d))
    return rng, A, B, X


def test_invariant_matches_definition():
    _, A, B, _ = _point(0, 4, 3, 5)
    Q = theory.invariant(A, B)
    np.testing.assert_allclose(Q, naive.invariant_q(A, B), rtol=1e-14)
    np.testing.assert_allclose(Q, Q.T, rtol=0, atol=0)
    assert np.linalg.eigvalsh(Q)[0] > 0
    # rows are spheres
    C = np.eye(4) - A
    np.testing.assert_allclose(np.diag(Q), np.sum(C**2, 1) + np.sum(B**2, 1), rtol=1e-14)


@pytest.mark.parametrize(("model", "act"), [("linear", "identity"),
                                            ("single_index", "leaky_relu(0.3)"),
                                            ("single_index", "tanh"),
                                            ("single_index", "sigmoid")])
def test_gd_invariant_step_is_exact(model, act):
    """Any loss of W = C^{-1} B: the first-order term cancels (section 5)."""
    rng, A, B, X = _point(1, 4, 3, 30)
    Y = rng.standard_normal(30) if model == "single_index" else rng.standard_normal((30, 4))
    lr = 0.3
    for _ in range(25):
        _, gA, gB, _ = db.loss_and_grad(model, X, Y, A, B, activation=act, solver="direct")
        Q = theory.invariant(A, B)
        A, B = A - lr * gA, B - lr * gB
        Q1 = theory.invariant(A, B)
        np.testing.assert_allclose(theory.gd_invariant_step(Q, gA, gB, lr), Q1,
                                   rtol=0, atol=1e-12 * np.linalg.norm(Q1))
        # first-order term vanishes: sym(grad_C C^T + grad_B B^T) = 0
        C = np.eye(4) - (A + lr * gA)
        S = -gA @ C.T + gB @ (B + lr * gB).T
        assert np.linalg.norm(S + S.T) <= 1e-12 * np.linalg.norm(gA) * np.linalg.norm(C) + 1e-12


def test_gd_invariant_step_does_not_hold_for_nonlinear():
    rng, A, B, X = _point(2, 4, 3, 30)
    Y = rng.standard_normal((30, 4))
    _, gA, gB, _ = db.loss_and_grad("nonlinear", X, Y, A, B, activation="tanh", tol=1e-13)
    lr = 0.3
    Q1 = theory.invariant(A - lr * gA, B - lr * gB)
    gap = np.linalg.norm(theory.gd_invariant_step(theory.invariant(A, B), gA, gB, lr) - Q1)
    assert gap > 1e-6 * np.linalg.norm(Q1)


def test_drift_bound():
    assert theory.drift_bound(0.1, 3.0, 1.0) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="lr"):
        theory.drift_bound(0.0, 3.0, 1.0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 6), d=st.integers(1, 6))
def test_linear_pl_inequality_holds(seed, m, d):
    """||grad||^2 >= mu (L - L*) with mu = 2 lmin / lambda_max(Q) at the current point."""
    rng, A, B, X = _point(seed, m, d, 3 * d + 10)
    Y = rng.standard_normal((X.shape[0], m))
    L, gA, gB, _ = db.loss_and_grad("linear", X, Y, A, B, solver="direct")
    mu = theory.pl_constant("linear", X, theory.invariant(A, B))
    L_star = theory.global_min_loss("linear", X, Y)
    g2 = np.sum(gA**2) + np.sum(gB**2)
    assert g2 >= mu * (L - L_star) * (1 - 1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 6), d=st.integers(1, 6))
def test_single_index_pl_inequality_holds(seed, m, d):
    """Realizable leaky-ReLU teacher: ||grad||^2 >= mu L (L* = 0)."""
    act = "leaky_relu(0.5)"
    X, y, _ = db.data.single_index_teacher(4 * d + 20, d, activation=act, seed=seed)
    _, A, B, _ = _point(seed, m, d, 1)
    L, gA, gB, _ = db.loss_and_grad("single_index", X, y, A, B, activation=act,
                                    solver="direct")
    mu = theory.pl_constant("single_index", X, theory.invariant(A, B), activation=act)
    assert mu > 0
    assert np.sum(gA**2) + np.sum(gB**2) >= mu * L * (1 - 1e-9)


def test_pl_constant_formulas():
    rng, A, B, X = _point(3, 3, 4, 50)
    Q = theory.invariant(A, B)
    ev = np.linalg.eigvalsh(X.T @ X / 50)
    q = np.linalg.eigvalsh(Q)[-1]
    assert theory.pl_constant("linear", X, Q) == pytest.approx(2 * ev[0] / q)
    u = np.array([1.0, 2.0, 0.5])
    got = theory.pl_constant("single_index", X, Q, u=u, activation="leaky_relu(0.2)")
    assert got == pytest.approx(2 * 0.2**4 * ev[0] ** 2 * np.sum(u**2) / (ev[-1] * q))
    # outside the theorem (gamma = 0): no rate
    assert theory.pl_constant("single_index", X, Q, activation="tanh") == 0.0
    # predicted factor with and without the drift inflation
    lr = 0.01
    f0 = theory.predicted_factor("linear", X, Q, lr)
    f1 = theory.predicted_factor("linear", X, Q, lr, L0=2.0, L_star=0.5)
    assert f0 == pytest.approx(1 - lr * 2 * ev[0] / q)
    assert f1 == pytest.approx(1 - lr * 2 * ev[0] / (q + 2 * lr * 1.5))
    assert f0 < f1 < 1
    assert theory.predicted_factor("linear", X, Q, 1e6) == 0.0


def test_global_min_loss():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((40, 5))
    Y = rng.standard_normal((40, 3))
    W = np.linalg.lstsq(X, Y, rcond=None)[0]
    expected = 0.5 * np.sum((X @ W - Y) ** 2) / 40
    assert theory.global_min_loss("linear", X, Y) == pytest.approx(expected, rel=1e-12)
    y = Y[:, 0]
    assert theory.global_min_loss("single_index", X, y) == pytest.approx(
        0.5 * np.sum((X @ W[:, 0] - y) ** 2) / 40, rel=1e-12)
    with pytest.raises(ValueError, match="L_star"):
        theory.global_min_loss("single_index", X, y, activation="tanh")
    with pytest.raises(ValueError, match="Y"):
        theory.global_min_loss("linear", X, Y[:10])


def test_empirical_factor_window():
    r, L_star, L0 = 0.9, 0.25, 1.25
    k = np.arange(600)
    L = L_star + (L0 - L_star) * r**k
    # L - L* loses digits to cancellation near the 1e3 eps L_0 floor
    assert theory.empirical_factor(L, L_star) == pytest.approx(r, rel=1e-6)
    L, L_star = (L0 - L_star) * r**k, 0.0
    assert theory.empirical_factor(L, L_star) == pytest.approx(r, rel=1e-10)
    # a float floor after convergence is excluded from the fit
    floored = np.maximum(L, L_star + 1e-20)
    assert theory.empirical_factor(floored, L_star) == pytest.approx(r, rel=1e-10)
    # a slow transient before the half-way point is excluded too
    trans = L.copy()
    trans[:3] = L0
    assert theory.empirical_factor(trans, L_star) == pytest.approx(r, rel=1e-10)
    # recorded every 5 steps: still a per-step factor
    assert theory.empirical_factor(L[::5], L_star, steps=k[::5]) == pytest.approx(r, rel=1e-10)
    assert math.isnan(theory.empirical_factor(L[:2], L_star))
    assert math.isnan(theory.empirical_factor(np.full(10, 2.0), L_star))
    with pytest.raises(ValueError, match="steps"):
        theory.empirical_factor(L, L_star, steps=k[:5])
    check = theory.rate_check(L, L_star, 0.8)
    assert check["violated"] and check["ratio"] == pytest.approx(0.9 / 0.8)
    assert not theory.rate_check(L, L_star, 0.95)["violated"]


@pytest.mark.parametrize("rho", [0.3, 0.6, 0.9])
def test_predicted_fp_iters_matches_picard(rho):
    rng = np.random.default_rng(5)
    A = symmetric_with_radius(6, rho, rng)
    B = rng.standard_normal((6, 4))
    X = rng.standard_normal((30, 4))
    tol = 1e-10
    got = db.fixed_point(X, A, B, tol=tol).n_iter
    pred = theory.predicted_fp_iters(rho, tol)
    assert abs(got - pred) <= 0.15 * pred + 3
    assert theory.predicted_fp_iters(1.0, tol) == math.inf
    assert theory.predicted_fp_iters(0.0, tol) == 1.0
    with pytest.raises(ValueError, match="tol"):
        theory.predicted_fp_iters(0.5, 0.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 6), d=st.integers(1, 6),
       scale=st.floats(0.0, 0.95))
def test_conditioning_bounds_hold(seed, m, d, scale):
    _, A, B, _ = _point(seed, m, d, 1, scale_A=scale)
    C = np.eye(m) - A
    W = np.linalg.solve(C, B)
    lower, upper = theory.conditioning_bounds(theory.invariant(A, B), W)
    sv = np.linalg.svd(C, compute_uv=False)
    assert sv[-1] >= lower * (1 - 1e-10)
    assert sv[0] <= upper * (1 + 1e-10)


def test_conditioning_bounds_along_training():
    X, Y, _ = db.data.linear_teacher(80, 5, 4, seed=6)
    A0, B0 = db.data.init_params(5, 4, scale_A=0.5, scale_B=1.0, seed=7)
    r = db.train("linear", X, Y, A0, B0, lr=0.05, steps=200, spectral_every=1)
    W = np.linalg.solve(np.eye(4) - r.A, r.B)
    lower, upper = theory.conditioning_bounds(theory.invariant(r.A, r.B), W)
    h = r.history
    assert h["sigma_min"][-1] >= lower * (1 - 1e-10)
    assert h["sigma_max"][-1] <= upper * (1 + 1e-10)
    # sigma_max(I - A)^2 <= lambda_max(Q_k) <= q0 + 2 lr (L0 - LK) along the whole run
    q0 = np.linalg.eigvalsh(theory.invariant(A0, B0))[-1]
    assert np.all(h["sigma_max"] ** 2 <= q0 + 2 * 0.05 * (h["loss"][0] - h["loss"]) + 1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: theory.invariant(np.ones((2, 3)), np.ones((2, 2))), "A"),
        (lambda: theory.invariant(np.eye(2), np.ones((3, 2))), "B"),
        (lambda: theory.gd_invariant_step(np.eye(2), np.eye(2), np.ones((2, 1)), -1.0), "lr"),
        (lambda: theory.gd_invariant_step(np.eye(2), np.eye(3), np.ones((2, 1)), 1.0), "grad_A"),
        (lambda: theory.pl_constant("nonlinear", np.eye(2), np.eye(2)), "model"),
        (lambda: theory.pl_constant("linear", np.eye(2), np.zeros((2, 2))), "Q"),
        (lambda: theory.pl_constant("single_index", np.eye(2), np.eye(2), u=np.ones(3)), "u"),
        (lambda: theory.predicted_factor("linear", np.eye(2), np.eye(2), 0.0), "lr"),
        (lambda: theory.empirical_factor(np.ones((2, 2)), 0.0), "losses"),
        (lambda: theory.conditioning_bounds(np.eye(2), np.ones((3, 1))), "W"),
        (lambda: theory.predicted_fp_iters(-0.1, 1e-3), "rho"),
        (lambda: theory.global_min_loss("linear", np.full((3, 2), np.nan), np.ones((3, 1))),
         "X"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
