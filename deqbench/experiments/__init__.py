"""``deqbench reproduce``: the validation experiments E1-E13 and their summary.

E1-E10 check the predictions of docs/theory.md on deqbench's own problems;
E11-E13 rerun the paper's Appendix A.1-A.4 with the authors' seeds and
compare with their saved numbers (``paper_reference.json``, docs/theory.md §12).
Each experiment is a module with ``run(ctx)`` that trains, measures, records
runs and histories into a :class:`~._common.Context`, adds one
:class:`~._common.Check` per prediction of docs/theory.md, and saves its figure.
:func:`reproduce` runs them, then writes into ``out``:

* ``runs.csv`` - one row per run (experiment, label, status, parameters, metrics);
* ``histories.csv`` - long table, one row per run and recorded step;
* ``figures/e*.png`` - one figure per experiment;
* ``summary.md`` - one row per prediction: predicted, measured, holds.

Numba and BLAS run single-threaded in every experiment (the problems are
small; threads only add overhead, and a lot of it on a loaded machine). With
``workers > 1`` the experiments run in that many processes, after the kernels
are compiled once in this process.
"""

from __future__ import annotations

import importlib
import json
import platform
import time
import traceback
import warnings
from pathlib import Path

from ..sweep.store import HIST_CSV, RUNS_CSV, atomic_write, to_csv
from ._common import Check, Context

EXPERIMENTS = {
    "E1": ("e1_conservation", "conservation law: drift vs step size, m = 1 sphere, flow"),
    "E2": ("e2_linear", "linear DEQ: excess loss vs predicted envelope"),
    "E3": ("e3_readout", "read-out DEQ inside / outside the theorem"),
    "E4": ("e4_conditioning", "conditioning of I - A against its bounds"),
    "E5": ("e5_fixed_point", "fixed-point iterations vs spectral radius"),
    "E6": ("e6_nonlinear", "nonlinear DEQ: drift of Q"),
    "E7": ("e7_step_size", "step size: where linear convergence stops"),
    "E8": ("e8_initialization", "initialization: lambda_min(Q_0) down to near-singular I - A_0"),
    "E9": ("e9_recovery", "read-out DEQ: teacher recovery and noisy targets"),
    "E10": ("e10_inexact", "inexact gradients (JFB, Neumann): rate and drift of Q"),
    "E11": ("e11_paper_scalar", "paper A.1-A.2: scalar linear and sigmoid runs vs the authors'"),
    "E12": ("e12_paper_backward", "paper A.3: backward approximations vs the authors'"),
    "E13": ("e13_paper_weak", "paper A.4: weak nonlinearity s + eps tanh s vs the authors'"),
}

__all__ = ["EXPERIMENTS", "reproduce", "run_experiment"]


def run_experiment(name: str, quick: bool, fig_dir) -> dict:
    """Run one experiment with numba and BLAS pinned to one thread; never raises.

    Returns a picklable dict: ``checks``, ``rows``, ``hists``, ``figures``,
    ``seconds``, ``warnings`` and ``error`` (empty when it ran through).
    """
    import numba
    from threadpoolctl import threadpool_limits

    module, _ = EXPERIMENTS[name]
    ctx = Context(name, quick, Path(fig_dir))
    error = ""
    saved = numba.get_num_threads()
    t0 = time.perf_counter()
    with threadpool_limits(1), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        numba.set_num_threads(1)
        try:
            importlib.import_module(f"{__name__}.{module}").run(ctx)
        except Exception as exc:  # reported in the summary, the other experiments go on
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            error = f"{type(exc).__name__}: {exc} [{Path(tb.filename).name}:{tb.lineno}]"
            ctx.check("experiment ran", "runs to the end", error, False)
        finally:
            numba.set_num_threads(saved)
    return {
        "name": name, "checks": ctx.checks, "rows": ctx.rows, "hists": ctx.hists,
        "figures": ctx.figures, "seconds": time.perf_counter() - t0,
        "warnings": sorted({str(w.message).split(";")[0][:120] for w in caught}),
        "n_warnings": len(caught), "error": error,
    }


def _warm_up() -> None:
    """Compile (or load from numba's cache) every kernel the experiments use, once."""
    import numpy as np

    from .. import data, fixed_point
    from .._flow import flow
    from .._training import train

    X, Y, _ = data.linear_teacher(8, 2, 2, seed=0)
    A, B = data.init_params(2, 2, scale_A=0.3, scale_B=1.0, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fixed_point(X, A, B)
        fixed_point(X, A, B, method="anderson")
        for ss in (True, False):
            train("linear", X, Y, A, B, lr=0.01, steps=2, sufficient_stats=ss)
            flow("linear", X, Y, A, B, t_end=0.01, sufficient_stats=ss)
        train("readout", X, np.tanh(X[:, 0]), A, B, lr=0.01, steps=2, activation="tanh")
        for gs in ("jfb", "neumann"):
            train("linear", X, Y, A, B, lr=0.01, steps=2, grad_solver=gs, sufficient_stats=False)


def reproduce(out="results/reproduce", *, quick: bool = False, only=None, workers=None,
              progress: bool = True, stream=None) -> Path:
    """Run the experiments and write tables, figures and ``summary.md`` into ``out``.

    Parameters
    ----------
    out : path
    quick : bool
        Small sizes (the README's main-job command: under 3 minutes on 2 cores,
        most of it numba compiling on the first run).
    only : list of str, optional
        Experiment names (``"E1"`` ... ``"E13"``); default all.
    workers : int, optional
        Processes; default 1 (in this process).
    progress : bool
        One line per finished experiment on stderr.

    Returns
    -------
    Path of ``summary.md``.
    """
    import sys

    stream = sys.stderr if stream is None else stream
    names = list(EXPERIMENTS) if not only else [n.upper() for n in only]
    for n in names:
        if n not in EXPERIMENTS:
            raise ValueError(f"only: unknown experiment {n!r} (expected {list(EXPERIMENTS)})")
    out = Path(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    workers = 1 if workers is None else int(workers)
    results = []

    def report(res):
        if progress:
            bad = sum(c.holds is False for c in res["checks"])
            print(f"{res['name']} done in {res['seconds']:.1f} s: {len(res['checks'])} checks, "
                  f"{bad} failing{'; ' + res['error'] if res['error'] else ''}",
                  file=stream, flush=True)

    if progress:
        print(f"reproduce{' --quick' if quick else ''}: {', '.join(names)} -> {out} "
              "(the first run compiles the numba kernels: about a minute or two)",
              file=stream, flush=True)
    if workers <= 1 or len(names) == 1:
        for n in names:
            results.append(run_experiment(n, quick, fig_dir))
            report(results[-1])
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        from ..sweep.executors import PinnedEnv, init_worker

        _warm_up()  # fill numba's cache once, so that the workers only load it
        with PinnedEnv(), cf.ProcessPoolExecutor(
            max_workers=min(workers, len(names)), mp_context=mp.get_context("spawn"),
            initializer=init_worker,
        ) as pool:
            futs = [pool.submit(run_experiment, n, quick, fig_dir) for n in names]
            for fut in cf.as_completed(futs):
                results.append(fut.result())
                report(results[-1])
        results.sort(key=lambda r: names.index(r["name"]))
    elapsed = time.perf_counter() - t0
    write_tables(out, results)
    summary = out / "summary.md"
    atomic_write(summary, summary_markdown(results, quick=quick, elapsed=elapsed,
                                           workers=workers))
    return summary


def write_tables(out: Path, results: list[dict]) -> None:
    """``runs.csv`` and ``histories.csv`` (long format) from the experiments' records."""
    rows = [r for res in results for r in res["rows"]]
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    atomic_write(out / RUNS_CSV, to_csv(rows, cols))
    hcols: list[str] = ["run_id"]
    hrows = []
    for res in results:
        for rid, h in res["hists"].items():
            hcols.extend(k for k in h if k not in hcols)
            length = len(next(iter(h.values())))
            hrows.extend({"run_id": rid, **{k: h[k][i] for k in h}} for i in range(length))
    atomic_write(out / HIST_CSV, to_csv(hrows, hcols))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary_markdown(results: list[dict], *, quick: bool, elapsed: float, workers: int) -> str:
    """The summary table: one row per prediction."""
    import numba
    import numpy

    import deqbench

    from .._platform import cpu_model

    checks: list[Check] = [c for r in results for c in r["checks"]]
    n_bad = sum(c.holds is False for c in checks)
    n_ok = sum(c.holds is True for c in checks)
    lines = [
        f"# deqbench reproduce{' --quick' if quick else ''}",
        "",
        f"Command: `deqbench reproduce{' --quick' if quick else ''}`"
        + (f" (workers {workers})" if workers > 1 else "")
        + f". Wall time {elapsed:.0f} s (numba compilation included when its cache was cold).",
        f"deqbench {deqbench.__version__}, numpy {numpy.__version__}, numba "
        f"{numba.__version__}, Python {platform.python_version()}; CPU: {cpu_model()}.",
        "",
        f"**{n_ok} predictions hold, {n_bad} do not, "
        f"{sum(c.holds is None for c in checks)} reported without a prediction.** "
        "Sections (§N) refer to docs/theory.md.",
        "",
        "| exp | prediction | predicted | measured | holds |",
        "|---|---|---|---|---|",
    ]
    for c in checks:
        lines.append(f"| {c.experiment} | {_cell(c.claim)} | {_cell(c.predicted)} | "
                     f"{_cell(c.measured)} | {c.verdict} |")
    lines += ["", "## Experiments", "", "| exp | what | time (s) | runs | figure |",
              "|---|---|---|---|---|"]
    for r in results:
        figs = ", ".join(f"[{f}](figures/{f})" for f in r["figures"])
        lines.append(f"| {r['name']} | {EXPERIMENTS[r['name']][1]} | {r['seconds']:.1f} | "
                     f"{len(r['rows'])} | {figs} |")
    warn = sorted({w for r in results for w in r["warnings"]})
    if warn:
        lines += ["", "Warnings raised inside the runs (expected for the large step sizes of "
                  "E7 and the Picard divergence of E5):", ""]
        lines += [f"- {_cell(w)}" for w in warn[:12]]
    lines += ["", "Tables: `runs.csv` (one row per run), `histories.csv` (one row per run and "
              "recorded step). Figures: `figures/`. Re-plot with `deqbench plot DIR`.", ""]
    return "\n".join(lines)


def _dump(obj) -> str:  # pragma: no cover - debugging helper
    return json.dumps(obj, indent=1, default=str)
