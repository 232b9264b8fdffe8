"""Serial and parallel twins of every prange kernel against NumPy formulas.

The public kernels pick a twin by size (row blocks, ``PASS_PARALLEL_MIN``), so
each twin is called directly here, with blocks of ``ROWS`` rows that do not
divide ``N`` (a ragged last block).
"""

import numpy as np
import pytest

from deqbench._kernels import blocks as bl
from deqbench._kernels import fixed_point as fp
from deqbench._kernels import gradients as g
from deqbench._kernels.activations import IDENTITY, MASK, TANH
from tests import naive

N, M = 257, 19
ROWS = 40
TWINS = ["s", "p"]


@pytest.fixture
def arrays():
    rng = np.random.default_rng(7)
    Z = rng.standard_normal((N, M))
    Mat = rng.standard_normal((M, M)) / M
    U = rng.standard_normal((N, M))
    D = rng.uniform(0.1, 1.0, (N, M))
    return Z, Mat, U, D


def _h(code, t, D):
    if code == IDENTITY:
        return t
    if code == MASK:
        return D * t
    return naive.act("tanh", t)


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("code", [IDENTITY, MASK, TANH])
def test_evaluate_twins(arrays, twin, code):
    Z, Mat, U, D = arrays
    T = np.empty_like(Z)
    dd, ff = getattr(fp, f"_evaluate_{twin}")(Z, Mat, U, code, 0.0, D, T, 0.3, ROWS)
    F = _h(code, Z @ Mat + U, D)
    np.testing.assert_allclose(T, Z + 0.3 * (F - Z), rtol=1e-12, atol=1e-14)
    assert dd == pytest.approx(np.sum((F - Z) ** 2), rel=1e-12)
    assert ff == pytest.approx(np.sum(F**2), rel=1e-12)


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("code", [IDENTITY, MASK, TANH])
def test_anderson_twins(arrays, twin, code):
    Z, Mat, U, D = arrays
    Fs, Gs = np.empty_like(Z), np.empty_like(Z)
    dd, ff = getattr(fp, f"_anderson_eval_{twin}")(Z, Mat, U, code, 0.0, D, Fs, Gs, ROWS)
    F = _h(code, Z @ Mat + U, D)
    np.testing.assert_allclose(Fs, F, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(Gs, F - Z, rtol=1e-12, atol=1e-14)
    assert dd == pytest.approx(np.sum((F - Z) ** 2), rel=1e-12)
    assert ff == pytest.approx(np.sum(F**2), rel=1e-12)
    assert getattr(fp, f"_dot_{twin}")(Fs, Gs, ROWS) == pytest.approx(np.sum(Fs * Gs), rel=1e-12)
    Fh, Gh = np.stack([Fs, Z]), np.stack([Gs, U])
    alpha = np.array([0.7, 0.3])
    out = np.empty_like(Z)
    for beta in (0.5, 1.0):  # damped, and undamped (which skips the residuals)
        zz = getattr(fp, f"_anderson_mix_{twin}")(out, Fh, Gh, alpha, 2, beta, ROWS)
        want = sum(a * (f - (1 - beta) * gg) for a, f, gg in zip(alpha, Fh, Gh, strict=True))
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-14)
        assert zz == pytest.approx(np.sum(want**2), rel=1e-12)


@pytest.mark.parametrize("twin", TWINS)
def test_gradient_twins(arrays, twin):
    Z, Mat, U, _ = arrays
    rng = np.random.default_rng(3)
    D = np.empty_like(Z)
    getattr(g, f"_preactivation_derivative_{twin}")(Z, Mat, U, TANH, 0.0, D, ROWS)
    np.testing.assert_allclose(D, 1 - np.tanh(Z @ Mat + U) ** 2, rtol=1e-12, atol=1e-14)
    Y = rng.standard_normal(Z.shape)
    G = np.empty_like(Z)
    loss = getattr(g, f"_residual_loss_{twin}")(Z, Y, G, ROWS)
    assert loss == pytest.approx(0.5 * np.sum((Z - Y) ** 2) / N, rel=1e-12)
    np.testing.assert_allclose(G, (Z - Y) / N, rtol=1e-12)
    u, y = rng.standard_normal(M), rng.standard_normal(N)
    loss = getattr(g, f"_single_index_loss_{twin}")(Z, y, u, TANH, 0.0, G)
    s = Z @ u
    r = np.tanh(s) - y
    assert loss == pytest.approx(0.5 * np.sum(r**2) / N, rel=1e-12)
    np.testing.assert_allclose(G, np.outer(r * (1 - np.tanh(s) ** 2), u) / N, rtol=1e-12,
                               atol=1e-16)
    out = np.empty(N)
    getattr(g, f"_single_index_predict_{twin}")(Z, u, TANH, 0.0, out)
    np.testing.assert_allclose(out, np.tanh(s), rtol=1e-12)


@pytest.mark.parametrize("twin", TWINS)
def test_blocked_gemms(arrays, twin):
    Z, Mat, U, _ = arrays
    rng = np.random.default_rng(5)
    X = rng.standard_normal((N, 7))
    out = np.empty((N, M))
    getattr(bl, f"_gemm_rows_{twin}")(Z, Mat, out, ROWS)
    np.testing.assert_allclose(out, Z @ Mat, rtol=1e-12, atol=1e-13)
    parts = np.empty((3, M, 7))
    getattr(bl, f"_gemm_tn_{twin}")(Z, X, parts, 100)  # 100 + 100 + 57 rows
    np.testing.assert_allclose(parts.sum(axis=0), Z.T @ X, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [1, 5, 257, 9000])
def test_public_gemms_any_size(n):
    """``gemm_rows``/``gemm_tn`` pick serial or parallel by size: same answer."""
    rng = np.random.default_rng(n)
    P, Q = rng.standard_normal((n, 9)), rng.standard_normal((n, 4))
    W = rng.standard_normal((9, 6))
    out = np.empty((n, 6))
    bl.gemm_rows(P, W, out)
    np.testing.assert_allclose(out, P @ W, rtol=1e-12, atol=1e-12)
    g_out = np.empty((9, 4))
    bl.gemm_tn(P, Q, g_out)
    np.testing.assert_allclose(g_out, P.T @ Q, rtol=1e-11, atol=1e-11)


def test_block_rows_rule():
    assert bl.block_rows(10**6, 32) == bl.BLOCK_BYTES // (8 * 32)
    assert bl.block_rows(10**6, 256) == bl.MIN_ROWS  # 512 KiB matrix: not wide
    assert bl.block_rows(10**6, 257) == bl.WIDE_ROWS
    assert bl.block_rows(10**6, 10**6) == bl.WIDE_ROWS
    assert bl.block_rows(300, 1024) == 150  # two blocks, not one of 300
    assert bl.block_rows(800, 1024) == 400
    assert bl.block_rows(10**6, 1) == bl.MAX_ROWS
    assert bl.block_rows(7, 32) == 7
