"""The one dispatch of the solvers: their codes, what the kernels need to know of
each (:data:`FLAGS`), and :func:`iterate`, which every solve of the map
``Z -> h(Z M + U)`` goes through (the public calls and the training and flow
loops alike).

A solver's name, the options it reads and what a user may ask of it live in
:mod:`deqbench._registry`, whose entries name these codes. Adding an
iterative solver: its kernel (a module of its own), its code, its row of
:data:`FLAGS` and its branch in :func:`iterate` here, and its registry entry.

Newton's method for a scalar state (``m = 1``, :data:`NEWTON`) is the one
solver not run by :func:`iterate`: it needs the activation's derivative and
value ranges (its uniqueness guard and brackets), and its kernels are those
of :mod:`.scalar`, which the public calls reach through
:mod:`deqbench._scalar` (flag :data:`SCALAR`).
"""

from __future__ import annotations

import math

import numpy as np

from .._jit import jit
from .broyden import broyden
from .fixed_point import anderson, picard
from .status import DIVERGED

PICARD = 0
ANDERSON = 1
DIRECT = 2
JFB = 3
NEUMANN = 4
BROYDEN = 5
NEWTON = 6

ITERATES = 1
"""Iterates to ``tol`` within ``max_iter``; anything but ``CONVERGED`` fails."""
TRUNCATED = 2
"""A fixed number of terms (``terms + 1`` map evaluations), no tolerance: an
inexact adjoint, failing only when ``DIVERGED``."""
EXACT_LINEAR = 4
"""An exact linear solve (LU of ``I - A``), not an iteration: linear maps only,
and never through :func:`iterate`."""
RATE_CERTIFIED = 8
"""On a linear fixed point, certified only where the spectral radius of
``(1 - damping) I + damping A`` is at most ``cert_limit``
(:func:`deqbench._kernels.model.certify`, :func:`deqbench.theory.certified_rate`);
the others need an invertible ``I - A`` (exact) or nothing (truncated)."""
KEEPS_EVALUATION = 16
"""Leaves ``Z + damping (h(Z M + U) - Z)`` of its returned ``Z`` in ``T``, so the
nonlinear adjoint reads ``h'`` off it (:func:`deqbench._kernels.gradients.output_derivative`)."""
SCALAR = 32
"""Solves a scalar state per sample in the kernels of :mod:`.scalar`, never
through :func:`iterate`: forward, safeguarded Newton with its uniqueness guard
(docs/theory.md §12); adjoint, the closed form ``1 / (1 - b phi')``. The
matrix loops (training, flow) do not run it; :func:`iterate` answers
``DIVERGED`` if asked."""

FLAGS = (
    ITERATES | RATE_CERTIFIED | KEEPS_EVALUATION,  # PICARD
    ITERATES | RATE_CERTIFIED,  # ANDERSON
    EXACT_LINEAR,  # DIRECT
    TRUNCATED,  # JFB: the Neumann series with no term past I
    TRUNCATED,  # NEUMANN
    ITERATES,  # BROYDEN: no test on A predicts its convergence (certificate "none")
    ITERATES | SCALAR,  # NEWTON: per sample, its guard decides (certificate "none")
)
"""The flags of each solver, indexed by its code."""


@jit
def has(solver, flag):
    """Whether solver code ``solver`` carries ``flag`` (:data:`FLAGS`)."""
    return (FLAGS[solver] & flag) != 0


@jit
def iterate(solver, Z, M, U, code, param, D, T, Fh, Gh, GG, work, hist, tol, max_iter, damping,
            ridge, terms, threads, tune):
    """Solve ``Z = h(Z M + U)`` in place on ``Z`` (initial guess in) with solver
    ``solver``; return ``(n_iter, residual, status)`` (:mod:`.status`).

    Work space, from the caller: ``T`` ``(n, m)`` (Picard and the truncated
    series), ``Fh``, ``Gh`` ``(k, n, m)`` history slots and ``GG`` ``(k, k)``,
    ``work`` ``(2k + 2, k)`` float64 (Anderson, ``k`` its history), ``hist``
    the residual of every iterate (``max_iter + 1`` entries, ``terms + 2``
    truncated); what a solver does not read may be ``(1, ...)`` placeholders of
    the same dtype; Broyden keeps its ``k`` secant pairs in ``Fh``, ``Gh`` and
    its second iterate in ``T``. ``terms``: the highest power of a truncated
    series (``TRUNCATED``; JFB passes 0), whose steps are damped by
    ``damping`` (the damped series of docs/theory.md §4; the caller passes the
    series' damping, 1 for JFB). ``threads``: numba's thread count; ``tune``:
    the settings vector (:mod:`.blocks`).
    """
    # Newton is never run here; not has(): a second literal flag would compile it twice
    if (FLAGS[solver] & SCALAR) != 0:
        return 0, math.inf, DIVERGED
    if solver == BROYDEN:
        return broyden(Z, M, U, code, param, D, T, Fh, Gh, tol, max_iter, hist)
    if solver == ANDERSON:
        return anderson(Z, M, U, code, param, D, Fh, Gh, GG, work, tol, max_iter, damping,
                        ridge, hist, tune)
    if has(solver, TRUNCATED):
        return picard(Z, M, U, code, param, D, T, 0.0, terms + 1, damping, hist, threads,
                      np.int64(0), tune)
    return picard(Z, M, U, code, param, D, T, tol, max_iter, damping, hist, threads,
                  np.int64(0), tune)
