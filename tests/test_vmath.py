"""The SIMD elementary functions of ``_kernels/vmath.py`` against NumPy, in ulps.

Evaluated through the package's own kernels (fast-math flags on), on a dense
grid with tails, tiny and huge arguments, signed zeros, infinities and NaN.
"""

import numpy as np
import pytest
from numba import njit
from scipy import special

import deqbench as db
from deqbench._kernels import activations as ka

GRID = np.concatenate([
    np.linspace(-750.0, 750.0, 300_001),
    np.linspace(-40.0, 40.0, 400_001),
    np.geomspace(1e-300, 1.0, 4001),
    -np.geomspace(1e-300, 1.0, 4001),
    [0.0, -0.0, 0.625, -0.625, 20.0, -20.0, 708.0, -708.0, 709.0, -709.0],
])
SPECIAL = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0])


def _ulps(got, want):
    scale = np.spacing(np.maximum(np.abs(want), np.finfo(float).tiny))
    return np.abs(got - want) / scale


# (name, reference, ulp bound, domain where the bound holds)
CASES = [
    ("tanh", np.tanh, 3, lambda x: np.isfinite(x)),
    ("sigmoid", special.expit, 3, lambda x: x >= -708.0),
    ("softplus", lambda x: np.logaddexp(0.0, x), 3, lambda x: x >= -708.0),
]


@pytest.mark.parametrize(("name", "ref", "bound", "domain"), CASES)
def test_ulp_bound_on_dense_grid(name, ref, bound, domain):
    act = db.get_activation(name)
    x = GRID[domain(GRID)]
    u = _ulps(act(x), ref(x))
    assert u.max() <= bound, f"{name}: {u.max()} ulp at x = {x[np.argmax(u)]!r}"


@pytest.mark.parametrize(("name", "ref", "bound", "domain"), CASES)
def test_far_tail_underflows_like_libm(name, ref, bound, domain):
    x = np.array([-709.0, -745.0, -1e4, -1e300])
    got = db.get_activation(name)(x)
    want = ref(x)
    assert np.all(np.abs(got - want) < 4e-308)


@pytest.mark.parametrize(("name", "ref", "bound", "domain"), CASES)
def test_special_values(name, ref, bound, domain):
    with np.errstate(all="ignore"):
        want = ref(SPECIAL)
    got = db.get_activation(name)(SPECIAL)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    inf = np.isinf(want)
    np.testing.assert_array_equal(got[inf], want[inf])
    fin = np.isfinite(want)
    assert _ulps(got[fin], want[fin]).max() <= bound
    if name == "tanh":
        assert np.signbit(got[4]) and not np.signbit(got[3])  # tanh(-0) = -0


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "softplus"])
def test_derivatives_match_closed_forms(name):
    x = np.linspace(-40.0, 40.0, 80_001)
    d = db.get_activation(name).derivative(x)
    want = {"tanh": 1.0 - np.tanh(x) ** 2,
            "sigmoid": special.expit(x) * (1.0 - special.expit(x)),
            "softplus": special.expit(x)}[name]
    # 1 - t^2 and s (1 - s) cancel near saturation: compare absolutely there
    np.testing.assert_allclose(d, want, rtol=1e-13, atol=1e-15)


# The compiled helpers of the tests below are module-level, compiled once for all
# activation codes (a runtime argument): an @njit closure per case would compile
# the SIMD row loops again for every case (~15 s each).
@njit
def _rows(code, t, u, d):
    a = t.copy()
    ka.h_row(code, 0.2, a, u, d)
    b = t.copy()
    ka.dh_row(code, 0.2, b, u)
    ra = np.empty_like(t)
    rb = np.empty_like(t)
    for j in range(t.size):
        ra[j] = d[j] * (t[j] + u[j]) if code == ka.MASK else ka.act(code, 0.2, t[j] + u[j])
        rb[j] = ka.dact(code, 0.2, t[j] + u[j])
    return a, b, ra, rb


@njit
def _row(code, t):  # the SIMD row loop the solvers run (float32 in place)
    out = t.copy()
    ka.h_row(code, 0.01, out, np.zeros_like(t), out)
    return out


@pytest.mark.parametrize("code", [ka.IDENTITY, ka.TANH, ka.SIGMOID, ka.SOFTPLUS, ka.GELU,
                                  ka.LEAKY_RELU, ka.RELU, ka.SMOOTH_LEAKY, ka.MASK])
def test_row_kernels_agree_with_scalar_dispatch(code):
    """``h_row``/``dh_row`` (SIMD loops) against ``act``/``dact`` (scalar dispatch)."""
    rng = np.random.default_rng(code + 10)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e300, -1e300, 5e-324, -5e-324])
    t = np.concatenate([rng.standard_normal(37) * 5, special])
    u = np.concatenate([rng.standard_normal(37), np.zeros(special.size)])
    d = rng.uniform(0, 1, t.size)
    a, b, ra, rb = _rows(code, t, u, d)
    np.testing.assert_allclose(a, ra, rtol=1e-15, atol=1e-300)
    np.testing.assert_array_equal(np.signbit(a[a == 0]), np.signbit(ra[ra == 0]))
    if code != ka.MASK:
        np.testing.assert_allclose(b, rb, rtol=1e-15, atol=1e-300)


# float32: evaluated in float64 and rounded (see _kernels/vmath.py): within 1 float32 ulp
# of the float64 NumPy reference rounded to float32, on a dense float32 grid with tails,
# subnormals (underflow), signed zeros, infinities and NaN.
GRID32 = np.concatenate([
    np.linspace(-120.0, 120.0, 480_001),
    np.linspace(-20.0, 20.0, 400_001),
    np.geomspace(1e-45, 1.0, 4001),
    -np.geomspace(1e-45, 1.0, 4001),
    [0.0, -0.0, 0.625, -0.625, 88.7, -88.7, 103.9, -103.9, 3e38, -3e38],
]).astype(np.float32)
ACTS32 = {"tanh": np.tanh, "sigmoid": special.expit, "softplus": lambda x: np.logaddexp(0.0, x),
          "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x)}


def _ulps32(got, want):
    assert got.dtype == np.float32 and want.dtype == np.float32
    scale = np.spacing(np.maximum(np.abs(want), np.finfo(np.float32).tiny))
    return np.abs(got.astype(np.float64) - want) / scale


@pytest.mark.parametrize("name", list(ACTS32))
def test_float32_within_one_ulp_on_dense_grid(name):
    act = db.get_activation(name)
    with np.errstate(all="ignore"):
        want = ACTS32[name](GRID32.astype(np.float64)).astype(np.float32)
    for got in (act(GRID32), _row(act.code, GRID32)):
        fin = np.isfinite(want)
        u = _ulps32(got[fin], want[fin])
        assert u.max() <= 1, f"{name}: {u.max()} ulp at x = {GRID32[fin][np.argmax(u)]!r}"
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    with np.errstate(all="ignore"):
        want = ACTS32[name](SPECIAL).astype(np.float32)
    got = act(SPECIAL.astype(np.float32))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])
