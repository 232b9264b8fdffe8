"""The options of the iterative solves: one public, immutable object, and the
one function that turns it and the keyword spelling into the validated form
every call uses (docs/theory.md §3)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import numpy as np

from . import _validate as v
from ._warnings import PrecisionWarning

__all__ = ["DEFAULT_TOL", "TOL_FLOOR_EPS", "SolverOptions", "resolve_options", "tol_floor"]

DEFAULT_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}
"""``tol=None`` per dtype: 1e-10 in float64, 1e-5 (84 eps) in float32."""
TOL_FLOOR_EPS = 8.0
"""The floor of a solve tolerance, in units of the dtype's eps (see :func:`tol_floor`)."""


def tol_floor(dtype) -> float:
    """The smallest ``tol`` a solve in ``dtype`` can be expected to meet:
    ``TOL_FLOOR_EPS * eps`` (9.5e-7 in float32, 1.8e-15 in float64).

    A relative residual ``||F(Z) - Z|| / ||F(Z)||`` evaluated in floating point
    carries rounding of a few eps (one gemm, one activation per entry), so a
    smaller ``tol`` is met by chance or never (docs/theory.md §3).
    """
    return TOL_FLOOR_EPS * float(np.finfo(v.float_dtype("dtype", dtype)).eps)


@dataclass(frozen=True)
class SolverOptions:
    """Options of the forward and adjoint solves, shared by every public call.

    Pass one as ``options=`` to :func:`~deqbench.fixed_point`,
    :func:`~deqbench.implicit_grad`, :func:`~deqbench.loss_and_grad`,
    :func:`~deqbench.train` and :func:`~deqbench.flow`, or give the same names
    as keyword arguments of the call (the convenient spelling). A keyword
    given with ``options=`` fills an option that ``options`` leaves at its
    default; one that ``options`` sets to another value is a ``ValueError``
    naming it. Each solver reads only its own options
    (``deqbench._registry.SOLVERS``); the values are checked on construction.

    Parameters
    ----------
    tol : float in (0, 1) or None
        Stop when ``||F(Z) - Z||_F / ||F(Z)||_F <= tol`` (the residual starts at
        1 from ``Z = 0``: a ``tol`` of 1 or more would stop before any work). None: 1e-10 in
        float64, 1e-5 in float32 (:func:`~deqbench.flow`: ``min(1e-10, 1e-3
        rtol)`` in float64); below :func:`~deqbench.tol_floor` of the data's
        dtype (``8 eps``: 9.5e-7 in float32) a :class:`~deqbench.PrecisionWarning`
        names the floor.
    max_iter : int in [1, 10**7]
        Iterations per solve (each keeps a float64 of history, allocated first).
    damping : float in (0, 1]
        Picard's ``Z <- (1 - damping) Z + damping F(Z)``; Anderson mixes map
        values and iterates by it.
    anderson_history : int in [1, 256]
        Past residuals kept by Anderson acceleration, and secant pairs kept
        by Broyden's method (per sample; it restarts when they are full):
        both keep ``2 anderson_history`` arrays of the state's shape.
    anderson_ridge : float >= 0
        Anderson's Tikhonov term, relative to each kept residual's squared size.
    neumann_terms : int in [0, 10**7]
        The highest power ``k`` of the truncated Neumann series of the
        ``"neumann"`` adjoint, ``Lam = G (I + A + ... + A^k)`` (``k + 1`` terms).
    neumann_damping : float in (0, 1]
        ``lam`` of the damped series of the ``"neumann"`` adjoint: ``k + 1``
        steps of ``Lam <- (1 - lam) Lam + lam (Lam A + G)`` from zero, that is
        ``Lam = lam G sum_{j <= k} ((1 - lam) I + lam A)^j``; 1 (the default) is
        the plain series. The paper's "damped two terms" is ``k = 1``,
        ``lam = 1/2`` (scalar factor ``0.75 + 0.25 a``).

    Notes
    -----
    docs/theory.md §3 (stopping rule, Anderson, Broyden), §4 (adjoints) and
    §12 (Newton for a scalar state: ``tol`` is then the absolute residual of
    each sample, ``max_iter`` its evaluations).
    """

    tol: float | None = None
    max_iter: int = 10_000
    damping: float = 1.0
    anderson_history: int = 5
    anderson_ridge: float = 1e-10
    neumann_terms: int = 5
    neumann_damping: float = 1.0

    def __post_init__(self):
        checked = {
            "tol": None if self.tol is None else v.tolerance("tol", self.tol),
            "max_iter": v.integer("max_iter", self.max_iter, minimum=1,
                                  maximum=v.MAX_ITERATIONS),
            "damping": v.unit_interval("damping", self.damping),
            "anderson_history": v.integer("anderson_history", self.anderson_history, minimum=1,
                                          maximum=v.MAX_ANDERSON_HISTORY),
            "anderson_ridge": v.positive("anderson_ridge", self.anderson_ridge, allow_zero=True),
            "neumann_terms": v.integer("neumann_terms", self.neumann_terms, minimum=0,
                                       maximum=v.MAX_ITERATIONS),
            "neumann_damping": v.unit_interval("neumann_damping", self.neumann_damping),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


_DEFAULTS = {f.name: f.default for f in fields(SolverOptions)}


def resolve_options(options, dtype, *, tol=None, max_iter=None, damping=None,
                    anderson_history=None, anderson_ridge=None, neumann_terms=None,
                    neumann_damping=None, default_tol=None) -> SolverOptions:
    """The one conversion of ``options=`` and the keyword spelling of a public
    call into the validated options of its solves, with ``tol`` a float.

    A keyword is given when it is not None. ``tol=None`` (in both) is
    ``default_tol`` in float64 (:data:`DEFAULT_TOL` when None; never below the
    floor) and ``DEFAULT_TOL`` in float32; a ``tol`` below :func:`tol_floor`
    of ``dtype`` warns (:class:`~deqbench.PrecisionWarning`) and is used as given.
    """
    given = {"tol": tol, "max_iter": max_iter, "damping": damping,
             "anderson_history": anderson_history, "anderson_ridge": anderson_ridge,
             "neumann_terms": neumann_terms, "neumann_damping": neumann_damping}
    given = {name: value for name, value in given.items() if value is not None}
    if options is None:
        values = dict(_DEFAULTS, **given)
    else:
        if not isinstance(options, SolverOptions):
            raise TypeError(f"options must be a deqbench.SolverOptions, got "
                            f"{type(options).__name__}")
        values = {name: getattr(options, name) for name in _DEFAULTS}
        for name, value in given.items():
            held = values[name]
            if held != _DEFAULTS[name] and held != value:
                raise ValueError(f"{name} is given twice with different values: "
                                 f"options.{name}={held!r} and {name}={value!r}; pass it once")
            values[name] = value
    dtype = np.dtype(dtype)
    floor = tol_floor(dtype)
    if values["tol"] is None:  # a default never goes below the floor
        values["tol"] = DEFAULT_TOL[dtype]
        if default_tol is not None and dtype == np.float64:
            values["tol"] = max(default_tol, floor)
    opts = SolverOptions(**values)
    if opts.tol < floor:
        warnings.warn(f"tol={opts.tol:.3g} is below the floor {floor:.3g} of {dtype} "
                      f"({TOL_FLOOR_EPS:g} x eps = {TOL_FLOOR_EPS:g} x "
                      f"{np.finfo(dtype).eps:.3g}): the solves may stop at max_iter; use "
                      f"tol >= {floor:.3g} or float64 data", PrecisionWarning, stacklevel=4)
    return opts
