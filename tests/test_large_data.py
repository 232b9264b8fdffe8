"""Data larger than memory (issue 11): the on-disk teacher writer, the row-block
source layer, the streaming sufficient statistics and train on files."""

import json
import math
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deqbench as db
from deqbench import _source
from deqbench._chunked import PairwiseSum, resolve, stats_row_bytes, sufficient_stats

# --- the writer -------------------------------------------------------------


@pytest.mark.parametrize("kind, m, act", [("linear", 3, "identity"),
                                          ("single_index", None, "tanh")])
def test_writer_equals_in_memory_builder_for_any_block_size(tmp_path, kind, m, act):
    n, d = 9000, 5  # more than one 4096-row tile, not a multiple of it
    for rows in (1, 7, 4096, 10_000):
        db.data.write_teacher(tmp_path / str(rows), kind, n, d, m, activation=act, noise=0.1,
                              seed=3, block_rows=rows)
    ref = (db.data.linear_teacher(n, d, m, noise=0.1, seed=3) if kind == "linear"
           else db.data.single_index_teacher(n, d, activation=act, noise=0.1, seed=3))
    first = db.data.read_teacher(tmp_path / "1")
    for rows in (7, 4096, 10_000):
        other = db.data.read_teacher(tmp_path / str(rows))
        for a, b in zip(first[:3], other[:3], strict=True):
            np.testing.assert_array_equal(a, b)  # bit for bit, whatever the block size
    np.testing.assert_array_equal(first[0], ref[0])
    np.testing.assert_array_equal(first[2], ref[2])
    np.testing.assert_allclose(first[1], ref[1], rtol=1e-14, atol=1e-14)
    meta = first[3]
    assert meta == json.loads((tmp_path / "1" / "teacher.json").read_text())
    assert (meta["kind"], meta["n"], meta["d"], meta["m"], meta["seed"]) == (kind, n, d, m, 3)
    assert first[0].dtype == np.float64 and isinstance(first[0], np.memmap)


def test_writer_bad_arguments(tmp_path):
    w = db.data.write_teacher
    with pytest.raises(ValueError, match="kind must be one of"):
        w(tmp_path, "nonlinear", 10, 2, 2)
    with pytest.raises(ValueError, match="m must be given"):
        w(tmp_path, "linear", 10, 2)
    with pytest.raises(ValueError, match="m must be None"):
        w(tmp_path, "single_index", 10, 2, 3)
    with pytest.raises(ValueError, match="block_rows must be >= 1"):
        w(tmp_path, "linear", 10, 2, 2, block_rows=0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        w(tmp_path, "linear", 0, 2, 2)
    with pytest.raises(TypeError, match="seed must be an integer"):
        w(tmp_path, "linear", 10, 2, 2, seed=np.random.SeedSequence(1))
    with pytest.raises(ValueError, match="activation must be 'identity'"):
        w(tmp_path, "linear", 10, 2, 2, activation="tanh")
    with pytest.raises(TypeError, match="directory must be"):
        w(3, "linear", 10, 2, 2)
    w(tmp_path, "linear", 10, 2, 2)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        w(tmp_path, "linear", 10, 2, 2)
    w(tmp_path, "linear", 12, 2, 2, overwrite=True)
    assert db.data.read_teacher(tmp_path)[0].shape == (12, 2)
    with pytest.raises(FileNotFoundError, match="teacher.json"):
        db.data.read_teacher(tmp_path / "nothing")


# --- the source layer -------------------------------------------------------


def _npy(tmp_path, name, a):
    p = tmp_path / name
    np.save(p, a)
    return p


def test_sources_agree_and_blocks_cover_rows(tmp_path, rng):
    X = rng.standard_normal((103, 4))
    p = _npy(tmp_path, "X.npy", X)
    srcs = [_source.open_source("X", X), _source.open_source("X", p),
            _source.open_source("X", str(p)), _source.open_source("X", np.load(p, mmap_mode="r"))]
    assert [s.in_memory for s in srcs] == [True, False, False, False]
    for src in srcs:
        got = [b for _, _, (b,) in _source.blocks([src], 10)]
        assert [len(b) for b in got] == [10] * 10 + [3]
        np.testing.assert_array_equal(np.concatenate(got), X)


def test_source_bad_input_is_named_before_any_work(tmp_path, rng):
    X = rng.standard_normal((20, 3))
    op = _source.open_source
    want = np.float64
    with pytest.raises(TypeError, match=r"X \(.npy\) has dtype float32 but A has dtype float64"):
        op("X", _npy(tmp_path, "f32.npy", X.astype(np.float32)), dtype=want)
    with pytest.raises(TypeError, match=r"X \(np.memmap\) has dtype float32 but A0 has dtype "
                       "float64"):
        op("X", np.load(_npy(tmp_path, "f32b.npy", X.astype(np.float32)), mmap_mode="r"),
           dtype=want, ref="A0")
    with pytest.raises(TypeError, match="X must hold float32 or float64 data, got dtype int64"):
        op("X", _npy(tmp_path, "i.npy", np.arange(6).reshape(3, 2)))
    p = _npy(tmp_path, "t.npy", X)
    p.write_bytes(p.read_bytes()[:-9])
    with pytest.raises(ValueError, match="X: .* is truncated"):
        op("X", p)
    q = tmp_path / "text.npy"
    q.write_text("not an array\n")
    with pytest.raises(ValueError, match="X: .* is not a readable .npy file"):
        op("X", q)
    with pytest.raises(FileNotFoundError, match="X: no such file"):
        op("X", tmp_path / "missing.npy")
    with pytest.raises(ValueError, match="Fortran-ordered"):
        op("X", _npy(tmp_path, "F.npy", np.asfortranarray(X)))
    with pytest.raises(ValueError, match=r"Y must have shape \(20, 2\)"):
        op("Y", _npy(tmp_path, "Y.npy", X), shape=(20, 2))
    with pytest.raises(ValueError, match="Y must be 1-dimensional"):
        op("Y", _npy(tmp_path, "Y2.npy", X), ndim=1)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        _source.check_chunk(0, 20, 5)
    with pytest.raises(ValueError, match="chunk must be <= n = 20"):
        _source.check_chunk(21, 20, 5)
    with pytest.raises(ValueError, match="chunk must be one of"):
        _source.check_chunk("big", 20, 5)


def test_nonfinite_block_on_disk_names_rows(tmp_path, rng):
    X = rng.standard_normal((30, 2))
    X[25, 1] = np.nan
    src = _source.open_source("X", _npy(tmp_path, "X.npy", X))
    with pytest.raises(ValueError, match="X must be finite, got 1 non-finite .* rows 20:30"):
        list(_source.blocks([src], 10))


def test_auto_chunk_rule():
    assert _source.auto_chunk(10**9, 800) == _source.AUTO_CHUNK_BYTES // 800
    assert _source.auto_chunk(10**9, 8 * 10**7) == _source.AUTO_CHUNK_MIN
    assert _source.auto_chunk(100, 80) == 100


def test_auto_chunk_counts_the_bytes_of_the_dtype(tmp_path):
    """A float32 block holds twice the rows of a float64 one in the same 8 MiB."""
    n, d, m, h = 10**6, 4, 5, 5
    got = {}
    for dt in (np.float64, np.float32):
        path = tmp_path / f"{np.dtype(dt).name}.npy"
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=dt, shape=(n, d))  # sparse file
        del mm
        got[dt] = resolve(path, np.zeros((m, d), dt), None, h)[1]
    per_row = d + (6 + 2 * h) * m  # values a block keeps per row (docstring of row_bytes)
    assert got[np.float64] == _source.AUTO_CHUNK_BYTES // (8 * per_row)
    assert got[np.float32] == _source.AUTO_CHUNK_BYTES // (4 * per_row)
    # the statistics pass holds float32 rows and their float64 copies
    assert stats_row_bytes(d, m, np.float32) == 12 * (d + m)
    assert stats_row_bytes(d, m, np.float64) == 8 * (d + m)


class Counting(_source.BlockSource):
    """A file source that counts the rows it reads and can fail at a given row."""

    def __init__(self, src, fail_at=None):
        super().__init__(src.name, src.shape, path=src.path, offset=src.offset)
        self.rows, self.fail_at, self.threads = 0, fail_at, set()

    def read(self, start, stop):
        self.threads.add(threading.current_thread().name)
        if self.fail_at is not None and start <= self.fail_at < stop:
            raise OSError(5, "Input/output error")
        self.rows += stop - start
        return super().read(start, stop)


def test_prefetch_runs_in_a_thread_and_stops_early(tmp_path, rng):
    src = Counting(_source.open_source("X", _npy(tmp_path, "X.npy", rng.standard_normal((50, 2)))))
    gen = _source.blocks([src], 5)
    next(gen)
    gen.close()  # the reader thread is told to stop and joined
    assert src.rows <= 15 and src.threads == {"deqbench-prefetch"}


# --- streaming sufficient statistics ------------------------------------------


@settings(deadline=None, max_examples=30)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=70))
def test_pairwise_sum_is_exact_to_rounding(xs):
    s = PairwiseSum()
    for x in xs:
        s.add(np.array([x]))
    assert s.total()[0] == pytest.approx(math.fsum(xs), abs=1e-9 * max(1.0, max(map(abs, xs))))


@pytest.mark.parametrize("chunk", [1, 37, 1000, 5000])
def test_sufficient_stats_match_exact_sums_on_ill_scaled_data(tmp_path, rng, chunk):
    n, d, m = 5000, 4, 2
    X = rng.standard_normal((n, d)) * np.logspace(-6, 6, d) + np.array([0, 3e3, 0, -1e7])
    Y = X[:, :m] * 1e3 + rng.standard_normal((n, m))
    s = sufficient_stats(_source.open_source("X", _npy(tmp_path, "X.npy", X)),
                         _source.open_source("Y", _npy(tmp_path, "Y.npy", Y)), chunk)
    exact_xx = np.array([[math.fsum(X[:, i] * X[:, j]) / n for j in range(d)] for i in range(d)])
    exact_yx = np.array([[math.fsum(Y[:, i] * X[:, j]) / n for j in range(d)] for i in range(m)])
    # relative to the Cauchy-Schwarz scale of each entry
    sx = np.sqrt(np.diag(exact_xx))
    sy = np.sqrt((Y * Y).sum(0) / n)
    assert np.max(np.abs(s.Sxx - exact_xx) / np.outer(sx, sx)) < 1e-13
    assert np.max(np.abs(s.Syx - exact_yx) / np.outer(sy, sx)) < 1e-13
    assert s.yy == pytest.approx(math.fsum((Y * Y).ravel()) / n, rel=1e-13)
    np.testing.assert_array_equal(s.Sxx, s.Sxx.T)


def _maxrel(a, ref):
    return float(np.max(np.abs(np.asarray(a, np.float64) - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("chunk", [1 << 16, 5000])
def test_sufficient_stats_of_float32_data_accumulate_in_float64(tmp_path, chunk):
    """Sums of 65536 float32 products near 1e4 (mean 100): accumulated in float32 they
    lose about 1e-5 relative, which the conditioning of ``X^T X`` (mean against unit
    spread, about 3e4) turns into a wrong least-squares ``W*``. In float64 they agree
    with the exact sums of the float32 values. ``train`` (in memory and on disk)
    takes its statistics from this one function."""
    rng = np.random.default_rng(7)
    n, d, m = 1 << 16, 3, 2
    X = (100.0 + rng.standard_normal((n, d))).astype(np.float32)
    Y = (X[:, :m] @ np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
         + rng.standard_normal((n, m)).astype(np.float32))
    X6, Y6 = X.astype(np.float64), Y.astype(np.float64)  # the float32 values, exactly
    ref_xx, ref_yx, ref_yy = X6.T @ X6 / n, Y6.T @ X6 / n, float(np.vdot(Y6, Y6)) / n
    assert _maxrel(X.T @ X / np.float32(n), ref_xx) > 1e-7  # what float32 sums give
    s = sufficient_stats(_source.open_source("X", _npy(tmp_path, "X.npy", X)),
                         _source.open_source("Y", _npy(tmp_path, "Y.npy", Y)), chunk)
    assert s.Sxx.dtype == s.Syx.dtype == np.float64
    assert _maxrel(s.Sxx, ref_xx) < 1e-13 and _maxrel(s.Syx, ref_yx) < 1e-13
    assert s.yy == pytest.approx(ref_yy, rel=1e-13)
    W, _ = s.least_squares()
    W_ref = np.linalg.lstsq(X6, Y6, rcond=None)[0].T
    assert _maxrel(W, W_ref) < 1e-8


def test_train_on_files_makes_one_pass_and_matches_in_memory(tmp_path):
    db.data.write_teacher(tmp_path, "linear", 3000, 6, 3, noise=0.1, seed=1, block_rows=500)
    X, Y, _, _ = db.data.read_teacher(tmp_path)
    A0, B0 = db.data.init_params(6, 3, scale_A=0.3, scale_B=1.0, seed=2)
    kw = dict(lr=0.1, steps=40, sufficient_stats=True)
    ref = db.train("linear", np.array(X), np.array(Y), A0, B0, **kw)
    cx = Counting(_source.open_source("X", tmp_path / "X.npy"))
    cy = Counting(_source.open_source("Y", tmp_path / "Y.npy"))
    got = db.train("linear", cx, cy, A0, B0, chunk=700, **kw)
    assert (cx.rows, cy.rows) == (3000, 3000)  # exactly one pass over each file
    assert got.sufficient_stats and got.status == ref.status == "max_steps"
    np.testing.assert_allclose(got.A, ref.A, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.B, ref.B, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.history["loss"], ref.history["loss"], rtol=1e-12)
    assert got.L_star == pytest.approx(ref.L_star, rel=1e-12)
    mm = db.train("linear", X, str(tmp_path / "Y.npy"), A0, B0, **kw)  # memmap + path
    np.testing.assert_allclose(mm.A, ref.A, rtol=1e-12, atol=1e-14)


def test_train_on_files_read_error_is_a_status(tmp_path):
    db.data.write_teacher(tmp_path, "linear", 300, 4, 2, seed=1)
    A0, B0 = db.data.init_params(4, 2, scale_A=0.3, scale_B=1.0, seed=2)
    cx = Counting(_source.open_source("X", tmp_path / "X.npy"), fail_at=150)
    with pytest.warns(db.ConvergenceWarning, match="read_error.*rows 100:200 of X"):
        r = db.train("linear", cx, tmp_path / "Y.npy", A0, B0, lr=0.1, steps=5, chunk=100)
    assert r.status == "read_error" and r.n_steps == 0 and not r.converged
    np.testing.assert_array_equal(r.A, A0)
    np.testing.assert_array_equal(r.B, B0)
    assert all(len(h) == 0 for h in r.history.values())


def test_train_on_files_bad_input(tmp_path):
    db.data.write_teacher(tmp_path, "linear", 50, 4, 2, seed=1)
    A0, B0 = db.data.init_params(4, 2, scale_A=0.3, scale_B=1.0, seed=2)
    Xp, Yp = tmp_path / "X.npy", tmp_path / "Y.npy"
    kw = dict(lr=0.1, steps=2)
    with pytest.raises(ValueError, match="needs model='linear'"):
        db.train("nonlinear", Xp, Yp, A0, B0, activation="tanh", **kw)
    with pytest.raises(ValueError, match="needs sufficient_stats=True"):
        db.train("linear", Xp, Yp, A0, B0, sufficient_stats=False, **kw)
    with pytest.raises(ValueError, match="chunk must be <= n = 50"):
        db.train("linear", Xp, Yp, A0, B0, chunk=51, **kw)
    with pytest.raises(ValueError, match=r"Y must have shape \(50, 3\)"):
        db.train("linear", Xp, Yp, np.zeros((3, 3)), np.zeros((3, 4)), **kw)
    with pytest.raises(ValueError, match="chunk applies to X or Y on disk only"):
        db.train("linear", np.load(Xp), np.load(Yp), A0, B0, chunk=10, **kw)
    with pytest.raises(ValueError, match="flow needs X and Y in memory"):
        db.flow("linear", Xp, Yp, A0, B0, t_end=1.0)


def test_large_data_command_runs_once(capsys):
    from tools.large_data import main

    assert main(["--n", "3000", "--d", "8", "--m", "4", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    for key in ("read bandwidth", "loss_and_grad tanh", "sufficient statistics pass",
                "train linear, n=3000", "step time exponent"):
        assert key in out


@pytest.mark.parametrize(("argv", "keys"), [
    (["--target", "peakmem", "--sizes", "600,1200", "--chunk", "256"],
     ["n=600, d=m=16: chunk=256", "n=1200", "exponent in n, chunked",
      "exponent in n, one block"]),
    (["--target", "dtype", "--sizes", "8", "--repeat", "1"],
     ["W1 fixed_point m=8", "W2 loss_and_grad m=8", "float32 gradient m=8"]),
    (["--target", "wide", "--sizes", "48", "--repeat", "1"],
     ["wide forward solve m=d=n=48", "numpy matmul (48x48)@(48x48)"]),
])
def test_each_target_command_runs_once(capsys, argv, keys):
    from tools.large_data import main

    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for key in keys:
        assert sum(key in line for line in lines) == 1, (key, out)
    assert "nan" not in out
