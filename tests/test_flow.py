"""Gradient flow (deqbench.flow): the invariant to the integrator's tolerance and
the exp(-mu t) decay of docs/theory.md §5 and §7."""

import numpy as np
import pytest

import deqbench as db
from deqbench import theory
from deqbench._flow import FLOW_HISTORY_KEYS


def _instance(model, seed):
    rng = np.random.default_rng(seed)
    m, d = int(rng.integers(1, 31)), int(rng.integers(1, 31))
    if model == "linear":
        n, act, L_star = 3 * d + 30, "identity", None
        X, Y, _ = db.data.linear_teacher(n, d, m, seed=seed)
    else:  # small per-sample problems: every RHS is two fixed-point solves; d small and
        # n >> d so that Sigma is well conditioned and the (loose) mu is not tiny
        m, d = 1 + m % 8, 1 + d % 3
        n, act, L_star = 40 * d + 60, "leaky_relu(0.8)", 0.0
        X, Y, _ = db.data.single_index_teacher(n, d, activation=act, seed=seed)
    A0, B0 = db.data.init_params(d, m, scale_A=0.3, scale_B=0.5, seed=seed + 100)
    return X, Y, A0, B0, act, L_star


@pytest.mark.parametrize("model", ["linear", "readout"])
@pytest.mark.parametrize("seed", range(20))
def test_flow_conserves_q_and_decays_at_the_pl_rate(model, seed):
    X, Y, A0, B0, act, L_star = _instance(model, seed)
    Q0 = theory.invariant(A0, B0)
    mu = theory.pl_constant(model, X, Q0, activation=act)
    rtol = 1e-7
    t_end = 3.0 / mu if model == "linear" else 5.0 / mu  # the envelope falls to e^-5 e0
    r = db.flow(model, X, Y, A0, B0, t_end=t_end, rtol=rtol, atol=1e-10, activation=act,
                L_star=L_star, max_steps=5000)
    assert r.status == "finished" and r.t == pytest.approx(t_end)
    h = r.history
    drift = np.linalg.norm(theory.invariant(r.A, r.B) - Q0) / np.linalg.norm(Q0)
    assert drift <= 10 * rtol
    assert h["invariant_drift"][-1] == pytest.approx(drift, rel=1e-6, abs=1e-15)
    assert np.all(np.abs(h["drift_trace"]) <= 10 * rtol * np.trace(Q0))
    # L(t) - L* <= (L(0) - L*) exp(-mu t), up to the integration error
    e = h["excess_loss"]
    assert np.all(e <= e[0] * np.exp(-mu * h["t"]) * (1 + 1e-6) + 1e-12 * h["loss"][0])
    assert e[-1] < 0.1 * e[0]  # the horizon is long enough for the envelope to bite
    assert np.all(np.diff(h["loss"]) <= 1e-12 * h["loss"][0])  # a gradient flow descends


def test_m1_sphere_is_constant():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 3))
    Y = (X @ np.array([1.0, -0.5, 0.3]))[:, None]
    a0, b0 = np.array([[0.2]]), np.array([[0.3, -0.1, 0.4]])
    r = db.flow("linear", X, Y, a0, b0, t_end=20.0, rtol=1e-9, atol=1e-12)
    sphere0 = (1 - a0[0, 0]) ** 2 + np.sum(b0**2)
    sphere = (1 - r.A[0, 0]) ** 2 + np.sum(r.B**2)
    assert sphere == pytest.approx(sphere0, rel=1e-8)
    assert r.history["excess_loss"][-1] < 1e-6 * r.history["excess_loss"][0]


def test_per_sample_and_sufficient_statistics_flows_agree():
    X, Y, _ = db.data.linear_teacher(60, 4, 3, seed=2)
    A0, B0 = db.data.init_params(4, 3, scale_A=0.4, scale_B=1.0, seed=3)
    kw = dict(t_end=5.0, rtol=1e-9, atol=1e-12)
    ss = db.flow("linear", X, Y, A0, B0, sufficient_stats=True, **kw)
    ps = db.flow("linear", X, Y, A0, B0, sufficient_stats=False, **kw)
    assert ss.sufficient_stats and not ps.sufficient_stats
    assert np.linalg.norm(ss.A - ps.A) <= 1e-7 * np.linalg.norm(ss.A)
    assert np.all(ps.history["fp_iters"] > 0) and np.all(ss.history["fp_iters"] == 0)


def test_gradient_descent_approaches_the_flow():
    """GD with step lr follows the flow to O(lr) (time t = lr * steps)."""
    X, Y, _ = db.data.linear_teacher(60, 4, 3, seed=4)
    A0, B0 = db.data.init_params(4, 3, scale_A=0.4, scale_B=1.0, seed=5)
    fl = db.flow("linear", X, Y, A0, B0, t_end=1.0, rtol=1e-10, atol=1e-12)
    errs = []
    for lr in (1e-2, 5e-3):
        gd = db.train("linear", X, Y, A0, B0, lr=lr, steps=round(1.0 / lr), record_every=None)
        errs.append(np.linalg.norm(gd.A - fl.A) + np.linalg.norm(gd.B - fl.B))
    assert errs[1] < 0.6 * errs[0]  # first order in lr
    assert errs[1] < 1e-2


def test_nonlinear_flow_drift_is_reported(record_property):
    rng = np.random.default_rng(6)
    X = rng.standard_normal((30, 3))
    Y = rng.standard_normal((30, 3))
    A0, B0 = db.data.init_params(3, 3, scale_A=0.4, scale_B=1.0, seed=7)
    r = db.flow("nonlinear", X, Y, A0, B0, t_end=2.0, rtol=1e-8, activation="tanh")
    assert r.status == "finished"
    drift = r.history["invariant_drift"][-1]
    record_property("nonlinear_flow_invariant_drift", float(drift))
    assert drift > 1e3 * 1e-8  # well above the integration error: the law fails


def test_status_and_history():
    X, Y, _ = db.data.linear_teacher(50, 3, 2, seed=8)
    A0, B0 = db.data.init_params(3, 2, scale_A=0.3, scale_B=1.0, seed=9)
    r = db.flow("linear", X, Y, A0, B0, t_end=100.0, max_steps=4)
    assert r.status == "max_steps" and r.n_steps == 4
    assert set(r.history) == set(FLOW_HISTORY_KEYS)
    np.testing.assert_array_equal(r.history["step"], np.arange(5))
    assert np.all(np.diff(r.history["t"]) > 0)
    target = 0.5 * (r.history["loss"][0] + r.L_star)
    c = db.flow("linear", X, Y, A0, B0, t_end=100.0, stop_loss=target, record_every=3)
    assert c.status == "converged" and c.history["loss"][-1] <= target
    assert c.history["step"][-1] == c.n_steps and c.n_evals >= 6 * c.n_steps


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(t_end=0.0), "t_end"),
        (dict(rtol=-1.0), "rtol"),
        (dict(atol=0.0), "atol"),
        (dict(max_steps=0), "max_steps"),
        (dict(Y=np.zeros((50, 3))), "Y"),
        (dict(solver="jfb"), "solver"),
        (dict(X=np.full((50, 3), np.nan)), "X"),
        (dict(h0=-1.0), "h0"),
    ],
)
def test_bad_input(change, match):
    X, Y, _ = db.data.linear_teacher(50, 3, 2, seed=8)
    A0, B0 = db.data.init_params(3, 2, scale_A=0.3, scale_B=1.0, seed=9)
    kw = dict(X=X, Y=Y, A0=A0, B0=B0, t_end=1.0)
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        db.flow("linear", **kw)
