"""Forward solves against dense solves, long Picard loops and docs/theory.md §3."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deqbench as db
from deqbench import theory
from tests import naive
from tests.conftest import NONLINEAR, small_problem, symmetric_with_radius

TOL = 1e-10


@pytest.mark.parametrize("method", ["picard", "anderson", "direct"])
def test_linear_matches_dense_solve(rng, method):
    A, B, X = small_problem(rng, n=50, d=6, m=9, scale_A=0.7)
    res = db.fixed_point(X, A, B, method=method, tol=TOL)
    Zd = naive.linear_fixed_point(A, B, X)
    assert res.converged and res.status == "converged"
    assert res.residual <= TOL
    # a-posteriori bound with the norm contraction ||A||_2 = 0.7 (docs/theory.md §3):
    # ||z - z*|| <= residual ||F(z)|| / (1 - c)
    Fz = res.z @ A.T + X @ B.T
    err = np.linalg.norm(res.z - Zd)
    assert err <= res.error_bound(0.7) * np.linalg.norm(Fz) * (1 + 1e-6) + 1e-300
    assert err / np.linalg.norm(Zd) <= 1e-9
    assert res.residual == pytest.approx(naive.map_residual(A, B, X, res.z), rel=1e-6, abs=1e-15)
    assert res.history[-1] == res.residual and len(res.history) == res.n_iter + 1


@pytest.mark.parametrize("name", NONLINEAR)
@pytest.mark.parametrize("method", ["picard", "anderson"])
def test_nonlinear_matches_long_picard(rng, name, method):
    A, B, X = small_problem(rng, n=40, d=5, m=8, scale_A=0.6)
    res = db.fixed_point(X, A, B, activation=name, method=method, tol=TOL)
    Zr = naive.picard_loop(A, B, X, name)
    assert res.converged
    assert naive.map_residual(A, B, X, res.z, name) <= TOL * (1 + 1e-6)
    # ||A||_2 = 0.6 and phi 1.25-Lipschitz at most (skip_tanh(0.25)): contraction c <= 0.75
    c = db.get_activation(name).lipschitz * 0.6
    Fz = naive.act(name, res.z @ A.T + X @ B.T, db.get_activation(name).slope)
    assert np.linalg.norm(res.z - Zr) <= res.error_bound(c) * np.linalg.norm(Fz) * (1 + 1e-6)


def test_error_bound_needs_a_norm_contraction():
    """docs/theory.md §3: rho(A) = 0.9 but ||A||_2 ~ 50; residual / (1 - rho) is no bound."""
    A = np.array([[0.9, 50.0], [0.0, -0.9]])
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    B = np.eye(2)
    res = db.fixed_point(X, A, B, tol=1e-6)
    Zs = naive.linear_fixed_point(A, B, X)
    Fz = res.z @ A.T + X @ B.T
    ratio = np.linalg.norm(res.z - Zs) / (res.error_bound(0.9) * np.linalg.norm(Fz))
    assert res.converged and ratio > 10  # about 25
    with pytest.raises(ValueError, match="norm contraction"):
        res.error_bound(np.linalg.norm(A, 2))


def test_methods_agree_and_anderson_is_faster_on_slow_map(rng):
    m, d, n = 30, 10, 300
    A = symmetric_with_radius(m, 0.98, rng)
    B = rng.standard_normal((m, d))
    X = rng.standard_normal((n, d))
    pic = db.fixed_point(X, A, B, method="picard", tol=TOL)
    and_ = db.fixed_point(X, A, B, method="anderson", tol=TOL, anderson_history=8)
    dir_ = db.fixed_point(X, A, B, method="direct", tol=TOL)
    assert pic.converged and and_.converged and dir_.converged
    scale = np.linalg.norm(dir_.z)
    # error <= residual / (1 - rho) = 50 x tol
    assert np.linalg.norm(pic.z - dir_.z) / scale <= 60 * TOL
    assert np.linalg.norm(and_.z - dir_.z) / scale <= 60 * TOL
    assert and_.n_iter < pic.n_iter / 3


@pytest.mark.parametrize("kind", ["orthogonal", "gaussian"])
@pytest.mark.parametrize("rho", [0.3, 0.5, 0.8, 0.9, 0.95])
def test_picard_iterations_match_prediction(rng, rho, kind):
    """K = ceil(log(tol / gap) / log(rho)), gap = min |1 - lambda(A)| (docs/theory.md §3):
    the relative residual's denominator ||F(Z)|| ~ ||Z*|| grows like 1 / gap."""
    m, d, n = 24, 8, 200
    R = rng.standard_normal((m, m))
    if kind == "orthogonal":
        A = rho * np.linalg.qr(R)[0]
    else:
        A = rho * R / np.abs(np.linalg.eigvals(R)).max()
    B = rng.standard_normal((m, d))
    X = rng.standard_normal((n, d))
    res = db.fixed_point(X, A, B, tol=TOL)
    gap = np.min(np.abs(1 - np.linalg.eigvals(A)))
    predicted = theory.predicted_fp_iters(rho, TOL, gap=gap)
    assert abs(res.n_iter - predicted) <= 0.1 * predicted + 3


def test_anderson_evaluates_the_minimiser_at_large_radius():
    """rho(A) = 3000, m = 3, history 5 >= m + 1: the window's least squares
    terminates (GMRES) after m + 1 evaluations, but one map step after it
    multiplies the residual by A^T; Anderson evaluates the minimiser itself
    (docs/theory.md §3). Without that it drifts to the growth rule."""
    m, n = 3, 25
    rng = np.random.default_rng(0)
    A = 0.4 * rng.standard_normal((m, m)) / np.sqrt(m) + np.outer(rng.standard_normal(m),
                                                                   rng.standard_normal(m))
    A *= 3000.0 / np.abs(np.linalg.eigvals(A)).max()
    U = rng.standard_normal((n, m))
    res = db.fixed_point(U, A, np.eye(m), method="anderson", tol=TOL, max_iter=300)
    assert res.converged and res.n_iter <= 2 * (m + 1)
    np.testing.assert_allclose(res.z, np.linalg.solve(np.eye(m) - A, U.T).T, rtol=1e-10,
                               atol=1e-10 * np.abs(res.z).max())


def test_damping_converges_where_picard_diverges(rng):
    # eigenvalues -1.5 .. 0.5: spectral radius 1.5 > 1, real parts < 1
    m, d, n = 10, 4, 60
    Q, _ = np.linalg.qr(rng.standard_normal((m, m)))
    lam = np.linspace(-1.5, 0.5, m)
    A = (Q * lam) @ Q.T
    B = rng.standard_normal((m, d))
    X = rng.standard_normal((n, d))
    with pytest.warns(db.ConvergenceWarning, match="did not converge"):
        plain = db.fixed_point(X, A, B, tol=TOL, max_iter=2000)
    assert not plain.converged and plain.status == "diverged"
    assert np.isfinite(plain.z).all()
    damped = db.fixed_point(X, A, B, tol=TOL, damping=0.5)
    assert damped.converged
    # damped iteration matrix 1 - 0.5 (1 - lam): radius max(|1 - 1.25|, |1 - 0.25|) = 0.75
    predicted = theory.predicted_fp_iters(0.75, TOL, gap=0.5)  # gap: eigenvalue 0.5
    assert abs(damped.n_iter - predicted) <= 0.1 * predicted + 3
    np.testing.assert_allclose(damped.z, naive.linear_fixed_point(A, B, X), rtol=0, atol=1e-8)


def test_warm_start_from_solution_takes_no_iterations(rng):
    A, B, X = small_problem(rng)
    sol = db.fixed_point(X, A, B, tol=1e-13)
    again = db.fixed_point(X, A, B, tol=1e-12, z0=sol.z)
    assert again.n_iter == 0 and again.converged


def test_max_iter_reports_non_convergence(rng):
    A, B, X = small_problem(rng, scale_A=0.9)
    with pytest.warns(db.ConvergenceWarning, match="max_iter"):
        res = db.fixed_point(X, A, B, tol=1e-14, max_iter=3)
    assert not res.converged and res.status == "max_iter" and res.n_iter == 3
    assert res.residual == pytest.approx(naive.map_residual(A, B, X, res.z), rel=1e-9)


@pytest.mark.parametrize("method", ["picard", "anderson"])
def test_overflow_is_a_status_with_last_finite_iterate(rng, method):
    A, B, X = small_problem(rng)
    X[0, 0] = 1e308
    B[:] = 1e10
    with pytest.warns(db.ConvergenceWarning, match="diverged"):
        res = db.fixed_point(X, A, B, method=method)
    assert res.status == "diverged" and not res.converged
    assert np.isfinite(res.z).all()


def test_direct_on_singular_map_is_a_status(rng):
    A, B, X = small_problem(rng)
    A[:] = np.eye(A.shape[0])
    with pytest.warns(db.ConvergenceWarning, match="singular"):
        res = db.fixed_point(X, A, B, method="direct")
    assert not res.converged and np.isfinite(res.z).all()


@settings(deadline=None, max_examples=40)
@given(
    m=st.integers(1, 40),
    d=st.integers(1, 40),
    n=st.integers(1, 200),
    scale=st.floats(0.0, 0.9),
    method=st.sampled_from(["picard", "anderson", "direct"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_solution_satisfies_equation(m, d, n, scale, method, seed):
    rng = np.random.default_rng(seed)
    A, B = db.data.init_params(d, m, scale_A=scale, scale_B=1.0, seed=seed)
    X = rng.standard_normal((n, d))
    res = db.fixed_point(X, A, B, method=method, tol=TOL)
    assert res.converged
    assert naive.map_residual(A, B, X, res.z) <= TOL * (1 + 1e-6) + 1e-15
