"""The asv suite cannot rot unnoticed: import every benchmark module and run
each benchmark's setup and body once.

Numeric parameters take their first value (the suite lists the smallest first);
categorical ones (methods, models, flags) run every value, since each selects
different code. Classes with a ``setup_cache`` run their first combination only
(their cache is expensive by design: compile probes, training runs). A setup
that raises ``NotImplementedError`` is asv's "skip" (an optional API or peer
library missing) and is reported as a pytest skip, never a pass.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import numbers
import sys
from pathlib import Path

import numba
import pytest
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PREFIXES = ("time_", "timeraw_", "track_", "mem_", "peakmem_")
MODULES = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))


def _attr(name, *sources, default=None):
    for src in sources:
        if src is not None and hasattr(src, name):
            return getattr(src, name)
    return default


def _param_lists(params) -> list[list]:
    if not params:
        return []
    params = list(params)
    if not isinstance(params[0], (list, tuple)):  # asv: a single parameter
        params = [params]
    return [list(p) for p in params]


def _is_numeric(values) -> bool:
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)


def combinations(params, *, first_only: bool) -> list[tuple]:
    lists = _param_lists(params)
    if first_only:
        return [tuple(v[0] for v in lists)]
    chosen = [v if not _is_numeric(v) else [v[0]] for v in lists]
    return list(itertools.product(*chosen))


def collect():
    """``(module, owner, methods)`` for every benchmark class and function."""
    cases = []
    for name in MODULES:
        mod = importlib.import_module(f"benchmarks.{name}")
        for attr, obj in sorted(vars(mod).items()):
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isclass(obj):
                methods = sorted(m for m in dir(obj) if m.startswith(PREFIXES))
                if methods:
                    cases.append(pytest.param(name, attr, methods, id=f"{name}.{attr}"))
            elif inspect.isfunction(obj) and attr.startswith(PREFIXES):
                cases.append(pytest.param(name, attr, None, id=f"{name}.{attr}"))
    return cases


@pytest.fixture(autouse=True)
def _one_thread():
    """Run single-threaded, as asv.conf.json pins it (thread pools on a busy
    2-core machine make these kernels 10-100x slower)."""
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        numba.set_num_threads(previous)


def _call(fn, args):
    out = fn(*args)
    if isinstance(out, str) and fn.__name__.startswith("timeraw_"):
        exec(compile(out, fn.__name__, "exec"), {})  # noqa: S102
    return out


def _check_track(name, value):
    if name.split(".")[-1].startswith("track_"):
        assert isinstance(value, numbers.Real) and not isinstance(value, bool), (name, value)


def _run_function(mod, fn):
    params = _attr("params", fn, default=[])
    ran, skipped = 0, []
    setup = _attr("setup", fn, mod)
    teardown = _attr("teardown", fn, mod)
    for combo in combinations(params, first_only=False):
        try:
            if setup is not None:
                setup(*combo)
        except NotImplementedError as exc:
            skipped.append(f"{combo}: {exc}")
            continue
        try:
            _check_track(fn.__name__, _call(fn, combo))
            ran += 1
        finally:
            if teardown is not None:
                teardown(*combo)
    return ran, skipped


def _run_class(cls, methods):
    cache_fn = getattr(cls, "setup_cache", None)
    combos = combinations(getattr(cls, "params", []), first_only=cache_fn is not None)
    lead = ()
    if cache_fn is not None:
        # setup_cache sees the class's params: restrict them to the combination run here
        holder = cls()
        lists = _param_lists(cls.params)
        if lists:
            holder.params = [[v] for v in combos[0]]
        lead = (cache_fn.__get__(holder)(),)
    ran, skipped = 0, []
    for combo in combos:
        obj = cls()
        args = lead + combo
        try:
            if hasattr(obj, "setup"):
                obj.setup(*args)
        except NotImplementedError as exc:
            skipped.append(f"{combo}: {exc}")
            continue
        try:
            for name in methods:
                _check_track(f"{cls.__name__}.{name}", _call(getattr(obj, name), args))
            ran += 1
        finally:
            if hasattr(obj, "teardown"):
                obj.teardown(*args)
    return ran, skipped


def test_suite_found():
    names = set(MODULES)
    for expected in (
        "bench_fixed_point",
        "bench_gradients",
        "bench_training",
        "bench_scaling",
        "bench_memory",
        "bench_theory",
        "bench_compile",
    ):
        assert expected in names


@pytest.mark.parametrize(("module", "owner", "methods"), collect())
def test_benchmark_runs(module, owner, methods):
    mod = importlib.import_module(f"benchmarks.{module}")
    obj = getattr(mod, owner)
    if methods is None:
        ran, skipped = _run_function(mod, obj)
    else:
        ran, skipped = _run_class(obj, methods)
    if ran == 0:
        pytest.skip("; ".join(skipped) or "no parameter combination")


# --------------------------------------------------------------------------
# the regression gate's pieces (benchmarks/common.Tracked, gate.sh, inject.py,
# gate_counts.py); none of them times anything
# --------------------------------------------------------------------------


def test_tracked_generates_tracks_and_needs_its_own_setup_cache():
    from benchmarks.common import COUNT_UNITS, Tracked

    class Counts(Tracked):
        params = [[1, 2]]
        param_names = ["k"]
        tracks = {"evals": "evaluations", "ratio": "ratio"}

        def setup_cache(self):
            return self.sweep()

        def measure(self, k):
            if k == 2:
                raise NotImplementedError
            return {"evals": 10 * k, "ratio": 0.5}

    bench = Counts()
    cache = bench.setup_cache()
    assert cache == {(1,): {"evals": 10, "ratio": 0.5}, (2,): None}
    bench.setup(cache, 1)
    assert bench.track_evals(cache, 1) == 10
    assert Counts.track_evals.unit == "evaluations" and Counts.track_evals.unit in COUNT_UNITS
    assert Counts.track_ratio.unit == "ratio"
    with pytest.raises(NotImplementedError):
        bench.setup(cache, 2)
    with pytest.raises(TypeError, match="setup_cache"):

        class Inherited(Tracked):  # would share the first subclass's asv cache
            tracks = {"x": "ratio"}


def test_gate_counts_flags_any_rise():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gate_counts
    finally:
        sys.path.remove(str(ROOT / "tools"))
    from benchmarks.common import COUNT_UNITS

    assert gate_counts.COUNT_UNITS == COUNT_UNITS
    base = {("a", (1,)): 19, ("a", (2,)): 5, ("b", ()): 3, ("c", ()): 7}
    assert gate_counts.compare(base, dict(base)) == ([], False)
    rows, rose = gate_counts.compare(base, {**base, ("a", (2,)): 4})
    assert rows == [("a", (2,), 5, 4)] and not rose  # fewer evaluations: an improvement
    rows, rose = gate_counts.compare(base, {**base, ("a", (1,)): 20})
    assert rows == [("a", (1,), 19, 20)] and rose  # 5%: under any time factor, still a rise
    rows, rose = gate_counts.compare(base, {**base, ("c", ()): None})
    assert rose  # a count that failed or vanished


def _gate(*args):
    import os
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("tools/gate.sh needs a git checkout")
    if "--dry-run" in args:
        pytest.importorskip("asv", reason="tools/gate.sh needs asv (the test extra installs it)")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env["PYTHON"] = sys.executable
    return subprocess.run(
        ["bash", str(ROOT / "tools" / "gate.sh"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_gate_script_arguments():
    import subprocess

    assert subprocess.run(["bash", "-n", str(ROOT / "tools" / "gate.sh")]).returncode == 0
    assert "BASE HEAD" in _gate("--help").stdout
    for args, message in (
        ((), "give BASE and HEAD"),
        (("HEAD",), "give BASE and HEAD"),
        (("--bogus", "HEAD", "HEAD"), "unknown option"),
        (("--bench",), "needs a REGEX"),
        (("--aa", "HEAD", "HEAD"), "at most one commit"),
        (("no-such-commit", "HEAD"), "not a commit"),
    ):
        res = _gate(*args)
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr)


def test_gate_dry_runs():
    res = _gate("--dry-run", "--bench", r"FixedPoint\.", "HEAD", "HEAD")
    assert res.returncode == 0, res.stderr
    assert "continuous --factor 1.10 --interleave-rounds" in res.stdout
    assert "gate_counts.py" in res.stdout
    res = _gate("--dry-run", "--inject")  # applies the injection in a temporary worktree
    assert res.returncode == 0, res.stderr
    assert "+25% of every gemm of the kernels" in res.stderr


ASV_TABLES = """\
| Change | Before [f971fdff] | After [8c342919] | Ratio | Benchmark (Parameter) |
|---|---|---|---|---|
| - | 4 | 3 | 0.75 | bench_fixed_point.FixedPointMetrics.track_efficiency('anderson', 'tanh', 32)|
| Change | Before [f971fdff] | After [8c342919] | Ratio | Benchmark (Parameter) |
|---|---|---|---|---|
| + | 12ms | 15ms | 1.2 | bench_fixed_point.FixedPoint.time_fixed_point('picard', 'identity', 32) |
| ! | 1.0±0ms | failed | n/a | bench_training.Train.time_train('linear', True) |
|  | 1.0±0ms | 1.0±0ms | 1.00 | bench_training.Train.time_train('nonlinear', True) |

SOME BENCHMARKS HAVE CHANGED SIGNIFICANTLY.
"""


def test_gate_confirm_reads_asv_tables(tmp_path):
    """The confirming step re-runs exactly the cases asv flagged, each alone."""
    import re

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gate_confirm
    finally:
        sys.path.pop(0)
    rows = gate_confirm.flagged(ASV_TABLES)
    assert [m for m, _ in rows] == ["-", "+", "!"]
    (tmp_path / "out.txt").write_text(ASV_TABLES)
    out = str(tmp_path / "out.txt")
    assert _main_output(gate_confirm.main, [out, "--confirmed-by", out]) == "1 1 1"
    # the confirming run flags the efficiency track the other way and not the Picard case:
    # noise, both; only the failure counts
    flipped = ASV_TABLES.replace("| - | 4 | 3 | 0.75 |", "| + | 3 | 4 | 1.33 |")
    (tmp_path / "second.txt").write_text(flipped.replace("| + | 12ms | 15ms", "|  | 12ms | 12ms"))
    second = str(tmp_path / "second.txt")
    assert _main_output(gate_confirm.main, [out, "--confirmed-by", second]) == "0 0 1"
    # an efficiency (one value per process, no samples) counts only beyond
    # EFFICIENCY_FACTOR in both runs: 0.89 twice is the spread of unchanged code
    small = ASV_TABLES.replace("| - | 4 | 3 | 0.75 |", "| - | 4.41 | 3.91 | 0.89 |")
    (tmp_path / "small.txt").write_text(small)
    small = str(tmp_path / "small.txt")
    assert _main_output(gate_confirm.main, [small, "--confirmed-by", small]) == "1 0 1"
    assert _main_output(gate_confirm.main, [small, "--confirmed-by", out]) == "1 0 1"
    assert len(_main_output(gate_confirm.main, [small]).splitlines()) == 2  # not re-run
    worse = ASV_TABLES.replace("| - | 4 | 3 | 0.75 |", "| + | 3 | 4 | 1.33 |")
    (tmp_path / "worse.txt").write_text(worse)
    worse = str(tmp_path / "worse.txt")
    assert _main_output(gate_confirm.main, [worse, "--confirmed-by", worse]) == "2 0 1"
    regexes = _main_output(gate_confirm.main, [out]).splitlines()
    assert len(regexes) == 3
    # asv matches --bench against "name(param, ...)" (asv.benchmarks.Benchmarks)
    picard = "bench_fixed_point.FixedPoint.time_fixed_point('picard', 'identity', 32)"
    others = [picard.replace("32", "320"), picard.replace("picard", "damped"),
              "bench_training.Train.time_train('nonlinear', True)"]
    assert [r for r in regexes if re.search(r, picard)] == [regexes[1]]
    assert not any(re.search(r, o) for r in regexes for o in others)
    assert gate_confirm.flagged("BENCHMARKS NOT SIGNIFICANTLY CHANGED.\n") == []


def _main_output(main, argv):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return buf.getvalue().strip()


def test_gate_dry_run_confirms_and_skips_peakmem():
    res = _gate("--dry-run", "HEAD", "HEAD")
    assert res.returncode == 0, res.stderr
    assert "-a rounds=8" in res.stdout
    import re

    bench = re.search(r"--bench '([^']+)'", res.stdout).group(1)
    assert re.search(bench, "bench_memory.TrainMemory.track_train_peak_increase(10)")
    assert not re.search(bench, "bench_memory.TrainMemory.peakmem_train(10)")


def test_full_grid_imports():
    """Under DEQBENCH_FULL=1 the full-only classes exist and the grids grow."""
    import os
    import subprocess

    script = (
        "import benchmarks.bench_scaling as s, benchmarks.bench_fixed_point as f\n"
        "assert s.ScalingM is not None and s.Exponents is not None\n"
        "assert 'damped' in f.FixedPoint.params[0] and len(f.FixedPoint.params[1]) == 7\n"
    )
    env = dict(os.environ, DEQBENCH_FULL="1", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    import benchmarks.bench_scaling as scaling
    from benchmarks.common import FULL

    assert FULL or scaling.ScalingM is None  # not in the default suite


def test_theory_tracks_hold_their_predictions():
    """Beyond their type: the theory tracks of the linear case meet the predictions they
    report against (docs/theory.md §3, §5, §7), so a broken formula shows here."""
    from benchmarks import bench_theory
    from deqbench import theory

    s = bench_theory.summarize("linear")
    lr = bench_theory.CASES["linear"][2]
    assert 0 < s["lr_beta"] <= 1
    assert 0 < s["rate_ratio"] <= 1
    lo, hi = theory.drift_gain_bounds(lr, s["lr_beta"] / lr)
    assert lo <= s["drift_over_lr_gain"] <= hi
    assert 0.8 <= s["fp_iters_over_predicted"] <= 1.2


def test_gate_confirm_pairs_the_rounds(tmp_path):
    """A confirmed time must move in (almost) every paired round: the A/A run of
    db7e3c4 moved Anderson's adjoint 1.13 overall with six of eight rounds up."""
    import json

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import gate_confirm
    finally:
        sys.path.pop(0)
    aa = [1.22, 1.24, 0.90, 1.04, 1.33, 0.88, 1.12, 1.13]
    base = [30.0] * 8
    assert not gate_confirm.paired("+", base, [30.0 * r for r in aa])
    assert gate_confirm.paired("+", base, [30.0 * 1.15] * 7 + [29.0])
    assert not gate_confirm.paired("+", base, [30.0 * 1.05] * 8)  # all up, not beyond 1.10
    assert not gate_confirm.paired("-", base, [30.0 * 1.15] * 8)  # the other side
    assert gate_confirm.paired("-", base, [30.0 / 1.2] * 8)
    # results as asv stores them: samples of all rounds, round after round
    name = "bench_x.C.time_x"
    samples = [[float(r)] * 5 for r in range(8)]
    row = {"result": [1.0, None], "params": [["'a'", "'b'"]],
           "samples": [sum(samples, []), None]}
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "abcdef12-env.json").write_text(json.dumps(
        {"result_columns": list(row), "results": {name: list(row.values())}}))
    out = gate_confirm.round_medians(str(tmp_path), "abcdef1234567")
    assert out == {f"{name}('a')": [float(r) for r in range(8)]}
    assert gate_confirm.round_medians(str(tmp_path), "abcdef1234567", rounds=3) == {}


def test_calibrate_runs_at_small_sizes(capsys):
    """``python -m tools.calibrate`` re-measures the kernels' thresholds; its
    tables call private kernels whose signatures change (``_residual_loss`` gained
    ``rows`` and the calibration crashed unnoticed)."""
    from tools import calibrate

    calibrate.blocks_table(64)
    calibrate.picard_table(512, widths=(16,), evaluations=3)
    calibrate.small_gemm_table(64, widths=(8, 128))
    calibrate.pass_table(max_log=14)
    calibrate.scaling(m=8, n=256)
    rows = calibrate.refresh_table(widths=(8,))
    out = capsys.readouterr().out
    assert out.count(" KiB\n") == len(calibrate.WIDTHS)
    # one Picard row per map, the block size in force marked
    assert len([ln for ln in out.splitlines() if ln.startswith("16    ")]) == 3
    assert "*" in out.split("block-resident picard")[1]
    assert out.count("ratio") == 2 and "on 1 thread" in out
    # the row-block gemm table: one line per width, the rows in force marked
    gemm_lines = [ln for ln in out.split("row-block gemm")[1].splitlines()[1:3]]
    assert [ln.split()[0] for ln in gemm_lines] == ["8", "128"]
    assert all("*" in ln for ln in gemm_lines)
    # the flop-model price is the one the budget was set from (m <= 256)
    assert rows[0][0] == 8 and rows[0][1] > 0.0
    from deqbench._kernels import model as _m  # noqa: PLC0415

    assert round(rows[0][2]) == _m.CERT_SQUARING_BUDGET


def test_calibrate_settle_table_runs(capsys, monkeypatch):
    """``calibrate --settle`` (the measurement behind ``SETTLE_S``) runs its
    pause sweep; sleeps shortened, sizes tiny."""
    from tools import calibrate

    monkeypatch.setattr(calibrate.time, "sleep", lambda s: None)
    calibrate.settle_table(64, m=4, calls=2, trials=1)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line[:4].replace(".", "").isdigit()]
    assert "alone:" in out and len(rows) == 7 and all("np.matmul" in r for r in rows)


def test_interleaved_settles_before_every_batch(monkeypatch):
    """Every timed batch (and every calibration call) of the peer harness
    starts after a pause, so a peer is never timed while the previous one's
    threads spin; the order rotates every round."""
    from tools.peers import timing

    log = []
    monkeypatch.setattr(timing, "settle", lambda seconds=timing.SETTLE_S: log.append("pause"))
    fns = {k: (lambda k=k: log.append(k)) for k in "abc"}
    out = timing.interleaved(fns, reps=3, known={"a": 1.0, "b": 1.0, "c": 1.0})
    assert {k: len(v) for k, v in out.items()} == {"a": 3, "b": 3, "c": 3}
    assert log == ["pause", "a", "pause", "b", "pause", "c",
                   "pause", "b", "pause", "c", "pause", "a",
                   "pause", "c", "pause", "a", "pause", "b"]
    log.clear()
    assert timing.calibrate(fns["a"], 10.0) >= 1 and log[0] == "pause"


def test_activation_cost_runs(capsys, monkeypatch):
    """``python -m tools.activation_cost`` times the solver's own
    evaluations; a signature change of ``evaluate`` must not break it unseen."""
    from tools import activation_cost

    monkeypatch.setattr(activation_cost, "settle", lambda seconds=0: None)
    assert activation_cost.main(["--n", "64", "--m", "4,8", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n| 4 |") == 1 and out.count("\n| 8 |") == 1


def test_picard_parts_times_picards_own_arithmetic(capsys, monkeypatch):
    """``python -m tools.picard_parts``: its "gemm + pass" loop does what
    ``picard`` does (same iterate after the same evaluations, ragged last block
    included), so its shares split picard's own time; the table runs."""
    import numpy as np

    from deqbench._kernels import fixed_point as fp
    from deqbench._kernels.activations import IDENTITY
    from tools import picard_parts

    rng = np.random.default_rng(3)
    n, m, rows, K = 50, 6, 16, 8
    A = rng.standard_normal((m, m)) * 0.2
    M, U = np.ascontiguousarray(A.T), rng.standard_normal((n, m))
    D = np.zeros((1, 1))
    Z1, T1 = np.full((n, m), 0.1), np.empty((n, m))
    picard_parts._blocks(Z1, M, U, D, T1, rows, K, True, True)
    Z2, T2 = np.full((n, m), 0.1), np.empty((n, m))
    fp.picard(Z2, M, U, IDENTITY, 0.0, D, T2, 0.0, K - 1, 1.0, np.empty(K + 2), 1, rows)
    ref = np.full((n, m), 0.1)
    for _ in range(K):
        ref = ref @ M + U
    np.testing.assert_allclose(Z1, ref, rtol=1e-12, atol=1e-12)
    # K evaluations each (picard reports iterate K - 1 in Z, its evaluation in T);
    # equal up to the compiler's contractions (fastmath)
    np.testing.assert_allclose(T2, Z1, rtol=1e-14, atol=1e-15)
    monkeypatch.setattr(picard_parts, "settle", lambda seconds=0: None)
    assert picard_parts.main(["--n", "64", "--m", "4,8", "--rounds", "1",
                              "--evaluations", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n| 4 |") == 1 and out.count("\n| 8 |") == 1


def test_anderson_domain_counts_converged_seeds():
    """tools.anderson_domain: a contraction-like small radius converges on
    every seed; at m = 16, rho = 31.6 (docs/theory.md §3's table) none does."""
    from tools import anderson_domain  # noqa: PLC0415

    assert anderson_domain.converged(3, 3.16, 2) == 2
    assert anderson_domain.converged(16, 31.6, 2) == 0


def test_peer_summary_table_from_results(tmp_path):
    """``python -m tools.peers.summary`` builds the README's table from the
    runs' ``peers.csv``: the fastest iterative peer named, the ratio to matmul,
    ``-`` where a run is missing."""
    from tools.peers import summary

    head = "workload,m,peer,median_s,gflops\n"
    (tmp_path / "m16-256").mkdir()
    (tmp_path / "m16-256" / "peers.csv").write_text(
        head + "W1,16,deqbench,1.0,60\nW1,16,numpy loop,2.5,24\nW1,16,jaxopt,2.0,30\n"
        "W1,16,numpy direct,0.1,1\nW1,16,numpy matmul,0.01,50\n")
    out = summary.table(tmp_path)
    rows = [line for line in out.splitlines() if line.startswith("| W")]
    assert len(rows) == len(summary.WORKLOADS) * len(summary.WIDTHS)
    assert rows[0] == "| W1 | 16 | 2.00x jaxopt | 60.0 / 50.0 (120%) | - | - |"
    assert rows[1] == "| W1 | 32 | - | - | - | - |"


def test_peer_summary_over_repeated_runs(tmp_path):
    """Repeated runs of one setting (``run*/`` folders, plus a ``peers.csv`` at
    the top) give the median speed-up, the fastest peer of the median run, the
    efficiency of the run of median efficiency, and both ranges."""
    from tools.peers import summary

    head = "workload,m,peer,median_s,gflops\n"
    runs = {  # deqbench time, numpy loop, jaxopt, deqbench and matmul GFLOP/s
        "run1": (1.0, 1.5, 1.2, 60, 50),   # 1.20x jaxopt, 120%
        "run2": (1.0, 1.4, 2.0, 90, 60),   # 1.40x numpy loop, 150%
        "run3": (1.0, 3.0, 2.5, 40, 50),   # 2.50x jaxopt, 80%
    }
    for name, (t, loop, jax, dq, mm) in runs.items():
        (tmp_path / "1thread" / name).mkdir(parents=True)
        (tmp_path / "1thread" / name / "peers.csv").write_text(
            head + f"W2,64,deqbench,{t},{dq}\nW2,64,numpy loop,{loop},1\n"
            f"W2,64,jaxopt,{jax},1\nW2,64,numpy matmul,0.01,{mm}\n")
    row = next(line for line in summary.table(tmp_path).splitlines()
               if line.startswith("| W2 | 64 |"))
    assert row == ("| W2 | 64 | - | - | 1.40x numpy loop (1.20-2.50x, 3 runs) "
                   "| 60.0 / 50.0 (120%; 80-150%) |")
    assert len(summary.run_files(tmp_path / "1thread")) == 3
    (tmp_path / "1thread" / "run4").mkdir()  # a run with deqbench alone adds no figure
    (tmp_path / "1thread" / "run4" / "peers.csv").write_text(head + "W2,64,deqbench,1.0,70\n")
    assert row in summary.table(tmp_path).splitlines()
    (tmp_path / "1thread" / "peers.csv").write_text(head)  # a top-level run counts too
    assert len(summary.run_files(tmp_path / "1thread")) == 5
