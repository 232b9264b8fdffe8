"""Activations against independent NumPy formulas; seeded builders."""

import numpy as np
import pytest

import deqbench as db
from tests import naive
from tests.conftest import ACTIVATIONS

NAMES = ACTIVATIONS
# twice differentiable, with the interior extremes of sigma' known (derivative_range)
LOCAL = [name for name in NAMES if db.get_activation(name).entry.extremes is not None]
X = np.concatenate([np.linspace(-30, 30, 601), [-1e-3, 1e-3, 0.37, -2.2, 700.0, -700.0]])


@pytest.mark.parametrize("name", NAMES)
def test_activation_and_derivative(name):
    act = db.get_activation(name)
    np.testing.assert_allclose(act(X), naive.act(act.name, X, act.slope), rtol=1e-12,
                               atol=1e-300)
    smooth = np.abs(X) > 1e-2  # finite differences are not taken across kinks
    np.testing.assert_allclose(act.derivative(X)[smooth],
                               naive.dact(act.name, X, act.slope)[smooth], rtol=1e-6,
                               atol=1e-9)


# the exact extremes of the derivative on the real line: sup/inf of a dense grid
# (and the finite-difference derivative of the NumPy reference) must equal the
# stated bounds, not just lie inside them; where the extreme is only approached
# at +-infinity the grid's ends come within 1e-7 of it
GRID = np.linspace(-40.0, 40.0, 800_001)


@pytest.mark.parametrize("name", NAMES)
def test_derivative_bounds_are_the_exact_range(name):
    act = db.get_activation(name)
    if act.entry.bounds is None:
        pytest.skip(f"{name} was registered without its derivative range")
    lo, hi = act.derivative_bounds()
    d = act.derivative(GRID)
    assert d.min() >= lo - 1e-12 and d.max() <= hi + 1e-12
    assert d.min() == pytest.approx(lo, abs=1e-7) and d.max() == pytest.approx(hi, abs=1e-7)
    if not act.entry.kink:  # leaky_relu, relu: kinks at 0
        fd = naive.dact(act.name, GRID[::10], act.slope)
        assert fd.min() == pytest.approx(lo, abs=1e-6) and fd.max() == pytest.approx(hi, abs=1e-6)


def test_gelu_is_1129_lipschitz():
    """docs/theory.md §2: extremes at s = -sqrt(2), sqrt(2)."""
    act = db.get_activation("gelu")
    lo, hi = act.derivative_bounds()
    assert (round(lo, 6), round(hi, 6)) == (-0.128904, 1.128904)
    np.testing.assert_allclose(act.derivative(np.array([-np.sqrt(2), np.sqrt(2)])), [lo, hi],
                               rtol=1e-14)
    assert act.lipschitz == pytest.approx(1.128904, abs=1e-6)


@pytest.mark.parametrize("name", LOCAL)
def test_derivative_range_is_the_exact_range_on_each_interval(name):
    """docs/theory.md §7, local constants: min and max of sigma' over [a, b] against a
    dense grid of the NumPy reference's derivative on each interval (a missed interior
    extreme, e.g. gelu's at -sqrt(2) or sigmoid's at 0, is off by far more than 1e-6)."""
    act = db.get_activation(name)
    rng = np.random.default_rng(3)
    a = rng.uniform(-5, 5, 40)
    b = a + rng.choice([-1.0, 1.0], 40) * rng.uniform(0, 6, 40)  # either order
    a[:4], b[:4] = [-np.sqrt(2), -3.0, 0.0, 1.0], [-np.sqrt(2), -1.0, 2.0, 1.0]
    lo, hi = act.derivative_range(a, b)
    for i in range(a.size):
        grid = np.linspace(min(a[i], b[i]), max(a[i], b[i]), 4001)
        d = naive.dact(act.name, grid, act.slope)
        assert lo[i] == pytest.approx(d.min(), abs=1e-6), (a[i], b[i])
        assert hi[i] == pytest.approx(d.max(), abs=1e-6), (a[i], b[i])
    with pytest.raises(ValueError, match="twice-differentiable.*jumps at 0"):
        db.get_activation("leaky_relu").derivative_range(a, b)


def test_smooth_leaky_link():
    act = db.get_activation("smooth_leaky(0.2)")
    assert act.name == "smooth_leaky" and act.slope == 0.2 and str(act) == "smooth_leaky(0.2)"
    assert act.derivative_bounds() == (0.2, 1.0)
    assert db.get_activation("smooth_leaky").slope == 0.01
    # tails: slope a on the left, 1 on the right, exactly; +-inf maps to +-inf, NaN stays NaN
    x = np.array([-1e3, 1e3, np.inf, -np.inf, np.nan])
    np.testing.assert_array_equal(act(x), [-200.0, 1e3, np.inf, -np.inf, np.nan])
    np.testing.assert_array_equal(act.derivative(x), [0.2, 1.0, 1.0, 0.2, np.nan])
    # a s + (1 - a) softplus(s) = a s + (1 - a) (relu(s) + log1p(exp(-|s|)))
    s = np.linspace(-5, 5, 11)
    np.testing.assert_allclose(act(s), 0.2 * s + 0.8 * np.log1p(np.exp(s)), rtol=1e-14)
    for bad in ("smooth_leaky(0)", "smooth_leaky(1.5)", "smooth_leaky(x)"):
        with pytest.raises(ValueError, match="smooth_leaky slope"):
            db.get_activation(bad)


def test_skip_tanh_link():
    """Appendix A.4 of the paper: sigma_eps(s) = s + eps tanh(s), sigma' in [1, 1 + eps]."""
    act = db.get_activation("skip_tanh(0.25)")
    assert act.name == "skip_tanh" and act.param == 0.25 and str(act) == "skip_tanh(0.25)"
    assert act.derivative_bounds() == (1.0, 1.25) and act.lipschitz == 1.25
    assert act.value_bounds() == (-np.inf, np.inf)
    assert db.get_activation(" skip_tanh ( 0.5 ) ").param == 0.5
    assert db.get_activation("skip_tanh(0)").derivative_bounds() == (1.0, 1.0)
    s = np.linspace(-5, 5, 11)
    np.testing.assert_allclose(act(s), s + 0.25 * np.tanh(s), rtol=1e-14)
    np.testing.assert_allclose(act.derivative(s), 1 + 0.25 / np.cosh(s) ** 2, rtol=1e-14)
    x = np.array([np.inf, -np.inf, np.nan])
    np.testing.assert_array_equal(act(x), [np.inf, -np.inf, np.nan])
    np.testing.assert_array_equal(act.derivative(x)[:2], [1.0, 1.0])
    x32 = s.astype(np.float32)
    assert act(x32).dtype == np.float32
    np.testing.assert_allclose(act(x32), s + 0.25 * np.tanh(s), rtol=2e-7)
    for bad in ("skip_tanh(-0.1)", "skip_tanh(x)", "skip_tanh(inf)"):
        with pytest.raises(ValueError, match="skip_tanh eps"):
            db.get_activation(bad)
    with pytest.raises(ValueError, match=r"skip_tanh needs its eps.*skip_tanh\(0.25\)"):
        db.get_activation("skip_tanh")
    with pytest.raises(ValueError, match="skip_tanh eps must be finite and >= 0"):
        db.Activation("skip_tanh", -1.0)


@pytest.mark.parametrize("name", NAMES)
def test_value_bounds_are_the_exact_range(name):
    """The bracket of a scalar equilibrium: inf and sup of sigma on the real line, and
    every value inside them."""
    act = db.get_activation(name)
    if act.entry.values is None:
        pytest.skip(f"{name} was registered without its range")
    lo, hi = act.value_bounds()
    v = naive.act(act.name, GRID, act.slope)
    assert np.all(v >= lo) and np.all(v <= hi)
    far = act(np.array([-1e8, 1e8]))
    for bound, extreme, tail in ((lo, v.min(), far[0]), (hi, v.max(), far[1])):
        if np.isfinite(bound):
            assert extreme == pytest.approx(bound, abs=1e-10)  # grid spacing 1e-4, squared
        else:  # unbounded on that side: far out the link passes 1e5 in that direction
            assert tail * np.sign(bound) > 1e5


@pytest.mark.parametrize("name", NAMES)
def test_curvature_bound_is_the_exact_sup_of_the_second_derivative(name):
    """sup |sigma''|: second differences of the NumPy reference on a dense grid reach
    it (a wrong constant is off by far more than the grid's 1e-6); inf at a kink."""
    act = db.get_activation(name)
    bound = act.curvature_bound()
    if act.name in ("relu", "leaky_relu"):
        assert bound == np.inf
        return
    if act.entry.registered:  # declares no curvature: Newton never skips an evaluation
        assert bound == np.inf
        return
    h = 1e-4
    x = np.linspace(-10.0, 10.0, 200_001)
    f = naive.act(act.name, x, act.slope)
    d2 = (f[2:] - 2 * f[1:-1] + f[:-2]) / h**2
    assert np.abs(d2).max() == pytest.approx(bound, abs=1e-6)


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
