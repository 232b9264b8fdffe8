"""deqbench: compiled solvers, gradients and benchmarks for deep equilibrium models.

The public API (see THEORY.md for the mathematics):

* :func:`fixed_point` - forward solve ``Z = phi(Z A^T + X B^T)``
* :func:`implicit_grad` - adjoint gradients through a fixed point
* :func:`loss_and_grad` - loss and exact gradient of the three models
* :func:`train` - gradient descent in one compiled call, theory tracked per step
* :func:`flow` - gradient flow (adaptive Dormand-Prince), same history against ``t``
* :mod:`deqbench.theory` - the predictions of THEORY.md sections 3 and 5-7
* :mod:`deqbench.data` - seeded problem builders
* :class:`Activation` - activations usable inside jitted code
"""

from . import data, theory
from .activations import Activation, get_activation
from .fixed_point import FixedPointResult, fixed_point
from .flow import FlowResult, flow
from .gradients import GradResult, implicit_grad, loss_and_grad
from .training import TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "FixedPointResult",
    "FlowResult",
    "GradResult",
    "TrainResult",
    "data",
    "fixed_point",
    "flow",
    "get_activation",
    "implicit_grad",
    "loss_and_grad",
    "theory",
    "train",
]
