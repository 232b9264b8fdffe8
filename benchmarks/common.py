"""Seeded problem builders and helpers shared by the asv suite.

Conventions of the suite (see docs/benchmarks.md):

* Every ``setup`` builds its data with the builders below AND calls the
  benchmarked function once, so numba compilation (or loading the on-disk
  cache) is never inside a timed region. Compile time is measured on its own,
  in a fresh interpreter (``bench_compile.py``).
* ``track_*`` values are phrased so that LOWER IS BETTER (ratios to a
  prediction, errors, drift), so ``asv continuous`` / ``asv compare`` flag a
  rise as a regression for every benchmark in the suite.
* Parameter lists are sorted so that the first value of every parameter is the
  smallest (cheapest) case; ``tests/test_benchmarks.py`` runs exactly that case.
* The default suite is for regression tracking (``tools/gate.sh``): few
  timed cases, each one call of >= ~10 ms per sample (:data:`N_AT`, :class:`Bench`),
  next to ``track_`` values that do not depend on the machine (:class:`Tracked`:
  counts, allocations, time ratios to numpy's matmul measured in one process).
  ``DEQBENCH_FULL=1`` switches every class to its full grid and adds the
  :func:`full_only` classes.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import deqbench as db

#: ``DEQBENCH_FULL=1`` selects the full parameter grids.
FULL = os.environ.get("DEQBENCH_FULL", "").strip().lower() not in ("", "0", "false", "no")

#: Solver tolerance used by every benchmark unless a class says otherwise.
TOL = 1e-10

#: ``DEQBENCH_COUNTS_ONLY=1`` (set by ``tools/gate.sh --counts``): the time ratios
#: of the ``track_`` sweeps (:func:`cost_ratio`, :func:`best_time`) are NaN at
#: once; that gate compares the exact counts only, and the ratios take most of a
#: sweep's time.
COUNTS_ONLY = os.environ.get("DEQBENCH_COUNTS_ONLY", "").strip().lower() not in (
    "", "0", "false", "no")


def grid(default, full):
    """The default parameter list, or ``full`` under ``DEQBENCH_FULL=1``."""
    return list(full) if FULL else list(default)


#: Clock of every timing in the suite: CPU time of the benchmark process.
#: With BLAS and numba pinned to one thread (asv.conf.json), CPU time equals the
#: compute time and is far less sensitive than wall time to other processes
#: sharing the machine (on a loaded 2-core box wall times of the same call
#: vary by 10x; CPU times by a few percent). Resolution: clock_gettime's
#: CLOCK_PROCESS_CPUTIME_ID, 1 ns on Linux.
TIMER = time.process_time


class Bench:
    """Timing attributes shared by every ``time_`` benchmark of the suite.

    What asv does with them (asv_runner 0.3): each of ``rounds`` processes runs
    ``setup`` and then takes between ``repeat[0]`` and ``repeat[1]`` samples,
    stopping early after ``repeat[2]`` seconds; ``setup`` runs again before
    EVERY sample, and a sample times ``number`` calls. ``asv continuous``
    compares the medians of all samples of a commit and flags a case only if
    the ratio is beyond ``--factor`` AND a Mann-Whitney U test on the samples
    gives p < 0.002 (which needs at least 6 samples per commit).

    * ``number = 1``: one call per sample. Bodies are sized (``N_AT``) so one
      call takes at least ~10 ms on a 2-core laptop-class CPU: far above the
      timer's resolution and the scheduler's tick, so a sample is the cost of
      the call, not of what happened around it. (With a ``setup``, asv_runner
      0.3 uses ``number = 1`` anyway; saying so keeps it from calibrating.)
    * ``warmup_time = 0``, ``sample_time`` unused: every sample follows a
      ``setup`` that builds the data and calls the kernel once (numba cache
      loaded, buffers faulted in, caches warm), so there is nothing left to
      warm up and no calibration to do.
    * ``rounds = 4``: four processes per commit. Page placement, ASLR and the
      numba cache load differ per process and move a case by a few percent
      between processes (not between samples of one process); more processes
      average that out, and ``--interleave-rounds`` (``tools/gate.sh``)
      alternates base and head processes so slow drifts of the machine hit
      both commits alike.
    * ``repeat = (3, 5, 2.0)``: 3 to 5 samples per process, 12-20 per commit:
      enough for the U test to decide, and at most ~2 s per process.
    * ``min_run_count = 3``: the same floor as ``repeat[0]`` (asv's default is 2):
      a slow case keeps 3 samples per process past ``repeat[2]``.
    """

    timer = staticmethod(TIMER)
    number = 1
    warmup_time = 0.0
    sample_time = 0.01
    rounds = 4
    repeat = (3, 5, 2.0)
    min_run_count = 3
    timeout = 300.0


class Ungated(Bench):
    """:class:`Bench` for the ``time_`` benchmarks ``tools/gate.sh`` does not
    judge (the peers, float32 against float64): their values are history for the
    dashboard and ratios read within one run, not a gate, so the default suite
    runs them in 2 processes per commit (6-10 samples) instead of 4, which halves
    their share of the default ``asv run``; ``DEQBENCH_FULL=1`` keeps 4."""

    rounds = 4 if FULL else 2


def full_only(cls):
    """Class decorator: the class is part of the ``DEQBENCH_FULL=1`` suite only
    (asv does not see it in the default suite). For benchmarks whose points
    add run time and noise but no information the default suite lacks (the
    scaling grids: the default already times m = 32 and 256)."""
    return cls if FULL else None


#: ``n`` of the timed solves at width ``m``: one forward solve (about 18 Picard
#: iterations at ``||A||_2 = 0.5``, tol 1e-10) costs at least ~10 ms single-
#: threaded (docs/theory.md §8: ``2 m^2 n`` flops per iteration, but small
#: widths are bound by the elementwise pass, hence more than ``1/m^2``).
N_AT = {16: 16384, 32: 8192, 64: 4096, 128: 1024, 256: 512, 512: 256}


# --------------------------------------------------------------------------
# optional APIs; asv treats NotImplementedError in setup as "skipped", so the
# suite runs on commits that predate them.
# --------------------------------------------------------------------------


def require_api() -> None:
    """Skip (asv: ``n/a``) on commits before the data-first argument order of
    issue 13 (``fixed_point(X, A, B)``, ``loss_and_grad(model, X, Y, A, B)``):
    there the same calls would mean something else."""
    if not hasattr(db, "ConvergenceWarning"):
        raise NotImplementedError("this commit predates the data-first deqbench API")


def training():
    """Return ``deqbench.train`` or raise ``NotImplementedError`` (asv: skip)."""
    require_api()
    return db.train


def theory():
    """Return ``deqbench.theory`` or raise ``NotImplementedError`` (asv: skip)."""
    try:
        from deqbench import theory as th  # noqa: PLC0415
    except ImportError as exc:
        raise NotImplementedError(f"deqbench.theory is not available: {exc}") from None
    return th


# --------------------------------------------------------------------------
# problems
# --------------------------------------------------------------------------


@dataclass
class Problem:
    """A seeded DEQ problem: data, targets and initial parameters.

    ``activation`` is ``phi`` for ``model="nonlinear"`` (and for a bare forward
    solve), the link ``sigma`` for ``model="readout"``, identity for
    ``model="linear"``. ``A`` is scaled to ``||A||_2 = rho`` (so the forward map
    contracts at a rate ``<= rho`` for 1-Lipschitz activations).
    """

    model: str
    X: np.ndarray
    Y: np.ndarray
    A: np.ndarray
    B: np.ndarray
    activation: str
    rho: float
    u: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def m(self) -> int:
        return self.A.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    @property
    def phi(self) -> str:
        """Activation inside the fixed point (identity unless nonlinear)."""
        return self.activation if self.model == "nonlinear" else "identity"

    def model_kwargs(self) -> dict:
        """Keyword arguments of ``loss_and_grad`` / ``train`` for this model."""
        kw = {"activation": self.activation}
        if self.model == "readout":
            kw["u"] = self.u
        return kw


def problem(
    model: str,
    m: int,
    n: int,
    d: int | None = None,
    *,
    rho: float = 0.5,
    activation: str | None = None,
    seed: int = 0,
) -> Problem:
    """Seeded problem for ``model`` in ``{"linear", "readout", "nonlinear"}``.

    * linear: realizable linear teacher ``Y = X W*^T``.
    * readout: realizable teacher ``y = sigma(theta* . x)``, default link
      ``leaky_relu(0.2)`` (inside the theorem of docs/theory.md §7).
    * nonlinear: a realizable teacher DEQ (``deqbench.data.problem``), default ``phi = tanh``.
    """
    require_api()
    d = m if d is None else d
    if activation is None:
        activation = {"linear": "identity", "readout": "leaky_relu(0.2)", "nonlinear": "tanh"}[
            model
        ]
    X, Y, A, B = db.data.problem(model, n, d, m, activation=activation, scale_A=rho,
                                 scale_B=1.0, seed=seed, init_seed=seed + 1)
    u = np.full(m, 1.0 / np.sqrt(m)) if model == "readout" else None
    return Problem(model, X, Y, A, B, activation, rho, u)


def forward_problem(
    m: int, n: int, *, rho: float = 0.5, activation: str = "identity", seed: int = 0
) -> Problem:
    """Data and parameters for a bare forward solve with ``phi = activation``."""
    p = problem(
        "nonlinear" if activation != "identity" else "linear",
        m,
        n,
        rho=rho,
        activation=activation,
        seed=seed,
    )
    return p


def dloss_dz(p: Problem, Z: np.ndarray) -> np.ndarray:
    """``G = dL/dZ`` of the model loss at the fixed point ``Z`` (docs/theory.md §4)."""
    if p.model == "readout":
        act = db.get_activation(p.activation)
        s = Z @ p.u
        r = act(s) - p.Y
        return np.ascontiguousarray(np.outer(r * act.derivative(s), p.u) / p.n)
    return (Z - p.Y) / p.n


# --------------------------------------------------------------------------
# predictions (docs/theory.md §3 and §7) and measurement helpers
# --------------------------------------------------------------------------


def contraction_rate(A: np.ndarray, damping: float = 1.0, activation: str = "identity") -> float:
    """Rate at which damped Picard ``Z <- (1-b) Z + b phi(Z A^T + U)`` contracts
    (docs/theory.md §3): for the linear map the spectral radius of
    ``(1 - b) I + b A`` (the asymptotic rate); for a nonlinear ``phi`` the bound
    ``(1 - b) + b Lip(phi) ||A||_2``."""
    if db.get_activation(activation).is_identity:
        m = A.shape[0]
        return float(np.max(np.abs(np.linalg.eigvals((1.0 - damping) * np.eye(m) + damping * A))))
    lip = db.get_activation(activation).lipschitz
    return (1.0 - damping) + damping * lip * float(np.linalg.norm(A, 2))


def rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    """``||x - ref||_F / ||ref||_F``."""
    den = float(np.linalg.norm(ref))
    return float(np.linalg.norm(x - ref)) / (den if den > 0 else 1.0)


def best_time(fn, *, repeat: int = 3, min_time: float = 0.05) -> float:
    """Best-of-``repeat`` CPU time (:data:`TIMER`) of ``fn()`` in seconds; each
    sample loops ``fn`` until ``min_time`` has elapsed (for fits inside
    ``track_`` methods). NaN under :data:`COUNTS_ONLY`."""
    if COUNTS_ONLY:
        return math.nan
    fn()
    return min(_per_call(fn, min_time) for _ in range(repeat))


def strict(fn, *args, **kwargs):
    """Call ``fn`` with RuntimeWarnings raised as errors: a benchmark of a
    solve that did not converge is a broken benchmark, not a number."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------


def _status_kib(*keys: str) -> dict:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in keys:
                out[key] = int(rest.split()[0])
    return out


def _malloc_trim() -> None:
    """Return freed heap pages to the OS (glibc), so memory that an earlier call
    freed but the allocator kept is not reused unseen by the next measurement."""
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_increase_mib(fn) -> float:
    """Peak resident memory added while ``fn()`` runs, in MiB.

    Linux: resets the process's peak RSS through ``/proc/self/clear_refs`` and
    reads ``VmHWM`` afterwards, so allocations inside compiled kernels count.
    Elsewhere: the ``tracemalloc`` peak (Python/NumPy allocations only).
    """
    try:
        _malloc_trim()
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _status_kib("VmRSS")["VmRSS"]
        fn()
        return max(_status_kib("VmHWM")["VmHWM"] - before, 0) / 1024.0
    except OSError:
        import tracemalloc  # noqa: PLC0415

        tracemalloc.start()
        try:
            fn()
            return tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()


# --------------------------------------------------------------------------
# track_ values that do not depend on the machine
# --------------------------------------------------------------------------


def sweep(bench) -> dict:
    """``{params: bench.measure(*params)}`` over the full product of
    ``bench.params`` (``None`` where ``measure`` raises NotImplementedError)."""
    lists = bench.params if isinstance(bench.params[0], (list, tuple)) else [bench.params]
    out = {}
    for combo in itertools.product(*lists):
        try:
            out[combo] = bench.measure(*combo)
        except NotImplementedError:
            out[combo] = None
    return out


def _track(key: str, unit: str):
    def track(self, cache, *params):
        return self.values[key]

    track.__name__ = track.__qualname__ = f"track_{key}"
    track.unit = unit
    return track


#: Units of the ``track_`` values that are exact counts: the same code gives
#: the same number on any machine, so ANY rise is a regression
#: (``tools/gate_counts.py``; the 10% factor of the gate would let a
#: count go from 19 to 20 unseen).
COUNT_UNITS = ("evaluations", "iterations", "allocations")


class Tracked:
    """Base of the classes that report ``track_`` values of a whole grid,
    measured once per commit in ``setup_cache`` (one process computes the
    grid instead of one process per value and parameter set).

    A subclass sets ``params`` / ``param_names``, ``tracks = {key: unit}`` and
    ``measure(*params) -> {key: value}`` (``NotImplementedError``: asv skips
    that combination); ``track_<key>`` methods with ``.unit`` are generated.
    Values are phrased so that LOWER IS BETTER. Units in :data:`COUNT_UNITS`
    are exact counts. Each subclass still writes the two lines

        def setup_cache(self):
            return self.sweep()

    because asv keys a cache by the module and source line of ``setup_cache``:
    one inherited function would make every subclass share the first one's cache.
    """

    tracks: dict = {}
    timeout = 900.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "setup_cache" not in vars(cls):
            raise TypeError(f"{cls.__name__} must define its own setup_cache (see Tracked)")
        for key, unit in cls.tracks.items():
            setattr(cls, f"track_{key}", _track(key, unit))

    def sweep(self) -> dict:
        return sweep(self)

    def setup(self, cache, *params):
        values = cache.get(tuple(params)) if cache else None
        if values is None:
            raise NotImplementedError(f"nothing measured for {params!r}")
        self.values = values


def _per_call(fn, min_time: float) -> float:
    """CPU seconds per call of ``fn``, looping until ``min_time`` has elapsed."""
    k = 0
    t0 = TIMER()
    while True:
        fn()
        k += 1
        dt = TIMER() - t0
        if dt >= min_time:
            return dt / k


def cost_ratio(fn, refs, *, rounds: int = 9, min_time: float = 0.03) -> float:
    """``t(fn) / sum(count * t(ref) for ref, count in refs)``: the median over
    ``rounds`` of the ratio of ``fn`` and its references timed back to back in
    this process, so the machine's speed at the moment cancels out of each
    ratio and one slow round cannot move the result (the best-of-rounds of each
    time separately moved 10-20% between processes in a quiet A/A run).
    ``refs``: ``[(callable, count), ...]``, the numpy matmuls the cost model
    says ``fn`` performs. NaN under :data:`COUNTS_ONLY`."""
    if COUNTS_ONLY:
        return math.nan
    fn()
    for ref, _ in refs:
        ref()
    ratios = []
    for _ in range(rounds):
        t_fn = _per_call(fn, min_time)
        t_ref = sum(count * _per_call(ref, min_time / 4) for ref, count in refs)
        ratios.append(t_fn / t_ref)
    return statistics.median(ratios)


def _aligned(a: np.ndarray, align: int = 64) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data starts on an ``align``-byte
    boundary (numpy's own allocations are only 16-byte aligned, and BLAS
    speed at small shapes depends on it: one place for every process)."""
    a = np.asarray(a, dtype=np.float64)
    raw = np.empty(a.nbytes + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    out = raw[start:start + a.nbytes].view(np.float64).reshape(a.shape)
    out[...] = a
    return out


def matmul(P: np.ndarray, Q: np.ndarray):
    """A call of ``out <- P @ Q`` by numpy into a preallocated ``out`` (the
    reference of :func:`cost_ratio`), every operand 64-byte aligned."""
    P, Q = _aligned(P), _aligned(Q)
    out = _aligned(np.empty((P.shape[0], Q.shape[1])))
    return lambda: np.dot(P, Q, out)


def _nrt_stats():
    try:
        from numba.core.runtime import _nrt_python, rtsys  # noqa: PLC0415

        _nrt_python.memsys_enable_stats()
        return rtsys
    except (ImportError, AttributeError, RuntimeError):
        return None


def allocations(fn) -> dict:
    """Memory allocated by one call of ``fn`` after a warm-up call.

    ``bytes``: the ``tracemalloc`` peak of the call (Python and NumPy
    allocations, which include every work buffer the public API hands to the
    kernels). ``nrt``: allocations made inside compiled code (numba's NRT
    counter, enabled here; ``nan`` if this numba lacks it); exact for a given
    thread count.
    """
    import tracemalloc  # noqa: PLC0415

    rtsys = _nrt_stats()
    fn()
    before = rtsys.get_allocation_stats().alloc if rtsys is not None else 0
    tracemalloc.start()
    try:
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    nrt = rtsys.get_allocation_stats().alloc - before if rtsys is not None else math.nan
    return {"bytes": float(peak), "nrt": float(nrt)}


# --------------------------------------------------------------------------
# data on disk (bench_large_data.py and tools/large_data.py)
# --------------------------------------------------------------------------


def write_teacher_once(root, n: int, d: int, m: int) -> Path:
    """A linear teacher (``noise = 0.1``, seed 0) of ``n`` rows in ``root`` (a fresh
    temporary directory if None), reused when ``root`` already holds it."""
    root = Path(tempfile.mkdtemp(prefix="deqbench-large-")) if root is None else Path(root)
    meta = root / db.data.TEACHER_JSON
    want = dict(kind="linear", n=n, d=d, m=m, noise=0.1, seed=0)
    if meta.is_file() and all(json.loads(meta.read_text()).get(k) == v for k, v in want.items()):
        return root
    db.data.write_teacher(root, "linear", n, d, m, noise=0.1, seed=0, overwrite=True)
    return root


def samples_per_second(fn, n: int) -> float:
    """``n`` over the wall time of one call of ``fn`` (disk reads included)."""
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)
