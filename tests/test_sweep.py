"""Sweep engine: grid validation, seeding, storage, resume, kill-and-resume, Dask."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deqbench import sweep
from deqbench.sweep import GridError, load_grid, parse_grid, read_csv, run_sweep

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run functions in tests/sweep_helpers.py (workers inherit it)
    sys.path.insert(0, str(HERE))
VOLATILE = {"time_s", "host", "pid", "finished_at"}

GD_GRID = """
[sweep]
run = "gd"
seed = 7
replicates = 2
[fixed]
model = "linear"
n = 32
d = 3
steps = 8
[grid]
m = [1, 2]
lr = [0.05, 50.0]
"""


def helper_grid(n_a: int, sleep: float = 0.0, failures: bool = False, replicates: int = 1) -> str:
    """``n_a`` values of ``a``; with ``failures`` each also once with ``fail = true``."""
    a = ", ".join(str(i) for i in range(n_a))
    fails = "false, true" if failures else "false"
    return f"""
[sweep]
run = "sweep_helpers:draw"
seed = 3
replicates = {replicates}
[fixed]
sleep = {sleep}
[grid]
a = [{a}]
fail = [{fails}]
"""


def stable(rows):
    return {r["run_id"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in rows}


# ---------------------------------------------------------------------------
# grids, seeds, run ids
# ---------------------------------------------------------------------------


def test_grid_product_and_replicates():
    g = parse_grid(GD_GRID)
    assert len(g) == 2 * 2 * 2
    assert len({s.run_id for s in g.specs}) == len(g)
    assert [s.index for s in g.specs] == list(range(len(g)))
    p = g.specs[0].params
    assert p["scale_A"] == 0.5 and p["solver"] == "picard"  # defaults filled in
    assert isinstance(p["lr"], float) and isinstance(p["m"], int)


def test_run_ids_do_not_depend_on_order_or_layout():
    a = parse_grid(GD_GRID)
    reordered = GD_GRID.replace("m = [1, 2]\nlr = [0.05, 50.0]", "lr = [50.0, 0.05]\nm = [2, 1]")
    b = parse_grid(reordered)
    assert {s.run_id for s in a.specs} == {s.run_id for s in b.specs}
    # a value moved from [grid] to [fixed] is the same run
    c = parse_grid(GD_GRID.replace("m = [1, 2]\n", "").replace("d = 3", "d = 3\nm = 1"))
    assert {s.run_id for s in c.specs} <= {s.run_id for s in a.specs}
    # the sweep seed is part of the identity
    d = parse_grid(GD_GRID.replace("seed = 7", "seed = 8"))
    assert not {s.run_id for s in d.specs} & {s.run_id for s in a.specs}


def test_seeds_are_spawned_from_the_sweep_seed():
    g = parse_grid(GD_GRID)
    children = np.random.SeedSequence(7).spawn(2)
    for s in g.specs:
        want = children[s.replicate].generate_state(4)
        np.testing.assert_array_equal(s.seed_sequence().generate_state(4), want)


BAD = [
    ("[sweep\nrun = 1", "invalid TOML"),
    ("[sweeep]\n[grid]\nlr=[1.0]", "sweeep"),
    ("[sweep]\nsed = 1\n[grid]\nlr=[1.0]", "sweep.sed"),
    ("[sweep]\nseed = -1\n[grid]\nlr=[1.0]", "sweep.seed"),
    ("[sweep]\nreplicates = 0\n[grid]\nlr=[1.0]", "sweep.replicates"),
    ("[sweep]\nrun = 'nosuch'\n[grid]\nlr=[1.0]", "sweep.run"),
    ("[fixed]\nmodel='linear'\n", "grid"),
    ("[fixed]\nmodel='linear'\n[grid]\n", "grid"),
    ("[fixed]\nmodel='linear'\nn=4\nd=2\nsteps=3\nlr=0.1\n[grid]\nm=[]", "grid.m"),
    ("[fixed]\nmodel='linear'\nn=4\nd=2\nsteps=3\nlr=0.1\n[grid]\nm=[2, -1]", "grid.m[1]"),
    ("[fixed]\nmodel='linear'\nn=4\nd=2\nsteps=3\nm=2\n[grid]\nlr=[0.1, 0.0]", "grid.lr[1]"),
    ("[fixed]\nmodel='linear'\nn=4\nd=2\nsteps=3\nm=2\n[grid]\nlr=[-0.1]", "grid.lr[0]"),
    ("[fixed]\nmodel='linear'\nn=0\nd=2\nsteps=3\nm=2\n[grid]\nlr=[0.1]", "fixed.n"),
    ("[fixed]\nmodel='linear'\nn=4\nd=2\nsteps=3\nm=2.5\n[grid]\nlr=[0.1]", "fixed.m"),
    ("[fixed]\nmodel='linear'\nn=4\nd=2\nsteps=3\nm=true\n[grid]\nlr=[0.1]", "fixed.m"),
    ("[fixed]\nmodel='linear'\nn=4\nd=2\nsteps=3\nlr=[0.1]\n[grid]\nm=[1]", "fixed.lr"),
    ("[fixed]\nmodel='linear'\nn=4\nd=2\nsteps=3\nm=2\n[grid]\nlr=[0.1]\nm=[1]", "grid.m"),
    ("[fixed]\nmodel='linear'\nn=4\nd=2\nsteps=3\nm=2\n[grid]\nlr=0.1", "grid.lr"),
    ("[fixed]\nmodel='linear'\nn=4\nd=2\nsteps=3\nm=2\nfoo=1\n[grid]\nlr=[0.1]", "fixed.foo"),
    ("[fixed]\nmodel='linear'\nn=4\nd=2\nsteps=3\nm=2\n[grid]\nlr=[0.1, 0.1]", "grid.lr[1]"),
    ("[fixed]\nmodel='lin'\nn=4\nd=2\nsteps=3\nm=2\n[grid]\nlr=[0.1]", "fixed.model"),
    ("[fixed]\nn=4\nd=2\nsteps=3\nm=2\n[grid]\nlr=[0.1]", "fixed.model"),
    ("[fixed]\nmodel='linear'\nn=4\nd=2\nsteps=3\nm=2\n[grid]\nlr=[0.1]\n"
     "activation=['tanh']", "grid.activation"),
    ("[fixed]\nmodel='readout'\nn=4\nd=2\nsteps=3\nm=2\n[grid]\nlr=[0.1]\n"
     "activation=['swish']", "grid.activation[0]"),
    ("[fixed]\nmodel='linear'\nn=4\nd=2\nsteps=3\nm=2\ntol=-1e-3\n[grid]\nlr=[0.1]", "fixed.tol"),
    ("[fixed]\nmodel='nonlinear'\nn=4\nd=2\nsteps=3\nm=2\nsufficient_stats=true\n[grid]\n"
     "lr=[0.1]", "fixed.sufficient_stats"),
    ("[fixed]\nmodel='nonlinear'\nn=4\nd=2\nsteps=3\nm=2\n[grid]\nlr=[0.1]\n"
     "solver=['picard', 'direct']", "grid.solver"),
]


@pytest.mark.parametrize(("text", "key"), BAD)
def test_bad_grids_give_one_line_naming_the_key(text, key):
    with pytest.raises(GridError) as err:
        parse_grid(text)
    msg = str(err.value)
    assert "\n" not in msg
    assert key in msg, msg


def test_load_grid_prefixes_the_file(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text("[fixed]\nmodel='linear'\nn=4\nd=2\nsteps=3\nm=2\n[grid]\nlr=[0.0]")
    with pytest.raises(GridError, match=r"g\.toml: grid\.lr\[0\]: must be > 0"):
        load_grid(p)
    with pytest.raises(GridError, match="cannot read"):
        load_grid(tmp_path / "missing.toml")


def test_examples_are_valid():
    root = HERE.parent / "examples"
    small = load_grid(root / "sweep-small.toml")
    assert 16 <= len(small) <= 32
    large = [load_grid(p) for p in root.glob("*.toml") if p.name != "sweep-small.toml"]
    assert max(len(g) for g in large) >= 500


# ---------------------------------------------------------------------------
# execution and storage
# ---------------------------------------------------------------------------


def test_failing_run_is_recorded_and_sweep_goes_on(tmp_path):
    g = parse_grid(helper_grid(4, failures=True))
    res = run_sweep(g, tmp_path, executor="serial", progress=False, format="csv")
    assert (res.ok, res.failed, res.lost) == (4, 4, 0)
    rows = read_csv(tmp_path / "runs.csv")
    assert len(rows) == 8
    bad = [r for r in rows if r["fail"] == "True"]
    assert all(r["status"] == "error" for r in bad)
    assert all("RuntimeError: boom in run" in r["error"] for r in bad)
    good = [r for r in rows if r["fail"] == "False"]
    assert all(r["status"] == "ok" and isinstance(r["x0"], float) for r in good)
    hist = read_csv(tmp_path / "histories.csv")
    assert len(hist) == 3 * len(good)
    assert {h["run_id"] for h in hist} == {r["run_id"] for r in good}


def test_run_values_come_from_the_spawned_seed(tmp_path):
    g = parse_grid(helper_grid(2, replicates=2))
    run_sweep(g, tmp_path, executor="serial", progress=False, format="csv")
    rows = {r["run_id"]: r for r in read_csv(tmp_path / "runs.csv")}
    for s in g.specs:
        x = np.random.default_rng(np.random.SeedSequence(3).spawn(2)[s.replicate])
        assert rows[s.run_id]["x0"] == x.standard_normal(3)[0]  # exact: repr round trip


def test_resume_runs_only_what_is_missing(tmp_path):
    g = parse_grid(helper_grid(3, failures=True))
    first = run_sweep(g, tmp_path, executor="serial", progress=False, format="csv")
    assert first.skipped == 0 and first.ok + first.failed == 6
    victim = g.specs[2].run_id
    (tmp_path / "runs" / f"{victim}.json").unlink()
    before = stable(read_csv(tmp_path / "runs.csv"))
    again = run_sweep(g, tmp_path, executor="serial", progress=False, format="csv")
    assert (again.skipped, again.ok + again.failed) == (5, 1)
    assert stable(read_csv(tmp_path / "runs.csv")) == before
    nothing = run_sweep(g, tmp_path, executor="serial", progress=False, format="csv")
    assert nothing.skipped == 6 and nothing.ok + nothing.failed == 0
    retried = run_sweep(g, tmp_path, executor="serial", progress=False, retry_failed=True,
                        format="csv")
    assert (retried.skipped, retried.failed) == (3, 3)


def test_leftover_temporary_files_are_removed(tmp_path):
    g = parse_grid(helper_grid(1))
    (tmp_path / "runs").mkdir()
    junk = tmp_path / "runs" / ".abc.json.123.tmp"
    junk.write_text('{"run_id": "trunc')
    run_sweep(g, tmp_path, executor="serial", progress=False, format="csv")
    assert not junk.exists()


def test_local_pool_equals_serial_for_gd_runs(tmp_path):
    g = parse_grid(GD_GRID)
    run_sweep(g, tmp_path / "serial", executor="serial", progress=False, format="csv")
    run_sweep(g, tmp_path / "local", executor="local", workers=2, progress=False, format="csv")
    a = stable(read_csv(tmp_path / "serial" / "runs.csv"))
    b = stable(read_csv(tmp_path / "local" / "runs.csv"))
    assert a == b
    statuses = {r["status"] for r in a.values()}
    assert "max_steps" in statuses and statuses & {"diverged", "fixed_point_failed"}
    assert (tmp_path / "serial" / "histories.csv").read_text() == (
        tmp_path / "local" / "histories.csv").read_text()


def test_unpicklable_run_function_is_refused_up_front(tmp_path):
    g = parse_grid(helper_grid(1))
    with pytest.raises(ValueError, match="run_fn must be picklable"):
        run_sweep(g, tmp_path / "x", executor="local", run_fn=lambda p, s: {}, progress=False,
                  format="csv")
    assert not (tmp_path / "x").exists()
    res = run_sweep(g, tmp_path / "y", executor="serial", progress=False, format="csv",
                    run_fn=lambda p, s: {"metrics": {"v": p["a"]}})
    assert res.ok == 1 and read_csv(tmp_path / "y" / "runs.csv")[0]["v"] == 0


def test_default_train_run_function_reports_rates(tmp_path):
    g = parse_grid("""
[fixed]
model = "linear"
n = 128
d = 4
m = 3
steps = 150
noise = 0.1
[grid]
lr = [0.02, 0.05]
sufficient_stats = [true, false]
""")
    res = run_sweep(g, tmp_path, executor="serial", progress=False, format="csv")
    assert (res.ok, res.failed) == (4, 0)
    rows = read_csv(tmp_path / "runs.csv")
    for r in rows:
        assert r["status"] == "max_steps" and r["L_star"] > 0
        assert 0 < r["lr_beta"] <= 1 and r["rate_verdict"] == "holds"
        assert 0 < r["empirical_factor"] <= r["predicted_factor"] < 1
        assert r["factor_ratio"] == r["empirical_factor"] / r["predicted_factor"]
        assert r["final_invariant_drift"] > 0 and r["train_s"] > 0
    by = {(r["lr"], r["sufficient_stats"]): r for r in rows}
    for lr in (0.02, 0.05):  # both paths follow the same trajectory
        a, b = by[(lr, "True")], by[(lr, "False")]
        assert b["final_loss"] == pytest.approx(a["final_loss"], rel=1e-8)
    hist = read_csv(tmp_path / "histories.csv")
    assert {"loss", "excess_loss", "invariant_drift", "fp_iters"} <= set(hist[0])
    assert len(hist) == 4 * 151


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_counts_and_is_silent_off_a_terminal():
    for stream, shown in ((io.StringIO(), False), (_Terminal(), True)):
        bar = sweep.Progress(10, skipped=2, stream=stream)
        bar.update(False)
        bar.update(True)
        bar.lose()
        bar.skip()
        bar.close()
        assert bar.shown is shown and (bar.ok, bar.failed, bar.lost, bar.skipped) == (1, 1, 1, 3)
        text = stream.getvalue()
        if shown:
            assert "5/10" in text and "ok 1 failed 1 lost 1" in text, text
        else:
            assert text == ""


def test_csv_store_syncs_per_batch_not_per_run(tmp_path, monkeypatch):
    from deqbench.sweep import store

    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(store, "_syncfs", lambda fd: (calls.append("syncfs"), True)[1])
    g = parse_grid(helper_grid(20))
    res = run_sweep(g, tmp_path, executor="serial", progress=False, format="csv",
                    table_interval=3600.0)
    assert res.ok == 20 and len(read_csv(tmp_path / "runs.csv")) == 20
    # sweep.json, one sync of the batch, runs.csv and histories.csv; before: 2 per run
    assert calls == ["fsync", "syncfs", "fsync", "fsync"], calls


def test_atomic_write_replaces(tmp_path):
    p = tmp_path / "x.csv"
    sweep.atomic_write(p, "a\n1\n")
    sweep.atomic_write(p, "a\n2\n")
    assert p.read_text() == "a\n2\n"
    assert [q.name for q in tmp_path.iterdir()] == ["x.csv"]


# ---------------------------------------------------------------------------
# SIGKILL part-way, then resume
# ---------------------------------------------------------------------------


def _check_no_corrupt_file(out: Path):
    for p in (out / "runs").glob("*.json"):
        json.loads(p.read_text())
    for p in [*(out / "histories").glob("*.csv"), *out.glob("*.csv")]:
        with open(p, newline="") as fh:
            rows = list(csv.reader(fh))
        widths = {len(r) for r in rows}
        assert len(widths) <= 1, f"{p}: ragged rows {widths}"


def test_sigkill_part_way_then_resume(tmp_path):
    n_runs = 40
    grid = tmp_path / "grid.toml"
    grid.write_text(helper_grid(n_runs // 2, sleep=0.1, failures=True))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get(
        "PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "deqbench.cli", "sweep", str(grid), "--out", str(out),
           "--workers", "2", "--format", "csv"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            done = len(list((out / "runs").glob("*.json"))) if (out / "runs").exists() else 0
            if done >= 6 or proc.poll() is not None:
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    partial = {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}
    assert 6 <= len(partial) < n_runs
    _check_no_corrupt_file(out)

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert f"{len(partial)} already done" in again.stderr
    _check_no_corrupt_file(out)
    assert not list(out.rglob("*.tmp"))
    rows = read_csv(out / "runs.csv")
    ids = [r["run_id"] for r in rows]
    assert sorted(ids) == sorted(s.run_id for s in load_grid(grid).specs)  # each exactly once
    for rid, rec in partial.items():  # finished runs were not run again
        final = json.loads((out / "runs" / f"{rid}.json").read_text())
        assert (final["pid"], final["finished_at"]) == (rec["pid"], rec["finished_at"])
    hist = read_csv(out / "histories.csv")
    ok = {r["run_id"] for r in rows if r["status"] == "ok"}
    assert len(ok) == n_runs // 2
    assert sorted(h["run_id"] for h in hist) == sorted(rid for rid in ok for _ in range(3))


# ---------------------------------------------------------------------------
# Dask
# ---------------------------------------------------------------------------


def test_dask_local_cluster_gives_the_same_rows(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    # worker processes must import tests/sweep_helpers.py
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH",
                                                                                 "")]))
    g = parse_grid(GD_GRID)
    h = parse_grid(helper_grid(2, failures=True))
    run_sweep(g, tmp_path / "local", executor="serial", progress=False, format="csv")
    res = run_sweep(g, tmp_path / "dask", executor="dask", workers=2, progress=False, format="csv")
    assert res.complete and res.ok + res.failed == len(g)
    a = stable(read_csv(tmp_path / "local" / "runs.csv"))
    b = stable(read_csv(tmp_path / "dask" / "runs.csv"))
    assert a == b
    assert (tmp_path / "local" / "histories.csv").read_text() == (
        tmp_path / "dask" / "histories.csv").read_text()
    # a worker exception is recorded and the sweep goes on
    res = run_sweep(h, tmp_path / "dask-fail", executor="dask", workers=2, progress=False,
                    format="csv")
    assert (res.ok, res.failed, res.lost) == (2, 2, 0)
    errs = [r["error"] for r in read_csv(tmp_path / "dask-fail" / "runs.csv")
            if r["status"] == "error"]
    assert len(errs) == 2 and all("boom" in e for e in errs)


def test_bookkeeping_command_runs_once(capsys):
    from tools.sweep_bookkeeping import main

    assert main(["--runs", "40", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "40 of 40 runs ok (parquet, 1 workers)" in out
    assert "ms CPU per run" in out and "MiB" in out
    assert main(["--runs", "3", "--workers", "1", "--work-ms", "5"]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 runs of 5 ms ok (1 workers)" in out
    assert "parallel efficiency" in out and "serial executor: wall" in out


def test_paper_a4_run_function_reproduces_an_authors_run(tmp_path):
    """``run = "paper_a4"``: one of the authors' A.4 runs in full (seed 1729, eps = 1/4,
    60,000 updates) ends at their saved parameter error (E13 finds 5e-8 relative); a
    shortened run has no authors' number to stand beside."""
    from deqbench.experiments import _paper

    g = parse_grid("""
[sweep]
run = "paper_a4"
[fixed]
paper_seed = 1729
eps = 0.25
[grid]
steps = [60000, 500]
""")
    res = run_sweep(g, tmp_path, executor="serial", progress=False, format="csv")
    assert (res.ok, res.failed) == (2, 0)
    rows = {r["steps"]: r for r in read_csv(tmp_path / "runs.csv")}
    full, short = rows[60000], rows[500]
    authors = _paper.ref("A4/1729/0.25/final_parameter_error")
    assert full["status"] == "max_steps" and full["authors_parameter_error"] == authors
    assert full["parameter_error"] == pytest.approx(authors, rel=1e-6)
    assert math.isnan(short["authors_parameter_error"])
    assert short["parameter_error"] > 10 * full["parameter_error"]
    assert full["train_s"] > 0 and full["final_eval_risk"] > 0


def test_paper_a4_grid_names_a_missing_parameter():
    with pytest.raises(GridError, match="eps"):
        parse_grid('[sweep]\nrun = "paper_a4"\n[grid]\npaper_seed = [1729]\n')
