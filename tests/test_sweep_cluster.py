"""A real Dask cluster on loopback: ``dask scheduler`` and two ``dask worker`` processes.

The sweep runs through ``--scheduler``; one worker is SIGKILLed mid-sweep. The runs
are short (20 ms: several per task, so a killed worker costs a batch, which goes back
one run per task) and the grid has a ``timeout`` (each task runs in a child process
of its worker, kept from task to task) that one hanging run exceeds. Every run must
be present once, the hanging one ``timeout``, the others with the serial executor's
values (issue 12).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deqbench.sweep import load_grid, read_csv, run_sweep

pytest.importorskip("distributed")

pytestmark = pytest.mark.cluster

HERE = Path(__file__).resolve().parent
VOLATILE = {"time_s", "host", "pid", "finished_at", "attempts"}
N = 40
HANG = N - 1  # the run that hangs (a minute) until the timeout kills it
GRID = f"""
[sweep]
run = "sweep_helpers:crash"
seed = 5
timeout = 2.0
[fixed]
sleep = 0.02
hang_a = {HANG}
[grid]
a = [{", ".join(map(str, range(N)))}]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask(*args) -> list[str]:
    return [sys.executable, "-m", "distributed.cli.dask_" + args[0], *args[1:]]


def _wait(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def test_sweep_on_a_real_cluster_survives_a_killed_worker(tmp_path):
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get(
        "PYTHONPATH", "")])}
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    out = tmp_path / "cluster"
    procs: list[subprocess.Popen] = []

    def start(cmd):
        procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return procs[-1]

    try:
        start(_dask("scheduler", "--host", "127.0.0.1", "--port", str(port),
                    "--no-dashboard"))
        workers = [start(_dask("worker", address, "--nthreads", "1", "--no-nanny",
                               "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}"))
                   for i in range(2)]
        sweep = subprocess.Popen(
            [sys.executable, "-m", "deqbench.cli", "sweep", str(grid), "--out", str(out),
             "--executor", "dask", "--scheduler", address, "--connect-timeout", "60",
             "--format", "csv"], env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(sweep)

        def finished() -> int:
            return len(list((out / "runs").glob("*.json"))) if (out / "runs").exists() else 0

        _wait(lambda: finished() >= 4 or sweep.poll() is not None, 120, "4 finished runs")
        assert sweep.poll() is None, sweep.communicate()[1]
        at_kill = finished()
        workers[0].send_signal(signal.SIGKILL)
        _, err = sweep.communicate(timeout=240)
        assert at_kill < N and sweep.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # the process and anything it started
                except OSError:
                    p.kill()
            p.wait(timeout=30)

    serial = tmp_path / "serial"
    from sweep_helpers import draw  # the same runs (and run ids), none of them hanging

    run_sweep(load_grid(grid), serial, executor="serial", progress=False, format="csv",
              run_fn=draw)
    rows = read_csv(out / "runs.csv")
    assert sorted(r["run_id"] for r in rows) == sorted(s.run_id for s in load_grid(grid).specs)

    def stable(rs):
        return {r["run_id"]: {k: v for k, v in r.items() if k not in VOLATILE}
                for r in rs if r["a"] != HANG}

    assert stable(rows) == stable(read_csv(serial / "runs.csv"))
    hung = [r for r in rows if r["a"] == HANG]
    assert [(r["status"], "timeout of 2 s" in r["error"]) for r in hung] == [("timeout", True)]
    assert {r["status"] for r in rows if r["a"] != HANG} == {"ok"}
    want = [line for line in (serial / "histories.csv").read_text().splitlines()
            if not line.startswith(hung[0]["run_id"])]
    assert (out / "histories.csv").read_text().splitlines() == want
