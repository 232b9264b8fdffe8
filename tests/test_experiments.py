"""``deqbench reproduce``: every prediction of the quick run holds, outputs are complete."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deqbench import experiments
from deqbench.cli import main
from deqbench.experiments import e5_fixed_point, reproduce, run_experiment
from deqbench.experiments._common import Check, thin
from deqbench.plots import load_histories, load_runs, plot_dir
from deqbench.sweep import read_csv

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    summary = reproduce(out, quick=True, progress=False)
    return out, summary


def test_quick_reproduce_every_prediction_holds(quick):
    out, summary = quick
    text = summary.read_text()
    assert "**NO**" not in text, text
    table = [line for line in text.splitlines() if line.startswith("| E")]
    for name in experiments.EXPERIMENTS:
        assert any(line.startswith(f"| {name} |") for line in table), name
    assert sum(line.endswith("| yes |") for line in table) >= 15


def test_quick_reproduce_writes_tables_and_figures(quick):
    out, _ = quick
    rows = read_csv(out / "runs.csv")
    assert {r["experiment"] for r in rows} == set(experiments.EXPERIMENTS)
    assert len({r["run_id"] for r in rows}) == len(rows)
    hist = load_histories(out)
    assert set(hist) <= {r["run_id"] for r in rows} and len(hist) >= 40
    figs = sorted((out / "figures").glob("e*.png"))
    assert len(figs) == len(experiments.EXPERIMENTS)
    for f in figs:
        assert f.read_bytes()[:8] == PNG
    # the generic plots read a reproduce directory too
    assert load_runs(out)
    paths = plot_dir(out, out=out / "generic")
    assert paths and all(p.read_bytes()[:8] == PNG for p in paths)


def test_workers_and_cli(tmp_path, capsys):
    summary = reproduce(tmp_path / "w", quick=True, only=["E5", "E4"], workers=2, progress=False)
    assert "| E4 |" in summary.read_text() and "| E5 |" in summary.read_text()
    assert main(["reproduce", "--quick", "--only", "E5", "--out", str(tmp_path / "c"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| E5 |" in out and "**NO**" not in out


def test_unknown_experiment(tmp_path):
    with pytest.raises(ValueError, match="only: unknown experiment 'E9'"):
        reproduce(tmp_path, only=["E9"], progress=False)


def test_a_failing_experiment_is_reported_not_raised(tmp_path, monkeypatch):
    def boom(ctx):
        raise RuntimeError("kaput")

    monkeypatch.setattr(e5_fixed_point, "run", boom)
    res = run_experiment("E5", True, tmp_path)
    assert "RuntimeError: kaput" in res["error"]
    assert [c.holds for c in res["checks"]] == [False]


def test_summary_escapes_table_cells():
    res = {"name": "E1", "checks": [Check("E1", "a | b", "||x||", "1", True)], "rows": [],
           "hists": {}, "figures": [], "seconds": 0.0, "warnings": [], "n_warnings": 0,
           "error": ""}
    md = experiments.summary_markdown([res], quick=True, elapsed=1.0, workers=1)
    row = next(line for line in md.splitlines() if line.startswith("| E1 | a"))
    assert row.count(" | ") == 4 and "\\|\\|x\\|\\|" in row


def test_smoothness_matches_a_dense_hessian():
    from deqbench import data, loss_and_grad
    from deqbench.experiments.e7_step_size import smoothness

    X, Y, _ = data.linear_teacher(64, 2, 1, noise=0.1, seed=0)
    A, B = data.init_params(2, 1, scale_A=0.3, scale_B=1.0, seed=1)

    def grad(P):
        _, gA, gB, _ = loss_and_grad("linear", X, Y, P[:1].reshape(1, 1), P[1:].reshape(1, 2),
                                     solver="direct")
        return np.concatenate([gA.ravel(), gB.ravel()])

    P = np.concatenate([A.ravel(), B.ravel()])
    H = np.array([(grad(P + 1e-6 * e) - grad(P - 1e-6 * e)) / 2e-6 for e in np.eye(3)])
    want = np.linalg.eigvalsh(0.5 * (H + H.T))[-1]
    assert smoothness(X, Y, A, B, iters=200) == pytest.approx(want, rel=1e-4)


def test_iteration_prediction_helpers():
    assert e5_fixed_point.predicted(0.5, 1e-10) == math.ceil(math.log(1e-10) / math.log(0.5))
    assert e5_fixed_point.predicted(1.0) == math.inf
    assert e5_fixed_point.damped_rate([-1.5, 0.5], 2 / 3) == pytest.approx(2 / 3)
    idx = thin(10_000, 100)
    assert idx[0] == 0 and idx[-1] == 9_999 and len(idx) <= 102
    assert np.all(np.diff(idx) > 0)
