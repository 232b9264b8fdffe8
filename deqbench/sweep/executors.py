"""Where runs execute: in this process, a local pool of worker processes, or Dask.

Every executor pulls runs from a :class:`Feed` only when it has room (a bounded
number in flight), in batches sized from the measured cost of a run (several
short runs per task, about 0.2 s of work), and yields one event per finished
run: ``(spec, record, None)``, or ``(spec, None, reason)`` when the run was
*lost* (its worker process died, or Dask gave up on it). The runner decides
what to do with a lost run (retry, or record it ``crashed``). A worker's
death never costs more than its batch: the local pool learns each run's
record as it finishes, so only the run that was running is lost and the
unstarted rest goes back to the feed; a lost Dask batch goes back one run per
task.

The local pool is built here rather than on ``concurrent.futures``: a
``ProcessPoolExecutor`` breaks for good when one worker dies, while this pool
replaces the dead worker, reports only the run it held, and kills a run that
exceeds its ``timeout`` (on Dask, a grid with a ``timeout`` runs each task's
batch in such a pool of one process, kept from task to task). Workers die with their parent
(``PR_SET_PDEATHSIG`` on Linux, and a thread that watches the parent pid
everywhere).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import os
import signal
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .._platform import default_workers, versions
from .grid import RunSpec, resolve_run
from .store import SweepError

__all__ = ["Feed", "execute", "execute_batch", "iter_dask", "iter_local", "iter_serial",
           "pin_threads"]

EXECUTORS = ("local", "dask", "serial")
PIN_ENV = {
    "NUMBA_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


# ---------------------------------------------------------------------------
# one run, in whatever process
# ---------------------------------------------------------------------------

_PINNED = False


def pin_threads() -> None:
    """One numba thread and one BLAS thread in this process (called in every worker)."""
    global _PINNED
    import numba

    numba.set_num_threads(1)  # thread-local in numba: set before every run
    if not _PINNED:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
        _PINNED = True


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _record(spec: RunSpec, status: str, error: str, *, metrics=None, history=None,
            time_s: float = 0.0, caught=(), pid: int | None = None, host: str | None = None
            ) -> dict:
    return {
        "run_id": spec.run_id,
        "index": spec.index,
        "status": status,
        "error": error,
        "replicate": spec.replicate,
        "seed": spec.seed,
        "params": dict(spec.params),
        "metrics": metrics or {},
        "history": history or {},
        "time_s": time_s,
        "n_warnings": len(caught),
        "warning": _one_line(caught[0].message) if caught else "",
        "host": host or socket.gethostname(),
        "pid": os.getpid() if pid is None else pid,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def failure_record(spec: RunSpec, status: str, error: str, time_s: float = 0.0) -> dict:
    """The record of a run that did not return: ``crashed`` (its worker kept dying) or
    ``timeout`` (killed after the grid's ``timeout``)."""
    return _record(spec, status, _one_line(error), time_s=time_s, pid=0)


def execute(spec: RunSpec, run_fn: Callable | None = None) -> dict:
    """Run one spec and return its record; never raises for a failing run.

    The record holds ``run_id, index, status, error, params, metrics, history``
    (columns, :func:`_history_arrays`), ``time_s, n_warnings, warning, host, pid,
    finished_at``.
    Warnings raised inside the run function are counted, not propagated.
    """
    pin_threads()
    t0 = time.perf_counter()
    status, error, metrics, history = "error", "", {}, {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn = run_fn if run_fn is not None else resolve_run(spec.run)
            out = fn(dict(spec.params), spec.seed_sequence())
            if not isinstance(out, Mapping):
                raise TypeError(f"run function returned {type(out).__name__}, expected a dict")
            status = str(out.get("status", "ok"))
            error = _one_line(out.get("error", ""))
            metrics = {k: _plain(v) for k, v in dict(out.get("metrics", {})).items()}
            history = _history_arrays(out.get("history") or {})
        except Exception as exc:
            status = "error"
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" [{Path(tb[-1].filename).name}:{tb[-1].lineno}]" if tb else ""
            error = _one_line(f"{type(exc).__name__}: {exc}{where}")
            metrics, history = {}, {}
    return _record(spec, status, error, metrics=metrics, history=history,
                   time_s=time.perf_counter() - t0, caught=caught)


def _plain(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return _one_line(repr(v))


def _history_arrays(history: Mapping) -> dict:
    """A run's history as equal-length 1-D columns: numbers and booleans as int64, float64
    or bool NumPy arrays (pickled to the parent and written to Parquet without a Python
    object per value: a 20000-step run records 220000 values), anything else as a list
    of plain values."""
    out = {}
    length = None
    for k, v in history.items():
        a = np.asarray(v)
        if a.ndim != 1:
            raise ValueError(f"history[{k!r}] must be 1-D, got shape {a.shape}")
        if length is not None and a.shape[0] != length:
            raise ValueError(f"history arrays must have equal lengths ({k!r}: {a.shape[0]})")
        length = a.shape[0]
        kind = a.dtype.kind
        if kind == "b":
            out[str(k)] = a.astype(np.bool_)
        elif kind == "i" or (kind == "u" and a.dtype.itemsize < 8):
            out[str(k)] = a.astype(np.int64)
        elif kind == "f":
            out[str(k)] = a.astype(np.float64)
        else:
            out[str(k)] = [_plain(x) for x in a.tolist()]
    return out


# ---------------------------------------------------------------------------
# what to run next
# ---------------------------------------------------------------------------


class Feed:
    """The runs still to start, in batches (several short runs per task).

    Runs handed back by :meth:`again` (a restart, or the unstarted runs of a
    batch whose worker died) come first, one per batch; then the (lazy) runs
    of the grid, as many per batch as make about ``target_s`` seconds of work
    at the mean time of the runs finished so far (:meth:`observe`): one
    before any has finished, at most ``max_batch``.
    """

    def __init__(self, specs, *, target_s: float = 0.2, max_batch: int = 64):
        self._specs = iter(specs)
        self._again: collections.deque = collections.deque()
        self.target_s, self.max_batch = target_s, max_batch
        self.mean_s: float | None = None  # moving average of a run's time

    def again(self, spec: RunSpec) -> None:
        """Start ``spec`` again (on its own) before any new run."""
        self._again.append(spec)

    def observe(self, time_s: float) -> None:
        """A run took ``time_s`` seconds (an exponential moving average, weight 0.1:
        the first runs' compilation fades out)."""
        t = max(float(time_s), 0.0)
        self.mean_s = t if self.mean_s is None else 0.9 * self.mean_s + 0.1 * t

    def batch_size(self) -> int:
        if self.mean_s is None:
            return 1
        if self.mean_s * self.max_batch <= self.target_s:
            return self.max_batch
        return max(1, min(self.max_batch, math.ceil(self.target_s / self.mean_s)))

    def take(self) -> list[RunSpec]:
        """The next batch to start; ``[]`` when there is none now (a restart may come later)."""
        if self._again:
            return [self._again.popleft()]
        return list(itertools.islice(self._specs, self.batch_size()))

    def next(self) -> RunSpec | None:
        """The next single run to start, or None when there is none now."""
        if self._again:
            return self._again.popleft()
        return next(self._specs, None)


def iter_serial(feed: Feed, run_fn=None):
    """Every run in this process, one after the other (no timeout: nothing can stop a run)."""
    while (spec := feed.next()) is not None:
        yield spec, execute(spec, run_fn), None


# ---------------------------------------------------------------------------
# local process pool
# ---------------------------------------------------------------------------


class PinnedEnv:
    """Set :data:`PIN_ENV` while worker processes are spawned, then restore."""

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in PIN_ENV}
        os.environ.update(PIN_ENV)
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def init_worker() -> None:
    """Initializer of a pool process: one numba and BLAS thread."""
    os.environ.update(PIN_ENV)
    pin_threads()


def die_with_parent(parent: int) -> None:
    """End this process when ``parent`` ends, even by SIGKILL.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; everywhere: a daemon thread
    that checks ``os.getppid()`` every half second.
    """
    import ctypes
    import ctypes.util
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="deqbench-parent-watch", daemon=True).start()


def _worker_main(conn, run_fn, parent: int) -> None:
    """A local pool process: receive a batch of specs, send back each run's record as it
    finishes, until told to stop."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    init_worker()
    conn.send(_READY)  # imports done: a run's timeout starts when it is handed over
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        for spec in batch:
            conn.send(execute(spec, run_fn))


_READY = "ready"


class _Worker:
    def __init__(self, ctx, run_fn):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, run_fn, os.getpid()),
                                name="deqbench-sweep-worker", daemon=True)
        with PinnedEnv():
            self.proc.start()
        child.close()
        self.ready = False
        self.specs: collections.deque = collections.deque()  # its batch, not yet reported
        self.started = 0.0  # when the run now running (specs[0]) started

    def give(self, batch: list[RunSpec]) -> bool:
        try:
            self.conn.send(batch)
        except OSError:  # died while idle
            return False
        self.specs.extend(batch)
        self.started = time.monotonic()
        return True

    def receive(self) -> tuple[list, bool]:
        """The records sent so far, and whether the pipe is closed (the process died)."""
        got = []
        try:
            while len(got) < len(self.specs) and self.conn.poll():
                got.append(self.conn.recv())
        except (EOFError, OSError):
            return got, True
        return got, False

    def death(self) -> str:
        self.proc.join(timeout=5)
        code = self.proc.exitcode
        if code is not None and code < 0:
            try:
                return f"worker process killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"worker process killed by signal {-code}"
        return f"worker process exited with code {code}"

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


def iter_local(feed: Feed, workers: int, run_fn=None, timeout: float | None = None,
               keep: list | None = None):
    """Runs in ``workers`` spawned processes, one batch (:meth:`Feed.take`) per process
    at a time; each run's record comes back as it finishes.

    A worker that dies costs the run it was running (yielded as lost; the
    unstarted rest of its batch goes back to ``feed``) and is replaced; a run
    past ``timeout`` seconds (counted from when a started worker begins it)
    has its worker killed and is yielded with status ``timeout``. At most one
    batch beyond those in the workers is taken from ``feed``. ``keep``: a
    list of worker processes to use, and to leave the idle ones in at the end
    for the next call (a process start costs about a second); by default the
    workers are started here and stopped at the end.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    pool: list[_Worker] = [] if keep is None else keep
    early_deaths = 0

    def replace_early(i: int) -> None:
        nonlocal early_deaths
        early_deaths += 1
        if early_deaths > 3 * workers:
            raise SweepError(f"local worker processes die before running anything "
                             f"({pool[i].death()}); try --executor serial to see why")
        pool[i].kill()
        pool[i] = _Worker(ctx, run_fn)

    def replace(i: int) -> RunSpec:
        """Kill worker ``i`` and start another; its running run, the rest back to ``feed``."""
        w = pool[i]
        w.kill()
        pool[i] = _Worker(ctx, run_fn)
        spec = w.specs.popleft()
        for rest in w.specs:
            feed.again(rest)
        return spec

    try:
        for w in [w for w in pool if not w.proc.is_alive()]:  # kept ones that died idle
            w.kill()
            pool.remove(w)
        while len(pool) < workers:
            pool.append(_Worker(ctx, run_fn))
        pending: list[RunSpec] = []
        while True:
            if not pending:
                pending = feed.take()
            for i, w in enumerate(pool):  # hand batches to started, idle workers
                if not pending:
                    break
                if w.ready and not w.specs:
                    if w.give(pending):
                        pending = feed.take()
                    else:  # died while idle: not the runs' fault
                        replace_early(i)
            if not pending and all(not w.specs for w in pool):
                return
            watch = [w for w in pool if w.specs or not w.ready]
            wait_s = None
            if timeout is not None and any(w.specs for w in watch):
                now = time.monotonic()
                wait_s = max(0.0, min(w.started + timeout - now for w in watch if w.specs))
            ready = wait([x for w in watch for x in (w.conn, w.proc.sentinel)], timeout=wait_s)
            for i, w in enumerate(pool):
                if not w.ready:  # starting up
                    if w.conn in ready or w.proc.sentinel in ready:
                        msg = None
                        with contextlib.suppress(EOFError, OSError):
                            if w.conn.poll():
                                msg = w.conn.recv()
                        if msg == _READY:
                            w.ready = True
                        else:
                            replace_early(i)
                    continue
                if not w.specs:
                    continue
                exited = w.proc.sentinel in ready
                # (the records a worker sent before it died are still in the pipe)
                got, closed = w.receive() if exited or w.conn in ready else ([], False)
                for rec in got:
                    spec = w.specs.popleft()
                    w.started = time.monotonic()
                    feed.observe(rec.get("time_s", 0.0))
                    yield spec, rec, None
                if w.specs and (closed or exited):
                    reason = w.death()
                    yield replace(i), None, reason
                elif exited:  # died with nothing left to run
                    w.kill()
                    pool[i] = _Worker(ctx, run_fn)
                elif w.specs and timeout is not None and \
                        (elapsed := time.monotonic() - w.started) >= timeout:
                    spec = replace(i)
                    yield spec, failure_record(
                        spec, "timeout", f"killed after the grid's timeout of {timeout:g} s",
                        time_s=elapsed), None
    finally:
        if keep is not None:  # the idle live workers stay for the next call
            for w in [w for w in pool if w.specs or not w.ready or not w.proc.is_alive()]:
                w.kill()
                pool.remove(w)
        else:
            for w in pool:
                with contextlib.suppress(OSError):
                    if not w.specs and w.proc.is_alive():
                        w.conn.send(None)
            for w in pool:
                w.proc.join(timeout=1 if not w.specs else 0)
                w.kill()


# ---------------------------------------------------------------------------
# Dask
# ---------------------------------------------------------------------------


def connect_dask(workers: int | None, scheduler: str | None, connect_timeout: float = 10.0,
                 isolate: bool = False):
    """A ``distributed.Client``: to ``scheduler``, or to a new local cluster of
    ``workers`` single-threaded processes. Checks package versions on every worker, and
    with ``isolate`` (runs in child processes: a grid's ``timeout``) that every worker
    may start processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise SweepError(
            "--executor dask needs the optional dependency: pip install 'deqbench[dask]'"
        ) from None
    if scheduler:
        try:
            client = Client(scheduler, timeout=connect_timeout)
        except Exception as exc:  # ValueError, OSError, TimeoutError: all mean "not there"
            raise SweepError(f"--scheduler {scheduler!r}: cannot connect within "
                             f"{connect_timeout:g} s ({_one_line(exc, 160)})") from None
    else:
        import dask

        # a daemonic worker process may not start the child processes of ``isolate``
        with dask.config.set({"distributed.worker.daemon": not isolate}):
            cluster = LocalCluster(n_workers=workers or default_workers(),
                                   threads_per_worker=1, processes=True,
                                   dashboard_address=None, env=dict(PIN_ENV))
        client = Client(cluster)
    try:
        check_versions(client, timeout=60 if not scheduler else max(connect_timeout, 10))
        if isolate:
            check_can_fork(client)
    except BaseException:
        close_dask(client)
        raise
    return client


def close_dask(client) -> None:
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def _daemonic() -> bool:
    import multiprocessing as mp

    return bool(mp.current_process().daemon)


def check_can_fork(client) -> None:
    """Raise SweepError naming the Dask workers that may not start processes (daemonic:
    started by a nanny with the default ``distributed.worker.daemon: true``)."""
    bad = sorted(w for w, daemonic in client.run(_daemonic).items() if daemonic)
    if bad:
        raise SweepError(
            f"the grid's timeout runs each task in a child process, and Dask workers "
            f"{', '.join(bad)} may not start one: start them with 'dask worker --no-nanny' "
            "or the config distributed.worker.daemon: false, or drop the timeout")


def check_versions(client, timeout: float = 60) -> None:
    """Raise SweepError naming every worker whose package versions differ from ours."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except Exception:
        raise SweepError(f"no Dask worker joined the scheduler within {timeout:g} s") from None
    mine = versions()
    theirs = client.run(versions)
    bad = []
    for worker, vers in theirs.items():
        diff = {k: (mine[k], vers.get(k)) for k in mine if vers.get(k) != mine[k]}
        if diff:
            bad.append(f"{worker}: " + ", ".join(f"{k} {a} here vs {b} there"
                                                 for k, (a, b) in diff.items()))
    if bad:
        raise SweepError("package versions differ on Dask workers: " + "; ".join(bad))


_KEPT = threading.local()


def _kept_child(run_fn) -> list:
    """The child process that runs this thread's Dask tasks with a timeout, kept between
    tasks (:func:`iter_local`'s ``keep``; started anew for another ``run_fn``)."""
    import pickle

    key = pickle.dumps(run_fn)
    held = getattr(_KEPT, "held", None)
    if held is None or held[0] != key:
        for w in held[1] if held else ():
            w.kill()
        held = _KEPT.held = (key, [])
    return held[1]


def execute_batch(specs: list[RunSpec], run_fn=None, timeout: float | None = None) -> list:
    """A Dask task: run ``specs``, return ``(record, None)`` or ``(None, reason)`` per run.

    Without ``timeout`` the runs execute in the worker's thread. With it they
    execute in a child process of the worker (:func:`iter_local`, one process,
    kept from one task to the next in the same worker thread), which is
    killed when a run exceeds ``timeout`` (the record says ``timeout``) and
    replaced when it dies (that run is lost, the others go on).
    """
    if timeout is None:
        return [(execute(spec, run_fn), None) for spec in specs]
    feed = Feed(specs, max_batch=len(specs))
    feed.observe(0.0)  # the whole batch to the child at once
    out = {}
    for spec, rec, reason in iter_local(feed, 1, run_fn, timeout, keep=_kept_child(run_fn)):
        out[spec.run_id] = (rec, reason)
    return [out[spec.run_id] for spec in specs]


def iter_dask(feed: Feed, workers: int | None, scheduler: str | None, run_fn=None,
              connect_timeout: float = 10.0, in_flight: int | None = None,
              timeout: float | None = None):
    """Runs on a Dask cluster in batches (:meth:`Feed.take`, one task each), at most
    ``in_flight`` tasks submitted at a time (default: twice the cluster's threads).

    A task whose worker dies (``KilledWorker`` and friends) costs its batch:
    a batch of one run is yielded as lost; the runs of a larger batch go back
    to ``feed`` one by one (which of them killed the worker is not known, so
    none is counted as lost). ``timeout``: see :func:`execute_batch`.
    """
    from distributed import as_completed

    client = connect_dask(workers, scheduler, connect_timeout, isolate=timeout is not None)
    futs: dict = {}
    tasks = itertools.count()
    try:
        limit = in_flight or max(2, 2 * sum(client.nthreads().values()))
        pending = as_completed()

        def submit():
            while len(futs) < limit and (batch := feed.take()):
                f = client.submit(execute_batch, batch, run_fn, timeout, pure=False,
                                  key=f"deqbench-runs-{batch[0].run_id}-{next(tasks)}")
                futs[f] = batch
                pending.add(f)

        submit()
        while futs:
            fut = next(pending)
            batch = futs.pop(fut)
            try:
                results = fut.result()
            except Exception as exc:  # KilledWorker and friends: lost, not failed
                if len(batch) == 1:
                    yield batch[0], None, f"{type(exc).__name__}: {_one_line(exc, 200)}"
                else:
                    for spec in batch:
                        feed.again(spec)
            else:
                for spec, (rec, reason) in zip(batch, results, strict=True):
                    if rec is not None:
                        feed.observe(rec.get("time_s", 0.0))
                    yield spec, rec, reason
            fut.release()
            submit()
    finally:
        for f in futs:
            f.cancel()
        close_dask(client)


def iter_runs(feed: Feed, executor: str, *, workers=None, scheduler=None, run_fn=None,
              timeout=None, connect_timeout: float = 10.0) -> Iterator:
    """The events of ``executor`` (see the module docstring)."""
    if executor == "serial":
        return iter_serial(feed, run_fn)
    if executor == "local":
        return iter_local(feed, workers or default_workers(), run_fn, timeout)
    return iter_dask(feed, workers, scheduler, run_fn, connect_timeout, timeout=timeout)
