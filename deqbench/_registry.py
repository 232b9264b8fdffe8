"""The solvers and the models, one table each; every layer reads them (the
public calls, training, flow, sweeps, the theory) instead of spelling names.

:data:`SOLVERS` maps a solver's name to its kernel dispatch code
(:mod:`deqbench._kernels.solvers`, whose ``FLAGS`` row says how the kernels
run it: iterated to ``tol``, truncated, or an exact linear solve, and which
certificate it needs), what it may be asked to solve, the options it reads
and its work space. :data:`MODELS` maps a model's name to its kernel kind
code (:mod:`deqbench._kernels.model`) and what the calls check of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _validate as v
from ._kernels import model as _km
from ._kernels import solvers as _ks

__all__ = ["ADJOINT", "EXACT_ADJOINT", "FORWARD", "MODELS", "RENAMED", "SOLVERS", "Model",
           "Solver", "by_code", "choose_model"]


@dataclass(frozen=True)
class Solver:
    """One solver of the fixed point ``Z = h(Z M + U)``.

    Attributes
    ----------
    name : str
    code : int
        Its kernel dispatch code (:mod:`deqbench._kernels.solvers`).
    forward, adjoint : bool
        Whether it solves the forward fixed point (``fixed_point``'s
        ``method``, ``solver=``) and the adjoint equation (``implicit_grad``'s
        ``method``, ``grad_solver=``).
    options : tuple of str
        The :class:`~deqbench.SolverOptions` fields it reads.
    workspace : tuple of str
        The buffers it needs besides ``Z``: ``"T"`` (one ``(n, m)`` array),
        ``"history"`` (``slots`` pairs of ``(n, m)`` arrays and their small
        float64 Gram and solve matrices).
    history : str or None
        The option whose value is its number of history slots.
    scalar_state_only : bool
        Solves maps of a scalar state (``m = 1``) only.
    """

    name: str
    code: int
    forward: bool
    adjoint: bool
    options: tuple[str, ...]
    workspace: tuple[str, ...] = ()
    history: str | None = None
    scalar_state_only: bool = False

    def _has(self, flag: int) -> bool:
        return bool(_ks.FLAGS[self.code] & flag)

    @property
    def linear_only(self) -> bool:
        """An exact linear solve: linear maps only (identity ``phi``)."""
        return self._has(_ks.EXACT_LINEAR)

    @property
    def inexact(self) -> bool:
        """A truncated adjoint (status ``"truncated"``, docs/theory.md §4)."""
        return self._has(_ks.TRUNCATED)

    @property
    def scalar_kernel(self) -> bool:
        """Runs in the scalar kernels (:mod:`deqbench._kernels.scalar`, through
        :mod:`deqbench._scalar`), not in the matrix loops: Newton's method for a
        scalar state, and its closed-form adjoint."""
        return self._has(_ks.SCALAR)

    @property
    def keeps_evaluation(self) -> bool:
        """Leaves the evaluation of its returned ``Z`` in ``T`` (the nonlinear
        adjoint reads ``h'`` off it)."""
        return self._has(_ks.KEEPS_EVALUATION)

    @property
    def certificate(self) -> str:
        """What training and flow certify before a linear fixed point is solved
        with it (docs/theory.md §3, certificate): ``"rate"``, the spectral
        radius of ``(1 - damping) I + damping A`` at most
        :func:`deqbench.theory.certified_rate` of ``tol`` and ``max_iter``;
        ``"invertible"``, ``I - A`` invertible; ``"none"``: nothing on ``A``
        decides it (the truncated series, which iterate to no tolerance, and
        Broyden, whose convergence no test on ``A`` predicts): its own solve's
        status decides, so the sufficient-statistics path, which solves
        nothing, does not stand in for it."""
        if self._has(_ks.RATE_CERTIFIED):
            return "rate"
        return "invertible" if self.linear_only else "none"

    def check_state(self, m: int, name: str) -> None:
        """A solver of a scalar state only, asked for a state of width ``m > 1``, is a
        ``ValueError`` naming the argument ``name``."""
        if self.scalar_state_only and m != 1:
            raise ValueError(f"{name}={self.name!r} solves a scalar state only (m = 1), "
                             f"got m={m}")

    def slots(self, opts) -> int:
        """History slots of its work space under ``opts`` (0 without a history)."""
        return int(getattr(opts, self.history)) if self.history else 0

    def terms(self, opts) -> int:
        """The highest power of its truncated series under ``opts`` (0 unless it
        reads ``neumann_terms``: JFB is the series of ``I`` alone)."""
        return int(opts.neumann_terms) if "neumann_terms" in self.options else 0

    def series_damping(self, opts) -> float:
        """The damping of its truncated series under ``opts`` (1 unless it reads
        ``neumann_damping``: JFB's one term is ``G`` undamped)."""
        return float(opts.neumann_damping) if "neumann_damping" in self.options else 1.0


_ITERATION = ("tol", "max_iter", "damping")

SOLVERS = {s.name: s for s in (
    Solver("picard", _ks.PICARD, forward=True, adjoint=True, options=_ITERATION,
           workspace=("T",)),
    Solver("anderson", _ks.ANDERSON, forward=True, adjoint=True,
           options=(*_ITERATION, "anderson_history", "anderson_ridge"),
           workspace=("history",), history="anderson_history"),
    Solver("direct", _ks.DIRECT, forward=True, adjoint=True, options=("tol",)),
    Solver("jfb", _ks.JFB, forward=False, adjoint=True, options=(), workspace=("T",)),
    Solver("neumann", _ks.NEUMANN, forward=False, adjoint=True,
           options=("neumann_terms", "neumann_damping"), workspace=("T",)),
    # anderson_history sizes both multisecant memories: k pairs, 2 k arrays of (n, m)
    Solver("broyden", _ks.BROYDEN, forward=True, adjoint=True,
           options=("tol", "max_iter", "anderson_history"), workspace=("T", "history"),
           history="anderson_history"),
    # per sample, in the scalar kernels: the forward solve to an absolute residual tol with
    # max_iter evaluations, the adjoint in closed form (docs/theory.md §12)
    Solver("newton", _ks.NEWTON, forward=True, adjoint=True, options=("tol", "max_iter"),
           scalar_state_only=True),
)}
"""Every solver by name, in the order the calls list them."""

FORWARD = tuple(name for name, s in SOLVERS.items() if s.forward)
"""Names of the forward solvers (``fixed_point``'s ``method``, ``solver=``)."""
ADJOINT = tuple(name for name, s in SOLVERS.items() if s.adjoint)
"""Names of the adjoint solvers (``implicit_grad``'s ``method``, ``grad_solver=``)."""
EXACT_ADJOINT = tuple(name for name in ADJOINT if not SOLVERS[name].inexact)
"""Adjoint solvers of the exact gradient (``flow``)."""

_BY_CODE = {s.code: s for s in SOLVERS.values()}


def by_code(code: int) -> Solver:
    """The solver of kernel dispatch code ``code``."""
    return _BY_CODE[int(code)]


@dataclass(frozen=True)
class Model:
    """One model of docs/theory.md §2.

    Attributes
    ----------
    name : str
    kind : int
        Its kernel kind code (:mod:`deqbench._kernels.model`).
    readout : bool
        Predicts ``yhat = sigma(u . z)`` through a read-out ``u`` (targets
        ``(n,)``, the activation is the link ``sigma``); otherwise ``yhat = z``
        (targets ``(n, m)``).
    linear_fixed_point : bool
        ``z = A z + B x``; otherwise ``z = phi(A z + B x)`` with ``phi`` the
        activation (and no exact linear solver applies).
    scalar_state : bool
        One scalar state per sample (``m = 1``: ``A = [[b]]``, ``B = w^T``),
        targets ``(n,)`` or ``(n, 1)``; its default solver is ``"newton"``
        (the scalar kernels), the others run it as the ``nonlinear`` model
        with ``m = 1``.
    """

    name: str
    kind: int
    readout: bool
    linear_fixed_point: bool
    scalar_state: bool = False

    @property
    def default_solver(self) -> str:
        """The forward solver of a call that names none."""
        return "newton" if self.scalar_state else "picard"

    @property
    def activation(self) -> str:
        """What the call's ``activation`` is: ``"link"`` (of the read-out),
        ``"map"`` (``phi`` of the fixed point), or ``"identity"`` (none: any
        other is an error)."""
        if self.readout:
            return "link"
        return "identity" if self.linear_fixed_point else "map"

    @property
    def sufficient_stats(self) -> bool:
        """The n-independent step of docs/theory.md §8 applies (linear fixed
        point and ``yhat = z``, squared loss)."""
        return self.linear_fixed_point and not self.readout


MODELS = {m.name: m for m in (
    Model("linear", _km.LINEAR, readout=False, linear_fixed_point=True),
    Model("readout", _km.READOUT, readout=True, linear_fixed_point=True),
    Model("nonlinear", _km.NONLINEAR, readout=False, linear_fixed_point=False),
    # the paper's model y = sigma(<w, x> + b y): nonlinear with m = 1 to the matrix kernels
    Model("single_index", _km.NONLINEAR, readout=False, linear_fixed_point=False,
          scalar_state=True),
)}
"""Every model by name, in the order the calls list them."""

RENAMED = ("model='single_index' is now the paper's model y = sigma(<w, x> + b y) (A of shape "
           "(1, 1), B of shape (1, d)); the linear DEQ read out through sigma(u^T z) is now "
           "model='readout'")
"""The one-line error of a call spelled for the model that ``"readout"`` now names."""


def choose_model(model, allowed=None) -> str:
    """``model`` checked against ``allowed`` (default: every model); the old spelling
    ``"single_index"`` where it is not allowed is :data:`RENAMED`."""
    allowed = tuple(MODELS) if allowed is None else tuple(allowed)
    if model == "single_index" and model not in allowed:
        raise ValueError(RENAMED)
    return v.choice("model", model, allowed)
