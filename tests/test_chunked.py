"""Evaluation in row blocks (issue 11): chunked == unchunked to 1e-12 for every
model, solver and activation, data on disk, per-block statistics, bad input and
read errors."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deqbench as db
from deqbench import _source
from tests.conftest import ONE_EACH
from tests.test_large_data import Counting

ACTS = ONE_EACH
CASES = ([("linear", "identity", s) for s in ("picard", "anderson", "direct")]
         + [("readout", a, s) for a in ACTS for s in ("picard", "anderson", "direct")]
         + [("nonlinear", a, s) for a in ACTS for s in ("picard", "anderson")])
N, D, M = 103, 4, 5  # 103 rows: blocks of 10 leave a block of 3


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((M, M))
    A *= 0.5 / np.linalg.norm(A, 2)
    B = rng.standard_normal((M, D)) / np.sqrt(D)
    X = rng.standard_normal((N, D))
    return X, A, B, rng.standard_normal((N, M)), rng.standard_normal(N)


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("model, act, solver", CASES)
def test_chunked_loss_and_grad_equals_unchunked(model, act, solver):
    X, A, B, Y, y = _problem()
    Yt = y if model == "readout" else Y
    kw = dict(activation=act, solver=solver, tol=1e-14)
    ref = db.loss_and_grad(model, X, Yt, A, B, **kw)
    for chunk in (10, 1, N):
        got = db.loss_and_grad(model, X, Yt, A, B, chunk=chunk, **kw)
        assert got.loss == pytest.approx(ref.loss, rel=1e-12)
        assert _rel(got.grad_A, ref.grad_A) < 1e-12 and _rel(got.grad_B, ref.grad_B) < 1e-12
        assert got.converged and got.z is None and got.adjoint is None
        assert ref.fp_blocks is None and ref.adj_blocks is None
        fb = got.fp_blocks
        assert (fb.chunk, fb.n_blocks) == (chunk, -(-N // chunk))
        assert fb.iters_max == got.fp_iters >= fb.iters_mean
        assert got.fp_residual <= 1e-14 and got.adj_blocks.n_blocks == fb.n_blocks


@pytest.mark.parametrize("grad_solver", ["jfb", "neumann"])
def test_chunked_inexact_gradients_equal_unchunked(grad_solver):
    X, A, B, Y, _ = _problem(1)
    kw = dict(activation="tanh", grad_solver=grad_solver, tol=1e-14, neumann_terms=3)
    ref = db.loss_and_grad("nonlinear", X, Y, A, B, **kw)
    got = db.loss_and_grad("nonlinear", X, Y, A, B, chunk=8, **kw)
    assert _rel(got.grad_A, ref.grad_A) < 1e-12 and _rel(got.grad_B, ref.grad_B) < 1e-12
    assert got.adj_status == "truncated" and got.converged


@pytest.mark.parametrize("method", ["picard", "anderson", "direct"])
def test_chunked_fixed_point_and_implicit_grad(tmp_path, method):
    X, A, B, Y, _ = _problem(2)
    act = "identity" if method == "direct" else "softplus"
    kw = dict(activation=act, method=method, tol=1e-14)
    ref = db.fixed_point(X, A, B, **kw)
    np.save(tmp_path / "X.npy", X)
    for Xin in (X, tmp_path / "X.npy"):
        got = db.fixed_point(Xin, A, B, chunk=9, **kw)
        assert _rel(got.z, ref.z) < 1e-12 and got.converged and got.residual <= 1e-14
        assert got.blocks.n_blocks == 12 and got.history[-1] == got.residual
        g_ref = db.implicit_grad(X, A, B, ref.z, Y, **kw)
        g = db.implicit_grad(Xin, A, B, ref.z, Y, chunk=9, **kw)
        assert _rel(g.grad_A, g_ref.grad_A) < 1e-12 and _rel(g.grad_B, g_ref.grad_B) < 1e-12
        assert _rel(g.adjoint, g_ref.adjoint) < 1e-12 and g.blocks.n_blocks == 12


def test_loss_and_grad_on_files(tmp_path):
    db.data.write_teacher(tmp_path, "single_index", 500, 6, activation="tanh", noise=0.1,
                          seed=4)
    X, y, _, _ = db.data.read_teacher(tmp_path)
    A, B = db.data.init_params(6, 3, scale_A=0.4, scale_B=1.0, seed=5)
    kw = dict(activation="tanh", tol=1e-13)
    ref = db.loss_and_grad("readout", np.array(X), np.array(y), A, B, **kw)
    cx = Counting(_source.open_source("X", tmp_path / "X.npy"))
    got = db.loss_and_grad("readout", cx, tmp_path / "Y.npy", A, B, chunk=64, **kw)
    assert cx.rows == 500 and cx.threads == {"deqbench-prefetch"}
    assert got.loss == pytest.approx(ref.loss, rel=1e-12)
    assert _rel(got.grad_A, ref.grad_A) < 1e-12 and _rel(got.grad_B, ref.grad_B) < 1e-12
    auto = db.loss_and_grad("readout", X, y, A, B, **kw)  # memmaps: chunk="auto"
    assert auto.fp_blocks.chunk == 500 and auto.z is None


def test_read_error_mid_run_is_a_status(tmp_path):
    X, A, B, Y, _ = _problem(3)
    np.save(tmp_path / "X.npy", X)
    cx = Counting(_source.open_source("X", tmp_path / "X.npy"), fail_at=55)
    with pytest.warns(db.ConvergenceWarning, match="rows 50:60 of X failed"):
        r = db.loss_and_grad("nonlinear", cx, Y, A, B, activation="tanh", chunk=10)
    assert r.fp_status == r.adj_status == "read_error" and not r.converged
    assert np.isnan(r.loss) and np.isnan(r.grad_A).all() and np.isnan(r.grad_B).all()
    cx = Counting(_source.open_source("X", tmp_path / "X.npy"), fail_at=55)
    with pytest.warns(db.ConvergenceWarning, match="rows from 50 on keep their initial guess"):
        f = db.fixed_point(cx, A, B, chunk=10, tol=1e-14)
    assert f.status == "read_error" and not f.converged
    np.testing.assert_array_equal(f.z[50:], 0.0)
    assert _rel(f.z[:50], db.fixed_point(X[:50], A, B, tol=1e-14).z) < 1e-12


def test_one_warning_for_all_failing_blocks():
    X, A, B, Y, _ = _problem(4)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = db.loss_and_grad("linear", X, Y, A, B, chunk=10, max_iter=3)
    msgs = [str(x.message) for x in w]
    assert len(msgs) == 2 and all(issubclass(x.category, db.ConvergenceWarning) for x in w)
    assert "11 of 11 row blocks of 10 rows" in msgs[0] and "max_iter" in msgs[0]
    assert r.fp_status == "max_iter" and not r.converged


def test_chunk_bad_input_before_any_work(tmp_path):
    X, A, B, Y, _ = _problem()
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        db.loss_and_grad("linear", X, Y, A, B, chunk=0)
    with pytest.raises(ValueError, match="chunk must be <= n = 103"):
        db.fixed_point(X, A, B, chunk=104)
    with pytest.raises(TypeError, match="chunk must be an integer"):
        db.implicit_grad(X, A, B, Y, Y, chunk=2.5)
    np.save(tmp_path / "Y.npy", Y[:50])
    with pytest.raises(ValueError, match=r"Y must have shape \(103, 5\)"):
        db.loss_and_grad("linear", X, tmp_path / "Y.npy", A, B)
    np.save(tmp_path / "X32.npy", X.astype(np.float32))
    with pytest.raises(TypeError, match=r"X \(.npy\) has dtype float32 but A has dtype float64"):
        db.loss_and_grad("linear", tmp_path / "X32.npy", Y, A, B)
    with pytest.raises(ValueError, match=r"z0 must have shape \(103, 5\)"):
        db.loss_and_grad("linear", X, Y, A, B, chunk=10, z0=Y[:3])


def test_memmap_and_file_bad_input_through_the_calls(tmp_path):
    """The issue's bad-input list on disk, through the public calls: a memmap whose rows
    disagree with Y, a non-contiguous memmap, a truncated file, a file that is not .npy."""
    X, A, B, Y, _ = _problem()
    Xm = np.load(_save(tmp_path / "X50.npy", X[:50]), mmap_mode="r")
    with pytest.raises(ValueError, match=r"Y must have shape \(50, 5\), got \(103, 5\)"):
        db.loss_and_grad("linear", Xm, Y, A, B)
    with pytest.raises(ValueError, match=r"Y must have shape \(50, 5\), got \(103, 5\)"):
        db.train("linear", Xm, Y, A, B, lr=0.1, steps=1)
    Xf = np.load(_save(tmp_path / "X.npy", X), mmap_mode="r")
    with pytest.raises(ValueError, match="X must be a C-contiguous memmap"):
        db.fixed_point(Xf[::2], A, B)
    cut = _save(tmp_path / "cut.npy", X)
    cut.write_bytes(cut.read_bytes()[:-8])
    with pytest.raises(ValueError, match="X: .*cut.npy' is truncated"):
        db.loss_and_grad("linear", cut, Y, A, B, chunk=10)
    text = tmp_path / "X.csv"
    text.write_text("1,2,3,4\n")
    with pytest.raises(ValueError, match="X: .*X.csv' is not a readable .npy file"):
        db.implicit_grad(text, A, B, Y, Y)


def test_read_only_and_strided_inputs_are_read_never_written():
    """No kernel writes into the caller's arrays: read-only and non-contiguous inputs
    (every array argument) give the results of fresh contiguous copies, unchanged."""
    X, A, B, Y, _ = _problem(6)
    Z0 = np.full_like(Y, 0.1)

    def frozen(a):
        a = np.array(a)
        a.setflags(write=False)
        return a

    def strided(a):
        wide = np.zeros((a.shape[0], 2 * a.shape[1]))
        wide[:, ::2] = a
        return wide[:, ::2]

    kw = dict(tol=1e-12)
    ref = db.loss_and_grad("linear", X, Y, A, B, z0=Z0, adj0=Z0, **kw)
    for make in (frozen, strided, np.asfortranarray):
        args = [make(a) for a in (X, Y, A, B, Z0)]
        before = [a.copy() for a in args]
        got = db.loss_and_grad("linear", *args[:4], z0=args[4], adj0=args[4], **kw)
        assert got.loss == pytest.approx(ref.loss, rel=1e-14)
        assert _rel(got.grad_A, ref.grad_A) < 1e-14 and _rel(got.grad_B, ref.grad_B) < 1e-14
        assert _rel(got.z, ref.z) < 1e-14 and _rel(got.adjoint, ref.adjoint) < 1e-14
        for a, b in zip(args, before, strict=True):
            np.testing.assert_array_equal(a, b)


def _save(path, a):
    np.save(path, a)
    return path


@settings(deadline=None, max_examples=25)
@given(st.integers(1, N), st.sampled_from(["linear", "readout", "nonlinear"]))
def test_any_chunk_size_gives_the_unchunked_result(chunk, model):
    X, A, B, Y, y = _problem(5)
    Yt = y if model == "readout" else Y
    act = "identity" if model == "linear" else "sigmoid"
    ref = db.loss_and_grad(model, X, Yt, A, B, activation=act, tol=1e-14)
    got = db.loss_and_grad(model, X, Yt, A, B, activation=act, tol=1e-14, chunk=chunk)
    assert got.loss == pytest.approx(ref.loss, rel=1e-12)
    assert _rel(got.grad_A, ref.grad_A) < 1e-12 and _rel(got.grad_B, ref.grad_B) < 1e-12
