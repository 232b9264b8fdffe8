"""The ``deqbench`` console script: info, sweep, plot, errors."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from deqbench.cli import build_parser, main
from deqbench.plots import load_runs

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

GD = """
[sweep]
run = "gd"
replicates = 2
[fixed]
model = "linear"
n = 32
d = 3
steps = 10
[grid]
m = [2, 4, 8]
lr = [0.01, 0.03]
"""


def test_help_on_every_subcommand(capsys):
    for cmd in ([], ["info"], ["calibrate"], ["reproduce"], ["sweep"], ["plot"], ["quiet"]):
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "usage: deqbench" in out
    sub = build_parser()._subparsers._group_actions[0].choices
    assert set(sub) == {"info", "calibrate", "reproduce", "sweep", "plot", "quiet"}


def test_console_script_module_runs():
    r = subprocess.run([sys.executable, "-m", "deqbench.cli", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "reproduce" in r.stdout


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("deqbench", "numba", "numpy", "llvmlite", "BLAS", "threading layer", "CPU"):
        assert word in out


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[fixed]\nmodel='linear'\nn=4\nd=2\nsteps=3\nm=2\n[grid]\nlr=[0.1, -1.0]", "grid.lr[1]"),
        ("[fixed]\nmodel='linear'\nn=4\nd=2\nsteps=3\nm=2\nbogus=1\n[grid]\nlr=[0.1]",
         "fixed.bogus"),
        ("[fixed]\nmodel='linear'\n[grid]\nm=[]", "grid.m"),
        ("[fixed\nmodel='linear'", "invalid TOML"),
    ],
)
def test_sweep_bad_grid_is_one_line_and_runs_nothing(tmp_path, capsys, text, key):
    grid = tmp_path / "bad.toml"
    grid.write_text(text)
    out = tmp_path / "out"
    assert main(["sweep", str(grid), "--out", str(out), "--executor", "serial"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert key in lines[0] and "bad.toml" in lines[0]
    assert not out.exists()


def test_bad_options(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "x.toml", "--workers", "0"])
    with pytest.raises(SystemExit):
        main(["sweep", "x.toml", "--scheduler", "tcp://h:1"])  # needs --executor dask
    capsys.readouterr()


def test_sweep_then_plot(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text(GD)
    out = tmp_path / "sweep"
    assert main(["sweep", str(grid), "--dry-run"]) == 0
    assert "12 runs" in capsys.readouterr().out
    assert main(["sweep", str(grid), "--out", str(out), "--executor", "serial"]) == 0
    err = capsys.readouterr().err  # not a terminal: no bar, the closing line only
    assert "12/12" not in err and "run/s" not in err
    assert err.splitlines()[-1].startswith("12 ok, 0 failed, 0 crashed, 0 lost, 0 already done")
    assert (out / "runs.parquet").exists()  # the default store
    rows = load_runs(out)
    assert len(rows) == 12 and {r["status"] for r in rows} == {"max_steps"}
    assert main(["sweep", str(grid), "--out", str(out), "--executor", "serial"]) == 0
    assert "12 already done" in capsys.readouterr().err
    # the directory keeps its format: another one is one line
    assert main(["sweep", str(grid), "--out", str(out), "--format", "csv"]) == 2
    assert "holds a parquet store, not csv; use --format parquet" in capsys.readouterr().err
    assert main(["sweep", "--status", str(out)]) == 0
    assert "12 runs: 12 done (12 finished, 0 failed), 0 remaining" in capsys.readouterr().out
    assert main(["plot", str(out)]) == 0
    figs = capsys.readouterr().out.split()
    names = {Path(f).name for f in figs}
    assert {"loss_curves.png", "invariant_drift.png", "iterations.png"} <= names
    assert "scaling.png" in names  # m has three values
    for f in figs:
        assert Path(f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_missing_dir(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "runs.csv" in capsys.readouterr().err


DRAW = """
[sweep]
run = "sweep_helpers:draw"
[grid]
a = [0, 1, 2, 3, 4, 5]
"""


def test_progress_bar_on_a_terminal_only(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(DRAW)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get(
        "PYTHONPATH", "")])}

    def sweep(out, stderr):
        return subprocess.Popen([sys.executable, "-m", "deqbench.cli", "sweep", str(grid),
                                 "--out", str(out), "--executor", "serial"], env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)

    # a pipe (a log file, CI): the banner and the closing line, no bar
    proc = sweep(tmp_path / "pipe", subprocess.PIPE)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 0, err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[1].startswith("6 ok, 0 failed, 0 crashed, 0 lost"), err
    # a terminal: a tqdm bar, then the same closing line
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    chunks = []
    try:
        proc = sweep(tmp_path / "tty", slave)
        os.close(slave)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = b"".join(chunks).decode(errors="replace")
    assert "6/6" in text and "run/s" in text and "ok 6 failed 0" in text, text
    assert "6 ok, 0 failed, 0 crashed, 0 lost" in text
