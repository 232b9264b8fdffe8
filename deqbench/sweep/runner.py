"""Running a sweep: plan what is left, feed an executor, store each run, report.

See :func:`run_sweep`. The directory is locked for the whole sweep; its grid
hash must match the grid's (unless ``force``); stored records are read once,
at the start; lost runs (a dead worker) are retried up to ``retries`` times,
then stored as ``crashed``; finished runs are appended to ``runs.csv`` in
batches, and the tables are consolidated when the sweep ends (normally,
by an error, or by Ctrl-C).
"""

from __future__ import annotations

import collections
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._platform import versions
from .executors import EXECUTORS, Feed, failure_record, iter_runs
from .grid import Grid
from .store import FAILED, Store, SweepError, stored_format

FORMATS = ("csv", "parquet")

__all__ = ["Progress", "SweepResult", "run_sweep"]


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """A one-line progress bar on stderr: done, failed, remaining, elapsed, ETA.

    On a terminal the line is redrawn in place; otherwise a line is printed at
    most every ``interval`` seconds and at the end.
    """

    def __init__(self, total: int, skipped: int = 0, *, stream=None, enabled: bool = True,
                 interval: float = 5.0, width: int = 24):
        self.total, self.skipped = total, skipped
        self.done = self.failed = 0
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval, self.width = interval, width
        self.t0 = time.monotonic()
        self._last = -math.inf

    def line(self) -> str:
        finished = self.done + self.failed
        todo = self.total - self.skipped
        left = todo - finished
        elapsed = time.monotonic() - self.t0
        eta = elapsed / finished * left if finished else math.nan
        frac = (self.skipped + finished) / self.total if self.total else 1.0
        fill = int(round(frac * self.width))
        bar = "#" * fill + "-" * (self.width - fill)
        skip = f" ({self.skipped} skipped)" if self.skipped else ""
        return (f"[{bar}] {self.skipped + finished}/{self.total}{skip} "
                f"ok {self.done} failed {self.failed} left {left} "
                f"elapsed {_hms(elapsed)} ETA {_hms(eta)}")

    def update(self, failed: bool, *, force: bool = False) -> None:
        if failed:
            self.failed += 1
        else:
            self.done += 1
        self.draw(force=force)

    def draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + self.line())
        elif force or now - self._last >= self.interval:
            self.stream.write(self.line() + "\n")
        else:
            return
        self._last = now
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r" + self.line() + "\n")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


@dataclass
class SweepResult:
    """Counts of a finished (or interrupted) sweep.

    ``failed`` includes runs stored as ``crashed`` (their worker died
    ``retries + 1`` times) and ``timeout``; ``retried`` counts runs lost to a
    dead worker and started again; ``lost`` counts runs left without a record.
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
    format: str = "csv"

    @property
    def complete(self) -> bool:
        return self.lost == 0


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
        CPUs), which replaces a worker that dies and enforces the grid's
        ``timeout``; ``dask``: a Dask cluster (``scheduler`` address, or a new
        ``LocalCluster``); ``serial``: in this process (debugging).
    retry_failed : bool
        Also re-run stored runs whose status is a failure (including ``crashed``).
    run_fn : callable, optional
        Overrides the grid's run function (must be picklable for ``local``/``dask``).
    table_interval : float
        Seconds between flushes: finished runs are appended to ``runs.csv``
        (csv) or committed as one Parquet part (parquet; a SIGKILL loses at
        most this much work); the tables are consolidated at the end.
    retries : int
        How often a run lost to a dead worker is started again before it is
        stored as ``crashed``.
    force : bool
        Accept a directory that holds the runs of a different grid (the tables
        then hold both).
    connect_timeout : float
        Seconds to reach ``scheduler``.
    format : {"csv", "parquet"}, optional
        The store: per-run JSON/CSV files consolidated into ``runs.csv`` and
        ``histories.csv``, or Parquet parts compacted into ``runs.parquet`` and
        ``histories.parquet`` (needs pyarrow). Default: the directory's, else csv.

    Raises
    ------
    SweepError
        One line: ``out`` is not a writable directory, is locked by another
        process, holds a different grid, the scheduler cannot be reached, or
        the disk filled up (every finished run is kept).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")
    if workers is not None and (isinstance(workers, bool) or int(workers) < 1):
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    if isinstance(retries, bool) or int(retries) != retries or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    _check_run_fn(run_fn, executor)
    out = Path(out)
    with _open_store(out, format) as store:
        try:
            store.write_meta({**_meta(grid, store.meta(), force), "format": store.format})
        except SweepError as exc:
            raise SweepError(f"{out}: {exc}") from None
        except OSError as exc:
            raise SweepError(f"{exc.filename or out}: cannot write ({exc.strerror})") from None
        return _run(grid, store, executor=executor, workers=workers, scheduler=scheduler,
                    progress=progress, retry_failed=retry_failed, run_fn=run_fn,
                    table_interval=table_interval, stream=stream, retries=retries,
                    connect_timeout=connect_timeout)


def _open_store(out: Path, format: str | None) -> Store:
    """The store of ``out`` in its format (``format`` must agree with a stored one)."""
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {format!r}")
    had = stored_format(out)
    if format is not None and had is not None and format != had:
        raise SweepError(f"{out}: holds a {had} store, not {format}; use --format {had} or "
                         "another --out")
    if (format or had) == "parquet":
        from .parquet import ParquetStore

        return ParquetStore(out)
    return Store(out)


def _run(grid, store, *, executor, workers, scheduler, progress, retry_failed, run_fn,
         table_interval, stream, retries, connect_timeout) -> SweepResult:
    records = store.records()  # the only read of the stored records
    specs = grid.specs

    def done(rec) -> bool:
        return not (retry_failed and rec.get("status") in FAILED)

    counted = set()  # stored runs of this grid found by their index: known before starting
    for rid, rec in records.items():
        i = rec.get("index")
        if isinstance(i, int) and 0 <= i < len(specs) and done(rec) \
                and specs[i].run_id == rid:
            counted.add(rid)
    bar = Progress(len(grid), len(counted), stream=stream, enabled=progress)
    if store.damaged:
        print(f"{len(store.damaged)} damaged or incomplete record(s) removed; those runs run "
              "again", file=bar.stream)
    skipped = 0

    def todo():
        nonlocal skipped
        for spec in specs:
            rec = records.get(spec.run_id)
            if rec is not None and done(rec):
                skipped += 1
                if spec.run_id not in counted:  # stored at another index (reordered grid)
                    bar.skipped += 1
            else:
                yield spec

    feed = Feed(todo())
    t0 = time.monotonic()
    ok = failed = retried = 0
    attempts: collections.Counter = collections.Counter()
    last_flush = time.monotonic()
    stop: SweepError | None = None
    bar.draw(force=True)
    events = iter_runs(feed, executor, workers=workers, scheduler=scheduler, run_fn=run_fn,
                       timeout=grid.timeout, connect_timeout=connect_timeout)
    try:
        for spec, rec, reason in events:
            rid = spec.run_id
            if rec is None:
                attempts[rid] += 1
                if attempts[rid] <= retries:
                    retried += 1
                    print(f"\nrun {rid} lost ({reason}); starting it again "
                          f"({attempts[rid]}/{retries})", file=bar.stream)
                    feed.again(spec)
                    continue
                rec = failure_record(spec, "crashed", f"{reason}, {attempts[rid]} times")
            rec["attempts"] = attempts[rid] + (rec["status"] != "crashed")
            records[rid] = slim = store.write(rec)
            bad = slim["status"] in FAILED
            failed += bad
            ok += not bad
            bar.update(bad)
            if time.monotonic() - last_flush >= table_interval:
                store.flush()
                last_flush = time.monotonic()
    except OSError as exc:  # the store cannot write (disk full, permissions)
        stop = SweepError(
            f"sweep stopped: {exc.filename or store.out}: {exc.strerror or exc}; the "
            f"{store.stored} runs stored before are kept, re-run the same command to resume")
    finally:
        events.close()  # stops the workers (also on Ctrl-C)
        try:
            store.finish(records)
        except OSError as exc:
            if stop is None:  # (an exception on its way out goes on regardless)
                stop = SweepError(f"{exc.filename or store.out}: cannot write the tables "
                                  f"({exc.strerror}); the {store.stored} runs stored are "
                                  "kept, re-run the same command to consolidate")
        bar.close()
    if stop is not None:
        raise stop
    lost = len(grid) - skipped - ok - failed
    return SweepResult(store.out, len(grid), skipped, ok, failed, lost,
                       time.monotonic() - t0, retried, len(store.damaged), store.format)
