"""``deqbench reproduce``: every prediction of the quick run holds, outputs are complete."""

from __future__ import annotations

import numpy as np
import pytest

from deqbench import experiments
from deqbench.cli import main
from deqbench.experiments import e5_fixed_point, reproduce, run_experiment
from deqbench.experiments._common import Check, step_ratios_ok, thin
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


def _verdicts(name, tmp_path):
    return [c.verdict for c in run_experiment(name, True, tmp_path)["checks"]]


@pytest.mark.parametrize(("name", "target", "wrong", "failing"), [
    # the uncorrected Picard count log(tol)/log(rho): both count rows fail
    ("E5", "predicted_fp_iters", lambda orig: lambda rate, tol, gap=None: orig(rate, tol, gap=1.0),
     [0, 1]),
    # a drift of 2 lr (L_0 - L_K) instead of lr (L_0 - L_K): the limit rows fail
    ("E1", "drift_gain_bounds", lambda orig: lambda lr, b: tuple(2 * x for x in orig(lr, b)),
     [2, 3]),
    # a PL constant 10x too large: every per-step and envelope row fails
    ("E2", "pl_constant", lambda orig: lambda *a, **k: 10 * orig(*a, **k), [0, 1, 2]),
])
def test_criteria_can_fail(tmp_path, monkeypatch, name, target, wrong, failing):
    """Each row's criterion is a measurement against the theory: a wrong theory fails it."""
    from deqbench import theory

    assert all(_verdicts(name, tmp_path / "ok")[i] == "yes" for i in failing)
    monkeypatch.setattr(theory, target, wrong(getattr(theory, target)))
    got = _verdicts(name, tmp_path / "bad")
    assert all(got[i] == "**NO**" for i in failing), got


def test_step_ratio_judge():
    e = 0.5 ** np.arange(40.0)
    ok, worst, judged = step_ratios_ok(e, 1.0, np.full(39, 0.6))
    assert ok and worst == pytest.approx(-0.1) and judged == 32  # 0.5^32 > 1e6 eps
    assert not step_ratios_ok(e, 1.0, np.full(39, 0.45))[0]  # a step above its bound
    bounds = np.full(39, 0.6)
    bounds[5] = np.nan
    assert not step_ratios_ok(e, 1.0, bounds)[0]  # NaN fails
    assert not step_ratios_ok(e * 1e-20, 1.0, np.full(39, 0.6))[0]  # nothing judged fails
    # below 1e6 eps L0 the per-sample excess is rounding: not judged
    floor = np.maximum(e, 1e-11)
    assert step_ratios_ok(floor, 1.0, np.full(39, 0.6))[0]  # ratio 1 at the floor


def test_thin():
    idx = thin(10_000, 100)
    assert idx[0] == 0 and idx[-1] == 9_999 and len(idx) <= 102
    assert np.all(np.diff(idx) > 0)
    assert e5_fixed_point.damped_rate([-1.5, 0.5], 2 / 3) == pytest.approx(2 / 3)
