"""The paper's experiments E11-E13 (docs/theory.md §12): the authors' numbers are package
data with their sources, and each theory row fails when its formula is mutated."""

from __future__ import annotations

import json
import re
from importlib import resources

import numpy as np
import pytest
from scipy.optimize import brentq

from deqbench import theory
from deqbench.experiments import _paper, run_experiment

COMMIT = "028e65bb80fb15dae98e074bc5f59110a4e37f26"


def test_reference_numbers_name_their_source():
    text = resources.files("deqbench.experiments").joinpath("paper_reference.json").read_text()
    ref = json.loads(text)
    assert ref["commit"] == COMMIT and "sanjitdp/single-index-deq" in ref["repository"]
    vals = ref["values"]
    assert len(vals) > 400
    for key, e in vals.items():
        assert set(e) <= {"value", "file", "key", "note"}, key
        assert re.fullmatch(r"experiments/results/(legacy|approximate|nonlinearity)/[\w.-]+"
                            r"\.json", e["file"]), (key, e["file"])
        assert e["key"], key
    # the summaries are consistent with the per-run records they summarise
    for m in _paper.METHODS:
        pe = [_paper.ref(f"A3/tanh/{s}/{m}/final_parameter_error") for s in range(100, 105)]
        assert np.mean(pe) == pytest.approx(
            _paper.ref(f"A3/tanh/summary/{m}/final_parameter_error/mean"), rel=1e-14)
    for eps in (0.5, 0.25, 0.125):
        pe = [_paper.ref(f"A4/{s}/{eps:g}/final_parameter_error") for s in range(1729, 1734)]
        assert np.std(pe, ddof=1) == pytest.approx(
            _paper.ref(f"A4/aggregate/{eps:g}/final_parameter_error_std"), rel=1e-12)
    assert "legacy/summary.json runs.linear.final_theta" in _paper.cite(
        "A1-2/linear/final_theta")


def test_problems_draw_the_authors_starts():
    x, p = _paper.scalar_problem()
    assert p.tolist() == _paper.ref("A1-2/linear/initial_theta")
    assert x.shape == (1000,) and 0 <= x.min() and x.max() <= 1
    for s in range(20):
        assert _paper.selection_start(s).tolist() == _paper.ref(
            f"A1-2/selection/{s}/initial_theta")
    assert [s.tolist() for s in _paper.counterexample_starts()] == _paper.ref(
        "A3/scalar/initializations")
    pr = _paper.tanh_problem(100)
    assert np.linalg.norm(pr.xi) == pytest.approx(1.0)
    assert np.linalg.norm(pr.theta0 - pr.target) == pytest.approx(np.hypot(0.2, 0.15))
    pr = _paper.weak_problem(1729)
    assert pr.X.shape == (4096, 10) and pr.X_eval.shape == (16384, 10)
    assert np.linalg.norm(pr.theta0 - pr.target) == pytest.approx(np.hypot(0.1, 0.03))


def test_fit_takes_the_papers_step_and_risk():
    """One GD step of fit with eta is a step lr = 2 eta on deqbench's loss."""
    X = np.array([[1.0], [2.0]])
    y = np.array([1.0, 3.0])
    r = _paper.fit(X, y, np.array([0.5, 0.1]), eta=0.05, steps=1, activation="tanh", tol=1e-14)
    z0 = np.array([brentq(lambda t, s=s: t - np.tanh(s + 0.1 * t), -1, 1, xtol=1e-15)
                   for s in 0.5 * X[:, 0]])
    gw, gb = theory.scalar_gradient(X, y, np.array([0.5]), 0.1, z0, activation="tanh",
                                    convention="paper")
    np.testing.assert_allclose(r.theta, np.r_[0.5, 0.1] - 0.05 * np.r_[gw, gb], rtol=1e-12)
    assert r.risk[0] == pytest.approx(np.mean((z0 - y) ** 2), rel=1e-12)
    # the damped two-term rule: the factor 0.75 + 0.25 a in place of 1 / (1 - a)
    r = _paper.fit(X, y, np.array([0.5, 0.1]), eta=0.05, steps=1, activation="tanh", tol=1e-14,
                   backward="damped2")
    gw, gb = theory.scalar_gradient(X, y, np.array([0.5]), 0.1, z0, activation="tanh",
                                    convention="paper", backward="damped_neumann",
                                    neumann_terms=1, damping=0.5)
    np.testing.assert_allclose(r.theta, np.r_[0.5, 0.1] - 0.05 * np.r_[gw, gb], rtol=1e-12)


def _verdicts(name, tmp_path):
    return [c.verdict for c in run_experiment(name, True, tmp_path)["checks"]]


def _claims(name, tmp_path):
    return run_experiment(name, True, tmp_path)["checks"]


# each mutation of a §12 formula: (experiment, theory function, mutation, rows that fail)
MUTATIONS = [
    # drop the 1 / (1 - a) of the implicit gradient: the gradient row and the linear
    # model's rate on its zero-risk line (b = 0.58) fail
    ("E11", "backward_factor",
     lambda orig: lambda a, backward="exact", **k: (np.ones_like(np.asarray(a, float))
                                                    if backward == "exact"
                                                    else orig(a, backward, **k)),
     ["implicit gradient", "local rate on the zero-risk line"]),
    # the paper's Hessian (no 1/2) where deqbench's loss is meant: the sigmoid and the
    # linear rate rows fail
    ("E11", "zero_risk_hessian",
     lambda orig: lambda *a, **k: 2.0 * orig(*a, **k),
     ["local rate at the zero-risk point", "local rate on the zero-risk line"]),
    # the smallest eigenvalue's factor instead of the largest |1 - lr lambda|
    ("E11", "gd_local_rate",
     lambda orig: lambda M, lr, **k: float(np.min(np.abs(1 - lr * np.linalg.eigvalsh(M)))),
     ["local rate at the zero-risk point"]),
    # three terms' (root-free) factor in place of two terms': no stall predicted
    ("E12", "backward_roots",
     lambda orig: lambda backward, **k: orig(backward, **{**k, "neumann_terms": 2}),
     ["why two terms stall"]),
    # half the step in the stall factor: the measured approach is twice as fast
    ("E12", "stall_rate",
     lambda orig: lambda c, lr, **k: orig(c, lr / 2, **k),
     ["rates"]),
    # deqbench's Hessian where the paper's is meant: the authors' 0.001579 is missed
    ("E12", "zero_risk_hessian",
     lambda orig: lambda *a, convention="deqbench", **k: orig(*a, **k),
     ["Hessian at the zero-risk point"]),
    # the limit without the projection on X: E tanh^2 instead of the residual
    ("E13", "skip_tanh_curvature_limit",
     lambda orig: lambda X=None, xi=None, **k: (
         float(np.mean(np.tanh(X @ xi) ** 2)) if X is not None else orig(**k)),
     ["-> R / (1 + |xi|^2)", "population limit"]),
    ("E13", "zero_risk_hessian",
     lambda orig: lambda *a, convention="deqbench", **k: orig(*a, **k),
     ["Hessian at the target"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "target", "wrong", "failing"), MUTATIONS,
                         ids=[f"{m[0]}-{m[1]}-{i}" for i, m in enumerate(MUTATIONS)])
def test_paper_rows_fail_on_a_wrong_formula(tmp_path, monkeypatch, name, target, wrong,
                                            failing):
    monkeypatch.setattr(theory, target, wrong(getattr(theory, target)))
    checks = _claims(name, tmp_path)
    for part in failing:
        rows = [c for c in checks if part in c.claim]
        assert rows, (part, [c.claim[:60] for c in checks])
        assert all(c.holds is False for c in rows), [(c.claim[:60], c.measured) for c in rows]


@pytest.mark.slow
def test_damped_rows_run_once_train_offers_the_rule(tmp_path, monkeypatch):
    """train takes neumann_damping, so the damped two-term rows run and are judged against
    the authors' numbers (none is 'pending'); a stand-in that is not the damped rule,
    three terms, fails them."""
    checks = _claims("E12", tmp_path / "now")
    assert not [c for c in checks if c.measured.startswith("pending")]
    first = next(c for c in checks if "scalar counterexample (eta 0.02" in c.claim)
    assert "damped two terms" in first.measured and first.holds is True
    monkeypatch.setitem(_paper.BACKWARD_OPTIONS, "damped2",
                        {"grad_solver": "neumann", "neumann_terms": 2})
    checks = _claims("E12", tmp_path / "stand-in")
    first = next(c for c in checks if "scalar counterexample (eta 0.02" in c.claim)
    assert "damped two terms" in first.measured and first.holds is False
