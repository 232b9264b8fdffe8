"""The kernels' settings in force (deqbench/_calibration.py): the calibration
file and its key, corrupt and foreign files, the environment, ``deqbench
info`` and ``deqbench calibrate``; the calibration changes no result (the
public calls with the built-in settings and with odd ones agree to rounding,
with the same statuses and counts); the MKL gemm where ``libmkl_rt`` loads."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from numba.core.errors import NumbaPerformanceWarning

import deqbench as db
from deqbench import _blas, _calibrate
from deqbench import _calibration as cal
from deqbench._kernels import blocks as bl
from deqbench.cli import main

ODD = {
    "rows8": {"block_bytes": 8, "min_rows": 8, "max_rows": 8, "small_gemm_mnk": 10**6,
              "pass_parallel_min": 0},
    "rows100": {"min_rows": 100, "max_rows": 100, "small_gemm_mnk": 0},
    "rows1100": {"min_rows": 1100, "max_rows": 1100, "pass_parallel_min": 10**12},
    "rows4096": {"min_rows": 4096, "max_rows": 4096, "small_gemm_mnk": 0,
                 "pass_parallel_min": 10**12},
    "wide": {"wide_bytes": 0, "wide_rows": 4096, "small_gemm_mnk": 0},
    "small": {"block_bytes": 1 << 20, "max_rows": 4096, "small_gemm_mnk": 10**4,
              "small_min_rows": 1},
}
"""Calibrations far from the built-in one (at n = 1300, m = 16, whose stopping
groups are 512 rows): 8-row blocks and every pass parallel; 100-row blocks (a
group in six gemms); 1100 rows (two groups a block, the last block one ragged
group) and no pass parallel; one block of every row; every width wide (650
rows, half of n); and 1 MiB blocks cut down to the small-gemm rows (36)."""


@pytest.fixture
def calfile(tmp_path, monkeypatch):
    """A calibration file path in force (nothing written yet); the settings
    variables of the environment cleared."""
    path = tmp_path / "cal" / "calibration.json"
    monkeypatch.setenv(cal.ENV, str(path))
    for s in cal.SETTINGS:
        monkeypatch.delenv(s.env, raising=False)
    return path


def _mkl():
    try:
        return _blas.mkl_gemm()
    except _blas.MklUnavailable as exc:
        pytest.skip(f"MKL's gemm unavailable here: {exc} (pip install deqbench[mkl])")


# --- the file, its key, the environment -----------------------------------------


def test_cache_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(cal.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cal.cache_path() == tmp_path / "xdg" / "deqbench" / "calibration.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cal.cache_path() == tmp_path / "home" / ".cache" / "deqbench" / "calibration.json"
    monkeypatch.setenv(cal.ENV, str(tmp_path / "mine.json"))
    assert cal.cache_path() == tmp_path / "mine.json"
    for off in ("off", "OFF", "none", ""):
        monkeypatch.setenv(cal.ENV, off)
        assert cal.cache_path() is None
        assert cal.in_force().state == "off"


def test_key_names_machine_blas_and_versions():
    import numba
    import scipy

    key = cal.machine_key()
    assert set(key) == {"cpu", "machine", "isa", "blas", "versions"}
    assert key["cpu"] and key["isa"]
    assert key["blas"] and all(len(b.split()) == 4 for b in key["blas"])
    v = key["versions"]
    assert v["numpy"] == np.__version__ and v["numba"] == numba.__version__
    assert v["scipy"] == scipy.__version__ and v["deqbench"] == db.__version__
    assert "mkl" in v and "python" in v
    assert cal.machine_key() == key  # the same process sees the same key


def test_absent_file_gives_the_defaults(calfile):
    now = cal.in_force()
    assert now.state == "absent" and not calfile.exists()
    assert now.values == cal.defaults()
    assert set(now.sources.values()) == {"default"}
    np.testing.assert_array_equal(cal.tune(), bl.default_tune())
    assert cal.tune() is cal.tune()  # built once per state, not per call


def test_written_file_is_loaded_with_its_source(calfile):
    cal.write(calfile, {"block_bytes": 1 << 18, "small_gemm_mnk": 0, "gemm": "blas"},
              {"note": "test"}, "deqbench calibrate --test")
    assert [p.name for p in calfile.parent.iterdir()] == [calfile.name]  # no temporary left
    doc = json.loads(calfile.read_text())
    assert doc["format"] == cal.FORMAT and doc["key"] == cal.machine_key()
    assert doc["command"] == "deqbench calibrate --test" and doc["measured"] == {"note": "test"}
    now = cal.in_force()
    assert now.state == "loaded"
    assert now.values["block_bytes"] == 1 << 18 and now.values["small_gemm_mnk"] == 0
    assert now.sources["block_bytes"] == f"calibration {calfile}"
    assert now.sources["min_rows"] == "default"
    vec = cal.tune()
    assert vec[bl.TUNE_BLOCK_BYTES] == 1 << 18 and vec[bl.TUNE_SMALL_GEMM_MNK] == 0
    assert bl.block_rows(8192, 256, vec) == 128  # 256 KiB blocks, no small path
    assert bl.block_rows(8192, 256) == bl.group_rows(8192, 256)  # the built-in rule


def test_write_is_atomic(calfile):
    cal.write(calfile, {"block_bytes": 1 << 15})
    before = calfile.read_text()
    with pytest.raises(TypeError):  # not JSON: the old file stays, whole
        cal.write(calfile, {"block_bytes": 1 << 17}, {"bad": object()})
    assert calfile.read_text() == before
    assert [p.name for p in calfile.parent.iterdir()] == [calfile.name]
    with pytest.raises(ValueError, match="min_rows must be in"):
        cal.write(calfile, {"min_rows": 0})
    with pytest.raises(ValueError, match="max_rows must be >= min_rows"):
        cal.write(calfile, {"min_rows": 512, "max_rows": 256})
    assert calfile.read_text() == before


def _one_warning(match):
    with pytest.warns(db.CalibrationWarning, match=match) as rec:
        now = cal.in_force()
    msgs = [str(w.message) for w in rec if issubclass(w.category, db.CalibrationWarning)]
    assert len(msgs) == 1 and "\n" not in msgs[0], msgs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cal.in_force() is now  # nothing changed: no second warning
    return now, msgs[0]


@pytest.mark.parametrize(("text", "why"), [
    ("{not json", "corrupt"),
    ("[1, 2]", "corrupt"),
    (json.dumps({"format": "other/9", "key": {}, "settings": {}}), "corrupt"),
    ("KEY:" + json.dumps({"min_rows": -3}), "corrupt"),
    ("KEY:" + json.dumps({"bogus": 1}), "corrupt"),
    ("KEY:" + json.dumps({"gemm": "cuda"}), "corrupt"),
    ("KEY:" + json.dumps({"min_rows": 600, "max_rows": 500}), "corrupt"),
])
def test_corrupt_file_is_one_line_and_the_defaults(calfile, text, why):
    calfile.parent.mkdir(parents=True)
    if text.startswith("KEY:"):
        text = json.dumps({"format": cal.FORMAT, "key": cal.machine_key(),
                           "settings": json.loads(text[4:])})
    calfile.write_text(text)
    now, msg = _one_warning(why)
    assert now.state == why and str(calfile) in msg and "built-in defaults" in msg
    assert now.values == cal.defaults()
    np.testing.assert_array_equal(now.vector, bl.default_tune())


@pytest.mark.parametrize(("field", "value"), [("cpu", "Some Other CPU"), ("isa", "avx2"),
                                              ("blas", ["openblas 0.2.0 Haswell x.so"]),
                                              ("versions.numpy", "1.0.0"),
                                              ("versions.deqbench", "0.0.1")])
def test_foreign_file_is_one_line_and_the_defaults(calfile, field, value):
    cal.write(calfile, {"block_bytes": 1 << 18})
    doc = json.loads(calfile.read_text())
    where = doc["key"]
    *parents, leaf = field.split(".")
    for p in parents:
        where = where[p]
    where[leaf] = value
    calfile.write_text(json.dumps(doc))
    now, msg = _one_warning("another machine or software")
    assert now.state == "foreign" and leaf in msg and str(value) in msg
    assert now.values == cal.defaults()
    calfile.write_text(json.dumps({**doc, "key": cal.machine_key()}))  # the right key again
    assert cal.in_force().values["block_bytes"] == 1 << 18


def test_environment_overrides_the_file(calfile, monkeypatch):
    cal.write(calfile, {"block_bytes": 1 << 18, "min_rows": 64})
    monkeypatch.setenv("DEQBENCH_BLOCK_BYTES", "4096")
    monkeypatch.setenv("DEQBENCH_PASS_PARALLEL_MIN", "1e6")
    now = cal.in_force()
    assert now.values["block_bytes"] == 4096 and now.values["min_rows"] == 64
    assert now.values["pass_parallel_min"] == 10**6
    assert now.sources["block_bytes"] == "environment DEQBENCH_BLOCK_BYTES"
    assert now.sources["min_rows"] == f"calibration {calfile}"
    assert now.vector[bl.TUNE_BLOCK_BYTES] == 4096
    monkeypatch.setenv("DEQBENCH_MIN_ROWS", "lots")
    now, msg = _one_warning("DEQBENCH_MIN_ROWS ignored: min_rows must be an integer")
    assert now.values["min_rows"] == 64  # the file's value stays
    monkeypatch.setenv("DEQBENCH_MIN_ROWS", "2048")  # above max_rows: the built-in rows
    now, msg = _one_warning("max_rows must be >= min_rows")
    assert (now.values["min_rows"], now.values["max_rows"]) == (bl.MIN_ROWS, bl.MAX_ROWS)


def test_mkl_absent_falls_back_to_blas(calfile, monkeypatch):
    monkeypatch.setattr(_blas, "_mkl_candidates", lambda: [str(calfile.parent / "libmkl_rt.so.3")])
    monkeypatch.setenv("DEQBENCH_GEMM", "mkl")
    now, msg = _one_warning("gemm=mkl .* unavailable, using blas")
    assert now.values["gemm"] == "blas" and now.vector[bl.TUNE_GEMM] == bl.GEMM_BLAS
    with pytest.raises(_blas.MklUnavailable):
        _calibrate.calibrate(gemm="mkl", **_calibrate.QUICK, log=lambda line: None)


# --- deqbench info and deqbench calibrate --------------------------------------------


def test_info_says_defaults_without_a_calibration(calfile, capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"no calibration file at {calfile}" in out and "built-in defaults" in out
    for s in cal.SETTINGS:
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(s.name + " "))
        assert line.split()[1] == str(s.default) and "default" in line
    assert "gemm          blas" in out


def test_info_names_the_file_and_the_environment(calfile, capsys, monkeypatch):
    cal.write(calfile, {"block_bytes": 1 << 17})
    monkeypatch.setenv("DEQBENCH_WIDE_ROWS", "256")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"in force: calibration file {calfile}" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("block_bytes "))
    assert "131072" in line and f"calibration {calfile}" in line
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("wide_rows "))
    assert "256" in line and "environment DEQBENCH_WIDE_ROWS" in line
    assert "row blocks of 128 KiB per array" in out


def test_calibrate_quick_writes_a_file_that_loads(calfile, capsys):
    assert main(["calibrate", "--quick", "--gemm", "blas"]) == 0
    out = capsys.readouterr().out
    assert f"wrote         {calfile}" in out and "GFLOP/s by rows" in out
    doc = json.loads(calfile.read_text())
    assert doc["command"] == "deqbench calibrate --quick --gemm blas"
    assert set(doc["settings"]) == {s.name for s in cal.SETTINGS}
    assert doc["measured"]["picard_s_per_evaluation"]["blas"]
    now = cal.in_force()
    assert now.state == "loaded"
    assert all(src == f"calibration {calfile}" for src in now.sources.values())
    # the calibration in force runs, and changes nothing
    X, _, _ = db.data.linear_teacher(n=300, d=5, m=8, seed=0)
    A, B = db.data.init_params(5, 8, scale_A=0.5, scale_B=1.0, seed=1)
    r = db.fixed_point(X, A, B)
    off = os.environ[cal.ENV]
    os.environ[cal.ENV] = "off"
    try:
        ref = db.fixed_point(X, A, B)
    finally:
        os.environ[cal.ENV] = off
    assert (r.n_iter, r.status) == (ref.n_iter, ref.status)
    np.testing.assert_allclose(r.z, ref.z, rtol=1e-12, atol=1e-14)


def test_calibrate_dry_run_and_off(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(cal.ENV, "off")
    assert main(["calibrate", "--dry-run", "--quick", "--gemm", "blas", "--widths", "16",
                 "--n", "200", "--budget", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "not written" in out and "m = 16 " in out
    assert main(["calibrate", "--quick"]) == 2  # off: nowhere to write
    assert "give --out PATH" in capsys.readouterr().err
    assert main(["calibrate", "--quick", "--gemm", "blas", "--out",
                 str(tmp_path / "x.json")]) == 0
    assert json.loads((tmp_path / "x.json").read_text())["format"] == cal.FORMAT


def test_gemm_table_runs(capsys):
    assert main(["calibrate", "--gemm-table", "--widths", "4,16", "--n", "64",
                 "--budget", "0.2"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.strip().startswith("m = ")]
    assert len(rows) == 2 and all("blas" in r and "numpy matmul" in r for r in rows)


def test_rule_rows_is_the_kernels_rule():
    rng = np.random.default_rng(0)
    base = cal.defaults()
    rules = cal_rules = _calibrate._grid(base)
    picks = [cal_rules[i] for i in rng.choice(len(rules), 60, replace=False)] + [base]
    picks.append({**base, "small_min_rows": 1, "wide_bytes": 0, "wide_rows": 3})
    for s in picks:
        vec = bl.default_tune()
        for name in _calibrate.RULE + ("small_min_rows",):
            vec[cal._BY_NAME[name].slot] = s[name]
        for n in (1, 7, 300, 8192):
            for m in (1, 8, 16, 96, 256, 320, 1024):
                assert _calibrate.rule_rows(n, m, s) == bl.block_rows(n, m, vec), (s, n, m)


def test_fit_rule_picks_the_fastest_rule_and_keeps_the_default_on_ties():
    base = cal.defaults()
    n_of = {16: 8192, 256: 8192, 1024: 4096}
    rows = _calibrate._rows_of(n_of, _calibrate._grid(base))
    flat = {m: {r: 1.0 for r in rows[m]} for m in n_of}
    assert _calibrate.fit_rule(flat, n_of, base)[0] == base  # nothing faster: keep it
    # 128 rows twice as fast everywhere: a rule that gives 128 at every width
    fast = {m: {r: (0.5 if r == 128 else 1.0) for r in rows[m]} for m in n_of}
    rule, score, base_score = _calibrate.fit_rule(fast, n_of, base)
    assert all(_calibrate.rule_rows(n, m, rule) == 128 for m, n in n_of.items())
    assert score == pytest.approx(0.0) and base_score > 0
    # 1% faster is noise: the built-in rule stays
    near = {m: {r: (0.99 if r == 128 else 1.0) for r in rows[m]} for m in n_of}
    assert _calibrate.fit_rule(near, n_of, base)[0] == base


def test_pass_crossover():
    t = {256: (1.0, 2.0), 1024: (1.0, 1.5), 4096: (2.0, 1.0), 16384: (4.0, 1.0)}
    assert _calibrate.pass_crossover(t, 1 << 20) == 4096
    assert _calibrate.pass_crossover(t, 2000) == 2000  # between 1024 and 4096: unresolved
    t[16384] = (1.0, 2.0)  # serial wins at the top: from 4096 it wins one of two above
    assert _calibrate.pass_crossover(t, 1 << 14) == 32768
    t.update({65536: (2.0, 1.0), 1 << 18: (2.0, 1.0)})  # one slow timing among wins
    assert _calibrate.pass_crossover(t, 1 << 20) == 4096
    t = {256: (1.0, 2.0), 1024: (1.0, 2.0)}  # never parallel
    assert _calibrate.pass_crossover(t, 1 << 14) == 2048


# --- no result depends on the calibration ------------------------------------------


def _slow_first_group(dtype, n=1300, m=16, seed=0):
    """A linear DEQ whose first stopping group (``group_rows``: 512 rows at m = 16)
    carries a slow direction and whose other groups converge fast."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((m, m)))[0]
    lam = np.full(m, 0.2)
    lam[0] = 0.85
    A = (Q * lam) @ Q.T
    X = rng.standard_normal((n, m))
    group = int(bl.group_rows(n, m))
    assert 2 * group < n
    X[group:] -= np.outer(X[group:] @ Q[:, 0], Q[:, 0])
    B = np.eye(m)
    Y = rng.standard_normal((n, m))
    return tuple(a.astype(dtype) for a in (X, Y, A, B))


class _Residual(float):
    """A relative residual (Picard's): the sums of the groups' norms in another
    order, so it agrees to rounding."""


def _run_everything(dtype):
    """The public calls, linear and nonlinear, picard and anderson, whole and chunked."""
    X, Y, A, B = _slow_first_group(dtype)
    tol = 1e-10 if dtype == np.float64 else 1e-5
    y = Y[:, 0].copy()
    out = {}
    for act in ("identity", "tanh"):
        for method in ("picard", "anderson"):
            for chunk in (None, 500):
                f = db.fixed_point(X, A, B, activation=act, method=method, tol=tol, chunk=chunk)
                # Anderson's last residual is rounding of an ill-conditioned least-squares
                # step (docs/theory.md §3), not a number to repeat: below tol is its result
                res = _Residual(f.residual) if method == "picard" else bool(f.residual <= tol)
                out[("fp", act, method, chunk)] = (f.z, f.n_iter, f.status, res)
        f = db.fixed_point(X, A, B, activation=act, tol=tol)
        G = (f.z - Y) / len(X)
        for method in ("picard", "anderson", "neumann"):
            gr = db.implicit_grad(X, A, B, f.z, G, activation=act, method=method, tol=tol)
            out[("ig", act, method)] = (gr.grad_A, gr.grad_B, gr.n_iter, gr.status)
    out[("fp", "direct")] = (db.fixed_point(X, A, B, method="direct", tol=tol).z,)
    for model, act, Yt in (("linear", "identity", Y), ("nonlinear", "tanh", Y),
                           ("readout", "tanh", y)):
        for chunk in (None, 500):
            r = db.loss_and_grad(model, X, Yt, A, B, activation=act, tol=tol, chunk=chunk)
            out[("lg", model, chunk)] = (r.loss, r.grad_A, r.grad_B, r.fp_iters, r.adj_iters,
                                         r.fp_status, r.adj_status)
        t = db.train(model, X, Yt, A, B, activation=act, lr=0.05, steps=4, tol=tol,
                     sufficient_stats=False, spectral_every=2)
        out[("train", model)] = (t.A, t.B, t.status, t.history["loss"], t.history["fp_iters"],
                                 t.history["adj_iters"])
    t = db.train("linear", X, Y, A, B, lr=0.05, steps=4, tol=tol, solver="direct",
                 sufficient_stats=False)
    out[("train", "direct")] = (t.A, t.B, t.status)
    return out


def _same(ref, got, dtype):
    rtol = 1e-9 if dtype == np.float64 else 2e-4
    for key, want in ref.items():
        for a, b in zip(want, got[key], strict=True):
            if isinstance(a, _Residual):
                assert abs(a - b) <= rtol * abs(a) + 256 * np.finfo(dtype).eps, key
            elif isinstance(a, (str, int, bool, np.integer, np.bool_)):
                assert a == b, key
            elif np.ndim(a) and np.asarray(a).dtype.kind in "iu":
                np.testing.assert_array_equal(a, b, err_msg=str(key))
            else:
                a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
                scale = np.max(np.abs(a)) if a.size else 0.0
                np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * scale,
                                           err_msg=str(key))


@pytest.fixture(scope="module")
def reference():
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("odd", [*ODD, "mkl"])
def test_no_result_depends_on_the_calibration(calfile, monkeypatch, reference, dtype, odd):
    """Defaults against odd calibrations, through every public call: the same
    statuses and iteration counts, the same numbers to rounding (float32:
    ``tol`` 1e-5). The stopping groups are fixed (docs/theory.md §3): the first
    one converges slowly and the others fast, so blocks of several groups hold
    stopped and running groups at once."""
    settings = {"gemm": "mkl"} if odd == "mkl" else ODD[odd]
    if odd == "mkl":
        _mkl()
    if dtype not in reference:
        monkeypatch.setenv(cal.ENV, "off")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", db.ConvergenceWarning)
            reference[dtype] = _run_everything(dtype)
        monkeypatch.setenv(cal.ENV, str(calfile))
    cal.write(calfile, settings)
    now = cal.in_force()
    assert now.state == "loaded" and all(now.values[k] == v for k, v in settings.items())
    X, _, _, _ = _slow_first_group(dtype)
    n, m = X.shape
    assert bl.block_rows(n, m, now.vector) != bl.group_rows(n, m) or odd == "mkl"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", db.ConvergenceWarning)
        got = _run_everything(dtype)
    _same(reference[dtype], got, dtype)


def test_stopping_groups_do_not_follow_the_blocks():
    """Picard at the kernel: the same Z, count and status for block rows from 1 to
    n, with groups that stop at different counts (the first slow)."""
    from deqbench._kernels import fixed_point as fp
    from deqbench._kernels.activations import IDENTITY

    X, _, A, _ = _slow_first_group(np.float64)
    n, m = X.shape
    M = np.ascontiguousarray(A.T)
    out = {}
    for rows in (0, 1, 5, 8, 100, 511, 512, 513, 1024, 1300, 4096):
        for threads in (1, 2, 3):
            Z, T = np.zeros((n, m)), np.empty((n, m))
            hist = np.empty(1001)
            k, res, st = fp.picard(Z, M, X, IDENTITY, 0.0, np.zeros((1, 1)), T, 1e-10, 1000,
                                   1.0, hist, np.int64(threads), np.int64(rows))
            out[rows, threads] = (Z, k, st, res)
    Z0, k0, st0, res0 = out[0, 1]
    assert st0 == fp.CONVERGED
    for (rows, threads), (Z, k, st, res) in out.items():
        assert (k, st) == (k0, st0), (rows, threads)
        np.testing.assert_allclose(Z, Z0, rtol=1e-13, atol=1e-15)
        assert res == pytest.approx(res0, rel=1e-9)
    # the first group needed more evaluations than the others: a check the setup can fail
    g = int(bl.group_rows(n, m))
    Zs, T, hist = np.zeros((g, m)), np.empty((g, m)), np.empty(1001)
    k_slow = fp.picard(Zs, M, X[:g].copy(), IDENTITY, 0.0, np.zeros((1, 1)), T, 1e-10, 1000,
                       1.0, hist, np.int64(1))[0]
    Zf, T = np.zeros((n - g, m)), np.empty((n - g, m))
    k_fast = fp.picard(Zf, M, X[g:].copy(), IDENTITY, 0.0, np.zeros((1, 1)), T, 1e-10, 1000,
                       1.0, hist, np.int64(1))[0]
    assert k_slow == k0 > k_fast + 5


# --- the MKL gemm -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mkl_gemm_matches_np_dot(dtype):
    lib = _mkl()
    # loaded by deqbench, MKL is neither the BLAS of np.dot nor part of the key
    assert _blas.small_gemm_mnk() == bl.SMALL_GEMM_MNK
    assert all("mkl" not in b for b in cal.machine_key()["blas"])
    vec = bl.default_tune()
    vec[bl.TUNE_GEMM] = bl.GEMM_CBLAS
    vec[bl.TUNE_DGEMM], vec[bl.TUNE_SGEMM] = lib["dgemm"], lib["sgemm"]
    rng = np.random.default_rng(3)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for n, k, m in ((1, 1, 1), (7, 3, 5), (300, 64, 64), (1000, 19, 7), (33, 256, 256)):
        P = rng.standard_normal((n, k)).astype(dtype)
        Q = rng.standard_normal((k, m)).astype(dtype)
        want = P.astype(np.float64) @ Q.astype(np.float64)
        for q in (Q, np.asfortranarray(Q)):  # a transposed right operand is copied first
            out = np.full((n, m), np.nan, dtype)
            bl.gemm_rows(P, q, out, vec)
            np.testing.assert_allclose(out, want, rtol=rtol, atol=rtol * np.abs(want).max())
        out = np.full((n, m), np.nan, dtype)
        bl.gemm(P, Q, out, vec)
        np.testing.assert_allclose(out, want, rtol=rtol, atol=rtol * np.abs(want).max())
    # rows that are not contiguous, and an empty product, stay with np.dot
    P = rng.standard_normal((40, 12)).astype(dtype)
    Q = rng.standard_normal((6, 5)).astype(dtype)
    out = np.empty((40, 5), dtype)
    with warnings.catch_warnings():  # numba's note that np.dot is slower on strided arrays
        warnings.simplefilter("ignore", NumbaPerformanceWarning)
        bl.gemm(P[:, ::2], Q, out, vec)
    np.testing.assert_allclose(out, P[:, ::2] @ Q, rtol=rtol, atol=rtol * 10)
    out = np.full((3, 4), np.nan, dtype)
    bl.gemm(np.empty((3, 0), dtype), np.empty((0, 4), dtype), out, vec)
    np.testing.assert_array_equal(out, 0.0)


_CACHED_MKL = r"""
import json, sys
import numpy as np
from deqbench import _blas
from deqbench._kernels import blocks as bl

lib = _blas.mkl_gemm()
vec = bl.default_tune()
vec[bl.TUNE_GEMM] = bl.GEMM_CBLAS
vec[bl.TUNE_DGEMM], vec[bl.TUNE_SGEMM] = lib["dgemm"], lib["sgemm"]
rng = np.random.default_rng(0)
P, Q = rng.standard_normal((3000, 24)), rng.standard_normal((24, 24))
out = np.empty((3000, 24))
bl.gemm_rows(P, Q, out, vec)
hits = sum(bl.gemm_rows.stats.cache_hits.values())
print(json.dumps({"address": int(lib["dgemm"]), "hits": hits,
                  "error": float(np.abs(out - P @ Q).max())}))
"""


def test_mkl_gemm_keeps_the_kernel_cache_valid(tmp_path):
    """The gemm's address is a run-time value: a second process (another
    address) loads the compiled kernel from the on-disk cache and gets the
    right product."""
    _mkl()
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", _CACHED_MKL], env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert runs[0]["hits"] == 0 and runs[1]["hits"] > 0
    assert all(run["error"] < 1e-12 for run in runs)


# --- the peers harness: the machine's best gemm as the efficiency reference ---------


def _peers():
    """The peers harness, wherever this checkout keeps it."""
    import importlib

    for root in ("tools.peers", "benchmarks.peers"):
        try:
            return (importlib.import_module(f"{root}.harness"),
                    importlib.import_module(f"{root}.report"),
                    importlib.import_module(f"{root}.summary"))
        except ModuleNotFoundError:
            continue
    pytest.skip("no peers harness in this checkout")


def _row(peer, t, gflops, w="W1", m=256):
    return dict(workload=w, m=m, n=8192, d=m, peer=peer, median_s=t, gflops=gflops, note="",
                speedup=1.0 / t, fp_evals="", adj_evals="")


def test_peers_take_the_faster_matmul_as_reference(tmp_path):
    harness, report, summary = _peers()
    rows = [_row("deqbench", 1.0, 95.0), _row("numpy matmul", 0.02, 80.0),
            _row("torch matmul", 0.015, 100.0), _row("numpy loop", 2.0, 40.0)]
    best = harness.best_matmul(rows)
    assert len(best) == 1 and best[0]["peer"] == "best matmul"
    assert best[0]["note"] == "torch matmul" and best[0]["gflops"] == 100.0
    assert harness.best_matmul([_row("numpy matmul", 0.02, 80.0)])[0]["note"] == "numpy matmul"
    assert harness.best_matmul([_row("deqbench", 1.0, 95.0)]) == []
    target = next(t for t in report.targets(rows + best, [], None, None) if "matmul" in t[0])
    assert target[0] == "W1 m=256: >= 90% of the best matmul GFLOP/s"
    assert target[1] == "met"  # 95% of torch's 100 (and 119% of numpy's 80)
    assert "torch matmul (95%)" in target[2] and "numpy matmul 80.0 (119%)" in target[2]
    rows[0]["gflops"] = 85.0  # 106% of numpy's matmul, 85% of the best
    target = next(t for t in report.targets(rows + best, [], None, None) if "matmul" in t[0])
    assert target[1] == "missed"
    head = "workload,m,peer,median_s,gflops\n"
    (tmp_path / "m16-256").mkdir()
    (tmp_path / "m16-256" / "peers.csv").write_text(
        head + "W1,256,deqbench,1.0,85\nW1,256,numpy loop,2.0,40\nW1,256,numpy matmul,0.02,80\n"
        "W1,256,torch matmul,0.015,100\nW1,256,best matmul,0.015,100\n")
    line = next(ln for ln in summary.table(tmp_path).splitlines() if ln.startswith("| W1 | 256"))
    assert "85.0 / 100.0 (85%)" in line
    Z, M = np.ones((4, 2)), np.ones((2, 2))
    timed = harness.torch_matmul(Z, M)
    try:
        import torch  # noqa: F401
    except ImportError:
        assert timed == {}
    else:
        assert set(timed) == {"torch matmul"} and float(timed["torch matmul"]().sum()) == 16.0
