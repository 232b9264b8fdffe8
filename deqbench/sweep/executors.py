"""Where runs execute: in this process, a local pool of worker processes, or Dask.

Every executor pulls runs from a :class:`Feed` only when it has room (a bounded
number in flight) and yields one event per finished run: ``(spec, record,
None)``, or ``(spec, None, reason)`` when the run was *lost* (its worker
process died, or Dask gave up on it). The runner decides what to do with a
lost run (retry, or record it ``crashed``).

The local pool is built here rather than on ``concurrent.futures``: a
``ProcessPoolExecutor`` breaks for good when one worker dies, while this pool
replaces the dead worker, reports only the run it held, and kills a run that
exceeds its ``timeout``. Workers die with their parent (``PR_SET_PDEATHSIG``
on Linux, and a thread that watches the parent pid everywhere).
"""

from __future__ import annotations

import collections
import contextlib
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

__all__ = ["Feed", "execute", "iter_dask", "iter_local", "iter_serial", "pin_threads"]

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
    (dict of lists), ``time_s, n_warnings, warning, host, pid, finished_at``.
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
            history = _history_lists(out.get("history") or {})
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


def _history_lists(history: Mapping) -> dict:
    out = {}
    length = None
    for k, v in history.items():
        a = np.asarray(v)
        if a.ndim != 1:
            raise ValueError(f"history[{k!r}] must be 1-D, got shape {a.shape}")
        if length is not None and a.shape[0] != length:
            raise ValueError(f"history arrays must have equal lengths ({k!r}: {a.shape[0]})")
        length = a.shape[0]
        out[str(k)] = [_plain(x) for x in a.tolist()]
    return out


# ---------------------------------------------------------------------------
# what to run next
# ---------------------------------------------------------------------------


class Feed:
    """The runs still to start: retries first, then the (lazy) runs of the grid."""

    def __init__(self, specs):
        self._specs = iter(specs)
        self._again: collections.deque = collections.deque()

    def again(self, spec: RunSpec) -> None:
        """Start ``spec`` again before any new run."""
        self._again.append(spec)

    def next(self) -> RunSpec | None:
        """The next run to start, or None when there is none now (a retry may come later)."""
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
    """A local pool process: receive a spec, send back its record, until told to stop."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    init_worker()
    conn.send(_READY)  # imports done: a run's timeout starts when it is handed over
    while True:
        try:
            spec = conn.recv()
        except (EOFError, OSError):
            return
        if spec is None:
            return
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
        self.spec: RunSpec | None = None
        self.started = 0.0

    def give(self, spec: RunSpec) -> bool:
        try:
            self.conn.send(spec)
        except OSError:  # died while idle
            return False
        self.spec, self.started = spec, time.monotonic()
        return True

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


def iter_local(feed: Feed, workers: int, run_fn=None, timeout: float | None = None):
    """Runs in ``workers`` spawned processes, one run per process at a time.

    A worker that dies costs the run it held (yielded as lost) and is
    replaced; a run past ``timeout`` seconds (counted from when a started
    worker takes it) has its worker killed and is yielded with status
    ``timeout``. At most one run beyond those in the workers is taken from
    ``feed``.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    pool: list[_Worker] = []
    early_deaths = 0

    def replace_early(i: int) -> None:
        nonlocal early_deaths
        early_deaths += 1
        if early_deaths > 3 * workers:
            raise SweepError(f"local worker processes die before running anything "
                             f"({pool[i].death()}); try --executor serial to see why")
        pool[i].kill()
        pool[i] = _Worker(ctx, run_fn)

    try:
        pool = [_Worker(ctx, run_fn) for _ in range(workers)]
        pending = None
        while True:
            if pending is None:
                pending = feed.next()
            for i, w in enumerate(pool):  # hand runs to started, idle workers
                if pending is None:
                    break
                if w.ready and w.spec is None:
                    if w.give(pending):
                        pending = feed.next()
                    else:  # died while idle: not the run's fault
                        replace_early(i)
            if pending is None and all(w.spec is None for w in pool):
                return
            watch = [w for w in pool if w.spec is not None or not w.ready]
            wait_s = None
            if timeout is not None and any(w.spec is not None for w in watch):
                now = time.monotonic()
                wait_s = max(0.0, min(w.started + timeout - now for w in watch
                                      if w.spec is not None))
            ready = wait([x for w in watch for x in (w.conn, w.proc.sentinel)], timeout=wait_s)
            for i, w in enumerate(pool):
                if w.spec is None and w.ready:
                    continue
                msg = None
                if w.conn in ready or w.proc.sentinel in ready:
                    with contextlib.suppress(EOFError, OSError):
                        if w.conn.poll():
                            msg = w.conn.recv()
                if not w.ready:  # starting up
                    if msg == _READY:
                        w.ready = True
                    elif w.proc.sentinel in ready or w.conn in ready:
                        replace_early(i)
                    continue
                spec = w.spec
                if msg is not None:
                    w.spec = None
                    yield spec, msg, None
                elif w.conn in ready or w.proc.sentinel in ready:
                    reason = w.death()
                    w.kill()
                    pool[i] = _Worker(ctx, run_fn)
                    yield spec, None, reason
                elif timeout is not None and time.monotonic() - w.started >= timeout:
                    w.kill()
                    pool[i] = _Worker(ctx, run_fn)
                    yield spec, failure_record(
                        spec, "timeout", f"killed after the grid's timeout of {timeout:g} s",
                        time_s=time.monotonic() - w.started), None
    finally:
        for w in pool:
            with contextlib.suppress(OSError):
                if w.spec is None and w.proc.is_alive():
                    w.conn.send(None)
        for w in pool:
            w.proc.join(timeout=1 if w.spec is None else 0)
            w.kill()


# ---------------------------------------------------------------------------
# Dask
# ---------------------------------------------------------------------------


def connect_dask(workers: int | None, scheduler: str | None, connect_timeout: float = 10.0):
    """A ``distributed.Client``: to ``scheduler``, or to a new local cluster of
    ``workers`` single-threaded processes. Checks package versions on every worker."""
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
        cluster = LocalCluster(n_workers=workers or default_workers(), threads_per_worker=1,
                               processes=True, dashboard_address=None, env=dict(PIN_ENV))
        client = Client(cluster)
    try:
        check_versions(client, timeout=60 if not scheduler else max(connect_timeout, 10))
    except BaseException:
        close_dask(client)
        raise
    return client


def close_dask(client) -> None:
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


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


def iter_dask(feed: Feed, workers: int | None, scheduler: str | None, run_fn=None,
              connect_timeout: float = 10.0, in_flight: int | None = None):
    """Runs on a Dask cluster, at most ``in_flight`` submitted at a time (default:
    twice the cluster's threads). A run whose worker dies (``KilledWorker``) is lost."""
    from distributed import as_completed

    client = connect_dask(workers, scheduler, connect_timeout)
    futs: dict = {}
    attempt = collections.Counter()
    try:
        limit = in_flight or max(2, 2 * sum(client.nthreads().values()))
        pending = as_completed()

        def submit():
            while len(futs) < limit and (spec := feed.next()) is not None:
                attempt[spec.run_id] += 1
                f = client.submit(execute, spec, run_fn, pure=False,
                                  key=f"deqbench-run-{spec.run_id}-{attempt[spec.run_id]}")
                futs[f] = spec
                pending.add(f)

        submit()
        while futs:
            fut = next(pending)
            spec = futs.pop(fut)
            try:
                rec = fut.result()
            except Exception as exc:  # KilledWorker and friends: lost, not failed
                yield spec, None, f"{type(exc).__name__}: {_one_line(exc, 200)}"
            else:
                yield spec, rec, None
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
    return iter_dask(feed, workers, scheduler, run_fn, connect_timeout)
