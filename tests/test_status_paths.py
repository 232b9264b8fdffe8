"""The same status on both gradient paths (docs/theory.md §3, certificate), runs
that leave the model's domain, bounded histories, and Ctrl-C in train and flow."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deqbench as db
from deqbench._kernels import model as _m
from deqbench._training import MAX_HISTORY_BYTES, history_rows

ROOT = Path(__file__).resolve().parents[1]


def _problem(seed=4, n=25, d=4, m=3, scale_A=0.4):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    Y = rng.standard_normal((n, m))
    A0, B0 = db.data.init_params(d, m, scale_A=scale_A, scale_B=1.0, seed=seed + 1)
    return X, Y, A0, B0


def _rho(M):
    return float(np.max(np.abs(np.linalg.eigvals(M))))


def _iteration(A, damping):
    return (1.0 - damping) * np.eye(A.shape[0]) + damping * A


# --- the certificate kernel against numpy's eigenvalues ------------------------


def _cert_work(m, solver, damping=1.0, history=0):
    d = 2
    solve = _m.Solve(forward=solver, adjoint=solver, tol=1e-10, max_iter=100, damping=damping,
                     anderson_ridge=1e-10, anderson_history=history, neumann_terms=0)
    model = _m.Model(kind=_m.LINEAR, X=np.zeros((1, d)), Y=np.zeros((1, m)), y=np.zeros(1),
                     u=np.zeros(1), code=0, param=0.0)
    stats = _m.SuffStats(use=True, Sxx=np.eye(d), W_star=np.zeros((m, d)), L_star=0.0)
    return solve, _m.workspaces(model, m, solve, stats)[1]


def _certified(A, solver, damping=1.0, history=0):
    solve, sw = _cert_work(A.shape[0], solver, damping, history)
    return _m.certify(A, solver, solve, sw), sw.counts.copy()


@settings(deadline=None, max_examples=60)
@given(seed=st.integers(0, 10**6), m=st.integers(1, 7), scale=st.floats(0.2, 2.0),
       damping=st.sampled_from([1.0, 0.5]), triangular=st.booleans())
def test_certificate_agrees_with_eigenvalues(seed, m, scale, damping, triangular):
    """Picard: certified exactly when rho((1 - b) I + b A) <= 1 - CERT_MARGIN (numpy)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, m))
    if triangular:  # non-normal, with a large off-diagonal part
        A = np.triu(A * 30.0, 1) + np.diag(rng.uniform(-1.0, 1.0, m))
    A *= scale / max(_rho(A), 1e-3)
    rho = _rho(_iteration(A, damping))
    if abs(rho - (1.0 - _m.CERT_MARGIN)) < 1e-9:
        return
    solve, sw = _cert_work(m, _m.PICARD, damping)
    assert _m.certify(A, _m.PICARD, solve, sw) == (rho <= 1.0 - _m.CERT_MARGIN)
    # a nearby matrix, with the same work space: the kept vector and the last
    # eigendecomposition (Bauer-Fike) must not certify what they should not
    for eps in (1e-6, 1e-3, 3e-2):
        A2 = A + eps * rng.standard_normal((m, m))
        rho2 = _rho(_iteration(A2, damping))
        if abs(rho2 - (1.0 - _m.CERT_MARGIN)) > 1e-9:
            assert _m.certify(A2, _m.PICARD, solve, sw) == (rho2 <= 1.0 - _m.CERT_MARGIN)


def test_certificate_cheap_tests_decide_where_they_can():
    # non-normal, rho = 0.9, ||A||_2 ~ 50: the norm bound is useless; the
    # Collatz-Wielandt bound on |A| (triangular: the same spectrum) needs its
    # vector near the Perron vector, which the steps of a run bring it to
    A = np.array([[0.9, 50.0], [0.0, -0.5]])
    solve, sw = _cert_work(2, _m.PICARD)
    assert all(_m.certify(A, _m.PICARD, solve, sw) for _ in range(3))
    assert sw.counts[_m.CERT_BY_EIG] == 1 and sw.counts[_m.CERT_BY_PERRON] == 2
    assert sw.counts[_m.CERT_BY_NORM] == 0 and sw.counts[_m.CERT_MATVECS] == 5
    ok, counts = _certified(np.array([[0.5, 0.2], [0.1, -0.3]]), _m.PICARD)
    assert ok and counts[_m.CERT_BY_NORM] == 1 and counts[_m.CERT_MATVECS] == 0
    # a rotation by 0.6 rad scaled to rho = 0.95: |A| has rho 1.27, so only
    # the eigenvalue solve can certify it
    c, s = np.cos(0.6), np.sin(0.6)
    R = np.array([[c, -s], [s, c]])
    solve, sw = _cert_work(2, _m.PICARD)
    assert _m.certify(0.95 * R, _m.PICARD, solve, sw) and sw.counts[_m.CERT_BY_EIG] == 1
    # the next, nearby step is certified by Bauer-Fike from that decomposition
    # (V unitary: kappa <= ||V||_F ||V^-1||_F = 2), a far one is decided anew
    assert _m.certify(0.95 * R + 1e-4, _m.PICARD, solve, sw)
    assert sw.counts[_m.CERT_BY_BAUER_FIKE] == 1 and sw.counts[_m.CERT_BY_EIG] == 1
    assert not _m.certify(1.02 * R, _m.PICARD, solve, sw) and sw.counts[_m.CERT_BY_EIG] == 2
    # refusals come from the eigenvalue solve only
    ok, counts = _certified(np.diag([1.5, 0.1]), _m.PICARD)
    assert not ok and counts[_m.CERT_BY_EIG] == 1
    # damping brings the spectrum {1.5, -0.5} inside: (1 - b) + b lambda with b = 0.5
    # is {1.25, 0.25}, still outside; with spectrum {-1.5, 0.5}, b = 2/3 -> {-2/3, 2/3}
    assert not _certified(np.diag([1.5, -0.5]), _m.PICARD, 0.5)[0]
    assert _certified(np.diag([-1.5, 0.5]), _m.PICARD, 2.0 / 3.0)[0]
    # Anderson: a window that holds the whole space needs only invertibility
    assert _certified(np.diag([1.5, 0.1]), _m.ANDERSON, history=2)[0]
    assert not _certified(np.diag([1.5, 0.1]), _m.ANDERSON, history=1)[0]
    assert _certified(np.diag([1.5, 0.1]), _m.DIRECT)[0]


# --- both paths end with the same status -----------------------------------------

CASES = [
    # (solver, options, lr, status)
    ("picard", {}, 0.05, "max_steps"),
    ("picard", {}, 0.25, "fixed_point_failed"),  # rho(A) crosses 1 after a few steps
    ("picard", {}, 50.0, "fixed_point_failed"),  # issue 10's example
    ("picard", {}, 1e12, "fixed_point_failed"),  # leaves the domain at once
    ("picard", {"damping": 0.5}, 0.4, "max_steps"),  # rho(A) = 1.48, damped rho < 1
    ("picard", {"damping": 0.5}, 50.0, "fixed_point_failed"),
    ("anderson", {}, 0.05, "max_steps"),
    ("anderson", {}, 5.0, "max_steps"),  # rho(A) = 23: a window of m slots solves it
    ("anderson", {"anderson_history": 2}, 50.0, "fixed_point_failed"),
    ("direct", {}, 50.0, "max_steps"),
    ("direct", {}, 1e12, "max_steps"),  # I - A stays invertible: inside direct's domain
]


@pytest.mark.parametrize(("solver", "opts", "lr", "status"), CASES)
def test_both_paths_end_with_the_same_status(solver, opts, lr, status):
    X, Y, A0, B0 = _problem()
    kw = dict(lr=lr, steps=60, solver=solver, max_iter=2000, **opts)
    res = {}
    for ss in (True, False):
        if status == "fixed_point_failed":
            with pytest.warns(db.ConvergenceWarning, match="fixed_point_failed"):
                res[ss] = db.train("linear", X, Y, A0, B0, sufficient_stats=ss, **kw)
        else:
            res[ss] = db.train("linear", X, Y, A0, B0, sufficient_stats=ss, **kw)
    assert res[True].sufficient_stats and not res[False].sufficient_stats
    assert res[True].status == res[False].status == status
    for r in res.values():
        assert r.history["step"][-1] == r.n_steps
        assert np.isfinite(r.A).all() and np.isfinite(r.history["loss"]).all()
        if status == "fixed_point_failed" and solver == "picard":
            # (the step of failure may differ by one: per sample, Picard also
            # runs out of max_iter just below rho = 1)
            # the last good parameters are inside the solver's domain
            assert _rho(_iteration(r.A, opts.get("damping", 1.0))) < 1.0


def test_auto_picks_the_certified_path_for_issue_10s_example():
    X, Y, A0, B0 = _problem()
    with pytest.warns(db.ConvergenceWarning, match="fixed_point_failed"):
        r = db.train("linear", X, Y, A0, B0, lr=50.0, steps=60)
    assert r.sufficient_stats and r.status == "fixed_point_failed"
    assert _rho(r.A) < 1.0 and r.history["spectral_radius"][-1] < 1.0


def test_sufficient_statistics_flow_stops_at_the_boundary():
    """Issue 10: from scale_A = 0.99 this flow crosses rho(A) = 1 (the direct
    solver follows it to rho = 1.14); the sufficient-statistics path used to
    say "finished" beyond it."""
    X, Y, _ = db.data.linear_teacher(40, 3, 3, seed=2)
    A0, B0 = db.data.init_params(3, 3, scale_A=0.99, scale_B=1.0, seed=3)
    with pytest.warns(db.ConvergenceWarning, match="fixed_point_failed"):
        r = db.flow("linear", X, Y, A0, B0, t_end=20.0, sufficient_stats=True)
    assert r.status == "fixed_point_failed" and r.sufficient_stats
    assert _rho(r.A) < 1.0 and r.t < 20.0
    direct = db.flow("linear", X, Y, A0, B0, t_end=20.0, solver="direct")
    assert direct.status == "finished" and _rho(direct.A) > 1.0


# --- leaving the model's domain -----------------------------------------------------


@pytest.mark.parametrize("ss", [True, False])
def test_singular_initial_matrix_says_so(ss):
    X, Y, _, B0 = _problem()
    A0 = np.eye(3)
    for solver in ("picard", "direct"):
        with pytest.warns(db.ConvergenceWarning, match="before its first step: I - A0 is "
                          "singular"):
            r = db.train("linear", X, Y, A0, B0, lr=0.1, steps=5, solver=solver,
                         sufficient_stats=ss, max_iter=200)
        assert r.status == "fixed_point_failed" and r.n_steps == 0
        assert np.array_equal(r.A, A0) and np.array_equal(r.B, B0)
        assert r.history["step"].size == 0
    with pytest.warns(db.ConvergenceWarning, match="I - A0 is singular"):
        f = db.flow("linear", X, Y, A0, B0, t_end=1.0, sufficient_stats=ss, max_iter=200)
    assert f.status == "fixed_point_failed"


def test_initial_radius_outside_picard_says_so():
    X, Y, _, B0 = _problem()
    A0 = np.diag([1.5, 0.2, -0.3])
    for ss in (True, False):
        with pytest.warns(db.ConvergenceWarning, match="spectral radius 1.5 >= 1"):
            r = db.train("linear", X, Y, A0, B0, lr=0.1, steps=5, sufficient_stats=ss,
                         max_iter=500)
        assert r.status == "fixed_point_failed" and r.n_steps == 0


def test_history_is_bounded():
    X, Y, A0, B0 = _problem()
    with pytest.raises(ValueError, match=r"steps=1000000000000 with record_every=1 would "
                                         r"record .* pass record_every >= \d+ or "
                                         r"record_every=None"):
        db.train("linear", X, Y, A0, B0, lr=0.1, steps=10**12)
    with pytest.raises(ValueError, match="max_steps=1000000000000 with record_every=1"):
        db.flow("linear", X, Y, A0, B0, t_end=1.0, max_steps=10**12)
    # the cadence the error suggests fits the limit
    with pytest.raises(ValueError) as err:
        history_rows(10**12, 1, 1, _m.NCOL)
    k = int(str(err.value).split("record_every >= ")[1].split()[0])
    assert history_rows(10**12, k, k, _m.NCOL) * _m.NCOL * 8 <= MAX_HISTORY_BYTES


# --- Ctrl-C -----------------------------------------------------------------------

# A run that would take hours (10^9 GD steps; a flow to t = 10^9 whose step is held at
# the explicit method's stability limit, about 3 / lambda_max of the Hessian, by the
# large data), started after a short run has compiled (or loaded) the kernels: ending at
# all means the interrupt was seen.
_CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import deqbench as db
    rng = np.random.default_rng(0)
    X = 10.0 * rng.standard_normal((200, 4)); Y = rng.standard_normal((200, 3))
    A0, B0 = db.data.init_params(4, 3, scale_A=0.4, scale_B=1.0, seed=1)
    kw = dict(sufficient_stats=SS, record_every=10**5)
    if "FUNC" == "train":
        run = lambda k: db.train("linear", X, Y, A0, B0, lr=1e-8, steps=k, **kw)
    else:
        run = lambda k: db.flow("linear", X, Y, A0, B0, t_end=1e9, max_steps=k, **kw)
    run(3)
    print("ready", flush=True)
    try:
        run(10**9)
    except db.TrainInterrupted as exc:
        r = exc.result
        h = r.history
        ok = (r.status == "interrupted" and r.n_steps > 0 and h["step"][-1] == r.n_steps
              and np.isfinite(r.A).all() and h["loss"][-1] < h["loss"][0]
              and (h["t"][-1] == r.t if "FUNC" == "flow" else np.all(np.diff(h["loss"]) <= 0)))
        print("interrupted", r.n_steps, ok, isinstance(exc, KeyboardInterrupt), flush=True)
        raise
""")


@pytest.mark.parametrize("func", ["train", "flow"])
@pytest.mark.parametrize("ss", [True, False])
def test_ctrl_c_stops_the_run_and_keeps_what_finished(func, ss, record_property):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = _CHILD.replace("SS", str(ss)).replace("FUNC", func)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(0.5)  # inside the long run
        sent = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        record_property("seconds_from_sigint_to_exit", time.perf_counter() - sent)
    finally:
        proc.kill()
    words = out.split()
    assert words[:1] == ["interrupted"], err
    assert int(words[1]) > 0 and words[2:] == ["True", "True"]
    assert proc.returncode != 0 and "TrainInterrupted" in err  # re-raised
