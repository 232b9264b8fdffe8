"""The paper's algorithm as a NumPy peer (benchmarks/peers/paper_peers.py): its
data are the authors' draws (checked against numbers in their saved results,
``experiments/results`` of sanjitdp/single-index-deq), and deqbench's fused loop
follows its trajectories."""

import numpy as np
import pytest

from benchmarks.peers import paper_peers as pp

# experiments/results/approximate/nonlinear_runs.json: "initial_risk" per seed
A3_INITIAL_RISK = {100: 0.021957592660701585, 101: 0.022330907639230197,
                   102: 0.017224433151237603, 103: 0.02243334207247481,
                   104: 0.021050832642204063}
# experiments/results/nonlinearity/seed-1729-eps-0.25.json
A4_1729 = dict(gram_min=0.020669959333510346, hessian_min_over_eps2=0.028699042862383395,
               final_parameter_error=0.0003727139853491307)


@pytest.mark.parametrize("seed", sorted(A3_INITIAL_RISK))
def test_a3_problem_is_the_authors_draw(seed):
    p = pp.a3_problem(seed)
    ref = pp.numpy_a3(p, steps=0)
    ours = pp.deqbench_run(p, steps=0)
    assert ref.train_risk[0] == pytest.approx(A3_INITIAL_RISK[seed], rel=1e-10)
    assert ours.train_risk[0] == pytest.approx(A3_INITIAL_RISK[seed], rel=1e-10)
    assert np.linalg.norm(p.theta_star[:-1]) == pytest.approx(1.0)
    assert np.linalg.norm(p.theta0 - p.theta_star) == pytest.approx(np.hypot(0.2, 0.15))


def test_a4_problem_is_the_authors_draw():
    eps = 0.25
    p = pp.a4_problem(1729, eps)
    z = p.X @ p.theta_star[:-1]
    n = p.X.shape[0]
    gram = np.c_[p.X, np.tanh(z)]
    assert np.linalg.eigvalsh(gram.T @ gram / n)[0] == pytest.approx(A4_1729["gram_min"],
                                                                     rel=1e-10)
    # the Hessian of their risk (no 1/2) at the target: 2 J^T J / n, J = sigma'(z) [x, y]
    J = (1 + eps * (1 - np.tanh(z) ** 2))[:, None] * np.c_[p.X, p.Y]
    lam = np.linalg.eigvalsh(2 * J.T @ J / n)[0]
    assert lam / eps**2 == pytest.approx(A4_1729["hessian_min_over_eps2"], rel=1e-9)
    assert np.linalg.norm(p.theta0 - p.theta_star) == pytest.approx(np.hypot(0.1, 0.03))


@pytest.mark.parametrize("method", ["exact", "jfb", "neumann3", "damped2"])
def test_deqbench_follows_the_a3_peer(method):
    p = pp.a3_problem(100, n=400)
    ref = pp.numpy_a3(p, method, steps=200)
    got = pp.deqbench_run(p, method, steps=200)
    np.testing.assert_array_equal(got.steps, ref.steps)
    assert pp.difference(ref, got) < 1e-9
    np.testing.assert_allclose(got.train_risk, ref.train_risk[got.steps], rtol=1e-8)
    np.testing.assert_allclose(got.eval_risk, ref.eval_risk, rtol=1e-8)
    np.testing.assert_allclose(got.param_error, ref.param_error, rtol=1e-9)


def test_deqbench_follows_the_a4_peer():
    p = pp.a4_problem(1729, 0.25, n_train=256, n_eval=512)
    ref = pp.numpy_a4(p, steps=300, every=20)
    got = pp.deqbench_run(p, "exact", steps=300, eta=0.05, every=20)
    assert pp.difference(ref, got) < 1e-9
    np.testing.assert_allclose(got.eval_risk, ref.eval_risk, rtol=1e-8)


@pytest.mark.slow
def test_a4_run_ends_at_the_authors_parameter_error():
    """The whole A.4 run of seed 1729, eps = 1/4 (60,000 updates) through
    deqbench: the authors' saved final parameter error, to the agreement of two
    solves at 1e-12 over the run."""
    p = pp.a4_problem(1729, 0.25)
    got = pp.deqbench_run(p, "exact", steps=60000, eta=0.05, every=100)
    assert got.param_error[-1] == pytest.approx(A4_1729["final_parameter_error"], rel=1e-6)


def test_run_reports_a_row():
    from tools.peers import paper_peers as timing_cli

    rows = timing_cli.run("a3", seeds=[101], steps=20, n=300, log=lambda s: None)
    (row,) = rows
    assert row["seed"] == 101 and row["steps"] == 20
    assert row["numpy_s"] > 0 and row["deqbench_s"] > 0 and row["max_theta_difference"] < 1e-9


def test_profile_reports_the_limit_of_a_step():
    """The A.3 profile: each part measured, the limit read X once plus the run's sigma
    evaluations, at least one evaluation per sample a step."""
    from tools.peers import paper_profile

    lines = []
    out = paper_profile.profile(steps=30, reps=1, log=lines.append)
    assert out["evals_per_sample_run"] >= 1.0 and out["evals_per_sample_run_max"] >= 1
    for key in ("read_X_us", "two_gemv_us", "pass_identity_end_us", "pass_tanh_end_us",
                "sigma_end_us", "run_us_per_step", "numpy_us_per_step"):
        assert 0.0 < out[key] < 1e6, key
    assert out["limit_us"] == pytest.approx(
        out["read_X_us"] + out["evals_per_sample_run"] * out["sigma_end_us"])
    assert lines[-1].startswith("limit (read X once")


def test_newton_and_picard_follow_one_trajectory():
    """The measurement behind Newton as single_index's default: both solvers train the
    same parameters (to the solves' tolerance), Newton in fewer evaluations a step."""
    from tools.peers import newton_vs_picard

    out = newton_vs_picard.run(steps=20, reps=1, log=lambda s: None)
    assert out["theta_difference"] < 1e-9
    assert 1.0 <= out["newton"]["fp_iters_mean"] < out["picard"]["fp_iters_mean"]
    assert out["speedup"] > 0
