"""Sweeps under faults (issue 12): each numbered failure reproduced, then fixed.

(1) a dead worker, a run that always crashes, a run that hangs; (2) orphans after
``kill -9``; (3) two processes on one directory; (4) a changed grid; (5) scale:
lazy grids, bounded runs in flight, append-only tables; (6) one-line errors.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from deqbench.cli import main
from deqbench.sweep import (
    GridError,
    Store,
    SweepError,
    load_grid,
    parse_grid,
    read_csv,
    run_sweep,
    sweep_status,
)
from deqbench.sweep.executors import Feed, iter_local
from tests._signals import default_sigint

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run functions in tests/sweep_helpers.py (workers inherit it)
    sys.path.insert(0, str(HERE))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH",
                                                                               "")])}


def crash_grid(n_a: int, *, crash=(False,), hang=(False,), sleep: float = 0.0,
               timeout: float | None = None) -> str:
    def toml(values):
        return "[" + ", ".join(str(v).lower() for v in values) + "]"

    t = f"timeout = {timeout}\n" if timeout else ""
    return f"""
[sweep]
run = "sweep_helpers:crash"
seed = 1
{t}[fixed]
sleep = {sleep}
[grid]
a = {toml(range(n_a))}
crash = {toml(crash)}
hang = {toml(hang)}
"""


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------
# (1) dead workers, crashing and hanging runs
# ---------------------------------------------------------------------------


def test_a_run_that_kills_its_worker_costs_only_itself(tmp_path):
    g = parse_grid(crash_grid(3, crash=(False, True)))
    res = run_sweep(g, tmp_path, executor="local", workers=2, retries=1, progress=False,
                    format="csv")
    # before: the first dead worker broke the pool and every later run was lost
    assert (res.ok, res.failed, res.crashed, res.lost, res.retried) == (3, 0, 3, 0, 3)
    assert res.complete
    rows = read_csv(tmp_path / "runs.csv")
    assert sorted(r["run_id"] for r in rows) == sorted(s.run_id for s in g.specs)
    for r in rows:
        if r["crash"] == "True":
            assert r["status"] == "crashed" and r["attempts"] == 2
            assert "SIGKILL" in r["error"] and "2 times" in r["error"]
        else:
            assert r["status"] == "ok" and r["attempts"] == 1
    # crashed is a failure: stored (a resume does not loop on it), re-run on request
    again = run_sweep(g, tmp_path, executor="local", workers=2, retries=0, progress=False,
                      format="csv")
    assert (again.skipped, again.ok + again.failed) == (6, 0)
    retried = run_sweep(g, tmp_path, executor="local", workers=2, retries=0,
                        retry_failed=True, progress=False, format="csv")
    assert (retried.skipped, retried.crashed, retried.retried) == (3, 3, 0)


def test_a_lost_run_is_stored_lost_until_it_runs_again_then_crashed(tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    marks = tmp_path / "marks"
    marks.mkdir()
    grid = tmp_path / "grid.toml"
    grid.write_text(f"""
[sweep]
run = "sweep_helpers:scripted"
seed = 1
[fixed]
dir = "{marks}"
plan = "kill hang kill"
[grid]
a = [0, 1, 2]
""")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "deqbench.cli", "sweep", str(grid), "--out", str(out),
           "--workers", "1"]  # the default store: Parquet
    proc = subprocess.Popen(cmd, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (marks / "attempt-1").exists() and time.monotonic() < deadline \
                and proc.poll() is None:
            time.sleep(0.05)
        assert (marks / "attempt-1").exists(), "the lost run was not started again"
        # its worker died, and its restart hangs: the store says lost, --status shows it
        st = sweep_status(out)
        assert (st["lost"], st["by_status"].get("lost")) == (1, 1), st
        assert st["remaining"] == 3 - st["done"] >= 2  # a lost run is not done
        assert main(["sweep", "--status", str(out)]) == 0
        assert "1 lost (their worker died; they run again)" in capsys.readouterr().out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the client, while the restart hangs
        proc.communicate()
    # a resume runs the lost run again, counting on from its stored attempts: the third
    # attempt exceeds --retries 1, so it is crashed (without the count it would run 4 times)
    r = subprocess.run([*cmd, "--retries", "1"], env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "1 crashed, 0 lost" in r.stderr
    assert len(list(marks.glob("attempt-*"))) == 3
    rows = {r["a"]: r for r in pq.read_table(out / "runs.parquet").to_pylist()}
    assert len(rows) == 3 and sweep_status(out)["lost"] == 0
    assert (rows[0]["status"], rows[0]["attempts"]) == ("crashed", 2)
    assert "SIGKILL, 2 times" in rows[0]["error"]
    assert rows[1]["status"] == rows[2]["status"] == "ok"


def test_sigkill_of_a_pool_worker_from_outside_loses_one_run(tmp_path):
    n = 12
    grid = tmp_path / "grid.toml"
    grid.write_text(crash_grid(n, sleep=0.3))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "deqbench.cli", "sweep", str(grid), "--out",
                             str(out), "--workers", "2", "--format", "csv"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            recs = list((out / "runs").glob("*.json")) if (out / "runs").exists() else []
            if recs:
                victim = json.loads(recs[0].read_text())["pid"]  # a worker, busy again
            time.sleep(0.02)
        assert victim is not None, "no run finished"
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    rows = read_csv(out / "runs.csv")
    assert len(rows) == n and {r["status"] for r in rows} == {"ok"}
    assert "lost (worker process killed by SIGKILL); starting it again (1/2)" in err
    assert f"{n} ok, 0 failed" in err


def test_timeout_kills_a_hanging_run_and_the_sweep_goes_on(tmp_path):
    g = parse_grid(crash_grid(2, hang=(False, True), timeout=2.0))
    assert g.timeout == 2.0
    res = run_sweep(g, tmp_path, executor="local", workers=2, progress=False, format="csv")
    assert (res.ok, res.failed) == (2, 2)
    rows = read_csv(tmp_path / "runs.csv")
    hung = [r for r in rows if r["hang"] == "True"]
    assert {r["status"] for r in hung} == {"timeout"}
    assert all("timeout of 2 s" in r["error"] and r["time_s"] >= 2.0 for r in hung)
    # the timeout is not part of a run's identity nor of the grid's
    h = parse_grid(crash_grid(2, hang=(False, True)))
    assert [s.run_id for s in h.specs] == [s.run_id for s in g.specs] and h.hash == g.hash
    with pytest.raises(GridError, match="sweep.timeout: must be > 0"):
        parse_grid(crash_grid(1, timeout=-1))


def test_timeout_on_dask_kills_a_hanging_run(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setenv("PYTHONPATH", ENV["PYTHONPATH"])  # workers import sweep_helpers
    g = parse_grid(crash_grid(2, hang=(False, True), timeout=2.0))
    res = run_sweep(g, tmp_path, executor="dask", workers=2, progress=False)
    # before: the hanging runs held their Dask workers for a minute and were stored ok
    assert (res.ok, res.failed, res.lost) == (2, 2, 0)
    rows = pytest.importorskip("pyarrow.parquet").read_table(
        tmp_path / "runs.parquet").to_pylist()
    hung = [r for r in rows if r["hang"]]
    assert len(hung) == 2 and {r["status"] for r in hung} == {"timeout"}
    assert all("timeout of 2 s" in r["error"] for r in hung)


def test_local_pool_holds_one_run_per_worker():
    pulled = []

    def specs():
        for s in parse_grid(crash_grid(20)).specs:
            pulled.append(s.run_id)
            yield s

    events = iter_local(Feed(specs()), 2)
    try:
        next(events)
        assert len(pulled) <= 3  # not 20: one run per worker, and one waiting
    finally:
        events.close()


def test_feed_sizes_batches_from_the_cost_of_a_run():
    feed = Feed(range(1000), target_s=0.2, max_batch=64)
    assert feed.take() == [0]  # no run measured yet
    feed.observe(0.01)
    assert feed.take() == list(range(1, 21))  # 20 runs of 10 ms
    feed.observe(0.01 + 10 * 0.5)  # moving average 0.51 s: one run per task
    assert len(feed.take()) == 1
    feed.mean_s = 0.0
    assert len(feed.take()) == 64  # bounded
    feed.again("restart")
    assert feed.take() == ["restart"]  # alone, before new runs


def test_a_dead_worker_costs_one_run_of_its_batch_and_a_timeout_one():
    from deqbench.sweep.executors import _kept_child, execute_batch

    g = parse_grid(crash_grid(4, crash=(False, True), hang=(False, True)))
    by = {(s.params["a"], s.params["crash"], s.params["hang"]): s for s in g.specs}
    # in one batch (a Dask task with a timeout: run in a child process of this one): two
    # plain runs, a run that kills its worker, a plain run, a run that hangs, a plain run
    specs = [by[0, False, False], by[1, False, False], by[0, True, False],
             by[2, False, False], by[0, False, True], by[3, False, False]]
    kinds = ["ok", "ok", "crash", "ok", "hang", "ok"]
    try:
        (first, _), = execute_batch([by[3, False, False]], timeout=1.0)
        results = execute_batch(specs, timeout=1.0)
        kept = list(_kept_child(None))
    finally:
        for w in _kept_child(None):
            w.kill()
    assert [rec["status"] if rec else "lost" for rec, _ in results] == [
        {"ok": "ok", "crash": "lost", "hang": "timeout"}[k] for k in kinds]
    assert "SIGKILL" in results[2][1]
    pids = [rec and rec["pid"] for rec, _ in results]
    # the child that ran the previous task runs this one (kept: not a new process per
    # task); the dead and the killed ones are replaced, the last one kept for the next task
    assert pids[0] == pids[1] == first["pid"]
    assert pids[3] not in (pids[0], None) and pids[5] not in (pids[3], None)
    assert [w.proc.pid for w in kept] == [pids[5]]


# ---------------------------------------------------------------------------
# (2) no orphans after kill -9 of the main process
# ---------------------------------------------------------------------------


def _children() -> dict[int, int]:
    out = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            out[int(p.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def _descendants(pid: int) -> set[int]:
    parents = _children()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_kill_9_of_the_main_process_leaves_no_orphans(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(crash_grid(40, sleep=0.2))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "deqbench.cli", "sweep", str(grid), "--out",
                             str(out), "--workers", "2", "--format", "csv"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "runs").exists() and len(list((out / "runs").glob("*.json"))) >= 2:
                break
            time.sleep(0.02)
        kids = _descendants(proc.pid)
        assert len(kids) >= 2, kids  # the pool (and multiprocessing's resource tracker)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and kids & set(_children()):
            time.sleep(0.1)
        alive = kids & set(_children())
        assert not alive, f"orphans: {alive}"  # before: they lived on indefinitely
    finally:
        for pid in kids & set(_children()):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------
# (3) one process per directory
# ---------------------------------------------------------------------------


def test_a_second_process_on_a_locked_directory_gets_one_line_and_touches_nothing(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(crash_grid(2))
    out = tmp_path / "out"
    with Store(out):
        mine = out / f".runs.csv.{os.uname().nodename}.{os.getpid()}.0123abcd.tmp"
        mine.write_text("half a table")  # the first process is writing this right now
        r = subprocess.run([sys.executable, "-m", "deqbench.cli", "sweep", str(grid), "--out",
                            str(out), "--executor", "serial"], env=ENV, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2
        line = one_line(r.stderr.split("\n", 1)[1])  # after the "sweep ..." banner
        assert "in use by another sweep" in line and f"pid {os.getpid()} on host" in line
        assert mine.exists()  # before: deleted, which crashed the first sweep
        assert not list((out / "runs").iterdir())
        st = sweep_status(out)
        assert st["holder"].startswith(f"pid {os.getpid()} on host")
        with pytest.raises(SweepError, match="in use by another sweep"):
            Store(out)
    # released: the next sweep runs, and removes the dead writer's leftovers
    res = run_sweep(load_grid(grid), out, executor="serial", progress=False, format="csv")
    assert res.ok == 2 and not mine.exists()
    assert sweep_status(out)["holder"] is None


# ---------------------------------------------------------------------------
# (4) a changed grid
# ---------------------------------------------------------------------------


def test_a_different_grid_is_refused_unless_forced(tmp_path, capsys):
    first = tmp_path / "a.toml"
    first.write_text(crash_grid(4))
    changed = tmp_path / "b.toml"
    changed.write_text(crash_grid(4).replace("seed = 1", "seed = 2"))
    out = tmp_path / "out"
    assert main(["sweep", str(first), "--out", str(out), "--executor", "serial",
                 "--no-progress", "--format", "csv"]) == 0
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["grid_hash"] == load_grid(first).hash and meta["runs"] == 4
    capsys.readouterr()
    assert main(["sweep", str(changed), "--out", str(out), "--executor", "serial",
                 "--no-progress"]) == 2
    line = one_line(capsys.readouterr().err.split("\n", 1)[1])
    assert "different grid" in line and "--force" in line
    assert len(read_csv(out / "runs.csv")) == 4  # before: 8 rows under a 4-run sweep.json
    # the same runs written differently are the same grid
    same = tmp_path / "c.toml"
    same.write_text(crash_grid(4).replace("a = [0, 1, 2, 3]", "a = [3, 2, 1, 0]")  # a moved
                    .replace("hang = [false]\n", "")
                    .replace("[fixed]\n", "[fixed]\nhang = false\n"))
    assert load_grid(same).hash == load_grid(first).hash
    assert main(["sweep", str(same), "--out", str(out), "--executor", "serial"]) == 0
    assert main(["sweep", str(changed), "--out", str(out), "--executor", "serial",
                 "--no-progress", "--force"]) == 0
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["grid_hash"] == load_grid(changed).hash
    assert meta["earlier_grids"] == [load_grid(first).hash]
    assert len(read_csv(out / "runs.csv")) == 8


# ---------------------------------------------------------------------------
# (5) scale
# ---------------------------------------------------------------------------

BIG = """
[sweep]
run = "sweep_helpers:draw"
replicates = 10
[grid]
a = [{r}]
b = [{r}]
c = [{r}]
d = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
""".format(r=", ".join(map(str, range(100))))


def test_a_ten_million_run_grid_costs_no_memory(tmp_path, capsys):
    tracemalloc.start()
    try:
        g = parse_grid(BIG)
        assert len(g) == 10**8
        last = g.specs[-1]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20e6, peak  # before: ~850 MB per 10^6 runs, MemoryError at 10^7
    assert last.params == {"a": 99, "b": 99, "c": 99, "d": 9} and last.replicate == 9
    assert last.index == 10**8 - 1
    p = tmp_path / "big.toml"
    p.write_text(BIG)
    assert main(["sweep", str(p), "--dry-run"]) == 0
    assert "100000000 runs" in capsys.readouterr().out
    # a grid this size starts only when confirmed (stdin is not a terminal here)
    assert main(["sweep", str(p), "--out", str(tmp_path / "out")]) == 2
    line = one_line(capsys.readouterr().err)
    assert "100000000 runs (more than 100000); pass --yes" in line
    assert not (tmp_path / "out").exists()


def test_lazy_runs_by_index_equal_the_iteration_order():
    g = parse_grid(crash_grid(3, crash=(False, True), hang=(True, False)).replace(
        "seed = 1", "seed = 1\nreplicates = 2"))
    listed = list(g.specs)
    assert len(listed) == len(g) == 24
    assert [g.specs[i] for i in range(len(g))] == listed
    assert g.specs[-1] == listed[-1] and g.specs[2:5] == listed[2:5]
    assert [s.index for s in listed] == list(range(24))
    assert list(itertools.islice(g.specs, 3)) == listed[:3]
    with pytest.raises(IndexError):
        g.specs[24]


def test_runs_csv_grows_by_appending_then_is_consolidated(tmp_path):
    g = parse_grid(crash_grid(6))
    recs = {}
    with Store(tmp_path) as store:
        from deqbench.sweep import execute

        for i, spec in enumerate(g.specs):
            recs[spec.run_id] = rec = execute(spec)
            store.write(rec)
            if i % 2 == 1:
                before = (tmp_path / "runs.csv").read_bytes() if i > 1 else b""
                store.append_runs([recs[s.run_id] for s in g.specs[i - 1:i + 1]])
                now = (tmp_path / "runs.csv").read_bytes()
                assert now.startswith(before)  # appended, never rewritten
        assert len(read_csv(tmp_path / "runs.csv")) == 6
        store.write_tables(dict(reversed(recs.items())))
    rows = read_csv(tmp_path / "runs.csv")
    assert [r["run_id"] for r in rows] == [s.run_id for s in g.specs]  # grid order
    assert len(read_csv(tmp_path / "histories.csv")) == 3 * 6


# ---------------------------------------------------------------------------
# (6) one line instead of a traceback
# ---------------------------------------------------------------------------


def _sweep(grid, out, *extra):
    return main(["sweep", str(grid), "--out", str(out), "--executor", "serial",
                 "--no-progress", "--format", "csv", *extra])


def test_out_naming_a_file_is_one_line(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text(crash_grid(1))
    (tmp_path / "file").write_text("x")
    assert _sweep(grid, tmp_path / "file") == 2
    line = one_line(capsys.readouterr().err.split("\n", 1)[1])
    assert "file" in line and "not a directory" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_one_line(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text(crash_grid(1))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert _sweep(grid, ro / "out") == 2
        line = one_line(capsys.readouterr().err.split("\n", 1)[1])
        assert "Permission denied" in line and "ro" in line
    finally:
        ro.chmod(0o755)


def test_non_utf8_grid_is_one_line(tmp_path, capsys):
    grid = tmp_path / "latin1.toml"
    grid.write_bytes(crash_grid(1).replace("seed = 1", "name = 'caf\xe9'\nseed = 1")
                     .encode("latin-1"))
    assert _sweep(grid, tmp_path / "out") == 2
    line = one_line(capsys.readouterr().err)
    assert "latin1.toml" in line and "not UTF-8" in line and "0xe9" in line
    assert not (tmp_path / "out").exists()


def test_damaged_records_and_missing_histories_are_run_again(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text(crash_grid(6))
    out = tmp_path / "out"
    assert _sweep(grid, out) == 0
    specs = load_grid(grid).specs
    full = read_csv(out / "histories.csv")
    (out / "runs" / f"{specs[0].run_id}.json").write_text("[]")
    (out / "runs" / f"{specs[1].run_id}.json").write_text("{}")
    (out / "runs" / f"{specs[2].run_id}.json").write_text('{"run_id": "someone else"}')
    (out / "histories" / f"{specs[3].run_id}.csv").unlink()
    (out / "histories" / f"{specs[4].run_id}.csv").write_text("")
    capsys.readouterr()
    # before: [] or {} raised on every resume; a missing history counted as done
    assert _sweep(grid, out) == 0
    err = capsys.readouterr().err
    assert "5 damaged or incomplete record(s) removed" in err
    assert "5 ok, 0 failed, 0 crashed, 0 lost, 1 already done" in err
    assert read_csv(out / "histories.csv") == full
    assert len(read_csv(out / "runs.csv")) == 6


def test_bad_or_unreachable_scheduler_is_one_line(tmp_path, capsys):
    pytest.importorskip("distributed")
    grid = tmp_path / "g.toml"
    grid.write_text(crash_grid(1))
    for address in ("notaurl", "tcp://127.0.0.1:9"):
        rc = main(["sweep", str(grid), "--out", str(tmp_path / "out"), "--executor", "dask",
                   "--scheduler", address, "--connect-timeout", "2", "--format", "csv"])
        assert rc == 2
        line = one_line(capsys.readouterr().err.split("\n", 1)[1])
        assert f"--scheduler '{address}': cannot connect within 2 s" in line
    assert not list((tmp_path / "out" / "runs").iterdir())


def test_full_disk_stops_with_one_line_and_keeps_every_finished_run(tmp_path, capsys,
                                                                    monkeypatch):
    grid = tmp_path / "g.toml"
    grid.write_text(crash_grid(6))
    out = tmp_path / "out"
    real_write, real_tables = Store.write, Store.write_tables
    calls = []

    def write(self, record):
        calls.append(record["run_id"])
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.runs / "x.json"))
        return real_write(self, record)

    def tables(self, records, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.out / "runs.csv"))

    monkeypatch.setattr(Store, "write", write)
    monkeypatch.setattr(Store, "write_tables", tables)
    assert _sweep(grid, out) == 2
    line = one_line(capsys.readouterr().err.split("\n", 1)[1])  # before: two tracebacks
    assert "No space left on device" in line and "3 runs stored before are kept" in line
    assert len(list((out / "runs").glob("*.json"))) == 3
    monkeypatch.setattr(Store, "write", real_write)
    monkeypatch.setattr(Store, "write_tables", real_tables)
    assert _sweep(grid, out) == 0
    assert "3 ok, 0 failed, 0 crashed, 0 lost, 3 already done" in capsys.readouterr().err


def test_status_reads_without_touching(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text(crash_grid(3, crash=(False,), hang=(False,)))
    out = tmp_path / "out"
    assert _sweep(grid, out) == 0
    (out / "runs" / f"{load_grid(grid).specs[0].run_id}.json").unlink()
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*"))
    capsys.readouterr()
    assert main(["sweep", "--status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 runs: 2 done (2 finished, 0 failed), 1 remaining" in text
    assert "statuses: ok 2" in text and "not running" in text
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.rglob("*")) == before
    assert main(["sweep", "--status", str(tmp_path / "nope")]) == 2
    assert "no such sweep directory" in capsys.readouterr().err


def test_ctrl_c_stops_the_sweep_within_a_second_keeps_what_finished_and_resumes(tmp_path):
    n = 16
    grid = tmp_path / "grid.toml"
    grid.write_text(crash_grid(n, sleep=0.1))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "deqbench.cli", "sweep", str(grid), "--out", str(out),
           "--workers", "2", "--format", "csv"]
    proc = subprocess.Popen(default_sigint(cmd), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    kids: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "runs").exists() and len(list((out / "runs").glob("*.json"))) >= 2:
                break
            time.sleep(0.02)
        kids = _descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted; re-run the same command to resume" in err and "Traceback" not in err
    # within a second: runs in progress are not waited for (0.1 s each here, but a minute
    # would do the same); the slack is for a loaded machine
    assert took < 1.0 + 1.0, took
    stored = {p.stem for p in (out / "runs").glob("*.json")}
    assert 2 <= len(stored) < n
    assert {r["run_id"] for r in read_csv(out / "runs.csv")} == stored  # consolidated
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and kids & set(_children()):
        time.sleep(0.1)
    left = kids & set(_children())
    assert not left, [(Path(f"/proc/{p}/stat").read_text(errors="replace")[:80]) for p in left]
    assert sweep_status(out)["holder"] is None
    # the resume runs the rest, each once, and nothing again
    before = {p.stem: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    res = run_sweep(load_grid(grid), out, executor="local", workers=2, progress=False)
    assert (res.skipped, res.ok, res.lost) == (len(stored), n - len(stored), 0)
    rows = read_csv(out / "runs.csv")
    assert sorted(r["run_id"] for r in rows) == sorted(s.run_id for s in load_grid(grid).specs)
    assert all((out / "runs" / f"{rid}.json").stat().st_mtime_ns == t
               for rid, t in before.items())


def test_a_half_appended_runs_csv_row_is_dropped_before_appending(tmp_path):
    g = parse_grid(crash_grid(4))
    from deqbench.sweep import execute

    with Store(tmp_path) as store:
        recs = [execute(s) for s in g.specs[:2]]
        for rec in recs:
            store.write(rec)
        store.append_runs(recs[:1])
    with open(tmp_path / "runs.csv", "a") as fh:
        fh.write("deadbeef,ok,,0,1,2")  # a kill in the middle of an append
    with Store(tmp_path) as store:
        store.append_runs(recs[1:])
        rows = read_csv(tmp_path / "runs.csv")
    assert [r["run_id"] for r in rows] == [r["run_id"] for r in recs]
