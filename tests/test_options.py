"""``deqbench.SolverOptions``: the one options object of every public call,
equivalent to the keyword spelling, immutable, checked on construction, and a
conflict between the two spellings is an error naming the option."""

import dataclasses

import numpy as np
import pytest

import deqbench as db

OPTS = dict(tol=1e-9, max_iter=500, damping=0.8, anderson_history=3, anderson_ridge=1e-8)


def _problem(dtype=np.float64):
    X, Y, A, B = db.data.problem("linear", 40, 3, 3, scale_A=0.5, seed=0)
    return tuple(a.astype(dtype) for a in (X, Y, A, B))


@pytest.mark.parametrize("method", ["picard", "anderson"])
def test_fixed_point_options_equal_keywords(method):
    X, _, A, B = _problem()
    a = db.fixed_point(X, A, B, method=method, **OPTS)
    b = db.fixed_point(X, A, B, method=method, options=db.SolverOptions(**OPTS))
    np.testing.assert_array_equal(a.z, b.z)
    assert (a.n_iter, a.residual, a.status) == (b.n_iter, b.residual, b.status)


@pytest.mark.parametrize("method", ["picard", "anderson", "neumann"])
def test_implicit_grad_and_loss_and_grad_options_equal_keywords(method):
    X, Y, A, B = _problem()
    Z = db.fixed_point(X, A, B, tol=1e-12).z
    kw = dict(OPTS, neumann_terms=4)
    a = db.implicit_grad(X, A, B, Z, Z - Y, method=method, **kw)
    b = db.implicit_grad(X, A, B, Z, Z - Y, method=method, options=db.SolverOptions(**kw))
    np.testing.assert_array_equal(a.grad_A, b.grad_A)
    np.testing.assert_array_equal(a.grad_B, b.grad_B)
    assert a.n_iter == b.n_iter
    la = db.loss_and_grad("linear", X, Y, A, B, grad_solver=method, **kw)
    lb = db.loss_and_grad("linear", X, Y, A, B, grad_solver=method,
                          options=db.SolverOptions(**kw))
    assert la.loss == lb.loss and la.adj_iters == lb.adj_iters
    np.testing.assert_array_equal(la.grad_A, lb.grad_A)


def test_train_and_flow_options_equal_keywords():
    X, Y, A, B = _problem()
    kw = dict(lr=0.1, steps=5, sufficient_stats=False, solver="anderson")
    a = db.train("linear", X, Y, A, B, **kw, **OPTS)
    b = db.train("linear", X, Y, A, B, **kw, options=db.SolverOptions(**OPTS))
    np.testing.assert_array_equal(a.A, b.A)
    np.testing.assert_array_equal(a.history["fp_iters"], b.history["fp_iters"])
    fa = db.flow("linear", X, Y, A, B, t_end=0.5, sufficient_stats=False, **OPTS)
    fb = db.flow("linear", X, Y, A, B, t_end=0.5, sufficient_stats=False,
                 options=db.SolverOptions(**OPTS))
    np.testing.assert_array_equal(fa.A, fb.A)
    assert fa.n_evals == fb.n_evals


def test_options_are_immutable_and_checked_on_construction():
    opts = db.SolverOptions(max_iter=50)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.max_iter = 10
    assert dataclasses.replace(opts, damping=0.5).max_iter == 50
    assert db.SolverOptions(max_iter=np.int64(7)).max_iter == 7
    for kw, rule in [({"tol": -1.0}, "tol must be > 0"),
                     ({"max_iter": 0}, "max_iter must be >= 1"),
                     ({"damping": 1.5}, "damping"),
                     ({"anderson_history": 0}, "anderson_history must be >= 1"),
                     ({"anderson_ridge": -1.0}, "anderson_ridge"),
                     ({"neumann_terms": -1}, "neumann_terms must be >= 0")]:
        with pytest.raises(ValueError, match=rule):
            db.SolverOptions(**kw)


def test_a_keyword_that_disagrees_with_options_is_an_error():
    X, Y, A, B = _problem()
    opts = db.SolverOptions(max_iter=50, tol=1e-8)
    with pytest.raises(ValueError, match=r"max_iter is given twice.*options.max_iter=50.*"
                                         r"max_iter=60"):
        db.fixed_point(X, A, B, options=opts, max_iter=60)
    with pytest.raises(ValueError, match="tol is given twice"):
        db.train("linear", X, Y, A, B, lr=0.1, steps=2, options=opts, tol=1e-9)
    # agreeing, or filling an option that options leaves at its default: accepted
    a = db.fixed_point(X, A, B, options=opts, max_iter=50, damping=0.9)
    b = db.fixed_point(X, A, B, options=dataclasses.replace(opts, damping=0.9))
    np.testing.assert_array_equal(a.z, b.z)


def test_misspelt_keywords_and_wrong_types_are_type_errors():
    X, _, A, B = _problem()
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_iters'"):
        db.fixed_point(X, A, B, max_iters=5)
    with pytest.raises(TypeError, match="options must be a deqbench.SolverOptions"):
        db.fixed_point(X, A, B, options={"tol": 1e-8})


def test_default_tol_and_floor_follow_the_dtype_with_options():
    X, _, A, B = _problem(np.float32)
    r = db.fixed_point(X, A, B, options=db.SolverOptions())
    assert r.converged and r.residual <= 1e-5
    with pytest.warns(db.PrecisionWarning, match="below the floor"), \
            pytest.warns(db.ConvergenceWarning):
        db.fixed_point(X, A, B, options=db.SolverOptions(tol=1e-9, max_iter=20))
