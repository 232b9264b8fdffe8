"""deqbench: compiled solvers, gradients and benchmarks for deep equilibrium models.

The public API (see THEORY.md for the mathematics):

* :func:`fixed_point` - forward solve ``Z = phi(Z A^T + X B^T)``
* :func:`implicit_grad` - adjoint gradients through a fixed point
* :func:`loss_and_grad` - loss and exact gradient of the three models
* :mod:`deqbench.data` - seeded problem builders
* :class:`Activation` - activations usable inside jitted code
"""

from . import data
from .activations import Activation, get_activation
from .fixed_point import FixedPointResult, fixed_point
from .gradients import GradResult, implicit_grad, loss_and_grad

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "FixedPointResult",
    "GradResult",
    "data",
    "fixed_point",
    "get_activation",
    "implicit_grad",
    "loss_and_grad",
]
