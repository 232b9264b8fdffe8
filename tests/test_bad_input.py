"""The eighteen defects of the bad-input audit (issue 31), one test each (D1-D18):
no silent wrong answer, no hang, no raw traceback. The property test over the
whole public API is tests/test_properties.py."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import deqbench as db
from deqbench import theory

ROOT = Path(__file__).resolve().parents[1]


def _setup():
    X, Y, _ = db.data.linear_teacher(64, 4, 3, seed=0)
    A, B = db.data.init_params(4, 3, scale_A=0.5, scale_B=1, seed=1)
    return X, Y, A, B


def _child(code: str, timeout: float = 300, memory_gb: float = 4.0):
    """Run ``code`` in a fresh interpreter under a memory cap and a time limit (a defect
    that hangs or eats memory fails the test instead of the test run)."""
    head = textwrap.dedent(f"""
        import resource, warnings
        lim = int({memory_gb} * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        warnings.simplefilter("ignore")
        import numpy as np
        import deqbench as db
        X, Y, _ = db.data.linear_teacher(64, 4, 3, seed=0)
        A, B = db.data.init_params(4, 3, scale_A=0.5, scale_B=1, seed=1)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        return subprocess.run([sys.executable, "-c", head + textwrap.dedent(code)], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: no answer within {timeout} s")


# --- hang and crash ---------------------------------------------------------------------


def test_d1_flow_with_unreachable_tolerances_ends_with_a_status():
    # the first step size was NaN and the compiled loop never exited (nor heard Ctrl-C)
    r = _child("""
        r = db.flow("linear", X, Y, A, B, t_end=1, rtol=1e-200, atol=1e-200)
        print(r.status, r.n_steps, r.t)
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    status, n_steps, t = r.stdout.split()
    assert status == "step_too_small" and int(n_steps) == 0 and float(t) == 0.0


# --- silent wrong answers ---------------------------------------------------------------


def test_d13_flow_step_floor_is_relative_to_t_not_t_end():
    X, Y, A, B = _setup()
    near = db.flow("linear", X, Y, A, B, t_end=1e11, stop_loss=0.2)
    for t_end in (1e12, 1e200):
        far = db.flow("linear", X, Y, A, B, t_end=t_end, stop_loss=0.2)
        assert far.status == "converged" and far.n_steps > 0
        assert far.t == pytest.approx(near.t, rel=1e-6)


def test_d2_memmap_truncated_under_a_reader_is_an_error_not_sigbus(tmp_path):
    # read_teacher's memmaps, truncated before or while a chunked call reads them
    r = _child(f"""
        from deqbench import _source
        root = db.data.write_teacher({str(tmp_path)!r}, "linear", 20000, 4, 3, seed=0)
        Xm, Ym, _, _ = db.data.read_teacher(root)
        src = _source.open_source("X", Xm)  # opened (validated) whole, then cut short
        os_truncate = __import__("os").truncate
        os_truncate(root / "X.npy", 200_000)
        try:
            src.read(15000, 17000)
        except OSError as exc:
            print("read:", exc)
        try:
            db.loss_and_grad("linear", Xm, Ym, A, B, chunk=2000)
        except ValueError as exc:
            print("call:", exc)
    """)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    read, call = r.stdout.splitlines()
    assert read.startswith("read:") and "short read" in read
    assert call.startswith("call: X:") and "X.npy" in call and "truncated" in call


def test_d5_teacher_files_that_disagree_are_detected(tmp_path, monkeypatch):
    a = db.data.write_teacher(tmp_path / "a", "linear", 300, 4, 3, seed=0)
    b = db.data.write_teacher(tmp_path / "b", "linear", 300, 4, 3, seed=1)
    (a / "X.npy").write_bytes((b / "X.npy").read_bytes())  # X of another seed
    with pytest.raises(ValueError, match=r"X\.npy.*checksum"):
        db.data.read_teacher(a)
    # an overwrite interrupted while it writes the data leaves the old teacher whole;
    # interrupted while it renames the files into place, a directory with no
    # teacher.json (never the old teacher.json beside new data)
    c = db.data.write_teacher(tmp_path / "c", "linear", 300, 4, 3, seed=0)
    want = np.array(db.data.read_teacher(c)[0])
    real_replace = os.replace

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    def killed_second(src, dst):
        if Path(dst).name == "Y.npy":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(np, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        db.data.write_teacher(c, "linear", 300, 4, 3, seed=1, overwrite=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(db.data.read_teacher(c)[0], want)
    monkeypatch.setattr(os, "replace", killed_second)
    with pytest.raises(KeyboardInterrupt):
        db.data.write_teacher(c, "linear", 300, 4, 3, seed=1, overwrite=True)
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="teacher.json"):
        db.data.read_teacher(c)
    assert not [p for p in c.iterdir() if p.name.startswith(".")]  # no temporary left


def test_d12_bad_teacher_directories_and_builder_arguments(tmp_path):
    root = db.data.write_teacher(tmp_path / "t", "linear", 300, 4, 3, seed=0)
    meta = root / "teacher.json"
    good = meta.read_text()
    meta.write_text(good[:-20])
    with pytest.raises(ValueError, match="teacher.json.*not valid JSON"):
        db.data.read_teacher(root)
    meta.write_text("[1, 2]")
    with pytest.raises(ValueError, match="teacher.json.*JSON object"):
        db.data.read_teacher(root)
    meta.write_text(good)
    with open(root / "X.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ValueError, match=r"X\.npy.*truncated"):
        db.data.read_teacher(root)
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        db.data.linear_teacher(10, 2, 2, seed=-1)
    with pytest.raises(TypeError, match="seed must be"):
        db.data.init_params(2, 2, scale_A=0.5, scale_B=1.0, seed=1.5)
    with pytest.raises(TypeError, match="leaky_relu slope must be a real number, got '0.5'"):
        db.Activation("leaky_relu", "0.5")


def _picard_count(lam: float, tol: float) -> int:
    """Iterations of ``z <- lam z + 1`` from 0 to ``|F(z) - z| <= tol |F(z)|`` (reference)."""
    z, k = 0.0, 0
    while True:
        f = lam * z + 1.0
        if abs(f - z) <= tol * abs(f):
            return k
        z, k = f, k + 1


def test_d15_predicted_fp_iters_near_rate_one():
    # tol >= gap: the old leading-order formula said 1 iteration
    for lam, tol in ((0.9999, 1e-3), (0.99999, 1e-4), (0.999, 1e-3), (0.99, 1e-10)):
        assert theory.predicted_fp_iters(lam, tol) == _picard_count(lam, tol)
        r = db.fixed_point(np.ones((1, 1)), np.array([[lam]]), np.ones((1, 1)), tol=tol,
                           max_iter=10**6)
        assert abs(r.n_iter - theory.predicted_fp_iters(lam, tol)) <= 1
    # the slowest mode at distance gap from 1: about 1/tol iterations as gap -> 0
    for rate, gap in ((1 - 1e-16, None), (0.5, 1e-300)):
        k = theory.predicted_fp_iters(rate, 1e-10, gap=gap)
        assert k == pytest.approx(1e10, rel=1e-3)


def test_d11_theory_bad_arguments_name_the_argument():
    X, Y, A, B = _setup()
    with pytest.raises(ValueError, match="A: I - A is singular"):
        theory.smoothness("linear", X, Y, np.eye(3), B)
    with pytest.raises(ValueError, match=r"Y must have shape \(64"):
        theory.least_squares(X, Y[:10])
    with pytest.raises(ValueError, match="steps must be strictly increasing"):
        theory.empirical_factor([4.0, 2.0, 1.0, 0.5], 0.0, steps=[1, 1, 1, 1])
    with pytest.raises(TypeError, match="predicted must be a real number, got None"):
        theory.rate_check([4.0, 2.0, 1.0, 0.5], 0.0, None)
    with pytest.raises(ValueError, match="y must have the shape of x"):
        theory.loglog_fit([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(TypeError, match="dtype must be a real floating"):
        db.tol_floor(np.int64)


def _linear_fixed_point(X, A, B):
    """NumPy reference: ``Z = X B^T (I - A^T)^{-1}`` by a dense solve."""
    return np.linalg.solve(np.eye(A.shape[0]) - A, B @ X.T).T


def test_d3_underflow_is_a_status_not_a_converged_zero():
    X, Y, A, B = _setup()
    for method in ("picard", "anderson"):
        for scale in (1e-160, 1e-170, 1e-300):
            with pytest.warns(db.ConvergenceWarning, match="underflow"):
                r = db.fixed_point(X * scale, A, B, method=method)
            assert r.status == "underflow" and not r.converged, (method, scale)
    with pytest.warns(db.ConvergenceWarning, match="underflow"):
        g = db.implicit_grad(X, A, B, _linear_fixed_point(X, A, B), np.full((64, 3), 1e-170))
    assert g.status == "underflow" and not g.converged
    # exactly zero data: zero is the exact fixed point
    r = db.fixed_point(np.zeros_like(X), A, B)
    assert r.converged and r.status == "converged" and not r.z.any()
    # float32: the squared norms are taken in float64, so float32's whole range is resolved
    X32, A32, B32 = (a.astype(np.float32) for a in (X, A, B))
    want = _linear_fixed_point(X, A, B)
    for scale in (1e-20, 1e-22, 1e-30):
        for method in ("picard", "anderson"):
            r = db.fixed_point(X32 * np.float32(scale), A32, B32, method=method)
            assert r.converged, (method, scale)
            err = np.linalg.norm(r.z / np.float32(scale) - want) / np.linalg.norm(want)
            assert err < 1e-4, (method, scale, err)


def test_overflowing_input_term_is_diverged_not_a_saturated_answer():
    # found by the property test: X B^T beyond float32 came out of the gemm as -inf
    # (true value +4.4e38), and relu(-inf) = 0 made z = 0 look converged; relu(NaN) was 0
    X = np.array([[1.2573022e29, -1.3210486e29]], dtype=np.float32)
    B = np.array([[-1.594602e10, 2.6173253e9], [-2.7457267e9, -5.9069937e9]], np.float32)
    A = np.zeros((2, 2), np.float32)
    for act in ("relu", "tanh", "identity"):
        with pytest.warns(db.ConvergenceWarning, match="overflows float32"):
            r = db.fixed_point(X, A, B, activation=act)
        assert r.status == "diverged" and not r.converged
    with pytest.warns(db.ConvergenceWarning):
        t = db.train("nonlinear", X, np.zeros((1, 2), np.float32), A, B, lr=0.1, steps=2,
                     activation="relu")
    assert t.status == "diverged"
    assert np.isnan(db.get_activation("relu")(np.array([np.nan])))[0]


def test_d4_sufficient_stats_takes_a_bool_or_auto_only():
    X, Y, A, B = _setup()
    for bad in (1, 1.0, np.float64(1.0), None):
        with pytest.raises(TypeError, match="sufficient_stats must be"):
            db.train("linear", X, Y, A, B, lr=0.1, steps=2, grad_solver="jfb",
                     sufficient_stats=bad)
        with pytest.raises(TypeError, match="sufficient_stats must be"):
            db.train("nonlinear", X, Y, A, B, lr=0.1, steps=2, activation="tanh",
                     sufficient_stats=bad)
    with pytest.raises(ValueError, match="sufficient_stats=True needs"):
        db.train("linear", X, Y, A, B, lr=0.1, steps=2, grad_solver="jfb",
                 sufficient_stats=np.True_)
    with pytest.raises(TypeError, match="sufficient_stats must be"):
        db.flow("linear", X, Y, A, B, t_end=1.0, sufficient_stats=0)
    with pytest.raises(TypeError, match="warm_start must be"):
        db.train("linear", X, Y, A, B, lr=0.1, steps=2, warm_start=1)
    r = db.train("linear", X, Y, A, B, lr=0.1, steps=2, sufficient_stats=np.False_)
    assert not r.sufficient_stats


def test_d9_integer_options_have_a_bound_checked_before_allocation():
    X, Y, A, B = _setup()
    train = dict(lr=0.1, steps=2)
    cases = [
        (lambda: db.fixed_point(X, A, B, max_iter=10**12), "max_iter must be <= 10000000"),
        (lambda: db.fixed_point(X, A, B, method="anderson", anderson_history=10**6),
         "anderson_history must be <= 256"),
        (lambda: db.implicit_grad(X, A, B, X[:, :3], X[:, :3], method="neumann",
                                  neumann_terms=10**12), "neumann_terms must be <= 10000000"),
        (lambda: db.loss_and_grad("linear", X, Y, A, B, max_iter=2**63), "max_iter must be <="),
        (lambda: db.train("linear", X, Y, A, B, lr=0.1, steps=2**63), "steps must be <= 2**53"),
        (lambda: db.train("linear", X, Y, A, B, record_every=2**63, **train),
         "record_every must be <= 2**53"),
        (lambda: db.train("linear", X, Y, A, B, spectral_every=2**63, **train),
         "spectral_every must be <= 2**53"),
        (lambda: db.flow("linear", X, Y, A, B, t_end=1.0, max_steps=2**63),
         "max_steps must be <= 2**53"),
        (lambda: db.fixed_point(X, A, B, chunk=2**63), "chunk must be <= n = 64"),
    ]
    parse_grid, run_sweep, _ = _sweep_api()
    cases.append((lambda: run_sweep(parse_grid(SWEEP_GRID), "unused", workers=10**6),
                  "workers must be <= 1024"))
    for call, message in cases:
        with pytest.raises(ValueError, match=message.replace("*", r"\*")):
            call()


def test_d14_tol_must_be_below_one():
    X, Y, A, B = _setup()
    for tol in (1.0, 10.0, 1e300):
        with pytest.raises(ValueError, match=r"tol must be in \(0, 1\)"):
            db.fixed_point(X, A, B, tol=tol)
        with pytest.raises(ValueError, match=r"tol must be in \(0, 1\)"):
            db.loss_and_grad("linear", X, Y, A, B, tol=tol)
        with pytest.raises(ValueError, match=r"tol must be in \(0, 1\)"):
            db.train("linear", X, Y, A, B, lr=0.1, steps=1, tol=tol)


# --- lost or mixed data (sweeps) --------------------------------------------------------

SWEEP_GRID = """
[sweep]
run = "sweep_helpers:draw"
seed = 3
replicates = 2
[grid]
a = [0, 1, 2]
fail = [false, true]
"""


def _sweep_api():
    sys.path.insert(0, str(ROOT / "tests")) if str(ROOT / "tests") not in sys.path else None
    from deqbench.sweep import parse_grid, run_sweep, sweep_status

    return parse_grid, run_sweep, sweep_status


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_d6_truncated_parquet_tables_are_detected_and_their_runs_done_again(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    parse_grid, run_sweep, sweep_status = _sweep_api()
    g = parse_grid(SWEEP_GRID)
    out = tmp_path / "s"
    run_sweep(g, out, executor="serial", progress=False)
    want = pq.read_table(out / "histories.parquet").drop_columns(["_seq"]).to_pylist()
    assert len(want) == 6 * 3  # the 6 ok runs, 3 steps each

    _truncate(out / "histories.parquet")  # every history lost: their runs are not done
    st = sweep_status(out)
    assert (st["done"], st["remaining"]) == (6, 6) and st["damaged"] == 6
    res = run_sweep(g, out, executor="serial", progress=False)
    assert (res.skipped, res.ok, res.damaged) == (6, 6, 1)
    assert pq.read_table(out / "histories.parquet").drop_columns(["_seq"]).to_pylist() == want
    assert (out / "histories.parquet.damaged").exists()  # kept aside, not deleted

    _truncate(out / "runs.parquet")  # every record lost: no raw ArrowInvalid
    st = sweep_status(out)
    assert st["done"] == 0 and st["damaged"] >= 1
    res = run_sweep(g, out, executor="serial", progress=False)
    assert (res.skipped, res.ok, res.failed) == (0, 6, 6)
    assert len(pq.read_table(out / "runs.parquet")) == 12
    assert pq.read_table(out / "histories.parquet").drop_columns(["_seq"]).to_pylist() == want


def test_d17_status_counts_what_a_resume_would_find(tmp_path, capsys):
    parse_grid, run_sweep, sweep_status = _sweep_api()
    from deqbench.cli import main
    from deqbench.sweep import execute

    g = parse_grid(SWEEP_GRID)
    # an uncompacted Parquet sweep (one part per run, as a killed one leaves it) whose
    # history part of a finished run is gone: that run is not done
    pytest.importorskip("pyarrow")
    from deqbench.sweep.parquet import ParquetStore

    out = tmp_path / "parquet"
    with ParquetStore(out) as store:
        store.write_meta({"name": g.name, "runs": len(g), "grid_hash": g.hash,
                          "format": "parquet"})
        for spec in g.specs:
            store.write(execute(spec))
            store.flush()
    next((out / "parts").glob("hist-*.parquet")).unlink()
    st = sweep_status(out)
    assert (st["done"], st["remaining"], st["damaged"]) == (11, 1, 1)
    res = run_sweep(g, out, executor="serial", progress=False)
    assert (res.skipped, res.ok + res.failed) == (11, 1)
    # the CSV store: a record whose history file is gone
    out = tmp_path / "csv"
    run_sweep(g, out, executor="serial", progress=False, format="csv")
    next((out / "histories").glob("*.csv")).unlink()
    st = sweep_status(out)
    assert (st["done"], st["remaining"], st["damaged"]) == (11, 1, 1)
    res = run_sweep(g, out, executor="serial", progress=False)
    assert (res.skipped, res.ok + res.failed) == (11, 1)
    # a directory that is not a sweep: one line, not "sweep None, ? runs"
    (tmp_path / "plain").mkdir()
    capsys.readouterr()
    assert main(["sweep", "--status", str(tmp_path / "plain")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a sweep directory" in err[0]


def test_d18_unreadable_sweep_json_needs_force(tmp_path):
    parse_grid, run_sweep, _ = _sweep_api()
    from deqbench.sweep import SweepError

    out = tmp_path / "s"
    run_sweep(parse_grid(SWEEP_GRID), out, executor="serial", progress=False)
    meta = (out / "sweep.json").read_text()
    (out / "sweep.json").write_text(meta[: len(meta) // 2])
    other = parse_grid(SWEEP_GRID.replace("a = [0, 1, 2]", "a = [7]"))
    with pytest.raises(SweepError, match="sweep.json.*unreadable.*--force"):
        run_sweep(other, out, executor="serial", progress=False)
    assert (out / "sweep.json").read_text() == meta[: len(meta) // 2]  # left as it was
    res = run_sweep(other, out, executor="serial", progress=False, force=True)
    assert res.ok + res.failed == 4  # a = 7, fail or not, two replicates


# --- raw tracebacks or unclear errors (the command line) --------------------------------


def _cli(*args, cwd=None):
    """``deqbench ARGS`` in a subprocess: (exit status, stderr lines)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    r = subprocess.run([sys.executable, "-m", "deqbench.cli", *map(str, args)], env=env,
                       capture_output=True, text=True, timeout=300, cwd=cwd)
    return r.returncode, r.stderr.strip().splitlines()


def _one_line_error(rc, err, *words):
    assert rc == 2 and len(err) == 1, (rc, err)
    assert "Traceback" not in err[0] and all(w in err[0] for w in words), err


def test_d7_unknown_experiment_is_one_line(tmp_path):
    rc, err = _cli("reproduce", "--only", "E99", "--out", tmp_path / "r")
    _one_line_error(rc, err, "E99", "only")
    # commas separate names too: the unknown one is named alone
    rc, err = _cli("reproduce", "--only", "E1,E99", "--out", tmp_path / "r")
    _one_line_error(rc, err, "'E99'", "only")
    assert "E1,E99" not in err[0]


def test_d8_plot_of_other_tables_is_one_line_or_plots_what_exists(tmp_path):
    # what reproduce --only E5 writes (its summary says to re-plot with deqbench plot)
    e5 = tmp_path / "e5"
    e5.mkdir()
    (e5 / "runs.csv").write_text("run_id,experiment,label,status,rho,tol,n_iter\n"
                                 "r1,E5,picard,converged,0.5,1e-10,33\n")
    (e5 / "histories.csv").write_text("run_id,step,residual\nr1,0,1.0\nr1,1,0.5\n")
    rc, err = _cli("plot", e5)
    assert rc == 0 and not any("Traceback" in line for line in err), err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "runs.parquet").write_bytes(b"PAR1 not really")
    rc, err = _cli("plot", bad)
    _one_line_error(rc, err, "runs.parquet")
    (bad / "runs.parquet").unlink()
    (bad / "runs.csv").write_text("run_id,status\nr1,ok\n")
    (bad / "histories.csv").write_text("step,loss\n0,1.0\n")
    rc, err = _cli("plot", bad)
    _one_line_error(rc, err, "histories.csv", "run_id")


def test_d16_bad_connect_timeout_is_one_line(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(SWEEP_GRID)
    for value in ("-1", "nan", "inf", "abc"):
        rc, err = _cli("sweep", grid, "--out", tmp_path / "o", "--connect-timeout", value)
        _one_line_error(rc, err, "--connect-timeout", value)
    assert not (tmp_path / "o").exists()


def test_d10_train_on_files_beyond_float64_range_is_a_status_like_in_memory(tmp_path, capfd):
    X, Y, A, B = _setup()
    np.save(tmp_path / "X.npy", X * 1e300)
    np.save(tmp_path / "Y.npy", Y)
    kw = dict(lr=0.1, steps=5)
    with pytest.warns(db.ConvergenceWarning):
        mem = db.train("linear", X * 1e300, Y, A, B, **kw)
    with pytest.warns(db.ConvergenceWarning):
        disk = db.train("linear", tmp_path / "X.npy", tmp_path / "Y.npy", A, B, **kw)
    assert disk.status == mem.status == "diverged"
    assert np.isfinite(disk.A).all() and np.isfinite(disk.B).all()
    out, err = capfd.readouterr()
    assert "DLASCL" not in out + err and "illegal value" not in out + err
