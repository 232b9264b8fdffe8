"""Resumable parameter sweeps: grid files, seeding, executors, atomic storage.

A sweep is the Cartesian product of the lists in a TOML grid file (see
:func:`load_grid`), times ``replicates`` seeds. Every run

* has a stable content-hash ``run_id`` (its run function, parameters, sweep
  seed and replicate index; the order of the grid does not matter);
* gets its random state from ``numpy.random.SeedSequence(seed).spawn(replicates)``
  (runs of the same replicate share data and initialization across the swept
  hyper-parameters: common random numbers, so differences come from the
  parameters and not from the draw);
* is executed by a *run function* ``fn(params, seed_sequence) -> dict`` in a
  worker (local process pool, or Dask), with numba and BLAS pinned to one
  thread per worker;
* is written to disk as soon as it finishes, atomically (temporary file, then
  ``os.replace``): ``DIR/runs/<run_id>.json`` and ``DIR/histories/<run_id>.csv``
  are the per-run records; ``DIR/runs.csv`` (one row per run) and
  ``DIR/histories.csv`` (long table: one row per run and recorded step) are
  consolidated from them. A killed sweep leaves only complete files, and
  re-running it skips every run that has a record.

A run function that raises, or reports a non-``ok`` status, is recorded with
its status and error message; the sweep goes on.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import itertools
import json
import math
import numbers
import os
import platform
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def _toml():
    """``tomllib`` (Python >= 3.11) or its backport ``tomli`` (imported on first use)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise GridError("reading TOML on Python 3.10 needs the backport: pip install tomli"
                            ) from None
    return tomllib

__all__ = [
    "Grid",
    "GridError",
    "RunSpec",
    "SweepResult",
    "execute",
    "load_grid",
    "parse_grid",
    "read_csv",
    "run_sweep",
]

RUNS_DIR = "runs"
HIST_DIR = "histories"
RUNS_CSV = "runs.csv"
HIST_CSV = "histories.csv"
EXECUTORS = ("local", "dask", "serial")
FAILED = ("error", "diverged", "fixed_point_failed", "lost")
PIN_ENV = {
    "NUMBA_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


class GridError(ValueError):
    """A grid file that cannot be run; the message is one line naming the key."""


# ---------------------------------------------------------------------------
# parameters of the built-in run functions
# ---------------------------------------------------------------------------


def _int(minimum):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"must be an integer, got {value!r}")
        if value < minimum:
            raise ValueError(f"must be >= {minimum}, got {value!r}")
        return int(value)

    return check


def _float(low, *, strict=True, high=None):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"must be a number, got {value!r}")
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"must be finite, got {value!r}")
        if (v <= low) if strict else (v < low):
            raise ValueError(f"must be {'>' if strict else '>='} {low:g}, got {value!r}")
        if high is not None and v > high:
            raise ValueError(f"must be <= {high:g}, got {value!r}")
        return v

    return check


def _choice(options):
    def check(value):
        if value not in options:
            raise ValueError(f"must be one of {list(options)}, got {value!r}")
        return value

    return check


def _activation(value):
    from .activations import get_activation

    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    try:
        return str(get_activation(value))
    except (TypeError, ValueError):
        raise ValueError(
            "must be one of identity, leaky_relu, leaky_relu(slope), tanh, sigmoid, "
            f"softplus, relu, gelu; got {value!r}"
        ) from None


#: Parameters of the built-in ``train`` and ``gd`` run functions: name -> (checker, default).
TRAIN_PARAMS: dict[str, tuple[Callable, object]] = {
    "model": (_choice(("linear", "single_index", "nonlinear")), None),
    "m": (_int(1), None),
    "d": (_int(1), None),
    "n": (_int(1), None),
    "lr": (_float(0.0), None),
    "steps": (_int(1), None),
    "scale_A": (_float(0.0, strict=False), 0.5),
    "scale_B": (_float(0.0, strict=False), 1.0),
    "activation": (_activation, "identity"),
    "solver": (_choice(("picard", "anderson", "direct")), "picard"),
    "grad_solver": (_choice(("same", "picard", "anderson", "direct", "jfb", "neumann")), "same"),
    "tol": (_float(0.0), 1e-10),
    "noise": (_float(0.0, strict=False), 0.0),
    "record_every": (_int(1), 1),
    "stop_loss": (_float(0.0, strict=False), 0.0),
    "teacher_scale": (_float(0.0, strict=False, high=0.999), 0.5),
    "sufficient_stats": (_choice(("auto", True, False)), "auto"),
}
REQUIRED_TRAIN = ("model", "m", "d", "n", "lr", "steps")


def _check_train_params(params: dict) -> None:
    """Rules between parameters of the built-in run functions ("key: message" errors)."""
    if params["model"] == "linear" and params["activation"] != "identity":
        raise GridError("activation: model 'linear' needs activation 'identity', got "
                        f"{params['activation']!r}")
    if params["model"] == "nonlinear":
        for key in ("solver", "grad_solver"):
            if params[key] == "direct":
                raise GridError(f"{key}: 'direct' solves linear maps only (model 'nonlinear')")
    if params.get("sufficient_stats") is True and (
        params["model"] != "linear" or params["grad_solver"] in ("jfb", "neumann")
    ):
        raise GridError("sufficient_stats: true needs model 'linear' and an exact grad_solver, "
                        f"got model {params['model']!r}, grad_solver {params['grad_solver']!r}")


# ---------------------------------------------------------------------------
# run functions
# ---------------------------------------------------------------------------


def _seeds(seed: np.random.SeedSequence):
    data_seed, init_seed = seed.spawn(2)
    return data_seed, init_seed


def build_problem(params: Mapping, seed: np.random.SeedSequence):
    """Data and initial parameters of a run of the built-in run functions.

    ``linear``: linear teacher; ``single_index``: single-index teacher with the
    run's link; ``nonlinear``: a realizable teacher DEQ ``Y = phi-fixed point``
    of random ``A*`` (``||A*||_2 = teacher_scale``), ``B*``.

    Returns ``(X, Y, A0, B0)``.
    """
    from . import data
    from ._fixed_point import fixed_point

    data_seed, init_seed = _seeds(seed)
    model, m, d, n = params["model"], params["m"], params["d"], params["n"]
    noise = params.get("noise", 0.0)
    if model == "linear":
        X, Y, _ = data.linear_teacher(n, d, m, noise=noise, seed=data_seed)
    elif model == "single_index":
        X, Y, _ = data.single_index_teacher(n, d, activation=params["activation"], noise=noise,
                                            seed=data_seed)
    else:
        t_seed, x_seed = data_seed.spawn(2)
        X = np.random.default_rng(x_seed).standard_normal((n, d))
        As, Bs = data.init_params(d, m, scale_A=params.get("teacher_scale", 0.5), scale_B=1.0,
                                  seed=t_seed)
        Y = fixed_point(X, As, Bs, activation=params["activation"], tol=1e-13).z
        if noise > 0:
            Y = Y + noise * np.random.default_rng(x_seed.spawn(1)[0]).standard_normal(Y.shape)
    A0, B0 = data.init_params(d, m, scale_A=params["scale_A"], scale_B=params["scale_B"],
                              seed=init_seed)
    return X, Y, A0, B0


def _final(history: Mapping, key: str) -> float:
    a = np.asarray(history.get(key, ()), dtype=float)
    return float(a[-1]) if a.size else math.nan


_WARMED: set = set()


def _warm_up(params: dict) -> None:
    """Compile (or load from cache) the kernels a run uses, once per process, so that
    ``train_s`` times the run and not the JIT."""
    from ._training import train

    key = (params["model"], params["solver"], params["grad_solver"], params["activation"])
    if key in _WARMED:
        return
    tiny = {**params, "m": 2, "d": 2, "n": 4, "noise": 0.0}
    X, Y, A0, B0 = build_problem(tiny, np.random.SeedSequence(0))
    grad_solver = None if params["grad_solver"] == "same" else params["grad_solver"]
    train(params["model"], X, Y, A0, B0, lr=1e-3, steps=2, activation=params["activation"],
          solver=params["solver"], grad_solver=grad_solver, tol=1e-6)
    _WARMED.add(key)


def run_train(params: dict, seed: np.random.SeedSequence) -> dict:
    """Default run function: one compiled training run with :func:`deqbench.train`.

    Returns the final metrics, the theory's predicted per-step factor next to
    the empirical one (THEORY.md section 7), and the run's history. For
    noise-free ``single_index`` and ``nonlinear`` runs the teacher is
    realizable and ``L* = 0``.
    """
    from ._training import train

    X, Y, A0, B0 = build_problem(params, seed)
    grad_solver = None if params["grad_solver"] == "same" else params["grad_solver"]
    stop = params["stop_loss"] or None
    L_star = 0.0 if params["model"] != "linear" and params["noise"] == 0 else None
    _warm_up(params)
    t0 = time.perf_counter()
    res = train(
        params["model"], X, Y, A0, B0, lr=params["lr"], steps=params["steps"],
        activation=params["activation"], solver=params["solver"], grad_solver=grad_solver,
        tol=params["tol"], record_every=params["record_every"], stop_loss=stop, L_star=L_star,
        sufficient_stats=params["sufficient_stats"],
    )
    elapsed = time.perf_counter() - t0
    hist = {k: np.asarray(v) for k, v in res.history.items()}
    metrics = summarize_history(hist)
    metrics["train_s"] = elapsed
    metrics["time_per_step_s"] = elapsed / max(res.n_steps, 1)
    metrics["sufficient_stats"] = bool(res.sufficient_stats)
    metrics["L_star"] = float(res.L_star)
    metrics.update(_rate_metrics(params, X, A0, B0, hist, res.L_star))
    return {"status": str(res.status), "metrics": metrics, "history": hist}


def summarize_history(hist: Mapping) -> dict:
    """Final values and simple aggregates of a training history."""
    out: dict[str, float] = {}
    loss = np.asarray(hist.get("loss", ()), dtype=float)
    last = _final(hist, "step")
    out["steps_done"] = int(last) if math.isfinite(last) else last
    out["loss0"] = float(loss[0]) if loss.size else math.nan
    for key in ("loss", "excess_loss", "grad_norm", "invariant_drift", "drift_trace",
                "sigma_min", "sigma_max", "spectral_radius"):
        if key in hist:
            out[f"final_{key}"] = _final(hist, key)
    for key in ("fp_iters", "adj_iters"):
        if key in hist and len(hist[key]):
            out[f"mean_{key}"] = float(np.mean(np.asarray(hist[key], dtype=float)))
    if "invariant_drift" in hist and len(hist["invariant_drift"]):
        out["max_invariant_drift"] = float(np.nanmax(np.abs(hist["invariant_drift"])))
    return out


def _rate_metrics(params, X, A0, B0, hist, L_star) -> dict:
    """Predicted and empirical per-step factors (THEORY.md section 7), where defined."""
    from . import theory

    out = {"predicted_factor": math.nan, "empirical_factor": math.nan, "factor_ratio": math.nan}
    model = params["model"]
    loss = np.asarray(hist.get("loss", ()), dtype=float)
    if model == "nonlinear" or not math.isfinite(L_star) or loss.size < 3:
        return out
    Q0 = theory.invariant(A0, B0)
    out["predicted_factor"] = theory.predicted_factor(
        model, X, Q0, params["lr"], L0=float(loss[0]), L_star=L_star,
        activation=params["activation"] if model == "single_index" else "identity")
    out["empirical_factor"] = theory.empirical_factor(loss, L_star, hist["step"])
    if out["predicted_factor"] > 0:
        out["factor_ratio"] = out["empirical_factor"] / out["predicted_factor"]
    return out


def run_gd(params: dict, seed: np.random.SeedSequence) -> dict:
    """Reference run function: plain Python gradient descent on :func:`deqbench.loss_and_grad`.

    One Python call per step (slow, but it depends only on the core API);
    records ``step, loss, grad_norm, invariant_drift, drift_trace, fp_iters,
    adj_iters``. Statuses as :func:`deqbench.train`.
    """
    from ._gradients import loss_and_grad
    from ._training import DIVERGENCE_FACTOR
    from .theory import invariant

    X, Y, A, B = build_problem(params, seed)
    grad_solver = None if params["grad_solver"] == "same" else params["grad_solver"]
    Q0 = invariant(A, B)
    nQ0 = np.linalg.norm(Q0)
    rows: dict[str, list] = {k: [] for k in ("step", "loss", "grad_norm", "invariant_drift",
                                              "drift_trace", "fp_iters", "adj_iters")}
    status, z0, adj0 = "max_steps", None, None
    loss0 = None
    for k in range(params["steps"] + 1):
        loss, gA, gB, info = loss_and_grad(
            params["model"], X, Y, A, B, activation=params["activation"],
            solver=params["solver"], grad_solver=grad_solver, tol=params["tol"],
            z0=z0, adj0=adj0,
        )
        loss0 = loss if loss0 is None else loss0
        if not info["converged"]:
            status = "fixed_point_failed"
            break
        # the rule of deqbench.train: non-finite, or above DIVERGENCE_FACTOR x L_0
        if not math.isfinite(loss) or (k > 0 and loss0 > 0 and loss > DIVERGENCE_FACTOR * loss0):
            status = "diverged"
            break
        if k % params["record_every"] == 0 or k == params["steps"]:
            Q = invariant(A, B)
            rows["step"].append(k)
            rows["loss"].append(loss)
            rows["grad_norm"].append(math.sqrt(float(np.sum(gA * gA) + np.sum(gB * gB))))
            rows["invariant_drift"].append(float(np.linalg.norm(Q - Q0) / nQ0))
            rows["drift_trace"].append(float(np.trace(Q - Q0)))
            rows["fp_iters"].append(info["fp_iters"])
            rows["adj_iters"].append(info["adj_iters"])
        if params["stop_loss"] and loss <= params["stop_loss"]:
            status = "converged"
            break
        if k == params["steps"]:
            break
        A = A - params["lr"] * gA
        B = B - params["lr"] * gB
        z0, adj0 = info["z"], info["adjoint"]
    hist = {k: np.asarray(v) for k, v in rows.items()}
    return {"status": status, "metrics": summarize_history(hist), "history": hist}


run_train.PARAMS = TRAIN_PARAMS  # type: ignore[attr-defined]
run_train.REQUIRED = REQUIRED_TRAIN  # type: ignore[attr-defined]
run_train.CHECK = _check_train_params  # type: ignore[attr-defined]
run_gd.PARAMS = TRAIN_PARAMS  # type: ignore[attr-defined]
run_gd.REQUIRED = REQUIRED_TRAIN  # type: ignore[attr-defined]
run_gd.CHECK = _check_train_params  # type: ignore[attr-defined]

RUN_FUNCTIONS = {"train": "deqbench.sweep:run_train", "gd": "deqbench.sweep:run_gd"}


def resolve_run(name: str) -> Callable:
    """The run function named ``name``: ``"train"``, ``"gd"`` or ``"package.module:function"``."""
    target = RUN_FUNCTIONS.get(name, name)
    if ":" not in target:
        raise ValueError(
            f"must be one of {sorted(RUN_FUNCTIONS)} or 'package.module:function', got {name!r}"
        )
    mod_name, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {mod_name!r} ({exc})") from None
    fn = mod
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"module {mod_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"{name!r} is not callable")
    return fn


# ---------------------------------------------------------------------------
# grids
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: everything a worker needs, and nothing else."""

    run_id: str
    index: int
    run: str
    params: dict
    seed: int
    replicate: int

    def seed_sequence(self) -> np.random.SeedSequence:
        """``SeedSequence(seed).spawn(replicate + 1)[replicate]``."""
        return np.random.SeedSequence(self.seed, spawn_key=(self.replicate,))


@dataclass(frozen=True)
class Grid:
    """A validated sweep definition (see :func:`load_grid`)."""

    name: str
    run: str
    seed: int
    replicates: int
    fixed: dict
    axes: dict
    source: str = ""
    specs: tuple = field(default=(), repr=False)

    def __len__(self) -> int:
        return len(self.specs)


_SWEEP_KEYS = {"name", "run", "seed", "replicates"}
_TABLES = {"sweep", "fixed", "grid"}


def run_id_of(run: str, params: Mapping, seed: int, replicate: int) -> str:
    """Stable content hash of a run (16 hex characters)."""
    payload = json.dumps(
        {"run": run, "params": dict(params), "seed": seed, "replicate": replicate},
        sort_keys=True, separators=(",", ":"), default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_grid(path) -> Grid:
    """Read and validate a grid TOML file.

    Format::

        [sweep]
        name = "small"       # optional, for humans
        run = "train"        # "train" (default), "gd" or "package.module:function"
        seed = 0             # sweep seed (int >= 0), default 0
        replicates = 2       # seeds per grid point, default 1

        [fixed]              # parameters shared by every run
        model = "linear"
        n = 256
        steps = 200

        [grid]               # lists; the sweep is their Cartesian product
        m = [2, 8]
        lr = [0.02, 0.05]

    Every error is a :class:`GridError` with a one-line message that names the
    key (``grid.lr[1]: must be > 0, got -0.1``), raised before any run starts.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise GridError(f"{path}: cannot read grid file ({exc.strerror})") from None
    try:
        return parse_grid(text, source=str(path))
    except GridError as exc:
        raise GridError(f"{path}: {exc}") from None


def parse_grid(text: str | Mapping, source: str = "<string>") -> Grid:
    """Validate a grid given as TOML text or an already-parsed mapping (see :func:`load_grid`)."""
    if isinstance(text, str):
        tomllib = _toml()
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise GridError(f"invalid TOML: {str(exc).splitlines()[0]}") from None
    else:
        doc = dict(text)
    for key in doc:
        if key not in _TABLES:
            raise GridError(f"{key}: unknown table or key (expected tables {sorted(_TABLES)})")
        if not isinstance(doc[key], dict):
            raise GridError(f"{key}: must be a table [{key}]")
    sweep = doc.get("sweep", {})
    for key in sweep:
        if key not in _SWEEP_KEYS:
            raise GridError(f"sweep.{key}: unknown key (expected one of {sorted(_SWEEP_KEYS)})")
    name = sweep.get("name", Path(source).stem)
    if not isinstance(name, str):
        raise GridError(f"sweep.name: must be a string, got {name!r}")
    run = sweep.get("run", "train")
    if not isinstance(run, str):
        raise GridError(f"sweep.run: must be a string, got {run!r}")
    try:
        fn = resolve_run(run)
    except ValueError as exc:
        raise GridError(f"sweep.run: {exc}") from None
    seed = _checked("sweep.seed", sweep.get("seed", 0), _int(0))
    replicates = _checked("sweep.replicates", sweep.get("replicates", 1), _int(1))

    fixed = dict(doc.get("fixed", {}))
    axes = dict(doc.get("grid", {}))
    if not axes:
        raise GridError("grid: empty grid (give at least one list in [grid], e.g. lr = [0.01])")
    for key in fixed:
        if key in axes:
            raise GridError(f"grid.{key}: given in both [fixed] and [grid]")
    spec: dict | None = getattr(fn, "PARAMS", None)
    required = tuple(getattr(fn, "REQUIRED", ()))
    for table, values in (("fixed", fixed), ("grid", axes)):
        for key in values:
            if spec is not None and key not in spec:
                raise GridError(
                    f"{table}.{key}: unknown parameter for run {run!r} "
                    f"(expected one of {sorted(spec)})"
                )
    for key, value in fixed.items():
        if isinstance(value, list):
            raise GridError(f"fixed.{key}: must be a single value, got a list (move it to [grid])")
        fixed[key] = _checked(f"fixed.{key}", value, spec[key][0] if spec else _scalar)
    for key, values in axes.items():
        if not isinstance(values, list):
            raise GridError(f"grid.{key}: must be a list, got {values!r} (or move it to [fixed])")
        if not values:
            raise GridError(f"grid.{key}: empty list, nothing to sweep")
        check = spec[key][0] if spec else _scalar
        checked = [_checked(f"grid.{key}[{i}]", v, check) for i, v in enumerate(values)]
        for i, v in enumerate(checked):
            if v in checked[:i]:
                raise GridError(f"grid.{key}[{i}]: duplicate value {values[i]!r}")
        axes[key] = checked
    for key in required:
        if key not in fixed and key not in axes:
            raise GridError(f"fixed.{key}: missing required parameter for run {run!r}")
    defaults = {k: d for k, (_, d) in spec.items() if d is not None} if spec else {}
    cross = getattr(fn, "CHECK", None)
    specs = []
    keys = list(axes)
    index = 0
    for combo in itertools.product(*(axes[k] for k in keys)):
        varied = dict(zip(keys, combo, strict=True))
        # column order: swept, fixed, defaults (values: swept > fixed > defaults)
        rest = {k: d for k, d in defaults.items() if k not in fixed and k not in varied}
        params = {**varied, **fixed, **rest}
        if cross is not None:
            try:
                cross(params)
            except GridError as exc:
                where = "grid" if str(exc).split(":")[0] in axes else "fixed"
                raise GridError(f"{where}.{exc}") from None
        for r in range(replicates):
            specs.append(RunSpec(run_id_of(run, params, seed, r), index, run, params, seed, r))
            index += 1
    return Grid(name, run, seed, replicates, fixed, axes, source, tuple(specs))


def _scalar(value):
    if isinstance(value, (dict, list)):
        raise ValueError(f"must be a number, string or boolean, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be finite, got {value!r}")
    return value


def _checked(key: str, value, check):
    try:
        return check(value)
    except (TypeError, ValueError) as exc:
        raise GridError(f"{key}: {exc}") from None


# ---------------------------------------------------------------------------
# execution in a worker
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
    return {
        "run_id": spec.run_id,
        "index": spec.index,
        "status": status,
        "error": error,
        "replicate": spec.replicate,
        "seed": spec.seed,
        "params": dict(spec.params),
        "metrics": metrics,
        "history": history,
        "time_s": time.perf_counter() - t0,
        "n_warnings": len(caught),
        "warning": _one_line(caught[0].message) if caught else "",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


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
# storage
# ---------------------------------------------------------------------------


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def to_csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([_cell(row.get(c)) for c in columns])
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


class Store:
    """The on-disk state of a sweep directory (see the module docstring)."""

    def __init__(self, out):
        self.out = Path(out)
        self.runs = self.out / RUNS_DIR
        self.hist = self.out / HIST_DIR
        self.runs.mkdir(parents=True, exist_ok=True)
        self.hist.mkdir(parents=True, exist_ok=True)
        for d in (self.out, self.runs, self.hist):
            for tmp in d.glob(".*.tmp"):  # left by a killed writer: never a result
                tmp.unlink(missing_ok=True)

    def records(self) -> dict[str, dict]:
        """Every stored record, by run_id (a record file that does not parse is removed)."""
        out = {}
        for p in sorted(self.runs.glob("*.json")):
            try:
                rec = json.loads(p.read_text())
            except (OSError, ValueError):
                p.unlink(missing_ok=True)
                continue
            out[rec["run_id"]] = rec
        return out

    def write(self, record: dict) -> None:
        """Store one finished run: its history first, then the record (the commit point)."""
        rid = record["run_id"]
        hist = record.get("history") or {}
        if hist:
            cols = ["run_id", *hist]
            n = len(next(iter(hist.values())))
            rows = [{"run_id": rid, **{k: hist[k][i] for k in hist}} for i in range(n)]
            atomic_write(self.hist / f"{rid}.csv", to_csv(rows, cols))
        else:
            (self.hist / f"{rid}.csv").unlink(missing_ok=True)
        slim = {k: v for k, v in record.items() if k != "history"}
        slim["history_rows"] = len(next(iter(hist.values()))) if hist else 0
        atomic_write(self.runs / f"{rid}.json", json.dumps(slim, default=str))

    def forget(self, run_id: str) -> None:
        (self.runs / f"{run_id}.json").unlink(missing_ok=True)
        (self.hist / f"{run_id}.csv").unlink(missing_ok=True)

    def write_tables(self, records: Mapping[str, dict] | None = None, *,
                     histories: bool = True) -> None:
        """Consolidate ``runs.csv`` (and ``histories.csv``) from the per-run records."""
        records = self.records() if records is None else records
        rows = sorted(records.values(), key=lambda r: (r.get("index", 0), r["run_id"]))
        flat, params, metrics = [], [], []
        for r in rows:
            for k in r.get("params", {}):
                if k not in params:
                    params.append(k)
            for k in r.get("metrics", {}):
                if k not in metrics:
                    metrics.append(k)
        head = ["run_id", "status", "error", "replicate", "seed"]
        tail = ["time_s", "n_warnings", "warning", "host", "pid", "finished_at"]
        metrics = [k for k in metrics if k not in head + tail + params]
        for r in rows:
            row = {k: r.get(k) for k in head + tail}
            row.update(r.get("params", {}))
            row.update({k: v for k, v in r.get("metrics", {}).items() if k in metrics})
            flat.append(row)
        atomic_write(self.out / RUNS_CSV, to_csv(flat, head + params + metrics + tail))
        if histories:
            self._merge_histories([r["run_id"] for r in rows])

    def _merge_histories(self, run_ids: Iterable[str]) -> None:
        header: list[str] = []
        rows: list[dict] = []
        for rid in run_ids:
            p = self.hist / f"{rid}.csv"
            if not p.exists():
                continue
            with open(p, newline="") as fh:
                reader = csv.DictReader(fh)
                header.extend(c for c in reader.fieldnames or () if c not in header)
                rows.extend(reader)
        atomic_write(self.out / HIST_CSV, to_csv(rows, header) if header else "")


# ---------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# executors
# ---------------------------------------------------------------------------


@dataclass
class SweepResult:
    """Counts of a finished (or interrupted) sweep."""

    out: Path
    total: int
    skipped: int
    ok: int
    failed: int
    lost: int
    elapsed_s: float

    @property
    def complete(self) -> bool:
        return self.lost == 0


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def versions() -> dict:
    """Versions that must agree between the client and every worker."""
    import numba
    import numpy

    import deqbench

    return {
        "python": platform.python_version(),
        "deqbench": deqbench.__version__,
        "numpy": numpy.__version__,
        "numba": numba.__version__,
    }


def _init_worker() -> None:
    os.environ.update(PIN_ENV)
    pin_threads()


class _PinnedEnv:
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


def _iter_serial(specs, run_fn):
    for spec in specs:
        yield spec, execute(spec, run_fn), None


def _iter_local(specs, workers, run_fn):
    import concurrent.futures as cf
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with _PinnedEnv(), cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                              initializer=_init_worker) as pool:
        futs = {pool.submit(execute, s, run_fn): s for s in specs}
        try:
            for fut in cf.as_completed(futs):
                spec = futs[fut]
                try:
                    yield spec, fut.result(), None
                except Exception as exc:  # a worker process died: the run is lost, not failed
                    yield spec, None, exc
        finally:
            for f in futs:
                f.cancel()


def connect_dask(workers: int | None, scheduler: str | None):
    """A ``distributed.Client``: to ``scheduler``, or to a new local cluster of
    ``workers`` single-threaded processes. Checks package versions on every worker."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise RuntimeError(
            "--executor dask needs the optional dependency: pip install 'deqbench[dask]'"
        ) from None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers or default_workers(), threads_per_worker=1,
                               processes=True, dashboard_address=None, env=dict(PIN_ENV))
        client = Client(cluster)
    try:
        check_versions(client)
    except Exception:
        close_dask(client)
        raise
    return client


def close_dask(client) -> None:
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def check_versions(client) -> None:
    """Raise RuntimeError naming every worker whose package versions differ from ours."""
    client.wait_for_workers(1, timeout=60)
    mine = versions()
    theirs = client.run(versions)
    bad = []
    for worker, vers in theirs.items():
        diff = {k: (mine[k], vers.get(k)) for k in mine if vers.get(k) != mine[k]}
        if diff:
            bad.append(f"{worker}: " + ", ".join(f"{k} {a} here vs {b} there"
                                                 for k, (a, b) in diff.items()))
    if bad:
        raise RuntimeError("package versions differ on Dask workers: " + "; ".join(bad))


def _iter_dask(specs, workers, scheduler, run_fn):
    from distributed import as_completed

    client = connect_dask(workers, scheduler)
    try:
        futs = {}
        for s in specs:
            f = client.submit(execute, s, run_fn, key=f"deqbench-run-{s.run_id}", pure=False)
            futs[f] = s
        for fut in as_completed(list(futs)):
            spec = futs[fut]
            try:
                yield spec, fut.result(), None
            except Exception as exc:  # KilledWorker and friends: lost, not failed
                yield spec, None, exc
    finally:
        close_dask(client)


def plan(grid: Grid, out, *, retry_failed: bool = False) -> tuple[list[RunSpec], int]:
    """The runs of ``grid`` not yet stored in ``out``, and how many are skipped."""
    store = Store(out)
    done = store.records()
    todo, skipped = [], 0
    for spec in grid.specs:
        rec = done.get(spec.run_id)
        if rec is not None and not (retry_failed and rec.get("status") in FAILED):
            skipped += 1
        else:
            todo.append(spec)
    return todo, skipped


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
) -> SweepResult:
    """Run every run of ``grid`` not already stored in ``out``.

    Parameters
    ----------
    grid : Grid
        From :func:`load_grid` or :func:`parse_grid`.
    out : path
        Sweep directory (created if needed).
    executor : {"local", "dask", "serial"}
        ``local``: a process pool of ``workers`` spawned processes (default:
        the usable CPUs); ``dask``: a Dask cluster (``scheduler`` address, or a
        new ``LocalCluster``); ``serial``: in this process (debugging).
    retry_failed : bool
        Also re-run stored runs whose status is a failure.
    run_fn : callable, optional
        Overrides the grid's run function (must be picklable for ``local``/``dask``).
    table_interval : float
        ``runs.csv`` is rewritten at most this often while the sweep runs, and
        at the end; ``histories.csv`` at the end.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {list(EXECUTORS)}, got {executor!r}")
    if workers is not None and (isinstance(workers, bool) or int(workers) < 1):
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    if run_fn is not None and executor != "serial":
        import pickle

        try:
            pickle.dumps(run_fn)
        except Exception as exc:
            raise ValueError(
                f"run_fn must be picklable (a module-level function) for executor "
                f"{executor!r}: {type(exc).__name__}: {exc}"
            ) from None
    out = Path(out)
    store = Store(out)
    meta = {
        "name": grid.name, "run": grid.run, "seed": grid.seed, "replicates": grid.replicates,
        "fixed": grid.fixed, "grid": grid.axes, "runs": len(grid.specs), **versions(),
    }
    atomic_write(out / "sweep.json", json.dumps(meta, indent=1, default=str))
    todo, skipped = plan(grid, out, retry_failed=retry_failed)
    records = store.records()
    bar = Progress(len(grid.specs), skipped, stream=stream, enabled=progress)
    t0 = time.monotonic()
    ok = failed = lost = 0
    if todo:
        bar.draw(force=True)
        if executor == "serial":
            it = _iter_serial(todo, run_fn)
        elif executor == "local":
            it = _iter_local(todo, workers or default_workers(), run_fn)
        else:
            it = _iter_dask(todo, workers, scheduler, run_fn)
        last_table = time.monotonic()
        try:
            for spec, rec, exc in it:
                if rec is None:
                    lost += 1
                    bar.update(True)
                    print(f"\nrun {spec.run_id} lost ({type(exc).__name__}: {exc}); "
                          "re-run the sweep to retry it", file=bar.stream)
                    continue
                store.write(rec)
                slim = {k: v for k, v in rec.items() if k != "history"}
                records[rec["run_id"]] = slim
                bad = rec["status"] in FAILED
                failed += bad
                ok += not bad
                bar.update(bad)
                if time.monotonic() - last_table >= table_interval:
                    store.write_tables(records, histories=False)
                    last_table = time.monotonic()
        finally:
            store.write_tables(records)
            bar.close()
    else:
        store.write_tables(records)
        bar.close()
    return SweepResult(out, len(grid.specs), skipped, ok, failed, lost, time.monotonic() - t0)
