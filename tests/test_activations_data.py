"""Activations against independent NumPy formulas; seeded builders."""

import numpy as np
import pytest

import deqbench as db
from tests import naive

NAMES = ["identity", "leaky_relu", "tanh", "sigmoid", "softplus", "relu", "gelu"]
X = np.concatenate([np.linspace(-30, 30, 601), [-1e-3, 1e-3, 0.37, -2.2, 700.0, -700.0]])


@pytest.mark.parametrize("name", NAMES)
def test_activation_and_derivative(name):
    act = db.get_activation(name)
    np.testing.assert_allclose(act(X), naive.act(name, X, act.slope), rtol=1e-12, atol=1e-300)
    smooth = np.abs(X) > 1e-2  # finite differences are not taken across kinks
    np.testing.assert_allclose(act.derivative(X)[smooth],
                               naive.dact(name, X, act.slope)[smooth], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_derivative_bounds_hold(name):
    act = db.get_activation(name)
    lo, hi = act.derivative_bounds()
    d = act.derivative(np.linspace(-20, 20, 40001))
    assert d.min() >= lo - 1e-7 and d.max() <= hi + 1e-7


def test_leaky_relu_slope_parsing():
    act = db.get_activation("leaky_relu(0.25)")
    assert act.slope == 0.25 and str(act) == "leaky_relu(0.25)"
    np.testing.assert_allclose(act(np.array([-2.0, 3.0])), [-0.5, 3.0])


def test_builders_are_seeded():
    a = db.data.linear_teacher(20, 3, 4, noise=0.1, seed=7)
    b = db.data.linear_teacher(20, 3, 4, noise=0.1, seed=7)
    c = db.data.linear_teacher(20, 3, 4, noise=0.1, seed=8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    X, y, theta = db.data.single_index_teacher(50, 5, activation="tanh", seed=1)
    np.testing.assert_allclose(y, np.tanh(X @ theta))
    assert np.linalg.norm(theta) == pytest.approx(1.0)


@pytest.mark.parametrize("scale", [0.0, 0.3, 0.99, 1.5])
def test_init_params_spectral_bound(scale):
    A, B = db.data.init_params(7, 30, scale_A=scale, scale_B=2.0, seed=3)
    assert np.linalg.norm(A, 2) == pytest.approx(scale, abs=1e-12)
    assert np.abs(np.linalg.eigvals(A)).max() <= scale + 1e-12
    assert B.shape == (30, 7)
