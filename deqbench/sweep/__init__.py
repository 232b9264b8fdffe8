"""Resumable parameter sweeps: grid files, seeding, executors, atomic storage.

A sweep is the Cartesian product of the lists in a TOML grid file (see
:func:`load_grid`), times ``replicates`` seeds, expanded lazily. Every run

* has a stable content-hash ``run_id`` (its run function, parameters, sweep
  seed and replicate index; the order of the grid does not matter);
* gets its random state from ``numpy.random.SeedSequence(seed).spawn(replicates)``
  (runs of the same replicate share data and initialization across the swept
  hyper-parameters: common random numbers, so differences come from the
  parameters and not from the draw);
* is executed by a *run function* ``fn(params, seed_sequence) -> dict`` in a
  worker (local process pool, or Dask), with numba and BLAS pinned to one
  thread per worker;
* is stored atomically (temporary file, then ``os.replace``), in one of two
  formats. ``parquet`` (the default, :mod:`.parquet`): finished runs are
  committed in batches of Parquet parts, compacted at the end into
  ``DIR/runs.parquet`` (one row per run) and ``DIR/histories.parquet`` (long
  table: one row per run and recorded step). ``csv`` (:mod:`.store`):
  ``DIR/runs/<run_id>.json`` and ``DIR/histories/<run_id>.csv`` per run,
  consolidated into ``DIR/runs.csv`` and ``DIR/histories.csv``. A killed
  sweep leaves only complete files, and re-running it skips every run that
  has an intact record.

A run function that raises, or reports a non-``ok`` status, is recorded with
its status and error message; a run whose worker process dies is stored
``lost`` and started again (``retries``), then recorded ``crashed``; a run
past the grid's ``timeout`` is recorded ``timeout``; the sweep goes on.

Modules: :mod:`.grid` (grid files, lazy runs, hashes), :mod:`.run_functions`
(``train``, ``gd``), :mod:`.store` (the directory: lock, records, tables),
:mod:`.parquet` (the columnar store, pyarrow imported lazily), :mod:`.status`
(what a directory holds, read-only), :mod:`.executors`
(serial, local pool, Dask), :mod:`.runner` (:func:`run_sweep`).
"""

from .executors import EXECUTORS, PIN_ENV, execute, pin_threads
from .grid import Grid, GridError, RunSpec, grid_hash, load_grid, parse_grid, resolve_run, run_id_of
from .run_functions import TRAIN_PARAMS, build_problem, run_gd, run_train, summarize_history
from .runner import Progress, SweepResult, run_sweep
from .status import sweep_status
from .store import (
    FAILED,
    HIST_CSV,
    LOST,
    RUNS_CSV,
    Store,
    SweepError,
    atomic_write,
    read_csv,
    to_csv,
)

__all__ = [
    "EXECUTORS",
    "FAILED",
    "HIST_CSV",
    "LOST",
    "PIN_ENV",
    "RUNS_CSV",
    "TRAIN_PARAMS",
    "Grid",
    "GridError",
    "Progress",
    "RunSpec",
    "Store",
    "SweepError",
    "SweepResult",
    "atomic_write",
    "build_problem",
    "execute",
    "grid_hash",
    "load_grid",
    "parse_grid",
    "pin_threads",
    "read_csv",
    "resolve_run",
    "run_gd",
    "run_id_of",
    "run_sweep",
    "run_train",
    "summarize_history",
    "sweep_status",
    "to_csv",
]
