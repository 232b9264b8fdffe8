"""Seeded problem builders and helpers shared by the asv suite.

Conventions of the suite (see README, section "Benchmarks"):

* Every ``setup`` builds its data with the builders below AND calls the
  benchmarked function once, so numba compilation (or loading the on-disk
  cache) is never inside a timed region. Compile time is measured on its own,
  in a fresh interpreter (``bench_compile.py``).
* ``track_*`` values are phrased so that LOWER IS BETTER (ratios to a
  prediction, errors, drift), so ``asv continuous`` / ``asv compare`` flag a
  rise as a regression for every benchmark in the suite.
* Parameter lists are sorted so that the first value of every parameter is the
  smallest (cheapest) case; ``tests/test_benchmarks.py`` runs exactly that case.
* The default grid is small enough for a full ``asv run`` in well under 20
  minutes on 2 cores; ``DEQBENCH_FULL=1`` switches every class to its full grid.
"""

from __future__ import annotations

import itertools
import math
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np

import deqbench as db

#: ``DEQBENCH_FULL=1`` selects the full parameter grids.
FULL = os.environ.get("DEQBENCH_FULL", "").strip().lower() not in ("", "0", "false", "no")

#: Solver tolerance used by every benchmark unless a class says otherwise.
TOL = 1e-10


def grid(default, full):
    """The default parameter list, or ``full`` under ``DEQBENCH_FULL=1``."""
    return list(full) if FULL else list(default)


#: Clock of every timing in the suite: CPU time of the benchmark process.
#: With BLAS and numba pinned to one thread (asv.conf.json), CPU time equals the
#: compute time and is far less sensitive than wall time to other processes
#: sharing the machine (on a loaded 2-core box wall times of the same call
#: vary by 10x; CPU times by a few percent).
TIMER = time.process_time


class Bench:
    """Timing attributes shared by every benchmark class.

    ``timer``: CPU time (see :data:`TIMER`). ``warmup_time = 0`` is safe because
    ``setup`` already ran the kernel once; ``repeat = (min, max, max_seconds)``
    bounds each parameter combination to a couple of seconds per round so the
    default grid stays cheap.
    """

    timer = staticmethod(TIMER)
    rounds = 2
    repeat = (3, 8, 1.0)
    sample_time = 0.02
    warmup_time = 0.0
    timeout = 300.0


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
    solve), the link ``sigma`` for ``model="single_index"``, identity for
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
        if self.model == "single_index":
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
    """Seeded problem for ``model`` in ``{"linear", "single_index", "nonlinear"}``.

    * linear: realizable linear teacher ``Y = X W*^T``.
    * single_index: realizable teacher ``y = sigma(theta* . x)``, default link
      ``leaky_relu(0.2)`` (inside the theorem of THEORY.md section 7).
    * nonlinear: linear-teacher targets, default ``phi = tanh``.
    """
    require_api()
    d = m if d is None else d
    if activation is None:
        activation = {"linear": "identity", "single_index": "leaky_relu(0.2)", "nonlinear": "tanh"}[
            model
        ]
    u = None
    if model == "single_index":
        X, Y, _ = db.data.single_index_teacher(n, d, activation=activation, seed=seed)
        u = np.full(m, 1.0 / np.sqrt(m))
    else:
        X, Y, _ = db.data.linear_teacher(n, d, m, seed=seed)
    A, B = db.data.init_params(d, m, scale_A=rho, scale_B=1.0, seed=seed + 1)
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
    """``G = dL/dZ`` of the model loss at the fixed point ``Z`` (THEORY.md section 4)."""
    if p.model == "single_index":
        act = db.get_activation(p.activation)
        s = Z @ p.u
        r = act(s) - p.Y
        return np.ascontiguousarray(np.outer(r * act.derivative(s), p.u) / p.n)
    return (Z - p.Y) / p.n


# --------------------------------------------------------------------------
# predictions (THEORY.md sections 3 and 7) and measurement helpers
# --------------------------------------------------------------------------


def predicted_iters(rate: float, tol: float) -> int:
    """Iterations for a map contracting at ``rate`` to reach relative ``tol``
    from ``Z0 = 0`` (THEORY.md section 3: ``ceil(log(tol) / log(rate))``)."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must be in (0, 1), got {rate!r}")
    return max(1, math.ceil(math.log(tol) / math.log(rate)))


def contraction_rate(A: np.ndarray, damping: float = 1.0, activation: str = "identity") -> float:
    """Rate at which damped Picard ``Z <- (1-b) Z + b phi(Z A^T + U)`` contracts
    (THEORY.md section 3): for the linear map the spectral radius of
    ``(1 - b) I + b A`` (the asymptotic rate); for a nonlinear ``phi`` the bound
    ``(1 - b) + b Lip(phi) ||A||_2``."""
    if db.get_activation(activation).is_identity:
        m = A.shape[0]
        return float(np.max(np.abs(np.linalg.eigvals((1.0 - damping) * np.eye(m) + damping * A))))
    lip = db.get_activation(activation).lipschitz
    return (1.0 - damping) + damping * lip * float(np.linalg.norm(A, 2))


def with_spectral_radius(A: np.ndarray, rho: float) -> np.ndarray:
    """``A`` rescaled to spectral radius ``rho`` (its norm is then about ``2 rho``
    for a Gaussian ``A``: a non-normal map with a transient)."""
    return A * (rho / float(np.max(np.abs(np.linalg.eigvals(A)))))


def rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    """``||x - ref||_F / ||ref||_F``."""
    den = float(np.linalg.norm(ref))
    return float(np.linalg.norm(x - ref)) / (den if den > 0 else 1.0)


def best_time(fn, *, repeat: int = 3, min_time: float = 0.05) -> float:
    """Best-of-``repeat`` CPU time (:data:`TIMER`) of ``fn()`` in seconds; each
    sample loops ``fn`` until ``min_time`` has elapsed (for fits inside
    ``track_`` methods)."""
    fn()
    best = math.inf
    for _ in range(repeat):
        k = 0
        t0 = TIMER()
        while True:
            fn()
            k += 1
            dt = TIMER() - t0
            if dt >= min_time:
                break
        best = min(best, dt / k)
    return best


def fit_exponent(sizes, values) -> float:
    """Least-squares slope of ``log(values)`` against ``log(sizes)``."""
    x = np.log(np.asarray(sizes, dtype=float))
    y = np.log(np.asarray(values, dtype=float))
    return float(np.polyfit(x, y, 1)[0])


def strict(fn, *args, **kwargs):
    """Call ``fn`` with RuntimeWarnings raised as errors: a benchmark of a
    solve that did not converge is a broken benchmark, not a number."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return fn(*args, **kwargs)


def symmetric_contraction(m: int, rho: float, seed: int = 0) -> np.ndarray:
    """Symmetric ``A`` with ``rho(A) = ||A||_2 = rho``: Picard on the linear map
    contracts by exactly ``rho`` per step (no transient), so the iteration count
    is ``~log(tol) / log(rho)`` and can be dialled in."""
    R = np.random.default_rng(seed).standard_normal((m, m))
    S = R + R.T
    return rho * S / float(np.max(np.abs(np.linalg.eigvalsh(S))))


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
# track_ values of a whole grid measured once
# --------------------------------------------------------------------------


def sweep(bench) -> dict:
    """``{params: bench.measure(*params)}`` over the full product of
    ``bench.params`` (``None`` where ``measure`` raises NotImplementedError).

    Classes that only read values (iteration counts, errors, ratios) call this
    from their own ``setup_cache`` (asv keys the cache by the function's source
    line, so every class needs its own ``setup_cache``): one process computes
    the grid instead of one process per track and parameter set.
    """
    lists = bench.params if isinstance(bench.params[0], (list, tuple)) else [bench.params]
    out = {}
    for combo in itertools.product(*lists):
        try:
            out[combo] = bench.measure(*combo)
        except NotImplementedError:
            out[combo] = None
    return out


def cached(cache: dict, combo: tuple) -> dict:
    """The swept values of ``combo``, or ``NotImplementedError`` (asv: skip)."""
    values = cache.get(tuple(combo))
    if values is None:
        raise NotImplementedError(f"nothing measured for {combo!r}")
    return values
