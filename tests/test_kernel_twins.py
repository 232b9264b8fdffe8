"""Serial and parallel twins of every prange kernel against NumPy formulas.

The public kernels pick a twin by size (row blocks, ``PASS_PARALLEL_MIN``), so
each twin is called directly here, with blocks of ``ROWS`` rows that do not
divide ``N`` (a ragged last block).
"""

import numpy as np
import pytest

from deqbench._blas import small_gemm_mnk
from deqbench._kernels import blocks as bl
from deqbench._kernels import fixed_point as fp
from deqbench._kernels import gradients as g
from deqbench._kernels.activations import IDENTITY, MASK, SIGMOID, TANH
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
    loss = getattr(g, f"_readout_loss_{twin}")(Z, y, u, TANH, 0.0, G)
    s = Z @ u
    r = np.tanh(s) - y
    assert loss == pytest.approx(0.5 * np.sum(r**2) / N, rel=1e-12)
    np.testing.assert_allclose(G, np.outer(r * (1 - np.tanh(s) ** 2), u) / N, rtol=1e-12,
                               atol=1e-16)
    out = np.empty(N)
    getattr(g, f"_readout_predict_{twin}")(Z, u, TANH, 0.0, out)
    np.testing.assert_allclose(out, np.tanh(s), rtol=1e-12)


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("code", [TANH, SIGMOID])
@pytest.mark.parametrize("beta", [1.0, 0.6])
def test_output_derivative_twins(arrays, twin, code, beta):
    """h' read off the evaluation T = Z + beta (h(Z M + U) - Z) equals h' of the
    pre-activation, as preactivation_derivative computes it with a gemm."""
    Z, Mat, U, _ = arrays
    name = "tanh" if code == TANH else "sigmoid"
    T = Z + beta * (naive.act(name, Z @ Mat + U) - Z)
    D, want = np.empty_like(Z), np.empty_like(Z)
    getattr(g, f"_output_derivative_{twin}")(Z, T, code, beta, D, ROWS)
    getattr(g, f"_preactivation_derivative_{twin}")(Z, Mat, U, code, 0.0, want, ROWS)
    np.testing.assert_allclose(D, want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(D, naive.dact(name, Z @ Mat + U), rtol=1e-6, atol=1e-9)


# the answer ends in Z's buffer or in T's; 31-33 cross the end of the first round
@pytest.mark.parametrize("max_iter", [3, 4, fp.ROUND - 1, fp.ROUND, fp.ROUND + 1])
@pytest.mark.parametrize("beta", [1.0, 0.6])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_picard_leaves_the_last_evaluation_in_t(max_iter, beta, threads):
    rng = np.random.default_rng(7)
    n = 3000  # 7 blocks of block_rows(3000, 19) = 431 rows, the last ragged
    assert n > 6 * bl.block_rows(n, M)
    Mat = rng.standard_normal((M, M)) / M
    U = rng.standard_normal((n, M))
    Z0 = 0.1 * rng.standard_normal((n, M))
    Z = Z0.copy()
    T = np.empty_like(Z)
    hist = np.empty(max_iter + 1)
    k, _, status = fp.picard(Z, Mat, U, TANH, 0.0, np.empty((1, 1)), T, 0.0, max_iter, beta,
                             hist, threads)
    assert (k, status) == (max_iter, fp.MAX_ITER)
    want = Z0  # the same iteration in NumPy
    for _ in range(max_iter):
        want = want + beta * (np.tanh(want @ Mat + U) - want)
    np.testing.assert_allclose(Z, want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(T, Z + beta * (np.tanh(Z @ Mat + U) - Z), rtol=1e-12, atol=1e-14)


def _blockwise_picard(Z, Mat, U, h, tol, max_iter, beta, rows):
    """NumPy reference of the block-resident Picard: every block to its own
    stop; the history of the batch whose blocks hold iterate ``min(k, k_b)``."""
    n = Z.shape[0]
    per_block = []  # (k_b, status_b, [(dd, ff) of every evaluation])
    for i0 in range(0, n, rows):
        z = Z[i0:i0 + rows].copy()
        u = U[i0:i0 + rows]
        norms, r0, k = [], None, 0
        while True:
            f = h(z @ Mat + u, i0)
            dd, ff = np.sum((f - z) ** 2), np.sum(f ** 2)
            norms.append((dd, ff))
            if not (np.isfinite(dd) and np.isfinite(ff)):
                status = fp.DIVERGED
                break
            r0 = np.sqrt(dd) if r0 is None else r0
            if np.sqrt(dd / ff) <= tol:
                status = fp.CONVERGED
                break
            if np.sqrt(dd) > fp.GROWTH * r0 > 0:
                status = fp.DIVERGED
                break
            if k >= max_iter:
                status = fp.MAX_ITER
                break
            z = z + beta * (f - z)
            k += 1
        Z[i0:i0 + rows] = z
        per_block.append((k, status, norms))
    kmax = max(kb for kb, _, _ in per_block)
    hist = []
    for j in range(kmax + 1):
        dd = sum(nb[min(j, kb)][0] for kb, _, nb in per_block)
        ff = sum(nb[min(j, kb)][1] for kb, _, nb in per_block)
        hist.append(np.sqrt(dd / ff) if np.isfinite(dd) and np.isfinite(ff) else np.nan)
    statuses = {s for _, s, _ in per_block}
    status = next(s for s in (fp.DIVERGED, fp.MAX_ITER, fp.CONVERGED) if s in statuses)
    return kmax, status, np.array(hist), [kb for kb, _, _ in per_block]


def _blocks_problem(seed, norm):
    """3000 rows (7 blocks, the last ragged), ``||Mat||_2 = norm``, inputs ``U``."""
    rng = np.random.default_rng(seed)
    n = 3000
    Mat = rng.standard_normal((M, M))
    Mat *= norm / np.linalg.norm(Mat, 2)
    return rng, n, bl.block_rows(n, M), Mat, rng.standard_normal((n, M))


@pytest.mark.parametrize("threads", [1, 2, 5])
@pytest.mark.parametrize("code", [IDENTITY, MASK, TANH])
@pytest.mark.parametrize("rows_arg", [0, 333, 1000])
def test_picard_blocks_stop_on_their_own(threads, code, rows_arg):
    """Stopping groups of different difficulty stop at different iterations;
    iterates, count, status and the batch history match the NumPy reference
    (groups of ``group_rows``), with the block size in force (``rows_arg = 0``)
    and with ones that ``calibrate --picard`` passes: 333 rows (blocks of one
    group of 431 rows, each in two gemms) and 1000 (blocks of two groups, the
    last one ragged group); the blocks change nothing."""
    rng, n, rows, _, _ = _blocks_problem(3, 0.8)
    assert rows == bl.group_rows(n, M) and 333 < rows < 1000 < 3 * rows
    Q = np.linalg.qr(rng.standard_normal((M, M)))[0]
    lam = np.full(M, 0.1)
    lam[0] = 0.8  # one slow direction
    Mat = (Q * lam) @ Q.T
    C = rng.standard_normal((n, M))
    C[2 * rows:, 0] = 0.0  # only the first two blocks' inputs excite it
    U = C @ Q.T
    D = rng.uniform(0.1, 1.0, (n, M))
    h = {IDENTITY: lambda t, i0: t, MASK: lambda t, i0: D[i0:i0 + rows] * t,
         TANH: lambda t, i0: np.tanh(t)}[code]
    Z = np.zeros((n, M))
    T = np.empty_like(Z)
    hist = np.full(201, -1.0)
    k, res, status = fp.picard(Z, Mat, U, code, 0.0, D, T, 1e-9, 200, 1.0, hist, threads,
                               rows_arg)
    Zr = np.zeros((n, M))
    kr, sr, hr, per_block = _blockwise_picard(Zr, Mat, U, h, 1e-9, 200, 1.0, rows)
    assert (k, status) == (kr, sr) == (k, fp.CONVERGED)
    np.testing.assert_allclose(Z, Zr, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(hist[: k + 1], hr, rtol=1e-6, atol=1e-15)  # dd: rounding of F - Z
    assert res == hist[k] <= 1e-9
    # the batch rule holds for the returned Z, and it is what the history reports
    F = h(Z @ Mat + U, 0) if code != MASK else D * (Z @ Mat + U)
    assert np.sqrt(np.sum((F - Z) ** 2) / np.sum(F ** 2)) == pytest.approx(res, rel=1e-8)
    # the blocks did stop at different iterations, and the count is the largest
    assert min(per_block) < max(per_block) == k


def test_picard_one_block_diverging_keeps_the_others():
    _, n, rows, Mat, U = _blocks_problem(4, 0.5)
    U[rows + 3, 5] = np.nan  # block 1 goes non-finite at its first evaluation
    Z = np.zeros((n, M))
    hist = np.full(101, -1.0)
    k, res, status = fp.picard(Z, Mat, U, IDENTITY, 0.0, np.empty((1, 1)), np.empty_like(Z),
                               1e-10, 100, 1.0, hist, 2)
    assert status == fp.DIVERGED
    assert np.isnan(hist[: k + 1]).all() and res == np.inf  # no finite batch residual
    Zr = np.zeros((n, M))
    kr, sr, _, _ = _blockwise_picard(Zr, Mat, U, lambda t, i0: t, 1e-10, 100, 1.0, rows)
    assert (k, status) == (kr, sr)
    other = np.ones(n, bool)
    other[rows:2 * rows] = False
    np.testing.assert_allclose(Z[other], Zr[other], rtol=1e-12, atol=1e-15)
    assert np.all(Z[rows:2 * rows] == 0.0)  # the last good iterate of the bad block


@pytest.mark.parametrize("twin", TWINS)
def test_blocked_gemms(arrays, twin):
    Z, Mat, U, _ = arrays
    rng = np.random.default_rng(5)
    X = rng.standard_normal((N, 7))
    out = np.empty((N, M))
    getattr(bl, f"_gemm_rows_{twin}")(Z, Mat, out, ROWS)
    np.testing.assert_allclose(out, Z @ Mat, rtol=1e-12, atol=1e-13)
    first, parts = np.empty((M, 7)), np.empty((2, M, 7))
    getattr(bl, f"_gemm_tn_{twin}")(Z, X, first, parts, 100)  # 100 + 100 + 57 rows
    np.testing.assert_allclose(first, Z[:100].T @ X[:100], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(first + parts.sum(axis=0), Z.T @ X, rtol=1e-12, atol=1e-12)
    getattr(bl, f"_gemm_tn_{twin}")(Z, X, first, parts, 200)  # 200 + 57 + no rows
    np.testing.assert_array_equal(parts[1], 0.0)


@pytest.mark.parametrize("n", [1, 5, 257, 9000])
def test_public_gemms_any_size(n):
    """``gemm_rows``/``gemm_tn`` pick serial or parallel by size: same answer."""
    rng = np.random.default_rng(n)
    P, Q = rng.standard_normal((n, 9)), rng.standard_normal((n, 4))
    W = rng.standard_normal((9, 6))
    out = np.empty((n, 6))
    bl.gemm_rows(P, W, out)
    np.testing.assert_allclose(out, P @ W, rtol=1e-12, atol=1e-12)
    V = rng.standard_normal((6, 9))
    bl.gemm_rows(P, V.T, out)  # transposed: copied to C order, then the same blocks
    np.testing.assert_allclose(out, P @ V.T, rtol=1e-12, atol=1e-12)
    g_out = np.empty((9, 4))
    for threads in (1, 2, 16):
        bl.gemm_tn(P, Q, g_out, threads)
        np.testing.assert_allclose(g_out, P.T @ Q, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("m", [64, 112, 256])
def test_gemm_rows_transposed_at_small_path_widths(m):
    """A transposed right operand (the direct forward solve's ``U (I - A)^{-T}``)
    gets the rows of a C-contiguous one, small-path rows included; same product."""
    rng = np.random.default_rng(m)
    n = 3 * bl.block_rows(10**6, m) + 5  # several blocks and a ragged last one
    P, C = rng.standard_normal((n, m)), rng.standard_normal((m, m))
    out = np.empty((n, m))
    bl.gemm_rows(P, C.T, out)
    np.testing.assert_allclose(out, P @ C.T, rtol=1e-12, atol=1e-11)


def test_gemm_tn_shares():
    """One share per numba thread, more while the partials fit PARTS_BYTES."""
    assert bl.tn_parts(8192, 32, 32, 1) == bl.MAX_PARTS  # 8 KiB partials: 16 shares
    for threads in (1, 2, 16):
        assert bl.tn_parts(8192, 1024, 1024, threads) == threads
        assert bl.tn_parts(8192, 256, 256, threads) == max(threads, 2)
    assert bl.tn_parts(8192, 1024, 1024, 64) == bl.MAX_PARTS
    assert bl.tn_parts(300, 32, 32, 16) == 300 // bl.MIN_ROWS  # MIN_ROWS rows a share


def test_packed_rows_rule():
    assert bl.packed_rows(10**6, 32) == bl.BLOCK_BYTES // (8 * 32)
    assert bl.packed_rows(10**6, 256) == bl.MIN_ROWS  # 512 KiB matrix: not wide
    assert bl.packed_rows(10**6, 257) == bl.WIDE_ROWS
    assert bl.packed_rows(10**6, 10**6) == bl.WIDE_ROWS
    assert bl.packed_rows(300, 1024) == 150  # two blocks, not one of 300
    assert bl.packed_rows(800, 1024) == 400
    assert bl.packed_rows(10**6, 1) == bl.MAX_ROWS
    assert bl.packed_rows(7, 32) == 7


@pytest.mark.parametrize("mnk", [0, 10**6])
def test_block_rows_rule(mnk):
    """Without an unpacked small gemm the byte rule; with one, the most rows (a
    multiple of 4, at least SMALL_MIN_ROWS) that keep ``rows m^2`` within it."""
    tune = bl.default_tune()
    tune[bl.TUNE_SMALL_GEMM_MNK] = mnk  # the bound as a setting, at run time

    def rule(n, m):
        return bl.block_rows(n, m, tune)

    for m in (1, 16, 32, 64, 88, 89, 96, 128, 192, 256, 320, 353, 354, 512, 1024, 10**6):
        packed = bl.packed_rows(10**6, m)
        r = rule(10**6, m)
        if mnk == 0 or packed * m * m <= mnk or mnk // (m * m) < bl.SMALL_MIN_ROWS:
            assert r == packed, m
        else:
            assert r % 4 == 0 and bl.SMALL_MIN_ROWS <= r and r * m * m <= mnk < (r + 4) * m * m
    if mnk:
        assert [rule(10**6, m) for m in (96, 128, 192, 256, 320, 354)] == [
            108, 60, 24, 12, 8, bl.WIDE_ROWS]
        assert rule(10, 256) == 10  # never more rows than samples
    assert rule(7, 32) == 7


def test_block_rows_compiled_with_this_blas():
    """The jitted rule and the BLAS's small path as detected now agree; the
    built-in settings vector gives the built-in rule, which is also the rule of
    Picard's stopping groups."""
    assert bl.SMALL_GEMM_MNK == small_gemm_mnk()
    tune = bl.default_tune()
    assert tune[bl.TUNE_SMALL_GEMM_MNK] == small_gemm_mnk()
    for m in (16, 96, 256, 320, 1024):
        assert bl.block_rows(8192, m) == bl.block_rows(8192, m, tune) == bl.group_rows(8192, m)
        assert bl.packed_rows(8192, m) == bl.packed_rows(8192, m, tune)


@pytest.mark.parametrize(("libs", "expected"), [
    ([("openblas", "SkylakeX", "0.3.31.188.0")], 10**6),
    ([("openblas", "SkylakeX", "0.3.31"), ("openblas", "Cooperlake", "0.3.27")], 10**6),
    ([("openblas", "SapphireRapids", "0.3.21")], 10**6),
    ([("openblas", "Haswell", "0.3.31")], 0),  # AVX2: no small-matrix kernels
    ([("openblas", "Zen", "0.3.31")], 0),
    ([("openblas", "SkylakeX", "0.3.15")], 0),  # before the small-matrix kernels
    ([("openblas", "SkylakeX", "0.3.31"), ("mkl", None, "2024.1")], 0),
    ([("mkl", None, "2024.1")], 0),
    ([], 0),
])
def test_small_gemm_detection(monkeypatch, libs, expected):
    """The small-path bound only where every BLAS is OpenBLAS on a Skylake-X-family core."""
    import threadpoolctl

    info = [{"user_api": "blas", "internal_api": api, "architecture": arch, "version": ver}
            for api, arch, ver in libs] + [{"user_api": "openmp", "internal_api": "openmp"}]
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: info)
    assert small_gemm_mnk() == expected
