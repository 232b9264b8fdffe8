"""float32 end to end: every public call, model, solver and activation computes in
float32 when its arrays are float32, and agrees with the float64 NumPy references of
tests/naive.py to the reach of the dtype (the float64 path is tested in the topic files).

Tolerances: solves at ``tol = 1e-6`` (just above the float32 floor ``8 eps = 9.5e-7``)
on maps contracting by 0.5, so the fixed point is within ``~2e-6`` relative plus a few
eps of rounding; gradients within 1e-4 relative (the issue's target).
"""

import numpy as np
import pytest

import deqbench as db
from tests import naive
from tests.conftest import NONLINEAR, small_problem

F32 = np.float32
TOL = 1e-6
ACTS = NONLINEAR


def _rel(a, b):
    return np.linalg.norm(np.asarray(a, float) - b) / np.linalg.norm(b)


def _f32(*arrays):
    """The arrays rounded to float32, and those values back in float64 (the references
    then see exactly the float32 inputs)."""
    lo = [np.asarray(a, F32) for a in arrays]
    return lo, [a.astype(np.float64) for a in lo]


def _slope(name):
    return db.get_activation(name).slope


def _base(name):
    return name.split("(")[0]


@pytest.mark.parametrize("method", ["picard", "anderson", "direct"])
def test_linear_fixed_point(rng, method):
    A, B, X = small_problem(rng)
    (X, A, B), (X6, A6, B6) = _f32(X, A, B)
    r = db.fixed_point(X, A, B, method=method, tol=TOL)
    assert r.converged and r.z.dtype == F32
    assert _rel(r.z, naive.linear_fixed_point(A6, B6, X6)) < 2e-5


@pytest.mark.parametrize("name", ACTS)
@pytest.mark.parametrize("method", ["picard", "anderson"])
def test_nonlinear_fixed_point(rng, name, method):
    A, B, X = small_problem(rng, n=9)
    (X, A, B), (X6, A6, B6) = _f32(X, A, B)
    r = db.fixed_point(X, A, B, activation=name, method=method, tol=TOL)
    assert r.converged and r.z.dtype == F32 and r.residual <= TOL
    want = naive.picard_loop(A6, B6, X6, _base(name), _slope(name))
    assert _rel(r.z, want) < 2e-5


# (model, activation): the link of readout, phi of nonlinear
CASES = [("linear", "identity"), ("readout", "tanh"), ("readout", "gelu"),
         *[("nonlinear", a) for a in ACTS]]


@pytest.mark.parametrize(("model", "name"), CASES)
@pytest.mark.parametrize("solver", ["picard", "anderson"])
def test_loss_and_grad_within_1e4_of_the_dense_reference(rng, model, name, solver):
    A, B, X = small_problem(rng, n=9)
    Y = rng.standard_normal(9) if model == "readout" else rng.standard_normal((9, 4))
    (X, Y, A, B), (X6, Y6, A6, B6) = _f32(X, Y, A, B)
    loss, gA, gB, info = db.loss_and_grad(model, X, Y, A, B, activation=name, solver=solver,
                                          tol=TOL)
    assert info["converged"] and gA.dtype == F32 and gB.dtype == F32
    assert info["z"].dtype == F32 and info["adjoint"].dtype == F32
    rA, rB = naive.grad_dense(model, A6, B6, X6, Y6, name=_base(name), slope=_slope(name))
    assert loss == pytest.approx(naive.loss(model, A6, B6, X6, Y6, name=_base(name),
                                            slope=_slope(name)), rel=1e-5)
    assert _rel(gA, rA) < 1e-4 and _rel(gB, rB) < 1e-4


@pytest.mark.parametrize("method", ["picard", "anderson", "direct", "jfb", "neumann"])
def test_implicit_grad_matches_float64(rng, method):
    A, B, X = small_problem(rng, n=9)
    G = rng.standard_normal((9, 4))
    (X, A, B, G), (X6, A6, B6, G6) = _f32(X, A, B, G)
    Z6 = naive.linear_fixed_point(A6, B6, X6)
    ref = db.implicit_grad(X6, A6, B6, Z6, G6, method=method, tol=1e-13)
    got = db.implicit_grad(X, A, B, Z6.astype(F32), G, method=method, tol=TOL)
    assert got.converged and got.grad_A.dtype == F32 and got.adjoint.dtype == F32
    assert _rel(got.grad_A, ref.grad_A) < 1e-4 and _rel(got.grad_B, ref.grad_B) < 1e-4


def test_chunked_and_on_disk_float32(tmp_path, rng):
    A, B, X = small_problem(rng, n=40)
    Y = rng.standard_normal((40, 4))
    (X, Y, A, B), _ = _f32(X, Y, A, B)
    ref = db.loss_and_grad("nonlinear", X, Y, A, B, activation="tanh", tol=TOL)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "Y.npy", Y)
    for Xs, Ys in [(X, Y), (tmp_path / "X.npy", tmp_path / "Y.npy"),
                   (np.load(tmp_path / "X.npy", mmap_mode="r"), Y)]:
        got = db.loss_and_grad("nonlinear", Xs, Ys, A, B, activation="tanh", tol=TOL, chunk=7)
        assert got.converged and got.grad_A.dtype == F32 and got.fp_blocks.n_blocks == 6
        assert got.loss == pytest.approx(ref.loss, rel=1e-5)
        assert _rel(got.grad_A, ref.grad_A) < 1e-5 and _rel(got.grad_B, ref.grad_B) < 1e-5
    fp = db.fixed_point(tmp_path / "X.npy", A, B, tol=TOL, chunk=7)
    assert fp.z.dtype == F32 and _rel(fp.z, db.fixed_point(X, A, B, tol=TOL).z) < 1e-5
    with pytest.raises(TypeError, match=r"Y \(.npy\) has dtype float32 but A has dtype float64"):
        db.loss_and_grad("linear", X.astype(float), tmp_path / "Y.npy", A.astype(float),
                         B.astype(float), chunk=7)


@pytest.mark.parametrize(("model", "act", "ss"), [("linear", "identity", True),
                                                  ("linear", "identity", False),
                                                  ("nonlinear", "tanh", False)])
def test_train_follows_the_float64_reference(model, act, ss):
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((25, 4)), rng.standard_normal((25, 3))
    A0, B0 = db.data.init_params(4, 3, scale_A=0.4, scale_B=1.0, seed=6)
    (X, Y, A0, B0), (X6, Y6, A06, B06) = _f32(X, Y, A0, B0)
    lr, steps = 0.05, 20
    As, Bs, losses = naive.gd_reference(model, A06, B06, X6, Y6, lr, steps, name=act)
    r = db.train(model, X, Y, A0, B0, lr=lr, steps=steps, activation=act, tol=TOL,
                 sufficient_stats=ss)
    assert r.status == "max_steps" and r.sufficient_stats == ss
    assert r.A.dtype == F32 and r.B.dtype == F32 and r.history["loss"].dtype == np.float64
    np.testing.assert_allclose(r.history["loss"], losses, rtol=1e-5)
    assert _rel(r.A, As[-1]) < 1e-4 and _rel(r.B, Bs[-1]) < 1e-4
    h = r.history  # the diagnostics run in float64 on the float32 parameters
    assert np.isfinite(h["sigma_min"][-1]) and np.isfinite(h["spectral_radius"][-1])
    assert h["invariant_drift"][-1] > 0.0


def test_train_on_disk_float32(tmp_path):
    X, Y, _ = db.data.linear_teacher(60, 4, 3, seed=2)
    A0, B0 = db.data.init_params(4, 3, scale_A=0.4, scale_B=1.0, seed=3)
    (X, Y, A0, B0), _ = _f32(X, Y, A0, B0)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "Y.npy", Y)
    ref = db.train("linear", X, Y, A0, B0, lr=0.05, steps=30)
    got = db.train("linear", tmp_path / "X.npy", tmp_path / "Y.npy", A0, B0, lr=0.05, steps=30,
                   chunk=16)
    assert got.A.dtype == F32 and _rel(got.A, ref.A) < 1e-5 and _rel(got.B, ref.B) < 1e-5


@pytest.mark.parametrize("ss", [True, False])
def test_flow_matches_float64(ss):
    X, Y, _ = db.data.linear_teacher(60, 4, 3, seed=2)
    A0, B0 = db.data.init_params(4, 3, scale_A=0.4, scale_B=1.0, seed=3)
    (X, Y, A0, B0), (X6, Y6, A06, B06) = _f32(X, Y, A0, B0)
    kw = dict(t_end=2.0, rtol=1e-5, atol=1e-7, sufficient_stats=ss)
    ref = db.flow("linear", X6, Y6, A06, B06, **kw)
    got = db.flow("linear", X, Y, A0, B0, **kw)
    assert got.status == "finished" and got.A.dtype == F32
    assert _rel(got.A, ref.A) < 1e-4 and _rel(got.B, ref.B) < 1e-4
