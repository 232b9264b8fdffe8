"""The ``deqbench`` console script: info, sweep, plot, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deqbench.cli import build_parser, main
from deqbench.sweep import read_csv

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
    for cmd in ([], ["info"], ["reproduce"], ["sweep"], ["plot"]):
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "usage: deqbench" in out
    sub = build_parser()._subparsers._group_actions[0].choices
    assert set(sub) == {"info", "reproduce", "sweep", "plot"}


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
    err = capsys.readouterr().err
    assert "12/12" in err and "ETA" in err
    rows = read_csv(out / "runs.csv")
    assert len(rows) == 12 and {r["status"] for r in rows} == {"max_steps"}
    assert main(["sweep", str(grid), "--out", str(out), "--executor", "serial"]) == 0
    assert "12 already done" in capsys.readouterr().err
    assert main(["plot", str(out)]) == 0
    figs = capsys.readouterr().out.split()
    names = {Path(f).name for f in figs}
    assert {"loss_curves.png", "invariant_drift.png", "iterations.png"} <= names
    assert "scaling.png" in names  # m has three values
    for f in figs:
        assert Path(f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_missing_dir(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 1
    assert "runs.csv" in capsys.readouterr().err
