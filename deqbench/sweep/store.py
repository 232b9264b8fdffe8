"""The on-disk state of a sweep directory, written atomically and locked.

``DIR/runs/<run_id>.json`` (the commit point of a run) and
``DIR/histories/<run_id>.csv`` are the per-run records; ``DIR/runs.csv`` (one
row per run) and ``DIR/histories.csv`` (long table: one row per run and
recorded step) are consolidated from them when a sweep ends; while it runs,
rows are appended to ``runs.csv`` in batches. The per-run files replace their
names atomically (a killed sweep leaves a run stored or not) and reach the disk
in batches, one sync per flush (:meth:`Store.flush`). All tables are written
with Python's ``csv`` module. ``DIR/sweep.json`` describes the grid (with its
hash); ``DIR/.lock`` is held (``flock``) by the one process that may write
the directory and names its pid and host.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import functools
import io
import json
import os
import secrets
import socket
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from .._training import FAILED_STATUSES

__all__ = ["FAILED", "LOST", "SweepError", "Store", "atomic_write", "read_csv", "stored_format",
           "to_csv"]

RUNS_DIR = "runs"
HIST_DIR = "histories"
RUNS_CSV = "runs.csv"
HIST_CSV = "histories.csv"
RUNS_PQ = "runs.parquet"
HIST_PQ = "histories.parquet"
META = "sweep.json"
LOCK = ".lock"
#: Statuses that ``--retry-failed`` re-runs: the sweep's own, and every failed
#: status of ``train`` (one list, in ``deqbench._training``).
FAILED = ("error", "crashed", "timeout", *FAILED_STATUSES)
#: The status of a run lost to a dead worker while it waits to run again (not a result:
#: a resume runs it again, counting its attempts on).
LOST = "lost"
#: Columns of ``runs.csv`` before the parameters, and after the metrics.
HEAD = ("run_id", "status", "error", "replicate", "seed")
TAIL = ("time_s", "n_warnings", "warning", "host", "pid", "finished_at", "attempts")


class SweepError(RuntimeError):
    """A sweep that cannot start or go on; the message is one line saying why and what to do."""


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------


def temporary_name(path: Path) -> Path:
    """A temporary file beside ``path`` that no other writer shares: this host's name, the
    pid and a random token (``.NAME.HOST.PID.TOKEN.tmp``; removed by the next lock holder
    when a killed writer leaves it)."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}."
                          f"{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def _atomic_open(path: Path, sync: bool = True):
    """A text file that replaces ``path`` when the block ends without error.

    The temporary file (:func:`temporary_name`) is removed if the block fails. The
    replacement is atomic against a kill of this process in any case; with
    ``sync`` the data is also on disk (``fsync``) before it replaces ``path``
    (a power cut then leaves the old file or the new one, never a torn one).
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "w", newline="") as fh:
            yield fh
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    with _atomic_open(path) as fh:
        fh.write(text)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _write_rows(fh, rows: Iterable[Mapping], columns: list[str], header: bool = True) -> None:
    w = csv.writer(fh, lineterminator="\n")
    if header:
        w.writerow(columns)
    for row in rows:
        w.writerow([_cell(row.get(c)) for c in columns])


def to_csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    _write_rows(buf, rows, columns)
    return buf.getvalue()


def _parse_cell(s: str):
    if s == "":
        return None
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        return s


def read_csv(path) -> list[dict]:
    """Rows of a CSV written by this module, with numbers parsed (empty cells are ``None``)."""
    with open(path, newline="") as fh:
        return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return next(csv.reader(fh), [])


def run_columns(records: Iterable[Mapping]) -> list[str]:
    """Columns of ``runs.csv``: :data:`HEAD`, parameters, metrics, :data:`TAIL`."""
    params: dict[str, None] = {}
    metrics: dict[str, None] = {}
    for r in records:
        params.update(dict.fromkeys(r.get("params", {})))
        metrics.update(dict.fromkeys(r.get("metrics", {})))
    return _column_order(params, metrics)


def _column_order(params: Iterable[str], metrics: Iterable[str]) -> list[str]:
    taken = set(HEAD) | set(TAIL) | set(params)
    return [*HEAD, *params, *(k for k in metrics if k not in taken), *TAIL]


def _flat(r: Mapping) -> dict:
    row = {**r.get("metrics", {}), **r.get("params", {})}
    row.update({k: r.get(k) for k in (*HEAD, *TAIL)})
    return row


# ---------------------------------------------------------------------------
# the directory
# ---------------------------------------------------------------------------


def _lock_holder(path: Path) -> str:
    try:
        pid, _, host = path.read_text().strip().partition(" ")
    except OSError:
        return "an unknown process"
    return f"pid {pid} on host {host}" if pid else "an unknown process"


class Store:
    """A sweep directory opened for writing: exclusively locked until :meth:`close`.

    Raises :class:`SweepError` when ``out`` is not a usable directory or another
    process (any host sharing the file system with ``flock``) holds its lock.
    """

    def __init__(self, out):
        import fcntl

        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise SweepError(f"{self.out}: exists and is not a directory (give --out a "
                             "directory)")
        self.runs = self.out / RUNS_DIR
        self.hist = self.out / HIST_DIR
        try:
            for d in self._dirs():
                d.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SweepError(f"{exc.filename or self.out}: cannot write the sweep directory "
                             f"({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SweepError(f"{self.out / LOCK}: cannot lock ({exc.strerror}); this file "
                                 "system may not support flock") from None
            raise SweepError(f"{self.out}: in use by another sweep "
                             f"({_lock_holder(self.out / LOCK)}); wait for it to end or stop "
                             "it, or use another --out") from None
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        for d in (self.out, *self._dirs()):
            for tmp in d.glob(".*.tmp"):  # left by a killed writer (we hold the lock)
                tmp.unlink(missing_ok=True)
        self.damaged: list[str] = []
        self.stored = 0  # runs committed to disk by this process
        self._pending: list[dict] = []
        self._live_columns: list[str] | None = None
        self._unsynced: list[Path] = []  # per-run files written since the last sync
        # parameter and metric names of the records read or written (columns of runs.csv)
        self._params: dict[str, None] = {}
        self._metrics: dict[str, None] = {}
        self._written: dict[str, int | None] = {}  # run_id -> index of the runs written

    format = "csv"

    def _dirs(self) -> tuple[Path, ...]:
        return (self.runs, self.hist)

    def close(self) -> None:
        """Release the lock (the lock file stays; it is empty when nobody holds it)."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- metadata ----------------------------------------------------------

    def meta(self) -> dict | None:
        """``sweep.json``, or None when absent or unreadable."""
        return read_meta(self.out)

    def write_meta(self, meta: Mapping) -> None:
        atomic_write(self.out / META, json.dumps(meta, indent=1, default=str))

    # -- records -----------------------------------------------------------

    def records(self) -> dict[str, dict]:
        """Every intact stored record, by run_id, as the runner keeps it (:func:`_slim`:
        run_id, status, index, attempts); read once per sweep.

        A record that does not parse, is not a record of this file's run, or
        says its run has history rows when the history file is missing or
        empty is *damaged*: its files are removed (so the run is run again)
        and its run id is listed in :attr:`damaged`.
        """
        out = {}
        for p in self.runs.glob("*.json"):
            rec = _load_record(p)
            if rec is None or (rec.get("history_rows") and not _nonempty(
                    self.hist / f"{p.stem}.csv")):
                self.damaged.append(p.stem)
                self.forget(p.stem)
                continue
            self._columns(rec)
            out[rec["run_id"]] = _slim(rec)
        return out

    def write(self, record: dict) -> dict:
        """Store one finished run (history first, then the record: the commit point).

        Each file replaces its name atomically, so a kill of this process
        leaves the run stored or not; the files reach the disk at the next
        :meth:`flush` (one sync per batch, not two ``fsync`` per run).
        Returns what the runner keeps of it (:func:`_slim`).
        """
        rid = record["run_id"]
        hist = {k: v.tolist() if hasattr(v, "tolist") else v
                for k, v in (record.get("history") or {}).items()}  # NumPy: Python scalars
        if hist:
            cols = ["run_id", *hist]
            n = len(next(iter(hist.values())))
            with _atomic_open(self.hist / f"{rid}.csv", sync=False) as fh:
                _write_rows(fh, ({"run_id": rid, **{k: hist[k][i] for k in hist}}
                                 for i in range(n)), cols)
        else:
            (self.hist / f"{rid}.csv").unlink(missing_ok=True)
        slim = {k: v for k, v in record.items() if k != "history"}
        slim["history_rows"] = len(next(iter(hist.values()))) if hist else 0
        with _atomic_open(self.runs / f"{rid}.json", sync=False) as fh:
            fh.write(json.dumps(slim, default=str))
        self.stored += 1
        self._unsynced += [self.hist / f"{rid}.csv", self.runs / f"{rid}.json"]
        self._pending.append(slim)
        self._columns(slim)
        self._written[rid] = slim.get("index")
        return _slim(slim)

    def _columns(self, record: Mapping) -> None:
        """Note the parameter and metric names of a record (the columns of ``runs.csv``)."""
        self._params.update(dict.fromkeys(record.get("params", {})))
        self._metrics.update(dict.fromkeys(record.get("metrics", {})))

    @property
    def pending(self) -> int:
        """Runs written since the last :meth:`flush`."""
        return len(self._pending)

    def flush(self) -> None:
        """Called every few seconds while a sweep runs: the runs written since the last
        flush reach the disk, and are appended to ``runs.csv``."""
        self.sync()
        batch, self._pending = self._pending, []
        self.append_runs(batch)

    def finish(self, records: Mapping[str, dict]) -> None:
        """Called when a sweep ends: consolidate the tables, of the runs of ``records``
        (those stored before, from :meth:`records`) and of those written since."""
        self.sync()
        self._pending = []
        self.write_tables(records)

    def sync(self) -> None:
        """Put the per-run files written since the last call on disk: one ``syncfs`` of
        the directory's file system (Linux), else an ``fsync`` of each of those files and
        of their folders."""
        if not self._unsynced:
            return
        paths, self._unsynced = self._unsynced, []
        fd = os.open(self.out, os.O_RDONLY)
        try:
            if _syncfs(fd):
                return
        finally:
            os.close(fd)
        for p in paths:
            with contextlib.suppress(FileNotFoundError), open(p, "rb") as fh:
                os.fsync(fh.fileno())
        for d in self._dirs():
            dfd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def forget(self, run_id: str) -> None:
        (self.runs / f"{run_id}.json").unlink(missing_ok=True)
        (self.hist / f"{run_id}.csv").unlink(missing_ok=True)

    # -- tables ------------------------------------------------------------

    def append_runs(self, batch: list[dict]) -> None:
        """Append finished runs to ``runs.csv`` while a sweep runs (one write per batch).

        The columns are those of the existing table, or of the first batch;
        :meth:`write_tables` at the end puts every column in and each run once.
        """
        if not batch:
            return
        path = self.out / RUNS_CSV
        if self._live_columns is None:
            self._live_columns = _csv_header(path) if _nonempty(path) else []
            if not self._live_columns:
                self._live_columns = run_columns(batch)
                atomic_write(path, to_csv([], self._live_columns))
            _cut_partial_line(path)  # an append cut short by a kill
        buf = io.StringIO()
        _write_rows(buf, (_flat(r) for r in batch), self._live_columns, header=False)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            data = buf.getvalue().encode()
            while data:  # one write() in practice; loop on a short one
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)

    def write_tables(self, records: Mapping[str, dict], *, histories: bool = True) -> None:
        """Consolidate ``runs.csv`` (and ``histories.csv``) from the stored records of the
        runs of ``records`` (``run_id`` and ``index`` are read) and of the runs written
        by this store, in grid order.

        Streams: one record file at a time is read, so that memory holds the run
        ids, not the records.
        """
        index = {r["run_id"]: r.get("index") for r in records.values()}
        index.update(self._written)
        ids = sorted(index, key=lambda rid: (index[rid] or 0, rid))
        columns = _column_order(self._params, self._metrics)
        with_history = []

        def rows():
            for rid in ids:
                rec = _load_record(self.runs / f"{rid}.json")
                if rec is not None:
                    if rec.get("history_rows"):
                        with_history.append(rid)
                    yield _flat(rec)

        with _atomic_open(self.out / RUNS_CSV) as fh:
            _write_rows(fh, rows(), columns)
        self._live_columns = None
        if histories:
            self._merge_histories(with_history)

    def _merge_histories(self, run_ids: list[str]) -> None:
        """Stream every history file into ``histories.csv`` (memory: one file at a time)."""
        header: dict[str, None] = {}
        paths = []
        for rid in run_ids:
            p = self.hist / f"{rid}.csv"
            if _nonempty(p):
                header.update(dict.fromkeys(_csv_header(p)))
                paths.append(p)
        with _atomic_open(self.out / HIST_CSV) as fh:
            if not header:
                return
            cols = list(header)
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(cols)
            for p in paths:
                with open(p, newline="") as src:
                    reader = csv.reader(src)
                    names = next(reader, [])
                    if names == cols:
                        w.writerows(reader)
                    else:
                        where = [names.index(c) if c in names else None for c in cols]
                        w.writerows([row[i] if i is not None else "" for i in where]
                                    for row in reader)


@functools.cache
def _libc_syncfs():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").syncfs
    except (OSError, AttributeError):
        return None


def _syncfs(fd: int) -> bool:
    """``syncfs(fd)`` where the C library has it (Linux); False when it does not."""
    syncfs = _libc_syncfs()
    return syncfs is not None and syncfs(fd) == 0


def _cut_partial_line(path: Path, block: int = 4096) -> None:
    """Truncate ``path`` after its last newline (drop a line a killed writer left half done)."""
    with open(path, "rb+") as fh:
        end = size = fh.seek(0, os.SEEK_END)
        while end > 0:
            start = max(end - block, 0)
            fh.seek(start)
            nl = fh.read(end - start).rfind(b"\n")
            if nl >= 0:
                end = start + nl + 1
                break
            end = start
        if end != size:
            fh.truncate(end)


def _slim(record: Mapping) -> dict:
    """What the runner keeps of a stored run: ``run_id``, ``status``, ``index``, ``attempts``."""
    return {"run_id": record["run_id"], "status": sys.intern(str(record["status"])),
            "index": record.get("index"), "attempts": record.get("attempts")}


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _load_record(path: Path) -> dict | None:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("run_id") != path.stem or not isinstance(
            rec.get("status"), str):
        return None
    return rec


def stored_format(out) -> str | None:
    """``"csv"`` or ``"parquet"``: how ``out`` stores its runs (None for a new directory)."""
    out = Path(out)
    if not out.is_dir():
        return None
    fmt = (read_meta(out) or {}).get("format")
    if fmt is None:  # sweep.json missing, or older than its "format"
        fmt = "csv" if (out / RUNS_DIR).is_dir() else "parquet" if (out / "parts").is_dir() \
            else None
    return fmt


def read_meta(out) -> dict | None:
    try:
        meta = json.loads((Path(out) / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None
