"""Status codes of every kernel and their names, defined once.

A solve (:mod:`.fixed_point`, :mod:`.scalar`) ends ``CONVERGED``,
``MAX_ITER``, ``DIVERGED``, ``UNDERFLOW`` or (a scalar equilibrium outside its
uniqueness guard) ``NOT_UNIQUE``; a run (:mod:`.training`, :mod:`.flow`,
:mod:`.scalar`) ends with one of :data:`RUN_NAMES`; both report ``RUNNING``
while they go on. One evaluation of the loss and gradient
(:func:`.model.loss_and_grad`) has an outcome (``OK``, ``FP_FAILED``,
``NONFINITE``) that the run turns into its status.
"""

from __future__ import annotations

RUNNING = -1
"""The iteration or run goes on (a solve never returns it; a run sliced by
``k_stop`` does)."""
CONVERGED = 0
MAX_ITER = 1
"""A solve used ``max_iter`` iterations."""
MAX_STEPS = 1
"""A run took its steps (a solve's ``MAX_ITER`` and a run's ``MAX_STEPS`` share
the slot: no code reads both)."""
DIVERGED = 2
"""Non-finite values, or growth beyond the solver's or the run's bound."""
UNDERFLOW = 3
"""A solve whose stopping rule holds on squared norms too small to tell (below
``n TINY / tol^2`` for ``n`` entries: the rounding of float64's subnormals could
hide a residual at ``tol``; docs/theory.md §3, underflow). A solve's code, sharing
its slot with a run's ``FIXED_POINT_FAILED``."""
FIXED_POINT_FAILED = 3
FINISHED = 4
"""flow: ``t_end`` reached."""
STEP_TOO_SMALL = 5
"""flow: step size underflow."""
NOT_UNIQUE = 6
"""A scalar equilibrium ``y = sigma(s0 + b y)`` whose uniqueness guard fails
(``1 - b sigma'`` not of one sign over the range of ``sigma'``): no solve is made
(:mod:`.scalar`)."""

SOLVE_NAMES = {CONVERGED: "converged", MAX_ITER: "max_iter", DIVERGED: "diverged",
               UNDERFLOW: "underflow", NOT_UNIQUE: "not_unique"}
"""The name of each solve status (``FixedPointResult.status``, ``GradResult.status``)."""
RUN_NAMES = {
    CONVERGED: "converged",
    MAX_STEPS: "max_steps",
    DIVERGED: "diverged",
    FIXED_POINT_FAILED: "fixed_point_failed",
    FINISHED: "finished",
    STEP_TOO_SMALL: "step_too_small",
}
"""The name of each run status (``TrainResult.status``, ``FlowResult.status``)."""

# outcome of one loss/gradient evaluation
OK = 0
FP_FAILED = 1
NONFINITE = 2
