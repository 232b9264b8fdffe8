"""Implicit gradients against the dense adjoint solve and central finite
differences (docs/theory.md §4), for the three models."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deqbench as db
from tests import naive
from tests.conftest import NONLINEAR, ONE_EACH, small_problem

CASES = [
    ("linear", "identity"),
    *[("readout", name) for name in ONE_EACH],
    *[("nonlinear", name) for name in NONLINEAR],
]


def _targets(model, rng, n, m):
    return rng.standard_normal(n) if model == "readout" else rng.standard_normal((n, m))


@pytest.mark.parametrize(("model", "name"), CASES)
@pytest.mark.parametrize("solver", ["picard", "anderson"])
def test_gradient_matches_dense_adjoint_and_finite_differences(rng, model, name, solver):
    A, B, X = small_problem(rng, n=9, d=3, m=4, scale_A=0.5)
    Y = _targets(model, rng, 9, 4)
    u = rng.standard_normal(4) if model == "readout" else None
    loss, gA, gB, info = db.loss_and_grad(model, X, Y, A, B, u=u, activation=name,
                                          solver=solver, tol=1e-12)
    assert info["converged"] and info["fp_residual"] <= 1e-12 and info["adj_residual"] <= 1e-12
    assert loss == pytest.approx(naive.loss(model, A, B, X, Y, u, name), rel=1e-10)
    dA, dB = naive.grad_dense(model, A, B, X, Y, u, name)
    scale = np.linalg.norm(dA) + np.linalg.norm(dB)
    np.testing.assert_allclose(gA, dA, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(gB, dB, rtol=0, atol=1e-9 * scale)
    fA, fB = naive.grad_fd(model, A.copy(), B.copy(), X, Y, u, name)
    np.testing.assert_allclose(gA, fA, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(gB, fB, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "softplus"])
@pytest.mark.parametrize("damping", [1.0, 0.6])
def test_nonlinear_gradient_with_damped_picard(rng, name, damping):
    # tanh and sigmoid read phi' off the forward solve's last (damped) evaluation,
    # softplus recomputes the pre-activation: both must give the dense gradient
    A, B, X = small_problem(rng, n=300, d=3, m=5, scale_A=0.6)
    Y = rng.standard_normal((300, 5))
    res = db.loss_and_grad("nonlinear", X, Y, A, B, activation=name, damping=damping,
                           tol=1e-13)
    assert res.fp_status == "converged" and res.adj_status == "converged"
    dA, dB = naive.grad_dense("nonlinear", A, B, X, Y, name=name)
    scale = np.linalg.norm(dA) + np.linalg.norm(dB)
    np.testing.assert_allclose(res.grad_A, dA, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(res.grad_B, dB, rtol=0, atol=1e-10 * scale)


def test_direct_gradient_matches_dense(rng):
    A, B, X = small_problem(rng, n=11, d=5, m=6, scale_A=0.8)
    Y = rng.standard_normal((11, 6))
    _, gA, gB, info = db.loss_and_grad("linear", X, Y, A, B, solver="direct")
    assert info["fp_status"] == "converged" and info["adj_status"] == "converged"
    dA, dB = naive.grad_dense("linear", A, B, X, Y)
    np.testing.assert_allclose(gA, dA, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(gB, dB, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_neumann_and_jfb_are_truncated_series(rng, k):
    A, B, X = small_problem(rng, n=8, d=3, m=5, scale_A=0.7)
    Z = naive.linear_fixed_point(A, B, X)
    G = rng.standard_normal(Z.shape)
    method = "jfb" if k == 0 else "neumann"
    res = db.implicit_grad(X, A, B, Z, G, method=method, neumann_terms=k)
    series = sum(np.linalg.matrix_power(A, j) for j in range(k + 1))
    Lam = G @ series
    np.testing.assert_allclose(res.adjoint, Lam, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res.grad_A, Lam.T @ Z, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(res.grad_B, Lam.T @ X, rtol=1e-12, atol=1e-14)
    assert res.status == "truncated" and res.converged
    # the reported residual is the honest distance from the adjoint equation
    exact = np.linalg.norm(Lam @ A + G - Lam) / np.linalg.norm(Lam @ A + G)
    assert res.residual == pytest.approx(exact, rel=1e-9)


def test_neumann_converges_to_exact_gradient(rng):
    A, B, X = small_problem(rng, n=8, d=3, m=5, scale_A=0.5)
    Z = naive.linear_fixed_point(A, B, X)
    G = rng.standard_normal(Z.shape)
    exact = db.implicit_grad(X, A, B, Z, G, method="direct")
    errs = [np.linalg.norm(db.implicit_grad(X, A, B, Z, G, method="neumann", neumann_terms=k).grad_A
                           - exact.grad_A) for k in (1, 5, 20, 60)]
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False))
    assert errs[-1] <= 1e-12 * np.linalg.norm(exact.grad_A)


def test_adjoint_warm_start(rng):
    A, B, X = small_problem(rng, n=20, d=4, m=6, scale_A=0.8)
    Z = naive.linear_fixed_point(A, B, X)
    G = rng.standard_normal(Z.shape)
    cold = db.implicit_grad(X, A, B, Z, G, tol=1e-12)
    warm = db.implicit_grad(X, A, B, Z, G, tol=1e-12, adj0=cold.adjoint)
    assert warm.n_iter == 0 and cold.n_iter > 10
    np.testing.assert_allclose(warm.grad_A, cold.grad_A)


def test_adjoint_failure_is_a_status(rng):
    A, B, X = small_problem(rng, n=20, d=4, m=6, scale_A=0.95)
    Z = naive.linear_fixed_point(A, B, X)
    G = rng.standard_normal(Z.shape)
    with pytest.warns(db.ConvergenceWarning, match="implicit_grad"):
        res = db.implicit_grad(X, A, B, Z, G, tol=1e-14, max_iter=2)
    assert not res.converged and res.status == "max_iter"
    assert np.isfinite(res.grad_A).all()


@settings(deadline=None, max_examples=30)
@given(
    m=st.integers(1, 40),
    d=st.integers(1, 40),
    n=st.integers(1, 200),
    scale=st.floats(0.0, 0.9),
    model=st.sampled_from(["linear", "readout"]),
    solver=st.sampled_from(["picard", "anderson", "direct"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_gradients_match_dense_reference(m, d, n, scale, model, solver, seed):
    rng = np.random.default_rng(seed)
    A, B = db.data.init_params(d, m, scale_A=scale, scale_B=1.0, seed=seed)
    X = rng.standard_normal((n, d))
    Y = _targets(model, rng, n, m)
    _, gA, gB, info = db.loss_and_grad(model, X, Y, A, B, solver=solver, tol=1e-12)
    assert info["converged"]
    dA, dB = naive.grad_dense(model, A, B, X, Y)
    scale_g = np.linalg.norm(dA) + np.linalg.norm(dB) + 1e-300
    # error <= cond(I - A) x tol: ||A|| <= 0.9 gives cond <= 19
    assert np.linalg.norm(gA - dA) <= 1e-9 * scale_g
    assert np.linalg.norm(gB - dB) <= 1e-9 * scale_g


@pytest.mark.parametrize(("model", "name"), [("linear", "identity"), ("readout", "tanh"),
                                             ("nonlinear", "tanh")])
@pytest.mark.parametrize("solver", ["picard", "anderson"])
@pytest.mark.parametrize("m", [56, 112])
def test_wide_maps_match_reference(rng, model, name, solver, m):
    """Several row blocks (the parallel kernels) and a ragged last block; at
    m = 112 blocks of 76 rows where BLAS has its small path (blocks.SMALL_GEMM_MNK)."""
    from deqbench._kernels.blocks import block_rows

    d = 5
    n = 3 * block_rows(10**6, m) + 7
    A, B, X = small_problem(rng, n=n, d=d, m=m, scale_A=0.6)
    Y = _targets(model, rng, n, m)
    loss, gA, gB, info = db.loss_and_grad(model, X, Y, A, B, activation=name, solver=solver,
                                          tol=1e-12)
    assert info["converged"]
    assert loss == pytest.approx(naive.loss(model, A, B, X, Y, None, name), rel=1e-10)
    dA, dB = naive.grad_dense(model, A, B, X, Y, None, name)
    scale = np.linalg.norm(dA) + np.linalg.norm(dB)
    np.testing.assert_allclose(gA, dA, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(gB, dB, rtol=0, atol=1e-9 * scale)


@pytest.mark.parametrize(("model", "name", "arrays"), [("linear", "identity", 4),
                                                       ("nonlinear", "tanh", 5),
                                                       ("nonlinear", "softplus", 6)])
def test_loss_and_grad_peak_memory(rng, model, name, arrays):
    # what the forward solve leaves for the adjoint (U = X B^T, Picard's last evaluation) is
    # kept only when the adjoint reads it: the linear adjoint reads neither, tanh reads the
    # evaluation (and then needs no array of its own for phi'), softplus reads U
    import tracemalloc

    n, m = 4000, 16
    A, B, X = small_problem(rng, n=n, d=m, m=m, scale_A=0.5)
    Y = rng.standard_normal((n, m))
    db.loss_and_grad(model, X, Y, A, B, activation=name)  # compiled outside the count
    tracemalloc.start()
    try:
        db.loss_and_grad(model, X, Y, A, B, activation=name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= (arrays + 0.5) * n * m * 8
