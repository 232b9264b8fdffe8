"""Gradient descent on DEQ models, one compiled call per run (docs/theory.md §5-§8).

:func:`train` validates its input, picks the per-sample or the
sufficient-statistics path, and hands the whole loop to
:func:`deqbench._kernels.training.gd`. Every recorded step carries what the
theory predicts next to what happened: the drift of the invariant ``Q``, the
conditioning of ``I - A``, iteration counts, the excess loss.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numba
import numpy as np

from . import _scalar as _sc
from . import _validate as v
from . import theory
from ._calibration import tune
from ._chunked import stats_row_bytes
from ._chunked import sufficient_stats as stream_stats
from ._fixed_point import check_model, check_params
from ._gradients import check_activation, check_readout, check_scalar_state, check_targets
from ._kernels import model as _m
from ._kernels import scalar as _sk
from ._kernels import training as _k
from ._kernels.status import RUN_NAMES, RUNNING, SOLVE_NAMES
from ._options import SolverOptions, resolve_options
from ._registry import ADJOINT, FORWARD, MODELS, SOLVERS, by_code, choose_model
from ._source import ReadError, check_chunk, is_out_of_core, open_source
from ._threads import single_threaded_blas
from ._warnings import warn
from .activations import Activation, get_activation

__all__ = [
    "DIVERGENCE_FACTOR",
    "HISTORY_KEYS",
    "MAX_HISTORY_BYTES",
    "TrainInterrupted",
    "TrainResult",
    "auto_spectral_every",
    "train",
]

HISTORY_KEYS = (
    "step",
    "loss",
    "excess_loss",
    "grad_norm",
    "invariant_drift",
    "drift_trace",
    "sigma_min",
    "sigma_max",
    "spectral_radius",
    "fp_iters",
    "adj_iters",
)
_INT_KEYS = ("step", "fp_iters", "adj_iters")
DIVERGENCE_FACTOR = 1e4
"""A run is ``"diverged"`` once its loss exceeds ``DIVERGENCE_FACTOR * L_0``."""
MAX_HISTORY_BYTES = 2**30
"""Largest history :func:`train` and :func:`deqbench.flow` allocate (1 GiB);
a longer one is refused with an error naming ``record_every``."""
SLICE_SECONDS = 0.2
""":func:`train` and :func:`deqbench.flow` run their compiled loops in slices of
about this many seconds and check for Ctrl-C between them (:func:`run_sliced`)."""
SPECTRAL_BUDGET = 0.05
"""Auto ``spectral_every`` keeps the matrix quantities below this fraction of a step."""
SPECTRAL_FLOPS = 500.0
"""Cost of the SVD + eigenvalue solve of an ``m x m`` matrix in gemm-flop equivalents,
per ``m^3``, up to ``m = SPECTRAL_M0``: values-only ``dgesdd`` + ``dgeev`` run far below
gemm speed at small ``m`` (:func:`spectral_flops`; figures: ``results/calibrate/README.md``)."""
SPECTRAL_M0 = 256
SPECTRAL_FLOPS_MIN = 30.0
"""The per-``m^3`` constant for wide matrices: LAPACK's blocked reductions approach
gemm speed as ``m`` grows (an estimate with a margin, ``results/calibrate/README.md``;
to be re-measured with ``python -m tools.calibrate``, which does not time it yet)."""



@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`.

    Attributes
    ----------
    A : (m, m), B : (m, d)
        Final parameters; on failure the last parameters whose loss and
        gradient were computed successfully (always finite).
    status : str
        ``"converged"`` (loss <= ``stop_loss``), ``"max_steps"``,
        ``"diverged"`` (non-finite loss, gradient or parameters, or loss above
        ``DIVERGENCE_FACTOR * L_0``), ``"fixed_point_failed"`` (``I - A`` is
        singular, the requested solver is not certified to solve it at ``A``
        (linear and readout models, docs/theory.md §3), or a forward or
        adjoint solve did not reach ``tol`` in ``max_iter`` iterations),
        ``"read_error"`` (data on disk could not be read; ``A0``, ``B0``
        returned) or ``"interrupted"`` (Ctrl-C; only on
        :attr:`TrainInterrupted.result`).
    history : dict of 1-D arrays
        One entry per recorded step, keys ``HISTORY_KEYS``; the last entry is
        the step of ``A``, ``B``. ``invariant_drift``, ``sigma_min``,
        ``sigma_max``, ``spectral_radius`` are NaN on recorded steps that are
        not a multiple of ``spectral_every`` (and computed at the last one).
    n_steps : int
        Gradient steps applied to reach ``A``, ``B``.
    sufficient_stats : bool
        Whether the n-independent path of docs/theory.md §8 ran.
    L_star : float
        Global minimum used for ``excess_loss`` (NaN if unknown).
    spectral_every : int
    """

    A: np.ndarray
    B: np.ndarray
    status: str
    history: dict = field(repr=False)
    n_steps: int
    sufficient_stats: bool
    L_star: float
    spectral_every: int

    @property
    def converged(self) -> bool:
        return self.status == "converged"


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped :func:`train` or :func:`deqbench.flow`; what
    finished is in :attr:`result`.

    A :class:`KeyboardInterrupt`, so a script stops as Python scripts do on
    Ctrl-C (and ``except KeyboardInterrupt`` catches it); ``result`` is the
    :class:`TrainResult` (from ``flow``: the :class:`~deqbench.FlowResult`) of
    the steps completed, status ``"interrupted"``, ``A``, ``B`` those of its
    last recorded step.
    """

    def __init__(self, result, what: str = "train"):
        super().__init__(f"{what} interrupted after {result.n_steps} steps "
                         "(the finished steps are in .result)")
        self.result = result


def step_flops(m: int, d: int, n: int, sufficient_stats: bool, iters: int = 2) -> float:
    """Flops of one gradient step by the cost model of docs/theory.md §8.

    Per sample: ``(K_f + K_b) 2 m^2 n + 2 m d n + 2 m n (m + d)`` with
    ``K_f = K_b = iters``; sufficient statistics: ``2 m^3 + 6 m^2 d + 2 m d^2``.
    """
    if sufficient_stats:
        return 2.0 * m**3 + 6.0 * m * m * d + 2.0 * m * d * d
    return 2 * iters * 2.0 * m * m * n + 2.0 * m * d * n + 2.0 * m * n * (m + d)


def certificate_flops(m: int, counts) -> float:
    """Flops of the certificate's work tallied in ``counts`` (the ``CERT_*``
    counters of :func:`deqbench._kernels.model.certify`) by the cost model of
    docs/theory.md §8: ``2 m^2`` per O(m^2) pass (the norm bound and the
    reference bound, tried on every certified evaluation, and each
    Collatz-Wielandt product), ``2 m^3`` per squaring (one gemm), and per
    eigendecomposition ``spectral_flops(m)`` ``m^3`` (the eigenvectors and
    the real SVD of ``M``, as the recorder's SVD + eigenvalues) plus four
    times half of it for the complex SVD of ``V`` and ``8 m^3`` for the
    complex residual ``M V - V diag(w)``."""
    decided = sum(int(counts[c]) for c in (_m.CERT_BY_NORM, _m.CERT_BY_PERRON, _m.CERT_BY_EIG,
                                           _m.CERT_BY_REFERENCE, _m.CERT_BY_SQUARING))
    passes = 2 * decided + int(counts[_m.CERT_MATVECS])
    refresh = 3.0 * spectral_flops(m) * m**3 + 8.0 * m**3
    return (2.0 * m * m * passes + 2.0 * m**3 * int(counts[_m.CERT_SQUARINGS])
            + refresh * int(counts[_m.CERT_BY_EIG]))


def spectral_flops(m: int) -> float:
    """Gemm-flop equivalents per ``m^3`` of the SVD + eigenvalue solve of an ``m x m``
    matrix: ``SPECTRAL_FLOPS`` up to ``SPECTRAL_M0``, then falling as ``1 / m`` (the
    ``O(m^2)`` parts and the unblocked panels weigh less as ``m`` grows) to
    ``SPECTRAL_FLOPS_MIN``, reached at ``m = 4267``: 31 at m = 4096."""
    return max(SPECTRAL_FLOPS_MIN, SPECTRAL_FLOPS * min(1.0, SPECTRAL_M0 / m))


def auto_spectral_every(m: int, d: int, n: int, sufficient_stats: bool, record_every: int) -> int:
    """The documented rule for the default ``spectral_every``.

    The matrix quantities of a recorded step cost about
    ``2 m^2 (m + d) + spectral_flops(m) m^3`` flops (one gemm for ``Q - Q_0``, an
    SVD and a non-symmetric eigenvalue solve); they are computed every
    ``k`` steps with the smallest ``k`` (a multiple of ``record_every``) that
    keeps them below ``SPECTRAL_BUDGET`` (5%) of the cost of the steps in
    between, estimated by :func:`step_flops` with only 2 forward and 2
    adjoint iterations (a well warm-started step; real steps cost more).
    """
    heavy = 2.0 * m * m * (m + d) + spectral_flops(m) * m**3
    k = max(1, math.ceil(heavy / (SPECTRAL_BUDGET * step_flops(m, d, n, sufficient_stats))))
    return record_every * math.ceil(k / record_every)


FAILED_STATUSES = ("diverged", "fixed_point_failed", "step_too_small", "read_error")
"""Run statuses that come with a :class:`~deqbench.ConvergenceWarning`."""


def warn_status(what: str, status: str, n_steps: int, reason: str = "") -> None:
    """The :class:`~deqbench.ConvergenceWarning` of a failed run (nothing
    otherwise); ``reason`` (from :func:`initial_failure`) says why the first
    step failed."""
    if status not in FAILED_STATUSES:
        return
    if reason:
        warn(f"{what} stopped with status={status!r} before its first step: {reason}; "
             "returning A0, B0", stacklevel=3)
    else:
        warn(f"{what} stopped with status={status!r} after {n_steps} steps; returning the "
             "last parameters whose loss and gradient were computed", stacklevel=3)


def initial_failure(A0: np.ndarray, solve: _m.Solve, status: str) -> str:
    """Why a run with ``status`` could not evaluate its initial parameters, in
    words: ``I - A0`` singular (the fixed point does not exist or is not
    unique), a spectral radius that the requested iterative solver cannot
    converge from (docs/theory.md §3), a solve that ran out of ``max_iter``,
    or a loss or gradient that is not finite."""
    m = A0.shape[0]
    C = np.eye(m) - A0
    with np.errstate(all="ignore"):
        cond = np.linalg.cond(C, 1)
    if not np.isfinite(cond) or cond * np.finfo(C.dtype).eps >= 1.0:
        return (f"I - A0 is singular (1-norm condition number {cond:.3g}): the fixed point "
                "z = A0 z + B0 x does not exist or is not unique")
    if status != "fixed_point_failed":
        return "the loss or its gradient at A0, B0 is not finite"
    for code in dict.fromkeys((solve.forward, solve.adjoint)):
        spec = by_code(code)
        if spec.certificate != "rate":
            continue
        M = (1.0 - solve.damping) * np.eye(m) + solve.damping * A0
        rho = float(np.max(np.abs(np.linalg.eigvals(M))))
        if rho > solve.cert_limit:
            why = (f">= 1, so {spec.name!r} cannot solve the fixed point" if rho >= 1.0 else
                   f"> {solve.cert_limit:.6g}, where a solve from zero needs more than "
                   f"max_iter={solve.max_iter} iterations to reach tol={solve.tol:g}")
            return (f"the {spec.name} iteration matrix (1 - damping) I + damping A0 has "
                    f"spectral radius {rho:.6g} {why} (docs/theory.md §3; solver='direct' "
                    "can)")
    return (f"a solve at A0 did not reach tol={solve.tol:g} within max_iter={solve.max_iter} "
            "iterations")


def history_rows(steps: int, record_every: int | None, rec: int, ncol: int,
                 steps_name: str = "steps") -> int:
    """Rows of the history of ``steps`` steps recorded every ``rec`` (the
    cadence; ``record_every`` is the caller's value); ``ValueError`` naming
    both when it would exceed :data:`MAX_HISTORY_BYTES`."""
    rows = steps // rec + 2
    need = rows * ncol * np.dtype(np.float64).itemsize
    if need > MAX_HISTORY_BYTES:
        least = math.ceil(steps / (MAX_HISTORY_BYTES // (ncol * 8) - 2))
        raise ValueError(
            f"{steps_name}={steps} with record_every={record_every} would record {rows} "
            f"history rows ({need / 2**30:.3g} GiB, more than the {MAX_HISTORY_BYTES >> 30} "
            f"GiB limit); pass record_every >= {least} or record_every=None (first and last "
            "step only)")
    return rows


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` hands to the compiled loops: the kernels' named
    tuples (:mod:`deqbench._kernels.model`), the parameters they update in
    place, and the recording cadences (``record_every = 0``: first and last
    step only)."""

    model: _m.Model
    A: np.ndarray
    B: np.ndarray
    solve: _m.Solve
    stats: _m.SuffStats
    record_every: int
    spectral_every: int
    stop_loss: float
    read_error: ReadError | None = None
    L_star: float = math.nan
    """The caller's global minimum (``excess_loss = loss - L_star``)."""
    excess_shift: float = 0.0
    """Added to the kernels' ``excess_loss``: the sufficient-statistics step
    computes ``L - Ls`` (``Ls`` the closed-form minimum) without cancellation."""


def prepare(model, X, Y, A0, B0, *, u, activation, solver, grad_solver, tol, max_iter,
            damping, neumann_terms, anderson_history, anderson_ridge, sufficient_stats,
            L_star, record_every, stop_loss, spectral_every, grad_methods=ADJOINT,
            chunk=None, caller="flow", default_tol=None, options=None, neumann_damping=None):
    """Validate the arguments shared by :func:`train` and :func:`deqbench.flow`
    and build the kernels' named tuples. The parameters are copied (the loops
    update them in place).

    ``X``/``Y`` on disk (``caller="train"`` only) take the sufficient-statistics
    path, whose statistics are computed here in one pass of ``chunk`` rows per
    block; a failed read sets ``read_error``."""
    kind = MODELS[choose_model(model)]
    streamed = " or ".join(f"model={k!r}" for k, s in MODELS.items() if s.sufficient_stats)
    on_disk = is_out_of_core(X) or is_out_of_core(Y)
    if on_disk:
        if caller != "train":
            raise ValueError(f"{caller} needs X and Y in memory; data on disk (a path or "
                             "np.memmap) is read by train and loss_and_grad")
        if not kind.sufficient_stats:
            raise ValueError(f"X or Y on disk needs {streamed} (the sufficient-statistics "
                             f"path streams the data once), got model={model!r}")
        A0, B0 = check_params(A0, B0, names=("A0", "B0"))
        X = open_source("X", X, shape=(None, B0.shape[1]), dtype=A0.dtype, ref="A0")
    else:
        if chunk is not None:
            raise ValueError(f"chunk applies to X or Y on disk only, got chunk={chunk!r} with "
                             "in-memory data")
        X, A0, B0 = check_model(X, A0, B0, names=("A0", "B0"))
    check_scalar_state(model, A0, u)
    A0, B0 = A0.copy(), B0.copy()
    dtype = A0.dtype
    n, d = X.shape
    m = A0.shape[0]
    act = get_activation(activation)
    check_activation(kind, act)
    if on_disk:
        u = check_readout(model, u, m, dtype, "A0")
        Y = open_source("Y", Y, shape=(n, m), dtype=dtype, ref="A0")
        chunk = check_chunk("auto" if chunk is None else chunk, n, stats_row_bytes(d, m, dtype))
    else:
        Y, u = check_targets(model, Y, u, n, m, dtype, "A0")
    v.choice("solver", solver, FORWARD)
    grad_solver = solver if grad_solver is None else grad_solver
    v.choice("grad_solver", grad_solver, grad_methods)
    fwd_spec, adj_spec = SOLVERS[solver], SOLVERS[grad_solver]
    fwd_spec.check_state(m, "solver")
    adj_spec.check_state(m, "grad_solver")
    for spec, name in ((fwd_spec, "solver"), (adj_spec, "grad_solver")):
        if spec.scalar_kernel:
            raise ValueError(_scalar_kernel_only(name, spec.name, model, solver, caller))
    opts = resolve_options(options, dtype, tol=tol, max_iter=max_iter, damping=damping,
                           anderson_history=anderson_history, anderson_ridge=anderson_ridge,
                           neumann_terms=neumann_terms, neumann_damping=neumann_damping,
                           default_tol=default_tol)
    for spec in (fwd_spec, adj_spec):
        if spec.linear_only and not kind.linear_fixed_point:
            raise ValueError(f"solver/grad_solver={spec.name!r} solves linear maps only, got "
                             f"model={model!r}")
    if record_every is None:
        record_every = 0
    else:
        record_every = v.integer("record_every", record_every, minimum=1, maximum=v.MAX_STEPS)
    stop = -1.0 if stop_loss is None else v.positive("stop_loss", stop_loss, allow_zero=True)
    sufficient_stats = v.flag("sufficient_stats", sufficient_stats, also=("auto",))
    # the closed-form step solves nothing: it stands in only for solvers whose
    # success a test on A decides (Solver.certificate)
    applies = kind.sufficient_stats and "none" not in (fwd_spec.certificate,
                                                       adj_spec.certificate)
    if sufficient_stats is True and not applies:
        uncertified = ", ".join(repr(k) for k, s in SOLVERS.items() if s.certificate == "none")
        raise ValueError(
            f"sufficient_stats=True needs {streamed} and a solver and grad_solver with a "
            f"certificate on A (not {uncertified}; docs/theory.md §3), got model={model!r}, "
            f"solver={solver!r}, grad_solver={grad_solver!r}"
        )
    if sufficient_stats == "auto":
        use_ss = applies and step_flops(m, d, n, True) < step_flops(m, d, n, False)
    else:
        use_ss = bool(sufficient_stats)
    if on_disk and not use_ss:
        raise ValueError("X or Y on disk needs sufficient_stats=True or 'auto' (per-sample "
                         "training streams no data yet), got "
                         f"sufficient_stats={sufficient_stats!r}")
    # global minimum (and W* for the sufficient-statistics path)
    dummy1, dummy2 = np.zeros(1, dtype), np.zeros((1, 1), dtype)
    Wstar, Sxx = dummy2, dummy2
    read_error = None
    if L_star is not None:
        L_star = v.real("L_star", L_star)
    kernel_Lstar, excess_shift = L_star, 0.0
    if on_disk:
        try:
            stats = stream_stats(X, Y, chunk)
        except ReadError as exc:
            read_error = exc
        else:
            Wstar, Ls = stats.least_squares()
            Wstar, Sxx = v.rounded(Wstar, dtype), v.rounded(stats.Sxx, dtype)
            if L_star is None:
                L_star = Ls
            # as below: the kernel's excess is over Ls, shifted to the caller's L_star
            kernel_Lstar, excess_shift = Ls, Ls - L_star
        X, Y = np.zeros((1, d), dtype), np.zeros((1, m), dtype)
    elif kind.linear_fixed_point and (not kind.readout or act.is_identity):
        W, Ls = theory.least_squares(X, Y)
        if L_star is None:
            L_star = Ls
        kernel_Lstar = L_star
        if use_ss:
            # the sufficient-statistics step computes L = Ls + (L - Ls) without
            # cancellation; the excess over the caller's L_star is shifted back
            # afterwards (history_dict)
            # statistics accumulated in float64 (as on disk), then rounded to the dtype
            stats = stream_stats(open_source("X", X), open_source("Y", Y),
                                 check_chunk("auto", n, stats_row_bytes(d, m, dtype)))
            Wstar, Sxx = v.rounded(W, dtype), v.rounded(stats.Sxx, dtype)
            kernel_Lstar, excess_shift = Ls, Ls - L_star
    if L_star is None:
        L_star = kernel_Lstar = math.nan
    rec = record_every if record_every > 0 else 1
    if spectral_every == "auto":
        spectral_every = auto_spectral_every(m, d, n, use_ss, rec)
    else:
        spectral_every = v.integer("spectral_every", spectral_every, minimum=1,
                                   maximum=v.MAX_STEPS)
    return Prepared(
        model=_m.Model(
            kind=kind.kind,
            X=X,
            Y=dummy2 if kind.readout else Y,
            y=Y if kind.readout else dummy1,
            u=dummy1 if u is None else u,
            code=act.code,
            param=act.param,
        ),
        A=A0,
        B=B0,
        solve=kernel_solve(opts, fwd_spec, adj_spec),
        stats=_m.SuffStats(use=use_ss, Sxx=Sxx, W_star=Wstar, L_star=float(kernel_Lstar)),
        record_every=record_every,
        spectral_every=spectral_every,
        stop_loss=stop,
        read_error=read_error,
        L_star=float(L_star),
        excess_shift=excess_shift,
    )


def _scalar_kernel_only(name, value, model, solver, caller) -> str:
    """Why ``name=value``, a solver of the scalar kernels, cannot run in the matrix
    loops of ``caller``."""
    if caller != "train":
        return (f"{name}={value!r} runs in the scalar kernels, which {caller} does not "
                "drive; use 'picard', 'anderson' or 'broyden' (model='single_index' is the "
                "nonlinear model with m = 1 there)")
    if MODELS[model].scalar_state:
        return (f"{name}={value!r} (the closed-form adjoint) runs in the scalar loop, which "
                f"model='single_index' takes with solver='newton', got solver={solver!r}; "
                "with it use 'picard', 'anderson', 'broyden', 'jfb' or 'neumann'")
    return (f"{name}={value!r} trains model='single_index' only (the paper's model "
            "y = sigma(<w, x> + b y): the nonlinear model with m = 1, with "
            f"activation='identity' the linear one), got model={model!r}")


def kernel_solve(opts: SolverOptions, fwd_spec, adj_spec) -> _m.Solve:
    """The kernels' :data:`~deqbench._kernels.model.Solve` of validated options and the
    forward and adjoint solvers: the one place it is built. History slots and
    series terms come from the solvers that read them, ``cert_limit`` from
    :func:`deqbench.theory.certified_rate` (the certificate of ``"rate"`` solvers), the
    kernels' settings from :func:`deqbench._calibration.tune`."""
    return _m.Solve(
        forward=fwd_spec.code,
        adjoint=adj_spec.code,
        tol=opts.tol,
        max_iter=opts.max_iter,
        damping=opts.damping,
        anderson_ridge=opts.anderson_ridge,
        anderson_history=max(fwd_spec.slots(opts), adj_spec.slots(opts)),
        neumann_terms=adj_spec.terms(opts),
        cert_limit=theory.certified_rate(opts.tol, opts.max_iter),
        threads=numba.get_num_threads(),
        tune=tune(),
        neumann_damping=adj_spec.series_damping(opts),
    )


def history_dict(H, n_rec, keys=HISTORY_KEYS, excess_shift=0.0) -> dict:
    """Columns of the kernel's history matrix as a dict of 1-D arrays;
    ``excess_shift`` is added to ``excess_loss`` (see :class:`Prepared`)."""
    out = {}
    for j, key in enumerate(keys):
        col = H[:n_rec, j].copy()
        out[key] = col.astype(np.int64) if key in _INT_KEYS else col
    if excess_shift != 0.0:
        out["excess_loss"] += excess_shift
    return out


def train(
    model: str,
    X,
    Y,
    A0,
    B0,
    *,
    lr: float,
    steps: int,
    u=None,
    activation: str | Activation = "identity",
    solver: str | None = None,
    grad_solver: str | None = None,
    options: SolverOptions | None = None,
    tol: float | None = None,
    record_every: int | None = 1,
    warm_start: bool = True,
    stop_loss: float | None = None,
    sufficient_stats="auto",
    L_star: float | None = None,
    max_iter: int | None = None,
    damping: float | None = None,
    neumann_terms: int | None = None,
    neumann_damping: float | None = None,
    anderson_history: int | None = None,
    anderson_ridge: float | None = None,
    spectral_every="auto",
    chunk: int | str | None = None,
) -> TrainResult:
    """Run ``steps`` steps of gradient descent ``P <- P - lr grad L(P)`` in one compiled call.

    Parameters
    ----------
    model : {"linear", "readout", "nonlinear", "single_index"}
        As in :func:`~deqbench.loss_and_grad` (docs/theory.md §2).
        ``single_index`` is the paper's model ``y = sigma(<w, x> + b y)``
        (``A0 = [[b0]]``, ``B0 = w0^T``; the loss is half the paper's risk:
        ``lr = 2 eta``); with ``solver="newton"`` (its default) the whole run
        is the fused loop of the scalar kernels (docs/theory.md §12).
    X : (n, d), Y : (n, m), or (n,) for readout, (n,) or (n, 1) for single_index
        Arrays; for ``model="linear"`` also ``np.memmap`` arrays or paths to
        float32 or float64 ``.npy`` files (data larger than memory): then the
        sufficient-statistics path runs after one streaming pass over the
        files (blocks of ``chunk`` rows, the next one read ahead), and ``L*``
        comes from the statistics (see
        :meth:`deqbench._chunked.SufficientStats.least_squares`).
    A0 : (m, m), B0 : (m, d)
        Initial parameters (not modified). ``X``, ``Y``, ``A0``, ``B0`` share
        one dtype, float32 or float64, which the run and ``A``, ``B`` keep
        (a mix is a ``TypeError``); the history is float64.
    lr : float > 0
    steps : int >= 1
    u, activation
        Read-out and link of readout; ``phi`` of nonlinear.
    solver : {"picard", "anderson", "direct", "broyden", "newton"}
        Forward solver (``direct``: LU of ``I - A``, linear fixed points only;
        ``broyden`` has no certificate on ``A``: it runs per sample;
        ``newton``: ``single_index`` only, its default, safeguarded Newton per
        sample warm-started across steps, ``tol`` the absolute residual of
        each sample; ``single_index`` with another solver runs as
        ``nonlinear`` with ``m = 1``). Default: ``"newton"`` for
        ``single_index``, else ``"picard"``.
    grad_solver : str, optional
        Adjoint solver, default ``solver``; also ``"jfb"`` or ``"neumann"``
        (series up to ``A^neumann_terms``, damped by ``neumann_damping``), the
        inexact gradients of docs/theory.md §4. With ``solver="newton"``:
        ``"newton"`` or ``"direct"`` (the exact gradient in closed form),
        ``"jfb"`` or ``"neumann"``.
    options : SolverOptions, optional
        Per-solve options (:class:`~deqbench.SolverOptions`; ``tol=None``:
        1e-10 in float64, 1e-5 in float32).
    tol, max_iter, damping, anderson_history, anderson_ridge, neumann_terms, neumann_damping
        The same options as keywords, as in :func:`~deqbench.implicit_grad`.
    record_every : int or None
        Record step ``k`` when ``k % record_every == 0``; ``None`` records only
        the first and the last step. The last step is always recorded.
    warm_start : bool
        Start each forward solve from the previous fixed point and each
        adjoint solve from the previous adjoint (otherwise from zero).
    stop_loss : float, optional
        Stop with ``"converged"`` once the loss is ``<= stop_loss``.
    sufficient_stats : {"auto", True, False}
        The n-independent step of docs/theory.md §8 (linear model, exact
        gradient, a ``solver`` and ``grad_solver`` whose success a test on ``A``
        decides, docs/theory.md §3). ``"auto"`` uses it when the §8 cost model says it
        is cheaper than a per-sample step (:func:`step_flops`), which is
        almost always; then ``solver``, ``tol`` and ``warm_start`` are unused
        and ``fp_iters = adj_iters = 0``.
    L_star : float, optional
        Global minimum for ``excess_loss``; default: the closed form of
        :func:`deqbench.theory.global_min_loss` where it exists, else NaN.
    spectral_every : int or "auto"
        Steps between computations of ``invariant_drift``, ``sigma_min``,
        ``sigma_max``, ``spectral_radius`` (see :func:`auto_spectral_every`).
    chunk : int, "auto" or None
        Rows per block of the pass over ``X``/``Y`` on disk (None: ``"auto"``,
        :func:`deqbench._source.auto_chunk`); must be None for in-memory data.

    Returns
    -------
    TrainResult
        ``single_index`` with ``"newton"``: ``fp_iters`` records the Newton
        evaluations of the slowest sample, ``adj_iters`` 0 (closed form); the
        matrix quantities are those of ``A = [[b]]``, ``B = w^T`` (``Q = (1 -
        b)^2 + |w|^2``, ``sigma_min = sigma_max = |1 - b|``,
        ``spectral_radius = |b|``), at every recorded step a multiple of
        ``spectral_every`` (``"auto"``: every recorded step).

    Raises
    ------
    ValueError
        Bad input, or a history above :data:`MAX_HISTORY_BYTES` (``steps``
        over ``record_every``; the error says which ``record_every`` fits).
    TrainInterrupted
        On Ctrl-C (SIGINT), within about :data:`SLICE_SECONDS` plus one
        step; a :class:`KeyboardInterrupt` whose ``result`` holds the steps
        that finished (status ``"interrupted"``).

    Warns
    -----
    ConvergenceWarning
        When the status is ``"diverged"``, ``"fixed_point_failed"`` or
        ``"read_error"`` (a block of ``X``/``Y`` on disk could not be read:
        no step is taken, ``A``, ``B`` are ``A0``, ``B0``). When the initial
        parameters themselves fail (``I - A0`` singular, or a spectral
        radius the solver cannot converge from), the history is empty and
        the warning says why.

    Notes
    -----
    docs/theory.md §3, §5-§8. The loop, the solves and the recording run in
    compiled slices of about :data:`SLICE_SECONDS` (Python only checks for
    Ctrl-C between them); all ``n``-sized buffers are allocated once. For the
    linear and readout models every step first certifies that the
    requested solver can solve the fixed point at ``A`` (Picard and Anderson:
    the spectral radius of ``(1 - damping) I + damping A`` at most
    :func:`deqbench.theory.certified_rate` of ``tol`` and ``max_iter``, below 1;
    docs/theory.md §3), on both gradient paths, so the status does not depend
    on the path. Numerical failure never raises: see ``TrainResult.status``.
    """
    kind = MODELS[choose_model(model)]
    solver = kind.default_solver if solver is None else solver
    if kind.scalar_state and solver == "newton":
        return _train_scalar_state(
            X, Y, A0, B0, lr=lr, steps=steps, u=u, activation=activation,
            grad_solver=grad_solver, options=options, tol=tol, max_iter=max_iter,
            damping=damping, neumann_terms=neumann_terms, neumann_damping=neumann_damping,
            anderson_history=anderson_history, anderson_ridge=anderson_ridge,
            record_every=record_every, warm_start=warm_start, stop_loss=stop_loss,
            sufficient_stats=sufficient_stats, L_star=L_star, spectral_every=spectral_every,
            chunk=chunk)
    run = prepare(
        model, X, Y, A0, B0, u=u, activation=activation, solver=solver,
        grad_solver=grad_solver, tol=tol, max_iter=max_iter, damping=damping,
        neumann_terms=neumann_terms, anderson_history=anderson_history,
        anderson_ridge=anderson_ridge, sufficient_stats=sufficient_stats, L_star=L_star,
        record_every=record_every, stop_loss=stop_loss, spectral_every=spectral_every,
        chunk=chunk, caller="train", options=options, neumann_damping=neumann_damping,
    )
    lr = v.positive("lr", lr)
    steps = v.integer("steps", steps, minimum=1, maximum=v.MAX_STEPS)
    warm_start = v.boolean("warm_start", warm_start)
    if run.read_error is not None:
        warn(f"train stopped with status='read_error' before its first step "
             f"({run.read_error}); returning A0, B0", stacklevel=2)
        return TrainResult(A=run.A, B=run.B, status="read_error",
                           history=history_dict(np.empty((0, _m.NCOL)), 0), n_steps=0,
                           sufficient_stats=True, L_star=math.nan,
                           spectral_every=int(run.spectral_every))
    rec = run.record_every
    if rec == 0:  # first and last only
        rec = steps + 1
    H = np.full((history_rows(steps, record_every, rec, _m.NCOL), _m.NCOL), np.nan)
    schedule = _k.Schedule(lr=lr, steps=steps, stop_loss=run.stop_loss,
                           divergence_factor=DIVERGENCE_FACTOR, warm_start=bool(warm_start),
                           record_every=rec, spectral_every=run.spectral_every)
    with single_threaded_blas():
        state = _k.gd_start(run.model, run.A, run.B, run.solve, run.stats, schedule, H)

        def advance(k_stop):
            return _k.gd_run(run.model, run.A, run.B, run.solve, run.stats, schedule, state,
                             k_stop)[0]

        def interrupted():
            last, n_rec = _k.gd_stop(state, run.A, run.B)
            return _result(run, "interrupted", H, n_rec, last)

        status = run_sliced(advance, lambda: int(state.ints[0]), interrupted, "train")
    last, n_rec = int(state.ints[1]), int(state.ints[2])
    status = RUN_NAMES[status]
    failed_at_start = status in FAILED_STATUSES and n_rec == 0
    reason = initial_failure(run.A, run.solve, status) if failed_at_start else ""
    warn_status("train", status, last, reason)
    return _result(run, status, H, n_rec, last)


def _train_scalar_state(X, Y, A0, B0, *, lr, steps, u, activation, grad_solver, options, tol,
                        max_iter, damping, neumann_terms, neumann_damping, anderson_history,
                        anderson_ridge, record_every, warm_start, stop_loss, sufficient_stats,
                        L_star, spectral_every, chunk) -> TrainResult:
    """:func:`train` of ``model="single_index"`` with ``solver="newton"``: the fused
    loop of the scalar kernels (those of :func:`deqbench._scalar.train_scalar`), run in
    slices by :func:`run_sliced` (Ctrl-C raises :class:`TrainInterrupted` with the
    finished steps), returning a :class:`TrainResult` (docs/theory.md §12,
    docs/training.md)."""
    if is_out_of_core(X) or is_out_of_core(Y):
        raise ValueError("X or Y on disk needs model='linear' (the sufficient-statistics path "
                         "streams the data once), got model='single_index'")
    if chunk is not None:
        raise ValueError(f"chunk applies to X or Y on disk only, got chunk={chunk!r} with "
                         "in-memory data")
    X, A0, B0 = check_model(X, A0, B0, names=("A0", "B0"))
    check_scalar_state("single_index", A0, u)
    dt = A0.dtype
    n, d = X.shape
    act = get_activation(activation)
    Y = check_targets("single_index", Y, u, n, 1, dt, "A0")[0][:, 0].copy()
    kind = _sc.fused_adjoint(grad_solver)
    opts = resolve_options(options, dt, tol=tol, max_iter=max_iter, damping=damping,
                           anderson_history=anderson_history, anderson_ridge=anderson_ridge,
                           neumann_terms=neumann_terms, neumann_damping=neumann_damping)
    terms = opts.neumann_terms if kind == _sk.NEUMANN else 0
    series = opts.neumann_damping if kind == _sk.NEUMANN else 1.0
    lr = v.positive("lr", lr)
    # the shared rules of train's other path (prepare, train)
    steps = v.integer("steps", steps, minimum=1, maximum=v.MAX_STEPS)
    warm_start = v.boolean("warm_start", warm_start)
    rec = steps + 1 if record_every is None else v.integer("record_every", record_every,
                                                            minimum=1, maximum=v.MAX_STEPS)
    stop = -1.0 if stop_loss is None else v.positive("stop_loss", stop_loss, allow_zero=True)
    if v.flag("sufficient_stats", sufficient_stats, also=("auto",)) is True:
        raise ValueError("sufficient_stats=True needs model='linear' (docs/theory.md §8), got "
                         "model='single_index'")
    L_star = np.nan if L_star is None else v.real("L_star", L_star)
    se = rec if spectral_every == "auto" else v.integer("spectral_every", spectral_every,
                                                         minimum=1, maximum=v.MAX_STEPS)
    rows = history_rows(steps, record_every, rec, _sk.NCOL + d + 1)
    H = np.full((rows, _sk.NCOL), np.nan)
    Th = np.full((rows, d + 1), np.nan)
    w0, b0 = B0[0].copy(), float(A0[0, 0])
    w, bb = w0.copy(), np.array([b0], dt)
    link = _sc.kernel_link(act)
    so = _sc.kernel_options(lr=lr, steps=steps, stop_loss=stop, tol=opts.tol,
                            max_iter=opts.max_iter, dtype=dt, kind=kind, terms=terms,
                            damping=series, predict=True, record_every=rec)
    P = _sk.pack(X, Y)
    E = _sk.pack(np.empty((0, d), dt), np.empty(0, dt))
    tgt = np.empty(0)
    state = _sk.gd_state(d, dt)

    def result(status, last, nrec):
        return TrainResult(A=bb.reshape(1, 1).copy(), B=w[None, :].copy(), status=status,
                           history=_sc.matrix_history(H, Th, nrec, w0, b0, L_star, se),
                           n_steps=int(last), sufficient_stats=False, L_star=float(L_star),
                           spectral_every=int(se))

    def advance(k_stop):
        if warm_start:
            return int(_sk.gd_run(link, P, E, w, bb, tgt, so, state, H, Th, k_stop)[0])
        while True:  # one step a call, each solve from sigma(s0)
            P.ints[0] = 0
            st = int(_sk.gd_run(link, P, E, w, bb, tgt, so, state, H, Th,
                                state.ints[0] + 1)[0])
            if st != RUNNING or state.ints[0] >= k_stop:
                return st

    def interrupted():
        last, nrec = _sk.gd_stop(link, E, w, bb, tgt, so, state, H, Th)
        return result("interrupted", last, nrec)

    with np.errstate(all="ignore"):  # X w0 beyond the dtype: tanh or sigmoid would hide it
        s0_finite = bool(np.isfinite(X @ w0).all())
    if not s0_finite:
        warn(f"train stopped with status='diverged' before its first step: X B0^T overflows "
             f"{dt} (its entries exceed the dtype's range); returning A0, B0", stacklevel=3)
        return result("diverged", 0, 0)
    with single_threaded_blas():
        status = RUN_NAMES[run_sliced(advance, lambda: int(state.ints[0]), interrupted,
                                      "train")]
    last, nrec = int(state.ints[1]), int(state.ints[2])
    if status in FAILED_STATUSES:
        solve = SOLVE_NAMES[int(state.ints[5])] if status == "fixed_point_failed" else ""
        if nrec == 0:
            why = {"not_unique": _sc.guard_rule(act, b0),
                   "max_iter": f"a Newton solve at A0, B0 did not reach tol={opts.tol:g} within "
                               f"max_iter={opts.max_iter} evaluations"}.get(
                solve, "the loss or its gradient at A0, B0 is not finite")
            warn(f"train stopped with status={status!r} before its first step: {why}; "
                 "returning A0, B0", stacklevel=3)
        else:
            why = {"not_unique": " (the next step's b leaves the uniqueness guard: "
                                 f"{_sc.rule(act)}; docs/theory.md §12)",
                   "max_iter": f" (a Newton solve did not reach tol={opts.tol:g} within "
                               f"max_iter={opts.max_iter} evaluations)"}.get(solve, "")
            warn(f"train stopped with status={status!r} after {last} steps{why}; returning "
                 "the last parameters whose loss and gradient were computed", stacklevel=3)
    return result(status, last, nrec)


def run_sliced(advance, count, interrupted, what: str) -> int:
    """Run a compiled loop in slices of about :data:`SLICE_SECONDS`, checking
    for Ctrl-C between them; the one mechanism of :func:`train` and
    :func:`deqbench.flow`.

    ``advance(k_stop)`` runs the loop until it ends (returning its status) or
    until ``count()``, the steps done, reaches ``k_stop`` (returning
    :data:`deqbench._kernels.status.RUNNING`). The first slice is one step,
    the next ones are sized by the last slice's time per step, growing at most
    16x. A KeyboardInterrupt (Python raises it between slices: a compiled call
    runs to its end) becomes :class:`TrainInterrupted` carrying
    ``interrupted()``, the result of the steps that finished.
    """
    n = 1
    try:
        while True:
            k0 = count()
            t0 = time.perf_counter()
            status = advance(k0 + n)
            if status != RUNNING:
                return status
            dt = time.perf_counter() - t0
            done = count() - k0
            n = max(1, min(16 * n, int(done * SLICE_SECONDS / dt) if dt > 0.0 else 16 * n))
    except KeyboardInterrupt:
        raise TrainInterrupted(interrupted(), what) from None


def _result(run: Prepared, status: str, H, n_rec, last) -> TrainResult:
    return TrainResult(
        A=run.A,
        B=run.B,
        status=status,
        history=history_dict(H, n_rec, excess_shift=run.excess_shift),
        n_steps=int(last),
        sufficient_stats=bool(run.stats.use),
        L_star=run.L_star,
        spectral_every=int(run.spectral_every),
    )
