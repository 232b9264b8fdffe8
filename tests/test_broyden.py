"""Broyden's method (docs/theory.md §3, Broyden): forward and adjoint solves against
dense solves, scipy's root finder and the dense-per-sample reference of tests/naive.py,
in float64 and float32, through every call that takes a solver; its failure statuses;
its registry entry."""

import warnings

import numpy as np
import pytest
from scipy import optimize

import deqbench as db
from deqbench._registry import ADJOINT, EXACT_ADJOINT, FORWARD, SOLVERS
from deqbench.sweep import GridError, parse_grid
from deqbench.sweep.run_functions import run_train
from tests import naive
from tests.conftest import NONLINEAR, small_problem

TOL = 1e-10
F32 = np.float32


def _rel(a, b):
    return np.linalg.norm(np.asarray(a, float) - b) / np.linalg.norm(b)


def _map(A, B, X, name="identity"):
    act = db.get_activation(name)
    return lambda Z: naive.act(act.name, Z @ A.T + X @ B.T, act.slope)


def test_registry_entry():
    s = SOLVERS["broyden"]
    assert "broyden" in FORWARD and "broyden" in ADJOINT and "broyden" in EXACT_ADJOINT
    assert s.certificate == "none" and not s.linear_only and not s.inexact
    assert not s.keeps_evaluation and s.workspace == ("T", "history")
    assert s.slots(db.SolverOptions(anderson_history=7)) == 7
    assert "damping" not in s.options and "anderson_history" in s.options


@pytest.mark.parametrize("rho", [0.7, 1.5])
def test_linear_matches_dense_solve(rng, rho):
    """Broyden solves the linear fixed point beyond Picard's domain (rho(A) = 1.5):
    with 2m pairs kept it terminates in at most 2m steps on a linear map (Gay 1979)."""
    A, B, X = small_problem(rng, n=30, d=4, m=6)
    A = db.data.with_spectral_radius(A, rho)
    res = db.fixed_point(X, A, B, method="broyden", tol=TOL, anderson_history=12)
    Zd = naive.linear_fixed_point(A, B, X)
    assert res.converged and res.status == "converged" and res.method == "broyden"
    assert res.residual <= TOL and res.n_iter <= 2 * 6 + 1
    assert _rel(res.z, Zd) <= 1e-8
    assert res.residual == pytest.approx(naive.map_residual(A, B, X, res.z), rel=1e-6)
    assert res.history[-1] == res.residual and len(res.history) == res.n_iter + 1


@pytest.mark.parametrize("name", ["tanh", "sin_skip", "gelu"])
@pytest.mark.parametrize("history", [2, 5])
def test_iterates_match_the_dense_reference(rng, name, history):
    """Eight steps (restarts included at history 2) against the reference that keeps a
    dense H per sample: the same iterates to rounding, the same residuals."""
    A, B, X = small_problem(rng, n=12, d=3, m=5, scale_A=0.9)
    with pytest.warns(db.ConvergenceWarning, match="max_iter"):
        res = db.fixed_point(X, A, B, activation=name, method="broyden", tol=2e-15,
                             max_iter=8, anderson_history=history)
    Zr, k, hist = naive.broyden(_map(A, B, X, name), np.zeros((12, 5)), history, 2e-15, 8)
    assert res.status == "max_iter" and res.n_iter == k == 8
    assert _rel(res.z, Zr) <= 1e-10
    np.testing.assert_allclose(res.history, hist, rtol=1e-7)


@pytest.mark.parametrize("name", NONLINEAR)
def test_nonlinear_fixed_point_against_scipy_root(rng, name):
    """Every activation of the table (the registered ones too): the fixed point of a
    slow map (||A||_2 = 0.95 / Lipschitz constant) against scipy's root of
    g(z) = F(z) - z, sample by sample."""
    A, B, X = small_problem(rng, n=8, d=3, m=4)
    act = db.get_activation(name)
    A *= 0.95 / (np.linalg.norm(A, 2) * act.lipschitz)
    res = db.fixed_point(X, A, B, activation=name, method="broyden", tol=TOL)
    assert res.converged and res.residual <= TOL
    F = _map(A, B, X, name)
    for i in range(8):
        def g(z, i=i):
            Z = res.z.copy()
            Z[i] = z
            return F(Z)[i] - z

        root = optimize.root(g, np.zeros(4), method="hybr", tol=1e-13)
        assert np.linalg.norm(g(root.x)) <= 1e-12 * max(np.linalg.norm(root.x), 1.0)
        assert np.linalg.norm(res.z[i] - root.x) <= 1e-8 * max(np.linalg.norm(root.x), 1.0)


def test_fewer_evaluations_than_picard_on_a_slow_map(rng):
    """A contraction by 0.98 (docs/theory.md §3, when Broyden beats Picard)."""
    A, B, X = small_problem(rng, n=40, d=4, m=6)
    A *= 0.98 / np.linalg.norm(A, 2)
    pic = db.fixed_point(X, A, B, activation="tanh", tol=TOL)
    bro = db.fixed_point(X, A, B, activation="tanh", method="broyden", tol=TOL,
                         anderson_history=12)
    assert pic.converged and bro.converged
    assert bro.n_iter < pic.n_iter / 3
    assert _rel(bro.z, pic.z) <= 1e-8


def test_rows_are_independent_and_the_parallel_path_agrees(rng):
    """One estimate per sample: a sample's iterates do not depend on the others (at a
    fixed number of steps), on the parallel path (n m >= 2^14) as on the serial one."""
    A, B, X = small_problem(rng, n=6000, d=3, m=4, scale_A=0.9)
    kw = dict(activation="tanh", method="broyden", tol=2e-15, max_iter=6)
    with pytest.warns(db.ConvergenceWarning, match="max_iter"):
        full = db.fixed_point(X, A, B, **kw)
    rows = np.r_[0:5, 2999:3003, 5990:6000]
    with pytest.warns(db.ConvergenceWarning, match="max_iter"):
        part = db.fixed_point(X[rows], A, B, **kw)
    np.testing.assert_allclose(full.z[rows], part.z, rtol=1e-12, atol=1e-14)


def test_float32_forward_and_gradient(rng):
    A, B, X = small_problem(rng, n=9)
    Y = rng.standard_normal((9, 4))
    lo = [np.asarray(a, F32) for a in (X, Y, A, B)]
    X6, Y6, A6, B6 = (a.astype(float) for a in lo)
    r = db.fixed_point(lo[0], lo[2], lo[3], activation="tanh", method="broyden", tol=1e-6)
    assert r.converged and r.z.dtype == F32 and r.residual <= 1e-6
    assert _rel(r.z, naive.picard_loop(A6, B6, X6, "tanh")) < 2e-5
    res = db.loss_and_grad("nonlinear", *lo, activation="tanh", solver="broyden", tol=1e-6)
    assert res.converged and res.grad_A.dtype == F32
    rA, rB = naive.grad_dense("nonlinear", A6, B6, X6, Y6, name="tanh")
    assert _rel(res.grad_A, rA) < 1e-4 and _rel(res.grad_B, rB) < 1e-4
    lin = db.fixed_point(lo[0], lo[2], lo[3], method="broyden", tol=1e-6)
    assert lin.converged and _rel(lin.z, naive.linear_fixed_point(A6, B6, X6)) < 2e-5


@pytest.mark.parametrize("name", ["identity", "tanh", "softplus", "erf_link"])
def test_implicit_grad_matches_the_dense_adjoint(rng, name):
    A, B, X = small_problem(rng, n=9, d=3, m=4)
    Y = rng.standard_normal((9, 4))
    model = "linear" if name == "identity" else "nonlinear"
    fwd = db.fixed_point(X, A, B, activation=name, tol=1e-13)
    G = (fwd.z - Y) / 9
    r = db.implicit_grad(X, A, B, fwd.z, G, activation=name, method="broyden", tol=1e-13)
    assert r.converged and r.status == "converged" and r.method == "broyden"
    assert r.residual <= 1e-13 and len(r.history) == r.n_iter + 1
    dA, dB = naive.grad_dense(model, A, B, X, Y, name=name)
    scale = np.linalg.norm(dA) + np.linalg.norm(dB)
    np.testing.assert_allclose(r.grad_A, dA, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(r.grad_B, dB, rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize(("model", "name"), [("linear", "identity"), ("readout", "tanh"),
                                             ("nonlinear", "tanh"), ("nonlinear", "sin_skip")])
@pytest.mark.parametrize(("solver", "grad_solver"), [("broyden", None), ("picard", "broyden"),
                                                     ("broyden", "anderson")])
def test_loss_and_grad_matches_the_dense_reference(rng, model, name, solver, grad_solver):
    A, B, X = small_problem(rng, n=9, d=3, m=4, scale_A=0.6)
    Y = rng.standard_normal(9) if model == "readout" else rng.standard_normal((9, 4))
    res = db.loss_and_grad(model, X, Y, A, B, activation=name, solver=solver,
                           grad_solver=grad_solver, tol=1e-12)
    assert res.converged and res.fp_residual <= 1e-12 and res.adj_residual <= 1e-12
    act = db.get_activation(name)
    assert res.loss == pytest.approx(naive.loss(model, A, B, X, Y, None, act.name, act.slope),
                                     rel=1e-10)
    dA, dB = naive.grad_dense(model, A, B, X, Y, None, act.name, act.slope)
    scale = np.linalg.norm(dA) + np.linalg.norm(dB)
    np.testing.assert_allclose(res.grad_A, dA, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(res.grad_B, dB, rtol=0, atol=1e-9 * scale)


@pytest.mark.parametrize(("model", "name"), [("linear", "identity"), ("nonlinear", "tanh")])
def test_train_follows_plain_gradient_descent(rng, model, name):
    """train(solver="broyden") runs per sample (no certificate: the closed-form step
    does not stand in for it) and follows dense-solve gradient descent."""
    A, B, X = small_problem(rng, n=20, d=3, m=4, scale_A=0.5)
    Y = rng.standard_normal((20, 4))
    r = db.train(model, X, Y, A, B, lr=0.05, steps=6, activation=name, solver="broyden",
                 tol=1e-12)
    assert r.status == "max_steps" and not r.sufficient_stats
    As, Bs, losses = naive.gd_reference(model, A, B, X, Y, 0.05, 6, name=name)
    np.testing.assert_allclose(r.A, As[-1], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(r.B, Bs[-1], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(r.history["loss"], losses, rtol=1e-8)
    assert (r.history["fp_iters"][1:] > 0).all()
    with pytest.raises(ValueError, match="certificate on A.*'broyden'"):
        db.train(model, X, Y, A, B, lr=0.05, steps=2, activation=name, solver="broyden",
                 sufficient_stats=True)


def test_flow_with_broyden_matches_picard(rng):
    A, B, X = small_problem(rng, n=20, d=3, m=3, scale_A=0.5)
    Y = rng.standard_normal((20, 3))
    kw = dict(t_end=0.5, rtol=1e-8, activation="tanh")
    a = db.flow("nonlinear", X, Y, A, B, solver="broyden", **kw)
    b = db.flow("nonlinear", X, Y, A, B, solver="picard", **kw)
    assert a.status == b.status
    np.testing.assert_allclose(a.A, b.A, rtol=1e-7, atol=1e-10)
    assert a.history["loss"][-1] == pytest.approx(b.history["loss"][-1], rel=1e-8)


def test_max_iter_keeps_the_last_iterate(rng):
    A, B, X = small_problem(rng, scale_A=0.9)
    with pytest.warns(db.ConvergenceWarning, match="max_iter"):
        res = db.fixed_point(X, A, B, activation="tanh", method="broyden", tol=1e-14,
                             max_iter=3)
    assert not res.converged and res.status == "max_iter" and res.n_iter == 3
    assert res.residual == pytest.approx(naive.map_residual(A, B, X, res.z, "tanh"), rel=1e-9)
    G = np.ones_like(res.z)
    with pytest.warns(db.ConvergenceWarning, match="max_iter"):
        g = db.implicit_grad(X, A, B, res.z, G, activation="tanh", method="broyden",
                             tol=1e-14, max_iter=2)
    assert g.status == "max_iter" and not g.converged and g.n_iter == 2


def test_overflow_is_a_status_with_a_finite_iterate(rng):
    A, B, X = small_problem(rng)
    X[0, 0] = 1e308
    B[:] = 1e10
    with pytest.warns(db.ConvergenceWarning, match="diverged"):
        res = db.fixed_point(X, A, B, method="broyden")
    assert res.status == "diverged" and not res.converged
    assert np.isfinite(res.z).all() and res.n_iter == 0


def test_divergence_returns_the_last_good_iterate():
    """rho(A) = 3 with two pairs kept: the steps grow until the residual passes 1e8
    times the first (or overflows); the iterate returned is the last one whose
    evaluation was finite, with its residual."""
    rng = np.random.default_rng(4)
    A, B, X = small_problem(rng, n=30, d=3, m=8)
    A = db.data.with_spectral_radius(A, 3.0)
    with pytest.warns(db.ConvergenceWarning, match="diverged"):
        res = db.fixed_point(X, A, B, method="broyden", anderson_history=2, max_iter=10_000)
    assert res.status == "diverged" and np.isfinite(res.z).all()
    assert res.history[-1] == res.residual and len(res.history) == res.n_iter + 1
    assert np.isfinite(res.residual)
    assert res.residual == pytest.approx(naive.map_residual(A, B, X, res.z), rel=1e-6)


def test_chunked_solve_meets_the_rule_per_block(rng):
    A, B, X = small_problem(rng, n=53, d=3, m=4, scale_A=0.8)
    ref = db.fixed_point(X, A, B, activation="tanh", method="broyden", tol=1e-12)
    got = db.fixed_point(X, A, B, activation="tanh", method="broyden", tol=1e-12, chunk=10)
    assert got.converged and got.blocks.n_blocks == 6
    assert _rel(got.z, ref.z) <= 1e-10


def test_sweep_takes_broyden():
    grid = """
[fixed]
model = "linear"
n = 16
d = 2
m = 2
steps = 3
solver = "broyden"
sufficient_stats = true
[grid]
lr = [0.05]
"""
    with pytest.raises(GridError, match="sufficient_stats: .*certificate on A.*'broyden'"):
        parse_grid(grid)
    g = parse_grid(grid.replace("sufficient_stats = true", ""))
    spec = g.specs[0]
    assert spec.params["solver"] == "broyden"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = run_train(dict(spec.params), spec.seed_sequence())
    assert out["status"] == "max_steps"
