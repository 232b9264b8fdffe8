"""Activations (``phi`` of the nonlinear DEQ, ``sigma`` of the single-index link).

An :class:`Activation` is a name plus, for leaky ReLU, a slope. Public functions
accept an :class:`Activation` or a string: ``"tanh"``, ``"leaky_relu"`` (slope
0.01) or ``"leaky_relu(0.2)"``. Inside kernels an activation is the integer
``code`` and float ``param`` of :mod:`deqbench._kernels.activations`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ._jit import jit
from ._kernels import activations as _k

__all__ = ["Activation", "get_activation"]

CODES = {
    "identity": _k.IDENTITY,
    "leaky_relu": _k.LEAKY_RELU,
    "tanh": _k.TANH,
    "sigmoid": _k.SIGMOID,
    "softplus": _k.SOFTPLUS,
    "relu": _k.RELU,
    "gelu": _k.GELU,
}
DEFAULT_SLOPE = 0.01

_PATTERN = re.compile(r"^\s*leaky_relu\s*\(\s*([^)]*)\s*\)\s*$")


@jit
def _apply(code, param, x, out, derivative):
    for i in range(x.shape[0]):
        out[i] = _k.dact(code, param, x[i]) if derivative else _k.act(code, param, x[i])


@dataclass(frozen=True)
class Activation:
    """An elementwise activation with its derivative.

    Parameters
    ----------
    name : str
        One of ``identity, leaky_relu, tanh, sigmoid, softplus, relu, gelu``.
    slope : float
        Negative-side slope of ``leaky_relu`` (must be in (0, 1]); ignored otherwise.
    """

    name: str
    slope: float = DEFAULT_SLOPE

    def __post_init__(self):
        if self.name not in CODES:
            raise ValueError(f"activation must be one of {sorted(CODES)}, got {self.name!r}")
        if self.name == "leaky_relu" and not (0.0 < self.slope <= 1.0):
            raise ValueError(f"leaky_relu slope must be in (0, 1], got {self.slope!r}")

    @property
    def code(self) -> int:
        return CODES[self.name]

    @property
    def param(self) -> float:
        return float(self.slope) if self.name == "leaky_relu" else 0.0

    @property
    def is_identity(self) -> bool:
        return self.name == "identity"

    def derivative_bounds(self) -> tuple[float, float]:
        """``(gamma, Gamma)`` with ``gamma <= sigma' <= Gamma`` on the real line
        (docs/theory.md §7); ``gamma = 0`` means outside the theorem."""
        return {
            "identity": (1.0, 1.0),
            "leaky_relu": (self.param, 1.0),
            "tanh": (0.0, 1.0),
            "sigmoid": (0.0, 0.25),
            "softplus": (0.0, 1.0),
            "relu": (0.0, 1.0),
            "gelu": (-0.1700408, 1.1289530),
        }[self.name]

    @property
    def lipschitz(self) -> float:
        lo, hi = self.derivative_bounds()
        return max(abs(lo), abs(hi))

    def _eval(self, x, derivative: bool) -> np.ndarray:
        a = np.ascontiguousarray(x, dtype=np.float64)
        flat = a.reshape(-1)
        out = np.empty_like(flat)
        _apply(self.code, self.param, flat, out, derivative)
        return out.reshape(a.shape)

    def __call__(self, x) -> np.ndarray:
        return self._eval(x, False)

    def derivative(self, x) -> np.ndarray:
        return self._eval(x, True)

    def __str__(self) -> str:
        return f"leaky_relu({self.slope:g})" if self.name == "leaky_relu" else self.name


def get_activation(spec, name: str = "activation") -> Activation:
    """Parse an activation argument (string or :class:`Activation`)."""
    if isinstance(spec, Activation):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"{name} must be a string or Activation, got {spec!r}")
    match = _PATTERN.match(spec)
    if match:
        try:
            slope = float(match.group(1))
        except ValueError:
            raise ValueError(f"{name}: leaky_relu slope must be a number, got {spec!r}") from None
        if not (math.isfinite(slope) and 0.0 < slope <= 1.0):
            raise ValueError(f"{name}: leaky_relu slope must be in (0, 1], got {spec!r}")
        return Activation("leaky_relu", slope)
    key = spec.strip()
    if key not in CODES:
        raise ValueError(
            f"{name} must be one of {sorted(CODES)} (or 'leaky_relu(slope)'), got {spec!r}"
        )
    return Activation(key)
