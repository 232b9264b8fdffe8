"""A user's activation (deqbench.register_activation) through every public call,
against NumPy formulas written here: fixed_point (every forward solver),
implicit_grad, loss_and_grad, train, flow, the theory, a sweep in a worker
process, float32 and the kernel cache; and the errors of a bad registration.

(The table-iterating tests of the other files run the two activations of
tests/_user_activations.py as well.)"""

import json
import math
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import deqbench as db
from deqbench import theory
from deqbench.activations import ACTIVATIONS
from deqbench.sweep import parse_grid, read_csv, run_sweep
from tests import naive
from tests.conftest import small_problem

ROOT = Path(__file__).resolve().parents[1]


def softsign(x):
    return x / (1.0 + abs(x))


def softsign_derivative(x):
    t = 1.0 + abs(x)
    return 1.0 / (t * t)


def _ref(x):
    return x / (1.0 + np.abs(x))


def _dref(x):
    t = 1.0 + np.abs(x)
    return 1.0 / t / t  # as the registered function: no overflow of t^2 at 1e300


@pytest.fixture(scope="module")
def softsign_act():
    return db.register_activation("softsign", softsign, softsign_derivative,
                                  derivative_range=(0.0, 1.0), derivative_extremes=(0.0,),
                                  value_range=(-1.0, 1.0))


def _picard(A, B, X, f=_ref, iters=5000):
    Z = np.zeros((X.shape[0], A.shape[0]))
    for _ in range(iters):
        Zn = f(Z @ A.T + X @ B.T)
        if np.linalg.norm(Zn - Z) <= 1e-15 * np.linalg.norm(Zn):
            return Zn
        Z = Zn
    return Z


def _dense_grad(A, B, X, Y):
    """Nonlinear model, squared loss: the dense per-sample adjoint with the NumPy
    formulas of sigma and sigma'."""
    n, m = X.shape[0], A.shape[0]
    Z = _picard(A, B, X)
    gA, gB = np.zeros_like(A), np.zeros_like(B)
    for i in range(n):
        D = _dref(A @ Z[i] + B @ X[i])
        g = (Z[i] - Y[i]) / n
        mu = D * np.linalg.solve(np.eye(m) - (np.diag(D) @ A).T, g)
        gA += np.outer(mu, Z[i])
        gB += np.outer(mu, X[i])
    return 0.5 * np.sum((Z - Y) ** 2) / n, gA, gB


def test_values_and_table_entry(softsign_act):
    act = softsign_act
    assert str(act) == "softsign" and act.entry.registered and act.param == 0.0
    assert ACTIVATIONS["softsign"].code == act.code >= 64
    x = np.concatenate([np.linspace(-50, 50, 1001), [0.0, -0.0, 1e300, -1e300]])
    np.testing.assert_allclose(act(x), _ref(x), rtol=1e-15)
    np.testing.assert_allclose(act.derivative(x), _dref(x), rtol=1e-15)
    x32 = x[:-2].astype(np.float32)
    assert act(x32).dtype == np.float32
    np.testing.assert_array_equal(act(x32), _ref(x32.astype(float)).astype(np.float32))
    assert act.derivative_bounds() == (0.0, 1.0) and act.lipschitz == 1.0
    assert act.value_bounds() == (-1.0, 1.0)
    lo, hi = act.derivative_range([-2.0, 1.0], [1.0, 3.0])
    np.testing.assert_allclose(lo, [_dref(2.0), _dref(3.0)])
    np.testing.assert_allclose(hi, [1.0, _dref(1.0)])
    assert db.get_activation("softsign") == act
    assert db.get_activation("tests._user_activations:sin_skip(0.3)").slope == 0.3


@pytest.mark.parametrize("method", ["picard", "anderson", "broyden"])
def test_fixed_point(rng, softsign_act, method):
    A, B, X = small_problem(rng, n=30, d=4, m=5, scale_A=0.8)
    r = db.fixed_point(X, A, B, activation="softsign", method=method, tol=1e-12)
    assert r.converged
    np.testing.assert_allclose(r.z, _picard(A, B, X), rtol=0, atol=1e-10)
    lo = [np.asarray(a, np.float32) for a in (X, A, B)]
    r32 = db.fixed_point(*lo, activation="softsign", method=method, tol=1e-6)
    assert r32.converged and r32.z.dtype == np.float32
    want = _picard(*(a.astype(float) for a in (lo[1], lo[2], lo[0])))
    assert np.linalg.norm(r32.z - want) <= 2e-5 * np.linalg.norm(want)


@pytest.mark.parametrize("method", ["picard", "anderson", "broyden"])
def test_implicit_grad_and_loss_and_grad(rng, softsign_act, method):
    A, B, X = small_problem(rng, n=9, d=3, m=4, scale_A=0.6)
    Y = rng.standard_normal((9, 4))
    L, dA, dB = _dense_grad(A, B, X, Y)
    scale = np.linalg.norm(dA) + np.linalg.norm(dB)
    fwd = db.fixed_point(X, A, B, activation="softsign", tol=1e-13)
    g = db.implicit_grad(X, A, B, fwd.z, (fwd.z - Y) / 9, activation="softsign",
                         method=method, tol=1e-13)
    assert g.converged
    np.testing.assert_allclose(g.grad_A, dA, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(g.grad_B, dB, rtol=0, atol=1e-10 * scale)
    res = db.loss_and_grad("nonlinear", X, Y, A, B, activation="softsign", solver=method,
                           tol=1e-13)
    assert res.converged and res.loss == pytest.approx(L, rel=1e-11)
    np.testing.assert_allclose(res.grad_A, dA, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(res.grad_B, dB, rtol=0, atol=1e-10 * scale)
    # the link of readout: y_hat = sigma(u . z), z the linear fixed point
    y = rng.standard_normal(9)
    s = db.loss_and_grad("readout", X, y, A, B, activation="softsign", solver=method,
                         tol=1e-13)
    Z = naive.linear_fixed_point(A, B, X)
    u = np.full(4, 0.5)
    assert s.loss == pytest.approx(0.5 * np.mean((_ref(Z @ u) - y) ** 2), rel=1e-11)


def test_train_and_flow(rng, softsign_act):
    A, B, X = small_problem(rng, n=20, d=3, m=3, scale_A=0.5)
    Y = np.tanh(rng.standard_normal((20, 3)))
    r = db.train("nonlinear", X, Y, A, B, lr=0.1, steps=5, activation="softsign", tol=1e-12)
    assert r.status == "max_steps"
    Ak, Bk = A.copy(), B.copy()
    for _ in range(5):  # plain gradient descent with the dense gradient
        _, gA, gB = _dense_grad(Ak, Bk, X, Y)
        Ak, Bk = Ak - 0.1 * gA, Bk - 0.1 * gB
    np.testing.assert_allclose(r.A, Ak, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(r.B, Bk, rtol=1e-8, atol=1e-12)
    f = db.flow("nonlinear", X, Y, A, B, t_end=0.5, rtol=1e-8, activation="softsign")
    assert f.status == "finished"
    losses = f.history["loss"]
    assert losses[-1] < losses[0]
    assert losses[-1] == pytest.approx(_dense_grad(f.A, f.B, X, Y)[0], rel=1e-9)


def test_theory_reads_the_registration(rng, softsign_act):
    """pl_constant (readout) takes gamma, Gamma from derivative_range, the local
    constants from derivative_extremes; an activation registered without them is
    an error naming the missing keyword, not a guess."""
    X = rng.standard_normal((40, 3))
    Q = np.eye(2)
    assert theory.pl_constant("readout", X, Q, activation="softsign") == 0.0  # gamma = 0
    mu = theory.pl_constant("readout", X, Q, activation="sin_skip(0.5)")
    lmin, lmax = np.linalg.eigvalsh(X.T @ X / 40)[[0, -1]]
    assert mu == pytest.approx(2 * 0.5**4 * lmin**2 / (1.5**2 * lmax * 1.0), rel=1e-12)
    A, B = 0.3 * np.eye(2), rng.standard_normal((2, 3))
    theta = rng.standard_normal(3)
    lo, hi = theory.local_derivative_bounds(X, A, B, theta, activation="softsign")
    w = np.linalg.solve(np.eye(2) - A, B).T @ np.full(2, 1 / np.sqrt(2))
    s, t = X @ w, X @ theta
    grid = np.linspace(0.0, 1.0, 2001)[:, None] * (t - s) + s
    assert lo == pytest.approx(_dref(grid).min(), abs=1e-6)
    assert hi == pytest.approx(_dref(grid).max(), abs=1e-6)
    bare = db.register_activation("bare_tanh", lambda x: math.tanh(x),
                                  lambda x: 1.0 - math.tanh(x) ** 2)
    with pytest.raises(ValueError, match="derivative range of activation 'bare_tanh' is "
                                         "unknown: pass derivative_range="):
        theory.pl_constant("readout", X, Q, activation="bare_tanh")
    with pytest.raises(ValueError, match="derivative_extremes="):
        bare.derivative_range([0.0], [1.0])
    with pytest.raises(ValueError, match="value_range="):
        bare.value_bounds()


def test_sweep_worker_registers_by_module(tmp_path):
    """A spawned worker knows nothing of this process's registrations: the grid names
    the module that registers the activation."""
    g = parse_grid("""
[fixed]
model = "nonlinear"
n = 16
d = 2
m = 2
steps = 3
lr = 0.05
[grid]
activation = ["tests._user_activations:erf_link", "tests._user_activations:sin_skip(0.2)"]
""")
    assert [s.params["activation"] for s in g.specs] == [
        "tests._user_activations:erf_link", "tests._user_activations:sin_skip(0.2)"]
    res = run_sweep(g, tmp_path, executor="local", workers=1, progress=False, format="csv")
    assert (res.ok, res.failed) == (2, 0)
    rows = read_csv(tmp_path / "runs.csv")
    assert {r["status"] for r in rows} == {"max_steps"}


def test_the_kernels_keep_their_disk_cache():
    """The kernels reach a registered function through a linker symbol, not an address:
    a second process loads them from the disk cache and calls its own registration."""
    code = textwrap.dedent("""
        import json, math
        import numpy as np
        import deqbench as db
        from deqbench._kernels import solvers
        db.register_activation("half_tanh", lambda x: 0.5 * math.tanh(x),
                               lambda x: 0.5 * (1.0 - math.tanh(x) ** 2))
        rng = np.random.default_rng(0)
        X, A, B = rng.standard_normal((10, 3)), 0.5 * np.eye(4), rng.standard_normal((4, 3))
        r = db.fixed_point(X, A, B, activation="half_tanh", tol=1e-13)
        ok = np.allclose(r.z, 0.5 * np.tanh(r.z @ A.T + X @ B.T), rtol=0, atol=1e-12)
        print(json.dumps({"ok": bool(ok and r.converged),
                          "hits": sum(solvers.iterate.stats.cache_hits.values()),
                          "misses": sum(solvers.iterate.stats.cache_misses.values())}))
    """)
    out = []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=ROOT, check=True)
        out.append(json.loads(p.stdout.strip().splitlines()[-1]))
    assert out[0]["ok"] and out[1]["ok"]
    assert out[1]["hits"] >= 1 and out[1]["misses"] == 0


def test_registering_again_replaces_the_functions():
    a = db.register_activation("scaled", lambda x: 0.5 * x, lambda x: 0.5)
    code = a.code
    x = np.array([1.0, -2.0])
    np.testing.assert_array_equal(a(x), [0.5, -1.0])
    b = db.register_activation("scaled", lambda x: 0.25 * x, lambda x: 0.25)
    assert b.code == code
    np.testing.assert_array_equal(b(x), [0.25, -0.5])


@pytest.mark.parametrize(("args", "kw", "exc", "match"), [
    (("tanh", softsign, softsign_derivative), {}, ValueError, "'tanh' is a built-in"),
    (("2bad", softsign, softsign_derivative), {}, ValueError, "name must be an identifier"),
    (("nope", lambda x: np.zeros(3), softsign_derivative), {}, TypeError,
     r"f must be a numba-compilable scalar function \(x\)"),
    (("nope", softsign, 3.0), {}, TypeError, "df must be a numba-compilable function"),
    (("nope", softsign, softsign_derivative), {"param": 0.5}, TypeError,
     r"f must be a numba-compilable scalar function \(x, param\)"),
    (("nope", softsign, softsign_derivative), {"param": math.inf}, ValueError,
     "param must be finite"),
    (("nope", softsign, softsign_derivative), {"derivative_range": (1.0, 0.0)}, ValueError,
     "derivative_range must be .lo, hi. with lo <= hi"),
    (("nope", softsign, softsign_derivative), {"value_range": "x"}, TypeError,
     "value_range must be a pair"),
    (("nope", softsign, softsign_derivative), {"derivative_extremes": [math.nan]}, ValueError,
     "derivative_extremes must be finite points"),
])
def test_bad_registration_names_the_argument(args, kw, exc, match):
    with pytest.raises(exc, match=match):
        db.register_activation(*args, **kw)
    assert "nope" not in ACTIVATIONS


def test_bad_names_in_calls(softsign_act):
    with pytest.raises(ValueError, match=r"softsign takes no parameter"):
        db.get_activation("softsign(0.3)")
    with pytest.raises(ValueError, match=r"sin_skip param must be a number"):
        db.get_activation("sin_skip(x)")
    with pytest.raises(ValueError, match=r"cannot import module 'no_such_module'"):
        db.get_activation("no_such_module:softsign")
    with pytest.raises(ValueError, match=r"activation must be one of .*'softsign'"):
        db.get_activation("softsine")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert db.get_activation(" sin_skip ( 0.5 ) ").slope == 0.5
