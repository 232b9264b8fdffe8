"""Bad input gets a ValueError/TypeError naming the argument, the value and the rule."""

import warnings

import numpy as np
import pytest

import deqbench as db
from tests.conftest import small_problem


@pytest.fixture
def prob(rng):
    A, B, X = small_problem(rng)
    return A, B, X


def test_wrong_ndim(prob):
    A, B, X = prob
    with pytest.raises(ValueError, match=r"A must be 2-dimensional, got shape \(16,\)"):
        db.fixed_point(X, A.ravel(), B)
    with pytest.raises(ValueError, match="X must be 2-dimensional"):
        db.fixed_point(X[0], A, B)


def test_mismatched_shapes(prob):
    A, B, X = prob
    with pytest.raises(ValueError, match="A must be square"):
        db.fixed_point(X, A[:, :3], B)
    with pytest.raises(ValueError, match=r"B must have shape \(4, \*\), got \(3, 3\)"):
        db.fixed_point(X, A, B[:3])
    with pytest.raises(ValueError, match=r"X must have shape \(\*, 3\), got \(7, 2\)"):
        db.fixed_point(X[:, :2], A, B)
    with pytest.raises(ValueError, match="z0 must have shape"):
        db.fixed_point(X, A, B, z0=np.zeros((7, 3)))
    with pytest.raises(ValueError, match="G must have shape"):
        db.implicit_grad(X, A, B, np.zeros((7, 4)), np.zeros((7, 3)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_entries(prob, bad):
    A, B, X = prob
    X = X.copy()
    X[2, 1] = bad
    with pytest.raises(ValueError, match="X must be finite, got 1 non-finite"):
        db.fixed_point(X, A, B)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.complex128, bool])
def test_integer_or_complex_arrays(prob, dtype):
    A, B, X = prob
    rule = f"A must be a real floating-point array, got dtype {np.dtype(dtype)}"
    with pytest.raises(TypeError, match=rule):
        db.fixed_point(X, A.astype(dtype), B)


def test_float32_stays_float32_other_floats_become_float64(prob):
    A, B, X = prob
    f32 = [a.astype(np.float32) for a in (X, A, B)]
    r32 = db.fixed_point(*f32, tol=1e-6)
    assert r32.z.dtype == np.float32 and r32.converged
    r16 = db.fixed_point(X.astype(np.float16), A, B)
    assert r16.z.dtype == np.float64 and r16.converged


def test_dtype_mix_names_the_arguments_before_any_work(prob):
    A, B, X = prob
    A32, B32, X32 = (a.astype(np.float32) for a in (A, B, X))
    with pytest.raises(TypeError, match="X has dtype float32 but A has dtype float64"):
        db.fixed_point(X32, A, B)
    with pytest.raises(TypeError, match="B has dtype float64 but A has dtype float32"):
        db.fixed_point(X32, A32, B)
    Z = np.zeros((X.shape[0], 4))
    with pytest.raises(TypeError, match="G has dtype float64 but A has dtype float32"):
        db.implicit_grad(X32, A32, B32, Z.astype(np.float32), Z)
    with pytest.raises(TypeError, match="z0 has dtype float64 but A has dtype float32"):
        db.loss_and_grad("linear", X32, Z.astype(np.float32), A32, B32, z0=Z)
    with pytest.raises(TypeError, match="Y has dtype float64 but A0 has dtype float32"):
        db.train("linear", X32, Z, A32, B32, lr=0.1, steps=1)
    with pytest.raises(TypeError, match="u has dtype float64 but A has dtype float32"):
        db.loss_and_grad("readout", X32, Z[:, 0].astype(np.float32), A32, B32,
                         u=np.ones(4))


def test_tol_below_the_dtype_floor_warns_with_the_floor(prob):
    A, B, X = prob
    f32 = [a.astype(np.float32) for a in (X, A, B)]
    assert db.tol_floor(np.float32) == pytest.approx(8 * 2.0**-23)
    with warnings.catch_warnings():  # the solves may also miss such a tol
        warnings.simplefilter("ignore", db.ConvergenceWarning)
        with pytest.warns(db.PrecisionWarning, match=r"tol=1e-07 is below the floor 9.54e-07 "
                          "of float32"):
            db.fixed_point(*f32, tol=1e-7, max_iter=50)
        with pytest.warns(db.PrecisionWarning, match="floor 1.78e-15 of float64"):
            db.fixed_point(X, A, B, tol=1e-15, max_iter=50)
    assert db.fixed_point(*f32).converged  # the float32 default 1e-5 is above the floor


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        ({"tol": 0.0}, ValueError, "tol must be > 0, got 0.0"),
        ({"tol": -1}, ValueError, "tol must be > 0, got -1"),
        ({"tol": "x"}, TypeError, "tol must be a real number"),
        ({"max_iter": 0}, ValueError, "max_iter must be >= 1, got 0"),
        ({"max_iter": 2.5}, TypeError, "max_iter must be an integer"),
        ({"damping": 0.0}, ValueError, r"damping must be in \(0, 1\], got 0.0"),
        ({"damping": 1.5}, ValueError, r"damping must be in \(0, 1\], got 1.5"),
        ({"method": "secant"}, ValueError, "method must be one of .* got 'secant'"),
        # newton is a method now, for a scalar state only (prob has m > 1)
        ({"method": "newton"}, ValueError,
         r"method='newton' solves a scalar state only \(m = 1\), got m="),
        ({"activation": "swish"}, ValueError, "activation must be one of .* got 'swish'"),
        ({"activation": "leaky_relu(2)"}, ValueError, r"slope must be in \(0, 1\]"),
        ({"method": "direct", "activation": "tanh"}, ValueError, "direct.*linear maps only"),
        ({"method": "anderson", "anderson_history": 0}, ValueError,
         "anderson_history must be >= 1, got 0"),
        ({"anderson_ridge": -1.0}, ValueError, "anderson_ridge must be >= 0"),
        ({"method": "anderson", "m": 3}, TypeError,
         r"fixed_point\(\) got an unexpected keyword argument 'm'"),
        ({"k": 3}, TypeError, r"fixed_point\(\) got an unexpected keyword argument 'k'"),
    ],
)
def test_bad_options(prob, kwargs, exc, msg):
    A, B, X = prob
    with pytest.raises(exc, match=msg):
        db.fixed_point(X, A, B, **kwargs)


@pytest.mark.parametrize("fn", ["implicit_grad", "loss_and_grad", "train", "flow"])
def test_unknown_option_names_the_function(prob, fn):
    """No public call takes ``**options``: a misspelt option is an error naming the call."""
    A, B, X = prob
    Y, Z = np.zeros((7, 4)), np.zeros((7, 4))
    args = {"implicit_grad": (X, A, B, Z, Z), "loss_and_grad": ("linear", X, Y, A, B),
            "train": ("linear", X, Y, A, B), "flow": ("linear", X, Y, A, B)}[fn]
    with pytest.raises(TypeError, match=rf"{fn}\(\) got an unexpected keyword argument 'ridge'"):
        getattr(db, fn)(*args, ridge=1e-8)


def test_bad_gradient_options(prob):
    A, B, X = prob
    Z = np.zeros((7, 4))
    with pytest.raises(ValueError, match="method must be one of"):
        db.implicit_grad(X, A, B, Z, Z, method="exact")
    with pytest.raises(ValueError, match="neumann_terms must be >= 0"):
        db.implicit_grad(X, A, B, Z, Z, method="neumann", neumann_terms=-1)
    with pytest.raises(ValueError, match="direct.*linear maps only"):
        db.implicit_grad(X, A, B, Z, Z, method="direct", activation="tanh")


def test_bad_loss_and_grad_arguments(prob, rng):
    A, B, X = prob
    Y = rng.standard_normal((7, 4))
    with pytest.raises(ValueError, match="model must be one of .* got 'deep'"):
        db.loss_and_grad("deep", X, Y, A, B)
    with pytest.raises(ValueError, match=r"Y must have shape \(7, 4\)"):
        db.loss_and_grad("linear", X, Y[:, :2], A, B)
    with pytest.raises(ValueError, match=r"Y must be 1-dimensional"):
        db.loss_and_grad("readout", X, Y, A, B)
    with pytest.raises(ValueError, match=r"u must have shape \(4,\)"):
        db.loss_and_grad("readout", X, Y[:, 0], A, B, u=np.ones(3))
    with pytest.raises(ValueError, match="u is only used by model='readout'"):
        db.loss_and_grad("linear", X, Y, A, B, u=np.ones(4))
    with pytest.raises(ValueError, match="activation must be 'identity' for model='linear'"):
        db.loss_and_grad("linear", X, Y, A, B, activation="tanh")
    with pytest.raises(ValueError, match="grad_solver must be one of"):
        db.loss_and_grad("linear", X, Y, A, B, grad_solver="magic")
    with pytest.raises(ValueError, match="direct.*linear maps only"):
        db.loss_and_grad("nonlinear", X, Y, A, B, activation="tanh", solver="direct")


def test_bad_data_builder_arguments():
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        db.data.linear_teacher(0, 2, 2)
    with pytest.raises(ValueError, match="noise must be >= 0"):
        db.data.linear_teacher(5, 2, 2, noise=-1.0)
    with pytest.raises(ValueError, match="scale_A must be >= 0"):
        db.data.init_params(2, 3, scale_A=-0.1, scale_B=1.0)
