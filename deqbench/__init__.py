"""deqbench: compiled solvers, gradients and benchmarks for deep equilibrium models.

The public API (the mathematics is in docs/theory.md). Every call takes data
first, then parameters:

* :func:`fixed_point` ``(X, A, B)`` - forward solve ``Z = phi(Z A^T + X B^T)``
* :func:`implicit_grad` ``(X, A, B, Z, G)`` - adjoint gradients through a fixed point
* :func:`loss_and_grad` ``(model, X, Y, A, B)`` - loss and exact gradient of the three models
* :func:`train` ``(model, X, Y, A0, B0)`` - gradient descent, compiled (Ctrl-C raises
  :class:`TrainInterrupted`, which keeps the finished steps)
* :func:`flow` ``(model, X, Y, A0, B0)`` - gradient flow (adaptive Dormand-Prince;
  Ctrl-C raises :class:`TrainInterrupted` too)
* :class:`SolverOptions` - the options of every solve (``options=``; the same
  names are keyword arguments of each call)
* :class:`ConvergenceWarning` - the warning of every solver that misses its tolerance
* :class:`PrecisionWarning`, :func:`tol_floor` - a tolerance below the dtype's reach
  (every call computes in the dtype of its arrays, float32 or float64)
* :class:`CalibrationWarning` - a calibration file (``deqbench calibrate``) that does
  not apply here; the built-in settings run
* :mod:`deqbench.theory` - the predictions of the theory
* :mod:`deqbench.data` - seeded problem builders
* :class:`Activation` - activations usable inside jitted code;
  :func:`register_activation` adds one (``sigma``, ``sigma'``) for every call

Implementations live in private modules (``deqbench._fixed_point``, ...).
"""

from . import data, theory
from ._fixed_point import fixed_point
from ._flow import FlowResult, flow
from ._gradients import implicit_grad, loss_and_grad
from ._options import SolverOptions, tol_floor
from ._results import FixedPointResult, GradResult, LossAndGrad
from ._training import DIVERGENCE_FACTOR, TrainInterrupted, TrainResult, train
from ._version import __version__ as __version__
from ._warnings import CalibrationWarning, ConvergenceWarning, PrecisionWarning
from .activations import Activation, get_activation, register_activation

__all__ = [
    "DIVERGENCE_FACTOR",
    "Activation",
    "CalibrationWarning",
    "ConvergenceWarning",
    "FixedPointResult",
    "FlowResult",
    "GradResult",
    "LossAndGrad",
    "PrecisionWarning",
    "SolverOptions",
    "TrainInterrupted",
    "TrainResult",
    "data",
    "fixed_point",
    "flow",
    "get_activation",
    "implicit_grad",
    "loss_and_grad",
    "register_activation",
    "theory",
    "tol_floor",
    "train",
]
