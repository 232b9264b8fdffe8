"""Running a sweep: plan what is left, feed an executor, store each run, report.

See :func:`run_sweep`. The directory is locked for the whole sweep; its grid
hash must match the grid's (unless ``force``); stored records are read once,
at the start; a run lost to a dead worker is stored ``lost`` while it waits
to start again, up to ``retries`` times, then stored ``crashed``; finished
runs are committed in batches (one flush every ``table_interval`` seconds, or
every :data:`FLUSH_RUNS` runs),
and the tables are consolidated when the sweep ends (normally, by an error,
or by Ctrl-C).
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import _validate as v
from .._platform import versions
from .executors import EXECUTORS, Feed, failure_record, iter_runs
from .grid import Grid
from .store import FAILED, LOST, Store, SweepError, stored_format

FORMATS = ("csv", "parquet")
#: Runs buffered at most between two flushes, whatever ``table_interval``: the main
#: process's memory holds no more finished records than this (short runs finish by the
#: thousand per second).
FLUSH_RUNS = 2048

MAX_WORKERS = 1024
"""Most worker processes a sweep starts (each is an interpreter with numba loaded, and
the local pool starts them all at once)."""

__all__ = ["Progress", "SweepResult", "run_sweep"]


class Progress:
    """The progress bar of a sweep on stderr (tqdm): runs stored out of the grid's, with
    ok, failed and lost counts, rate and ETA.

    Drawn only when ``stream`` is a terminal (tqdm's ``disable=None``): a log
    file or a pipe gets no bar, only the messages of :meth:`write`.
    """

    def __init__(self, total: int, skipped: int = 0, *, stream=None, enabled: bool = True):
        from tqdm import tqdm

        self.total, self.skipped = total, skipped
        self.ok = self.failed = self.lost = 0
        self.stream = sys.stderr if stream is None else stream
        self._bar = tqdm(total=total, initial=skipped, file=self.stream, unit="run",
                         disable=None if enabled else True, dynamic_ncols=True,
                         mininterval=0.5, smoothing=0.05)
        #: whether a bar is drawn (enabled, on a terminal)
        self.shown = not self._bar.disable
        self._postfix()

    def _postfix(self) -> None:
        if self.shown:
            lost = f" lost {self.lost}" if self.lost else ""
            self._bar.set_postfix_str(f"ok {self.ok} failed {self.failed}{lost}", refresh=False)

    def skip(self, n: int = 1) -> None:
        """``n`` runs found stored once the sweep had started (a reordered grid)."""
        self.skipped += n
        self._bar.update(n)

    def update(self, failed: bool) -> None:
        """One run stored, failed or not."""
        if failed:
            self.failed += 1
        else:
            self.ok += 1
        self._postfix()
        self._bar.update(1)

    def lose(self) -> None:
        """One run lost to a dead worker (it runs again, or is stored ``crashed``)."""
        self.lost += 1
        self._postfix()
        self._bar.refresh()

    def write(self, message: str) -> None:
        """A message line on the stream, above the bar when there is one."""
        if self.shown:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        self._bar.close()


@dataclass
class SweepResult:
    """Counts of a finished (or interrupted) sweep.

    ``ok`` and ``failed`` count the runs this call stored whose run function
    returned (``failed``: a failure status such as ``error``, ``diverged`` or
    ``timeout``); ``crashed`` the runs whose worker died ``retries + 1``
    times; ``lost`` the runs left without a result (never started, or stored
    ``lost`` with a restart pending: the next resume runs them); ``retried``
    how often a run was started again after its worker died.
    """

    out: Path
    total: int
    skipped: int
    ok: int
    failed: int
    lost: int
    elapsed_s: float
    retried: int = 0
    damaged: int = 0
    format: str = "parquet"
    crashed: int = 0

    @property
    def complete(self) -> bool:
        return self.lost == 0

    def summary(self) -> str:
        """One line: ok, failed, crashed, lost and skipped counts, and the time taken."""
        retried = f", {self.retried} restarted after a worker died" if self.retried else ""
        return (f"{self.ok} ok, {self.failed} failed, {self.crashed} crashed, {self.lost} lost, "
                f"{self.skipped} already done{retried} in {self.elapsed_s:.1f} s")


def _check_run_fn(run_fn, executor: str) -> None:
    if run_fn is not None and executor != "serial":
        import pickle

        try:
            pickle.dumps(run_fn)
        except Exception as exc:
            raise ValueError(
                f"run_fn must be picklable (a module-level function) for executor "
                f"{executor!r}: {type(exc).__name__}: {exc}"
            ) from None


def _meta(grid: Grid, old: dict | None, force: bool) -> dict:
    """``sweep.json`` for ``grid``; a different stored grid is refused unless ``force``."""
    h = grid.hash
    old_hash = (old or {}).get("grid_hash")
    earlier = list((old or {}).get("earlier_grids", ()))
    if old_hash is not None and old_hash != h:
        if not force:
            raise SweepError(
                f"holds the runs of a different grid ({old.get('name')!r}, "
                f"{old.get('runs')} runs, grid hash {old_hash}; this grid: {h}); use another "
                "--out, or --force to add these runs to it")
        earlier.append(old_hash)
    meta = {
        "name": grid.name, "run": grid.run, "seed": grid.seed, "replicates": grid.replicates,
        "fixed": grid.fixed, "grid": grid.axes, "runs": len(grid), "grid_hash": h,
        "timeout": grid.timeout, **versions(),
    }
    if earlier:
        meta["earlier_grids"] = earlier
    return meta


def run_sweep(
    grid: Grid,
    out,
    *,
    executor: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    run_fn: Callable | None = None,
    table_interval: float = 2.0,
    stream=None,
    retries: int = 2,
    force: bool = False,
    connect_timeout: float = 10.0,
    format: str | None = None,
) -> SweepResult:
    """Run every run of ``grid`` not already stored in ``out``.

    Parameters
    ----------
    grid : Grid
        From :func:`load_grid` or :func:`parse_grid`.
    out : path
        Sweep directory (created if needed), locked while the sweep runs.
    executor : {"local", "dask", "serial"}
        ``local``: a pool of ``workers`` spawned processes (default: the usable
        CPUs; at most :data:`MAX_WORKERS`), which replaces a worker that dies and
        enforces the grid's ``timeout``; ``dask``: a Dask cluster (``scheduler`` address, or a new
        ``LocalCluster``); ``serial``: in this process (debugging).
    retry_failed : bool
        Also re-run stored runs whose status is a failure (including ``crashed``).
    run_fn : callable, optional
        Overrides the grid's run function (must be picklable for ``local``/``dask``).
    table_interval : float
        Seconds between flushes (at most; also one every :data:`FLUSH_RUNS`
        runs): finished runs are appended to ``runs.csv``
        (csv) or committed as one Parquet part (parquet; a SIGKILL loses at
        most this much work); the tables are consolidated at the end.
    retries : int
        How often a run lost to a dead worker (stored ``lost`` meanwhile) is
        started again before it is stored as ``crashed``.
    force : bool
        Accept a directory that holds the runs of a different grid (the tables
        then hold both).
    connect_timeout : float
        Seconds to reach ``scheduler``.
    format : {"csv", "parquet"}, optional
        The store: per-run JSON/CSV files consolidated into ``runs.csv`` and
        ``histories.csv``, or Parquet parts compacted into ``runs.parquet`` and
        ``histories.parquet``. Default: the directory's, else parquet.

    Raises
    ------
    SweepError
        One line: ``out`` is not a writable directory, is locked by another
        process, holds a different grid, the scheduler cannot be reached, or
        the disk filled up (every finished run is kept).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")
    if workers is not None:
        workers = v.integer("workers", workers, minimum=1, maximum=MAX_WORKERS)
    if isinstance(retries, bool) or int(retries) != retries or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    connect_timeout = v.positive("connect_timeout", connect_timeout)
    _check_run_fn(run_fn, executor)
    out = Path(out)
    with _open_store(out, format) as store:
        try:
            old = store.meta()
            if old is None and not force:
                _check_no_meta(out)
            store.write_meta({**_meta(grid, old, force), "format": store.format})
        except SweepError as exc:
            raise SweepError(f"{out}: {exc}") from None
        except OSError as exc:
            raise SweepError(f"{exc.filename or out}: cannot write ({exc.strerror})") from None
        return _run(grid, store, executor=executor, workers=workers, scheduler=scheduler,
                    progress=progress, retry_failed=retry_failed, run_fn=run_fn,
                    table_interval=table_interval, stream=stream, retries=retries,
                    connect_timeout=connect_timeout)


def _check_no_meta(out: Path) -> None:
    """A ``sweep.json`` that exists but does not read (torn, edited) hides which grid the
    directory holds: a :class:`SweepError` that says to pass ``force``."""
    from .store import META

    if (out / META).exists():
        raise SweepError(f"{META} is unreadable: which grid this directory holds cannot be "
                         "told; use another --out, or --force to add these runs to it "
                         f"({META} is then rewritten for this grid)")


def _open_store(out: Path, format: str | None) -> Store:
    """The store of ``out`` in its format (``format`` must agree with a stored one)."""
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    had = stored_format(out)
    if format is not None and had is not None and format != had:
        raise SweepError(f"{out}: holds a {had} store, not {format}; use --format {had} or "
                         "another --out")
    if (format or had or "parquet") == "parquet":
        from .parquet import ParquetStore

        return ParquetStore(out)
    return Store(out)


def _run(grid, store, *, executor, workers, scheduler, progress, retry_failed, run_fn,
         table_interval, stream, retries, connect_timeout) -> SweepResult:
    records = store.records()  # read once at the start (slim: status, index, attempts)
    specs = grid.specs

    def done(rec) -> bool:
        status = rec.get("status")
        return status != LOST and not (retry_failed and status in FAILED)

    counted = set()  # stored runs of this grid found by their index: known before starting
    for rid, rec in records.items():
        i = rec.get("index")
        if isinstance(i, int) and 0 <= i < len(specs) and done(rec) \
                and specs[i].run_id == rid:
            counted.add(rid)
    # a run stored lost (its worker died, then the sweep stopped) keeps its count of attempts
    attempts = collections.Counter({rid: int(rec.get("attempts") or 0)
                                    for rid, rec in records.items()
                                    if rec.get("status") == LOST})
    bar = Progress(len(grid), len(counted), stream=stream, enabled=progress)
    if store.damaged:
        bar.write(f"{len(store.damaged)} damaged or incomplete record(s) removed; those runs "
                  "run again")
    skipped = 0

    def todo():
        nonlocal skipped
        for spec in specs:
            rec = records.get(spec.run_id)
            if rec is not None and done(rec):
                skipped += 1
                if spec.run_id not in counted:  # stored at another index (reordered grid)
                    bar.skip()
            else:
                yield spec

    feed = Feed(todo())
    t0 = time.monotonic()
    ok = failed = crashed = retried = 0
    last_flush = time.monotonic()
    stop: SweepError | None = None
    events = iter_runs(feed, executor, workers=workers, scheduler=scheduler, run_fn=run_fn,
                       timeout=grid.timeout, connect_timeout=connect_timeout)
    try:
        for spec, rec, reason in events:
            rid = spec.run_id
            if rec is None:  # its worker died
                attempts[rid] += 1
                if attempts[rid] <= retries:
                    retried += 1
                    rec = failure_record(spec, LOST, f"{reason}; starting it again "
                                         f"({attempts[rid]}/{retries})")
                    rec["attempts"] = attempts[rid]
                    store.write(rec)
                    store.flush()  # seen by --status now, and kept if this process dies
                    last_flush = time.monotonic()
                    bar.lose()
                    bar.write(f"run {rid} lost ({reason}); starting it again "
                              f"({attempts[rid]}/{retries})")
                    feed.again(spec)
                    continue
                rec = failure_record(spec, "crashed", f"{reason}, {attempts[rid]} times")
            rec["attempts"] = attempts[rid] + (rec["status"] != "crashed")
            status = store.write(rec)["status"]  # (kept by the store, not here)
            crashed += status == "crashed"
            failed += status in FAILED and status != "crashed"
            ok += status not in FAILED
            bar.update(status in FAILED)
            if time.monotonic() - last_flush >= table_interval or \
                    store.pending >= FLUSH_RUNS:
                store.flush()
                last_flush = time.monotonic()
    except OSError as exc:  # the store cannot write (disk full, permissions)
        stop = SweepError(
            f"sweep stopped: {exc.filename or store.out}: {exc.strerror or exc}; the "
            f"{store.stored} runs stored before are kept, re-run the same command to resume")
    finally:
        events.close()  # stops the workers (also on Ctrl-C)
        try:
            store.finish(records)  # those stored before, and the store's own
        except OSError as exc:
            if stop is None:  # (an exception on its way out goes on regardless)
                stop = SweepError(f"{exc.filename or store.out}: cannot write the tables "
                                  f"({exc.strerror}); the {store.stored} runs stored are "
                                  "kept, re-run the same command to consolidate")
        bar.close()
    if stop is not None:
        raise stop
    lost = len(grid) - skipped - ok - failed - crashed
    return SweepResult(store.out, len(grid), skipped, ok, failed, lost,
                       time.monotonic() - t0, retried, len(store.damaged), store.format,
                       crashed)
