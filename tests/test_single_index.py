"""The paper's model ``y = sigma(<w, x> + b y)`` as ``model="single_index"`` through every
public call, Newton for any ``m = 1`` fixed point, the damped Neumann adjoint (scalar
and matrix), and the rename of the read-out model (docs/theory.md §2, §4, §11, §12).

References: tests/naive.py (bisection roots per sample, the implicit gradient written
out, dense adjoints, finite differences, a NumPy GD loop) and scipy's Brent method.
"""

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import brentq

import deqbench as db
from deqbench import _registry, _scalar, theory
from deqbench._kernels import scalar as K
from deqbench._training import HISTORY_KEYS
from deqbench.sweep import GridError, parse_grid
from deqbench.sweep.run_functions import run_gd, run_train
from tests import naive
from tests._signals import default_sigint

ROOT = Path(__file__).resolve().parent.parent
RENAMED = _registry.RENAMED


def _teacher(seed, n=120, d=4, act="tanh", spread=0.3, b0=0.15):
    """The paper's problem: ``X ~ N(0, I)``, a unit ``xi``, target ``sigma(X xi)``, a
    start near ``(xi, 0)``: ``(X, Y, A0, B0, xi)``."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    xi = rng.standard_normal(d)
    xi /= np.linalg.norm(xi)
    Y = naive.act(act, X @ xi)
    w0 = xi + spread * rng.standard_normal(d) / math.sqrt(d)
    return X, Y, np.array([[b0]]), w0[None, :].copy(), xi


def _fd_loss(act, X, Y, w, b, h=1e-6):
    """Central differences of ``sum (y - Y)^2 / 2n``, ``y`` by bisection per sample."""
    def loss(w_, b_):
        y = naive.scalar_roots(act, X @ w_, b_)
        return 0.5 * np.mean((y - Y) ** 2)

    g = np.zeros(w.size + 1)
    for j in range(w.size + 1):
        e = np.zeros(w.size + 1)
        e[j] = h
        g[j] = (loss(w + e[:-1], b + e[-1]) - loss(w - e[:-1], b - e[-1])) / (2 * h)
    return g


# --- the rename: every old spelling is a one-line error naming the new one ----------


def test_renamed_message_is_one_line_and_names_both_models():
    assert "\n" not in RENAMED
    assert "model='readout'" in RENAMED and "model='single_index'" in RENAMED
    assert "(1, 1)" in RENAMED and "(1, d)" in RENAMED


def test_old_calls_of_single_index_are_the_rename_error():
    X, y, A, B = db.data.problem("readout", 30, 3, 3, activation="tanh", seed=1)
    X1, Y1, A1, B1, _ = _teacher(2, n=30, d=3)
    msg = "is now model='readout'"
    cases = [
        lambda: db.loss_and_grad("single_index", X, y, A, B, activation="tanh"),  # m > 1
        lambda: db.loss_and_grad("single_index", X1, Y1, A1, B1, u=np.ones(1)),  # u given
        lambda: db.train("single_index", X, y, A, B, lr=0.1, steps=2, activation="tanh"),
        lambda: db.train("single_index", X1, Y1, A1, B1, u=np.ones(1), lr=0.1, steps=2),
        lambda: db.train("single_index", X, y, A, B, lr=0.1, steps=2, solver="picard"),
        lambda: db.flow("single_index", X, y, A, B, t_end=1.0, activation="tanh"),
        lambda: db.data.problem("single_index", 30, 3, 3, activation="tanh"),
        lambda: theory.pl_constant("single_index", X, np.eye(3), activation="tanh"),
        lambda: theory.global_min_loss("single_index", X, y),
        lambda: theory.predicted_factor("single_index", X, np.eye(3), 0.1, smoothness=1.0),
        lambda: theory.smoothness("single_index", X, y, A, B, activation="tanh"),
    ]
    for call in cases:
        with pytest.raises(ValueError, match=msg) as err:
            call()
        assert str(err.value) == RENAMED or str(err.value).startswith(RENAMED)
    # the read-out model under its new name takes the old call
    r = db.loss_and_grad("readout", X, y, A, B, activation="tanh", tol=1e-12)
    assert r.converged


def test_old_grid_files_are_the_rename_error():
    text = ("[fixed]\nmodel='single_index'\nn=4\nd=2\nsteps=3\nm=2\n[grid]\nlr=[0.1]\n")
    with pytest.raises(GridError, match=r"fixed\.model: model='single_index' is now the "
                                        r"paper's model .* is now model='readout' \(got m = 2\)"):
        parse_grid(text)
    with pytest.raises(GridError, match=r"fixed\.model: .*is now model='readout'"):
        parse_grid(text.replace("m=2\n", "").replace("lr=[0.1]", "lr=[0.1]\nm=[1, 3]"))
    parse_grid(text.replace("m=2", "m=1"))  # the paper's model: m = 1


# --- Newton through fixed_point, for any m = 1 fixed point ---------------------------


@pytest.mark.parametrize("act, b", [("tanh", 0.6), ("tanh", -2.5), ("sigmoid", 3.5),
                                    ("identity", 1.7), ("skip_tanh(0.25)", -0.5),
                                    ("softplus", 0.4)])
def test_newton_fixed_point_against_brent_and_picard(act, b):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((60, 3))
    w = rng.standard_normal(3)
    A, B = np.array([[b]]), w[None, :]
    r = db.fixed_point(X, A, B, activation=act, method="newton", tol=1e-13)
    assert r.converged and r.status == "converged" and r.method == "newton"
    assert r.z.shape == (60, 1) and r.residual <= 1e-13 and r.n_iter >= 1
    for i, s0 in enumerate(X @ w):
        def g(t, s0=s0):
            return t - naive.act(act, s0 + b * t)
        lo, hi = -1e3, 1e3
        root = brentq(g, lo, hi, xtol=1e-15, rtol=1e-15)
        gmin = min(abs(1 - b * q) for q in db.get_activation(act).derivative_bounds())
        assert abs(r.z[i, 0] - root) <= 1e-13 / gmin + 1e-13 * (1 + abs(root))
    if act != "identity" or abs(b) < 1:  # picard converges where the map contracts
        damping = 1.0 if abs(b) * db.get_activation(act).lipschitz < 1 else 0.2
        p = db.fixed_point(X, A, B, activation=act, tol=1e-14, damping=damping,
                           max_iter=100_000)
        np.testing.assert_allclose(r.z, p.z, rtol=0, atol=1e-12)
    # a warm start at the root is converged at its first evaluation
    r2 = db.fixed_point(X, A, B, activation=act, method="newton", tol=1e-13, z0=r.z)
    assert r2.n_iter == 1 and np.abs(r2.z - r.z).max() <= 1e-12


def test_newton_statuses_name_their_rule():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((20, 2))
    A, B = np.array([[1.5]]), np.array([[0.3, -0.2]])
    with pytest.warns(db.ConvergenceWarning, match=r"not_unique.*uniqueness guard fails at "
                                                   r"b = 1\.5.*1 - b sigma' keeps one sign"):
        r = db.fixed_point(X, A, B, activation="tanh", method="newton")
    assert r.status == "not_unique" and not r.converged and r.n_iter == 0
    np.testing.assert_array_equal(r.z, 0.0)  # no solve: the start
    with pytest.warns(db.ConvergenceWarning, match="status='max_iter'"):
        r = db.fixed_point(3.0 * X, np.array([[0.9]]), B, activation="tanh", method="newton",
                           tol=1e-14, max_iter=1)
    assert r.status == "max_iter" and np.isfinite(r.z).all()
    with pytest.raises(ValueError, match=r"method='newton' solves a scalar state only "
                                         r"\(m = 1\), got m=2"):
        db.fixed_point(X, np.eye(2) * 0.1, np.eye(2), method="newton")


@pytest.mark.parametrize("act, b, unique", [
    ("sigmoid", 3.99, True), ("sigmoid", 4.0, False), ("sigmoid", 4.5, False),
    ("sigmoid", -30.0, True), ("tanh", 0.99, True), ("tanh", 1.0, False),
    ("tanh", -1.5, True), ("tanh", -40.0, True)])
def test_the_guard_through_the_public_calls(act, b, unique):
    """The uniqueness guard (sigmoid b < 4, tanh b < 1: 1 - b sigma' > 0 over the range of
    sigma'; |b| < 1, tanh's contraction, is not needed) decides the status of every call;
    inside it the root is Brent's, outside no root is returned."""
    rng = np.random.default_rng(23)
    X = rng.standard_normal((40, 2))
    A, B = np.array([[b]]), np.array([[0.7, -0.4]])
    Y = rng.standard_normal(40)
    if unique:
        r = db.fixed_point(X, A, B, activation=act, method="newton", tol=1e-13)
        assert r.status == "converged"
        roots = [brentq(lambda t, s0=s0: t - naive.act(act, s0 + b * t), -2.0, 2.0,
                        xtol=1e-15, rtol=1e-15) for s0 in X @ B[0]]
        gmin = min(abs(1 - b * q) for q in db.get_activation(act).derivative_bounds())
        np.testing.assert_allclose(r.z[:, 0], roots, rtol=0, atol=1e-13 / gmin + 1e-15)
        g = db.loss_and_grad("single_index", X, Y, A, B, activation=act, tol=1e-13)
        assert g.fp_status == "converged" and g.converged
        t = db.train("single_index", X, Y, A, B, lr=1e-3, steps=2, activation=act)
        assert t.status == "max_steps"
        return
    rule = rf"uniqueness guard fails at b = {b:g}\b.*1 - b sigma' keeps one sign"
    with pytest.warns(db.ConvergenceWarning, match=rule):
        r = db.fixed_point(X, A, B, activation=act, method="newton")
    assert r.status == "not_unique" and not r.converged and r.n_iter == 0
    with pytest.warns(db.ConvergenceWarning, match=rule):
        g = db.loss_and_grad("single_index", X, Y, A, B, activation=act)
    assert g.fp_status == g.adj_status == "not_unique" and np.isnan(g.grad_A).all()
    with pytest.warns(db.ConvergenceWarning, match="before its first step: the " + rule):
        t = db.train("single_index", X, Y, A, B, lr=1e-3, steps=2, activation=act)
    assert t.status == "fixed_point_failed" and t.n_steps == 0 and t.A[0, 0] == b


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "identity", "relu"])
def test_input_beyond_the_dtype_is_diverged(act):
    """X w beyond float64: a saturating sigma would make y = +-1 look converged; every call
    says 'diverged' (as X B^T beyond the dtype does for the matrix solvers), with no
    warning but its own."""
    X, Y, A, B, _ = _teacher(24, n=30, d=3)
    X = X * 1e300
    B = B * 1e10
    with pytest.warns(db.ConvergenceWarning, match="diverged"):
        r = db.fixed_point(X, A, B, activation=act, method="newton")
    assert r.status == "diverged" and not r.converged and np.isfinite(r.z).all()
    with pytest.warns(db.ConvergenceWarning, match="status='diverged'"):
        g = db.loss_and_grad("single_index", X, Y, A, B, activation=act)
    assert g.fp_status == "diverged" and math.isnan(g.loss) and not g.converged
    with pytest.warns(db.ConvergenceWarning, match="before its first step: X B0\\^T overflows"):
        t = db.train("single_index", X, Y, A, B, lr=0.1, steps=3, activation=act)
    assert t.status == "diverged" and t.n_steps == 0
    np.testing.assert_array_equal(t.B, B)


def test_train_options_follow_the_shared_rules():
    """The scalar loop validates train's options as its matrix path does (bounded counts,
    strict flags)."""
    X, Y, A0, B0, _ = _teacher(25, n=20, d=2)
    for model, y in (("single_index", Y), ("nonlinear", Y[:, None])):
        kw = dict(lr=0.1, activation="tanh")
        for bad, error, match in (
                (dict(steps=2**53 + 1), ValueError, r"steps must be <= 2\*\*53"),
                (dict(steps=2, record_every=2**63), ValueError,
                 r"record_every must be <= 2\*\*53"),
                (dict(steps=2, spectral_every=2**60), ValueError,
                 r"spectral_every must be <= 2\*\*53"),
                (dict(steps=2, warm_start=1), TypeError, "warm_start must be one of"),
                (dict(steps=2, sufficient_stats=1), TypeError, "sufficient_stats must be one of"),
                (dict(steps=2, tol=1.0), ValueError, r"tol must be in \(0, 1\)"),
                (dict(steps=2, max_iter=10**8), ValueError, "max_iter must be <= 10000000"),
                (dict(steps=2, grad_solver="neumann", neumann_terms=10**8), ValueError,
                 "neumann_terms must be <= 10000000"),
                (dict(steps=2, grad_solver="neumann", neumann_damping=0.0), ValueError,
                 r"neumann_damping must be in \(0, 1\]")):
            with pytest.raises(error, match=match):
                db.train(model, X, y, A0, B0, **kw, **bad)


def test_newton_float32():
    X, _, A, B, _ = _teacher(6, n=50, d=3)
    r32 = db.fixed_point(X.astype(np.float32), A.astype(np.float32), B.astype(np.float32),
                         activation="tanh", method="newton")
    r64 = db.fixed_point(X, A, B, activation="tanh", method="newton", tol=1e-13)
    assert r32.z.dtype == np.float32 and r32.converged
    np.testing.assert_allclose(r32.z, r64.z, atol=1e-5)


# --- gradients --------------------------------------------------------------------------


CLOSED = {"exact": None, "jfb": lambda a: np.ones_like(a),
          "neumann1": lambda a: 1 + a, "neumann2": lambda a: 1 + a + a * a,
          "damped": lambda a: 0.75 + 0.25 * a}
OPTIONS = {"exact": {}, "jfb": dict(grad_solver="jfb"),
           "neumann1": dict(grad_solver="neumann", neumann_terms=1),
           "neumann2": dict(grad_solver="neumann", neumann_terms=2),
           "damped": dict(grad_solver="neumann", neumann_terms=1, neumann_damping=0.5)}


@pytest.mark.parametrize("act, b0", [("tanh", 0.3), ("sigmoid", 2.0), ("identity", 1.4),
                                     ("skip_tanh(0.5)", -0.4)])
def test_loss_and_grad_against_the_reference_and_finite_differences(act, b0):
    X, Y, A, B, _ = _teacher(7, n=80, d=3, act=act, b0=b0)
    w, b = B[0], b0
    r = db.loss_and_grad("single_index", X, Y, A, B, activation=act, tol=1e-13)
    L, gw, gb = naive.scalar_loss_grad(act, X, Y, w, b)
    assert r.converged and r.fp_status == "converged" and r.adj_status == "converged"
    assert r.adj_iters == 0 and r.fp_iters >= 1 and r.fp_residual <= 1e-13
    assert r.loss == pytest.approx(L, rel=1e-11)
    np.testing.assert_allclose(np.r_[r.grad_B[0], r.grad_A[0, 0]], np.r_[gw, gb], rtol=1e-9,
                               atol=1e-13)
    np.testing.assert_allclose(np.r_[r.grad_B[0], r.grad_A[0, 0]], _fd_loss(act, X, Y, w, b),
                               rtol=1e-6, atol=1e-9)
    # the paper's risk is 2 L, its gradient 2 grad L
    pw, pb = theory.scalar_gradient(X, Y, w, b, r.z[:, 0], activation=act, convention="paper")
    np.testing.assert_allclose(np.r_[pw, pb], 2 * np.r_[r.grad_B[0], r.grad_A[0, 0]],
                               rtol=1e-9, atol=1e-13)
    # targets (n, 1) are the same call; a warm start at the root changes nothing
    r1 = db.loss_and_grad("single_index", X, Y[:, None], A, B, activation=act, tol=1e-13,
                          z0=r.z)
    assert r1.loss == pytest.approx(r.loss, rel=1e-12) and r1.fp_iters == 1
    np.testing.assert_allclose(r1.grad_B, r.grad_B, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("rule", sorted(CLOSED))
def test_backward_rules_against_the_closed_factors(rule):
    X, Y, A, B, _ = _teacher(8, n=70, d=3, b0=-0.6)
    r = db.loss_and_grad("single_index", X, Y, A, B, activation="tanh", tol=1e-13,
                         **OPTIONS[rule])
    L, gw, gb = naive.scalar_loss_grad("tanh", X, Y, B[0], A[0, 0], backward=CLOSED[rule])
    np.testing.assert_allclose(np.r_[r.grad_B[0], r.grad_A[0, 0]], np.r_[gw, gb], rtol=1e-9,
                               atol=1e-14)
    assert r.adj_status == ("converged" if rule == "exact" else "truncated")
    # the matrix path (nonlinear, m = 1): the same gradient and adjoint to rounding
    ref = db.loss_and_grad("nonlinear", X, Y[:, None], A, B, activation="tanh", tol=1e-14,
                           **(OPTIONS[rule] or dict(grad_solver="picard")))
    np.testing.assert_allclose(r.grad_B, ref.grad_B, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(r.grad_A, ref.grad_A, rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(r.adjoint, ref.adjoint, rtol=1e-9, atol=1e-15)


def test_implicit_grad_newton_is_the_closed_form_adjoint():
    X, Y, A, B, _ = _teacher(9, n=40, d=3, b0=0.5)
    for act, Ai in (("tanh", A), ("identity", np.array([[1.6]]))):
        z = db.fixed_point(X, Ai, B, activation=act, method="newton", tol=1e-14).z
        G = (z - Y[:, None]) / len(X)
        g = db.implicit_grad(X, Ai, B, z, G, activation=act, method="newton")
        assert g.status == "converged" and g.n_iter == 0 and g.residual <= 1e-14
        model = "linear" if act == "identity" else "nonlinear"  # b > 1: no Picard there
        gA, gB = naive.grad_dense(model, Ai, B, X, Y[:, None], name=act)
        np.testing.assert_allclose(g.grad_A, gA, rtol=1e-7)
        np.testing.assert_allclose(g.grad_B, gB, rtol=1e-7)
        D = naive.dact_exact(act, X @ B[0] + Ai[0, 0] * z[:, 0])
        np.testing.assert_allclose(g.adjoint[:, 0], D * G[:, 0] / (1 - Ai[0, 0] * D),
                                   rtol=1e-12)
    with pytest.warns(db.ConvergenceWarning, match="1 - b phi' vanishes"):
        g = db.implicit_grad(X, np.array([[1.0]]), B, np.ones((40, 1)), np.ones((40, 1)),
                             method="newton")
    assert g.status == "diverged" and not g.converged


def test_single_index_other_solvers_are_nonlinear_with_m_1():
    X, Y, A, B, _ = _teacher(10, n=60, d=3)
    for solver in ("picard", "anderson", "broyden"):
        a = db.loss_and_grad("single_index", X, Y, A, B, activation="tanh", solver=solver,
                             tol=1e-12)
        b = db.loss_and_grad("nonlinear", X, Y[:, None], A, B, activation="tanh",
                             solver=solver, tol=1e-12)
        assert a.loss == b.loss and a.fp_iters == b.fp_iters
        np.testing.assert_array_equal(a.grad_B, b.grad_B)
    # newton's closed-form adjoint after a Picard forward solve
    c = db.loss_and_grad("single_index", X, Y, A, B, activation="tanh", solver="picard",
                         grad_solver="newton", tol=1e-13)
    d = db.loss_and_grad("single_index", X, Y, A, B, activation="tanh", tol=1e-13)
    np.testing.assert_allclose(c.grad_B, d.grad_B, rtol=1e-9)


def test_single_index_refuses_what_it_cannot_do():
    X, Y, A, B, _ = _teacher(11, n=30, d=3)
    with pytest.raises(ValueError, match="grad_solver='picard' is not an adjoint of the "
                                         "scalar loop"):
        db.loss_and_grad("single_index", X, Y, A, B, activation="tanh", grad_solver="picard")
    with pytest.raises(ValueError, match="grad_solver='anderson' is not an adjoint"):
        db.train("single_index", X, Y, A, B, lr=0.1, steps=2, grad_solver="anderson")
    with pytest.raises(ValueError, match=r"Y must have shape \(30,\) or \(30, 1\)"):
        db.loss_and_grad("single_index", X, np.zeros((30, 2)), A, B)
    Xl, Yl, Al, Bl = db.data.problem("linear", 30, 3, 1, seed=2)
    with pytest.raises(ValueError, match="solver='newton' trains model='single_index' only"):
        db.train("linear", Xl, Yl, Al, Bl, lr=0.1, steps=2, solver="newton")
    with pytest.raises(ValueError, match="closed-form adjoint.*solver='newton'"):
        db.train("single_index", X, Y, A, B, lr=0.1, steps=2, solver="picard",
                 grad_solver="newton")
    with pytest.raises(ValueError, match="flow does not drive"):
        db.flow("single_index", X, Y, A, B, t_end=1.0, solver="newton")
    with pytest.raises(ValueError, match="sufficient_stats=True needs model='linear'"):
        db.train("single_index", X, Y, A, B, lr=0.1, steps=2, sufficient_stats=True)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"neumann_damping must be in \(0, 1\]"):
            db.SolverOptions(neumann_damping=bad)


def test_not_unique_gives_nan_and_names_the_rule():
    X, Y, _, B, _ = _teacher(12, n=30, d=3)
    with pytest.warns(db.ConvergenceWarning, match="uniqueness guard fails at b = 1.2"):
        r = db.loss_and_grad("single_index", X, Y, np.array([[1.2]]), B, activation="tanh")
    assert r.fp_status == r.adj_status == "not_unique" and not r.converged
    assert math.isnan(r.loss) and np.isnan(r.grad_B).all()


def test_single_index_on_disk_in_row_blocks(tmp_path):
    X, Y, A, B, _ = _teacher(13, n=300, d=4)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "Y.npy", Y)
    for kw in (dict(), dict(grad_solver="neumann", neumann_terms=1, neumann_damping=0.5)):
        ref = db.loss_and_grad("single_index", X, Y, A, B, activation="tanh", tol=1e-13, **kw)
        got = db.loss_and_grad("single_index", tmp_path / "X.npy", tmp_path / "Y.npy", A, B,
                               activation="tanh", tol=1e-13, chunk=64, **kw)
        assert got.fp_blocks.n_blocks == 5 and got.z is None
        assert got.loss == pytest.approx(ref.loss, rel=1e-12)
        np.testing.assert_allclose(got.grad_B, ref.grad_B, rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(got.grad_A, ref.grad_A, rtol=1e-10, atol=1e-15)


# --- the damped Neumann series of the matrix models --------------------------------------


def _damped_series(G, A, D, k, lam):
    """``k + 1`` steps of ``Mu <- (1 - lam) Mu + lam D (Mu A + G)`` from zero, written out."""
    Mu = np.zeros_like(G)
    for _ in range(k + 1):
        Mu = (1 - lam) * Mu + lam * D * (Mu @ A + G)
    return Mu


@pytest.mark.parametrize("k, lam", [(0, 0.5), (1, 0.5), (3, 0.3), (5, 1.0)])
def test_matrix_damped_neumann_against_its_closed_forms(k, lam):
    rng = np.random.default_rng(14)
    m, d, n = 4, 3, 30
    X = rng.standard_normal((n, d))
    A = db.data.with_spectral_radius(rng.standard_normal((m, m)), 0.6)
    B = rng.standard_normal((m, d))
    Z = db.fixed_point(X, A, B, method="direct").z
    G = rng.standard_normal((n, m)) / n
    g = db.implicit_grad(X, A, B, Z, G, method="neumann", neumann_terms=k,
                         neumann_damping=lam)
    M = (1 - lam) * np.eye(m) + lam * A
    P = lam * sum(np.linalg.matrix_power(M, j) for j in range(k + 1))
    np.testing.assert_allclose(g.adjoint, G @ P, rtol=1e-12, atol=1e-15)
    # P = (I - M^(k+1)) C^-1 (docs/theory.md §11)
    P2 = (np.eye(m) - np.linalg.matrix_power(M, k + 1)) @ np.linalg.inv(np.eye(m) - A)
    np.testing.assert_allclose(P, P2, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(g.grad_A, (G @ P).T @ Z, rtol=1e-11, atol=1e-15)
    assert g.status == "truncated"
    # nonlinear: the damped recursion with D = phi'
    Zt = db.fixed_point(X, 0.5 * A, B, activation="tanh", tol=1e-14).z
    D = 1 - np.tanh(Zt @ (0.5 * A).T + X @ B.T) ** 2
    gt = db.implicit_grad(X, 0.5 * A, B, Zt, G, activation="tanh", method="neumann",
                          neumann_terms=k, neumann_damping=lam)
    np.testing.assert_allclose(gt.adjoint, _damped_series(G, 0.5 * A, D, k, lam), rtol=1e-10,
                               atol=1e-15)
    # JFB is never damped
    j0 = db.implicit_grad(X, A, B, Z, G, method="jfb")
    j1 = db.implicit_grad(X, A, B, Z, G, method="jfb", neumann_damping=lam)
    np.testing.assert_array_equal(j0.adjoint, j1.adjoint)


@pytest.mark.parametrize("b", [-1.3, -0.6, 0.4])
@pytest.mark.parametrize("k, lam", [(1, 1.0), (2, 1.0), (1, 0.5), (4, 0.25)])
def test_matrix_series_at_m_1_is_the_scalar_factor(b, k, lam):
    """At m = 1 the matrix series of linear and nonlinear is the scalar backward factor;
    on the linear model Neumann's k + 1 terms are (1 - b^(k+1)) times the exact gradient."""
    rng = np.random.default_rng(15)
    X = rng.standard_normal((25, 2))
    Y = rng.standard_normal((25, 1))
    A, B = np.array([[b]]), rng.standard_normal((1, 2))
    kw = dict(grad_solver="neumann", neumann_terms=k, neumann_damping=lam)
    exact = db.loss_and_grad("linear", X, Y, A, B, solver="direct")
    lin = db.loss_and_grad("linear", X, Y, A, B, solver="direct", **kw)
    f = _scalar.backward_factor(_scalar.NEUMANN, k, lam, b)
    np.testing.assert_allclose(lin.grad_B, exact.grad_B * f * (1 - b), rtol=1e-12)
    np.testing.assert_allclose(lin.grad_A, exact.grad_A * f * (1 - b), rtol=1e-12)
    if lam == 1.0:
        np.testing.assert_allclose(lin.grad_B, (1 - b ** (k + 1)) * exact.grad_B, rtol=1e-12)
    # the paper's model with the identity: the same gradient through the scalar kernels
    si = db.loss_and_grad("single_index", X, Y, A, B, tol=1e-14, **kw)
    np.testing.assert_allclose(si.grad_B, lin.grad_B, rtol=1e-10)
    # nonlinear at m = 1: Mu = D f(b D) G per sample
    if abs(b) < 1:
        z = db.fixed_point(X, A, B, activation="tanh", tol=1e-14).z
        G = (z - Y) / len(X)
        g = db.implicit_grad(X, A, B, z, G, activation="tanh", method="neumann",
                             neumann_terms=k, neumann_damping=lam)
        D = 1 - np.tanh(b * z + X @ B.T) ** 2
        np.testing.assert_allclose(g.adjoint, D * _scalar.backward_factor(
            _scalar.NEUMANN, k, lam, b * D) * G, rtol=1e-11, atol=1e-16)


def test_train_with_the_damped_series_follows_loss_and_grad():
    X, Y, A0, B0 = db.data.problem("linear", 40, 3, 2, scale_A=0.5, seed=4)
    kw = dict(grad_solver="neumann", neumann_terms=1, neumann_damping=0.5)
    r = db.train("linear", X, Y, A0, B0, lr=0.05, steps=6, solver="direct", **kw)
    A, B = A0.copy(), B0.copy()
    for _ in range(6):
        g = db.loss_and_grad("linear", X, Y, A, B, solver="direct", **kw)
        A, B = A - 0.05 * g.grad_A, B - 0.05 * g.grad_B
    np.testing.assert_allclose(r.A, A, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r.B, B, rtol=1e-12, atol=1e-15)
    plain = db.train("linear", X, Y, A0, B0, lr=0.05, steps=6, solver="direct",
                     grad_solver="neumann", neumann_terms=1)
    assert not np.allclose(plain.A, r.A)


@pytest.mark.parametrize("model, act", [("readout", "tanh"), ("nonlinear", "tanh"),
                                        ("linear", "identity")])
def test_damped_series_of_every_matrix_model_in_loss_and_grad_and_train(model, act):
    """The damped series is the adjoint of every model the Neumann series serves: for a
    linear fixed point Lam = G P with G = Lam_exact C (C = I - A) and P = (I - M^(k+1))
    C^-1, M = (1 - lam) I + lam A; train's compiled loop takes the steps that loss_and_grad
    gives."""
    k, lam = 2, 0.4
    X, Y, A0, B0 = db.data.problem(model, 40, 3, 3, activation=act, scale_A=0.5, seed=26)
    kw = dict(activation=act, grad_solver="neumann", neumann_terms=k, neumann_damping=lam,
              tol=1e-13)
    solver = "picard" if model == "nonlinear" else "direct"
    r = db.loss_and_grad(model, X, Y, A0, B0, solver=solver, **kw)
    assert r.adj_status == "truncated"
    if model != "nonlinear":
        ex = db.loss_and_grad(model, X, Y, A0, B0, solver="direct", activation=act)
        C = np.eye(3) - A0
        M = (1 - lam) * np.eye(3) + lam * A0
        P = (np.eye(3) - np.linalg.matrix_power(M, k + 1)) @ np.linalg.inv(C)
        np.testing.assert_allclose(r.adjoint, ex.adjoint @ C @ P, rtol=1e-9, atol=1e-15)
    t = db.train(model, X, Y, A0, B0, lr=0.05, steps=4, solver=solver, **kw)
    A, B = A0.copy(), B0.copy()
    for _ in range(4):
        g = db.loss_and_grad(model, X, Y, A, B, solver=solver, **kw)
        A, B = A - 0.05 * g.grad_A, B - 0.05 * g.grad_B
    np.testing.assert_allclose(t.A, A, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(t.B, B, rtol=1e-9, atol=1e-13)
    plain = db.train(model, X, Y, A0, B0, lr=0.05, steps=4, solver=solver,
                     **{**kw, "neumann_damping": 1.0})
    assert not np.allclose(plain.B, t.B, rtol=1e-6)


# --- train and flow ----------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["exact", "jfb", "damped"])
def test_train_is_train_scalar_bit_for_bit_and_follows_numpy(rule):
    X, Y, A0, B0, _ = _teacher(16, n=150, d=4)
    steps, lr = 120, 0.4
    r = db.train("single_index", X, Y, A0, B0, lr=lr, steps=steps, activation="tanh",
                 tol=1e-13, record_every=5, **OPTIONS[rule])
    backward = {"exact": {}, "jfb": dict(backward="jfb"),
                "damped": dict(backward="neumann", neumann_terms=1, neumann_damping=0.5)}[rule]
    s = _scalar.train_scalar(X, Y, B0[0], A0[0, 0], lr=lr, steps=steps, activation="tanh",
                             tol=1e-13, record_every=5, max_newton=db.SolverOptions().max_iter,
                             **backward)
    assert r.status == s.status == "max_steps" and r.n_steps == s.n_steps == steps
    np.testing.assert_array_equal(r.B[0], s.w)
    assert r.A[0, 0] == s.b and r.A.shape == (1, 1) and r.B.shape == (1, 4)
    assert tuple(r.history) == HISTORY_KEYS
    for key, col in (("step", "step"), ("loss", "loss"), ("grad_norm", "grad_norm"),
                     ("fp_iters", "newton_max")):
        np.testing.assert_array_equal(r.history[key], s.history[col])
    assert (r.history["adj_iters"] == 0).all()
    np.testing.assert_array_equal(r.history["step"], np.r_[np.arange(0, steps + 1, 5)])
    # against plain NumPy gradient descent with bisection roots
    ws, bs, losses = naive.scalar_gd("tanh", X, Y, B0[0], A0[0, 0], lr, steps,
                                     backward=CLOSED[rule])
    np.testing.assert_allclose(r.history["loss"], losses[::5], rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(np.r_[r.B[0], r.A[0, 0]], np.r_[ws[-1], bs[-1]], atol=1e-10)


def test_train_history_matches_the_matrix_loop():
    """The matrix columns of the scalar run are those the nonlinear m = 1 loop records."""
    X, Y, A0, B0, _ = _teacher(17, n=100, d=3)
    kw = dict(lr=0.4, steps=40, activation="tanh", record_every=4, spectral_every=8)
    a = db.train("single_index", X, Y, A0, B0, tol=1e-13, L_star=0.0, **kw)
    b = db.train("single_index", X, Y, A0, B0, tol=1e-14, solver="picard", L_star=0.0, **kw)
    np.testing.assert_allclose(a.B, b.B, atol=1e-11)
    for key in ("loss", "excess_loss", "grad_norm", "drift_trace"):
        np.testing.assert_allclose(a.history[key], b.history[key], rtol=1e-8, atol=1e-14)
    for key in ("invariant_drift", "sigma_min", "sigma_max", "spectral_radius"):
        np.testing.assert_array_equal(np.isnan(a.history[key]), np.isnan(b.history[key]))
        np.testing.assert_allclose(a.history[key], b.history[key], rtol=1e-8, atol=1e-14)
    assert a.spectral_every == 8 and not a.sufficient_stats and a.L_star == 0.0
    # the default cadence: every recorded step
    c = db.train("single_index", X, Y, A0, B0, lr=0.4, steps=10, activation="tanh")
    assert c.spectral_every == 1 and np.isfinite(c.history["sigma_min"]).all()
    assert np.isnan(c.history["excess_loss"]).all()  # no L_star


def test_train_cold_starts_record_none_and_stop_loss():
    X, Y, A0, B0, _ = _teacher(18, n=80, d=3)
    kw = dict(lr=0.4, steps=30, activation="tanh", tol=1e-13)
    warm = db.train("single_index", X, Y, A0, B0, **kw)
    cold = db.train("single_index", X, Y, A0, B0, warm_start=False, **kw)
    np.testing.assert_allclose(cold.B, warm.B, atol=1e-10)
    assert cold.history["fp_iters"][1:].sum() > warm.history["fp_iters"][1:].sum()
    few = db.train("single_index", X, Y, A0, B0, record_every=None, **kw)
    np.testing.assert_array_equal(few.history["step"], [0, 30])
    np.testing.assert_array_equal(few.B, warm.B)
    stop = db.train("single_index", X, Y, A0, B0, stop_loss=warm.history["loss"][10], **kw)
    assert stop.status == "converged" and 0 < stop.n_steps <= 10
    assert stop.history["loss"][-1] <= warm.history["loss"][10]


def test_train_outside_the_guard_stops_and_says_why():
    X, Y, _, B0, _ = _teacher(19, n=30, d=3)
    with pytest.warns(db.ConvergenceWarning, match="before its first step: the uniqueness "
                                                   "guard fails at b = 1.1"):
        r = db.train("single_index", X, Y, np.array([[1.1]]), B0, lr=0.1, steps=5,
                     activation="tanh")
    assert r.status == "fixed_point_failed" and r.n_steps == 0 and r.A[0, 0] == 1.1
    assert r.history["step"].size == 0
    # tanh with targets at 1 pushes b up through 1 (tests/test_scalar.py): stops before
    rng = np.random.default_rng(4)
    X = np.abs(rng.standard_normal((50, 2)))
    with pytest.warns(db.ConvergenceWarning, match="leaves the uniqueness guard"):
        r = db.train("single_index", X, np.ones(50), np.array([[0.5]]),
                     np.array([[0.1, 0.1]]), lr=0.5, steps=500, activation="tanh")
    assert r.status == "fixed_point_failed" and 0 < r.n_steps < 500 and r.A[0, 0] < 1.0
    assert r.history["step"][-1] == r.n_steps


def test_train_ctrl_c_keeps_the_finished_steps(monkeypatch):
    """A KeyboardInterrupt between slices (the third call of the compiled loop) is
    TrainInterrupted with the steps that finished, the same as a run of that many steps."""
    X, Y, A0, B0, _ = _teacher(20, n=90, d=3)
    calls = []
    run = K.gd_run

    def interrupting(*args):
        calls.append(args[-1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return run(*args)

    monkeypatch.setattr(K, "gd_run", interrupting)
    with pytest.raises(db.TrainInterrupted) as exc:
        db.train("single_index", X, Y, A0, B0, lr=0.4, steps=10**6, activation="tanh",
                 record_every=3)
    monkeypatch.undo()
    r = exc.value.result
    assert isinstance(exc.value, KeyboardInterrupt) and r.status == "interrupted"
    assert r.n_steps > 0 and r.history["step"][-1] == r.n_steps
    same = db.train("single_index", X, Y, A0, B0, lr=0.4, steps=r.n_steps, activation="tanh",
                    record_every=3)
    np.testing.assert_array_equal(r.B, same.B)
    np.testing.assert_array_equal(r.history["loss"], same.history["loss"])


_CHILD = textwrap.dedent("""
    import numpy as np
    import deqbench as db
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 3)); xi = np.array([0.6, 0.8, 0.0])
    Y = np.tanh(X @ xi)
    A0, B0 = np.array([[0.1]]), np.array([[0.5, 0.5, 0.2]])
    run = lambda k: db.train("single_index", X, Y, A0, B0, lr=1e-6, steps=k,
                             activation="tanh", record_every=10**5)
    run(3)
    print("ready", flush=True)
    try:
        run(10**9)
    except db.TrainInterrupted as exc:
        r = exc.result
        h = r.history
        ok = (r.status == "interrupted" and r.n_steps > 0 and h["step"][-1] == r.n_steps
              and np.isfinite(r.B).all() and h["loss"][-1] < h["loss"][0])
        print("interrupted", r.n_steps, ok, isinstance(exc, KeyboardInterrupt), flush=True)
        raise
""")


def test_ctrl_c_stops_a_single_index_run():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(default_sigint([sys.executable, "-c", _CHILD]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    words = out.split()
    assert words[:1] == ["interrupted"], err
    assert int(words[1]) > 0 and words[2:] == ["True", "True"]
    assert proc.returncode != 0 and "TrainInterrupted" in err


def test_flow_single_index_is_nonlinear_with_m_1():
    X, Y, A0, B0, _ = _teacher(21, n=60, d=3)
    a = db.flow("single_index", X, Y, A0, B0, t_end=3.0, activation="tanh")
    b = db.flow("nonlinear", X, Y[:, None], A0, B0, t_end=3.0, activation="tanh")
    assert a.status == b.status == "finished"
    np.testing.assert_array_equal(a.B, b.B)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    assert a.history["loss"][-1] < 0.5 * a.history["loss"][0]
    # the flow's end is near gradient descent with a small step run to the same time
    g = db.train("single_index", X, Y, A0, B0, lr=0.01, steps=300, activation="tanh",
                 tol=1e-13, record_every=None)
    np.testing.assert_allclose(a.B, g.B, atol=5e-3)


# --- sweeps ------------------------------------------------------------------------------


GRID = """
[sweep]
name = "paper"
seed = 3
[fixed]
model = "single_index"
m = 1
d = 3
n = 60
steps = 20
activation = "tanh"
solver = "newton"
scale_A = 0.2
[grid]
lr = [0.2, 0.4]
grad_solver = ["same", "neumann"]
neumann_damping = [1.0, 0.5]
"""


def test_sweep_runs_the_papers_problem():
    g = parse_grid(GRID)
    assert len(g) == 8
    from deqbench.sweep.run_functions import build_problem

    for spec in g.specs:
        p = spec.params
        out = run_train(p, spec.seed_sequence())
        assert out["status"] == "max_steps"
        X, Y, A0, B0 = build_problem(p, spec.seed_sequence())
        assert Y.shape == (60,) and A0.shape == (1, 1) and abs(A0[0, 0]) == 0.2
        extra = {} if p["grad_solver"] == "same" else dict(
            grad_solver="neumann", neumann_damping=p["neumann_damping"])
        ref = db.train("single_index", X, Y, A0, B0, lr=p["lr"], steps=20, activation="tanh",
                       tol=p["tol"], L_star=0.0, **extra)
        np.testing.assert_array_equal(out["history"]["loss"], ref.history["loss"])
    # the plain Python loop over loss_and_grad follows the compiled run
    spec = g.specs[0]
    gd = run_gd(spec.params, spec.seed_sequence())
    tr = run_train(spec.params, spec.seed_sequence())
    # (roots within tol = 1e-10 of each other move the loss by about |y - Y| tol)
    np.testing.assert_allclose(gd["history"]["loss"], tr["history"]["loss"], rtol=1e-7)


def test_sweep_rules_of_the_new_model_and_solver():
    base = "[fixed]\nn=4\nd=2\nsteps=3\n[grid]\nlr=[0.1]\n"
    with pytest.raises(GridError, match="solver: 'newton' trains model 'single_index' only"):
        parse_grid(base + "model=['linear']\nm=[1]\nsolver=['newton']")
    with pytest.raises(GridError, match="grad_solver: 'picard' is not an adjoint"):
        parse_grid(base + "model=['single_index']\nm=[1]\nsolver=['newton']\n"
                   "grad_solver=['picard']")
    with pytest.raises(GridError, match=r"grid\.neumann_damping\[0\]: must be > 0"):
        parse_grid(base + "model=['linear']\nm=[1]\nneumann_damping=[0.0]")
    parse_grid(base + "model=['single_index']\nm=[1]\nsolver=['newton']\ngrad_solver=['direct']")
    # a grid that sets neither keeps its runs' ids (no default is stored for them)
    g = parse_grid(base + "model=['linear']\nm=[1]")
    assert "neumann_damping" not in g.specs[0].params
    parse_grid(base + "model=['single_index']\nm=[1]")  # picard: nonlinear with m = 1
