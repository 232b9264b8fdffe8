"""Activations (``phi`` of the nonlinear DEQ, ``sigma`` of the single-index link).

An :class:`Activation` is a name plus, for leaky ReLU and the smooth leaky
link ``a s + (1 - a) softplus(s)``, a slope ``a``, and for the skip link
``s + eps tanh(s)`` of the paper's Appendix A.4 its ``eps``. Public functions
accept an :class:`Activation` or a string: ``"tanh"``, ``"leaky_relu"`` (slope
0.01), ``"leaky_relu(0.2)"``, ``"smooth_leaky(0.2)"`` or ``"skip_tanh(0.25)"``.
Inside kernels an activation is the integer ``code`` and float ``param`` of
:mod:`deqbench._kernels.activations`.

What solvers need to know about each activation is data here, in one place:
the exact range of ``sigma'`` on the real line (:meth:`Activation.derivative_bounds`,
the uniqueness guard of a scalar equilibrium and the rate theorems), where
``sigma''`` changes sign (``DERIVATIVE_EXTREMES``), the range of ``sigma``
itself (:meth:`Activation.value_bounds`, a bracket for a scalar equilibrium)
and the supremum of ``|sigma''|`` (:meth:`Activation.curvature_bound`, which
certifies a Newton step without evaluating it).
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
    "smooth_leaky": _k.SMOOTH_LEAKY,
    "skip_tanh": _k.SKIP_TANH,
}
SLOPED = ("leaky_relu", "smooth_leaky")
#: Activations with a parameter written in parentheses, ``name(value)``.
PARAMETERISED = (*SLOPED, "skip_tanh")
# gelu'(s) = Phi(s) + s phi(s) has its extremes at s = +-sqrt(2), where it is
# 1/2 (1 +- erf(1)) +- exp(-1) / sqrt(pi) (docs/theory.md §2)
GELU_DERIVATIVE_MAX = 0.5 * (1.0 + math.erf(1.0)) + math.exp(-1.0) / math.sqrt(math.pi)
GELU_DERIVATIVE_MIN = 1.0 - GELU_DERIVATIVE_MAX
# gelu's smallest value, at the root s = -0.7517915246935645 of gelu' (brentq to 1e-16)
GELU_MIN = -0.16997120747990369
# where sigma'' changes sign (the interior extremes of sigma'), for the links that are
# twice differentiable; relu and leaky_relu have a kink instead (docs/theory.md §7)
DERIVATIVE_EXTREMES = {
    "identity": (),
    "tanh": (0.0,),
    "sigmoid": (0.0,),
    "softplus": (),
    "gelu": (-math.sqrt(2.0), math.sqrt(2.0)),
    "smooth_leaky": (),
    "skip_tanh": (0.0,),
}
DEFAULT_SLOPE = 0.01

_PATTERN = re.compile(r"^\s*(leaky_relu|smooth_leaky|skip_tanh)\s*\(\s*([^)]*)\s*\)\s*$")


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
        One of ``identity, leaky_relu, tanh, sigmoid, softplus, relu, gelu,
        smooth_leaky, skip_tanh``.
    slope : float
        The parameter: ``a`` in (0, 1], the negative-side slope of
        ``leaky_relu``, and of ``smooth_leaky`` ``a s + (1 - a) softplus(s)``
        (derivative in ``[a, 1]``); ``eps >= 0`` of ``skip_tanh``
        ``s + eps tanh(s)`` (derivative in ``[1, 1 + eps]``); ignored otherwise.
    """

    name: str
    slope: float = DEFAULT_SLOPE

    def __post_init__(self):
        if self.name not in CODES:
            raise ValueError(f"activation must be one of {sorted(CODES)}, got {self.name!r}")
        if self.name in SLOPED and not (0.0 < self.slope <= 1.0):
            raise ValueError(f"{self.name} slope must be in (0, 1], got {self.slope!r}")
        if self.name == "skip_tanh" and not (math.isfinite(self.slope) and self.slope >= 0.0):
            raise ValueError(f"skip_tanh eps must be finite and >= 0, got {self.slope!r}")

    @property
    def code(self) -> int:
        return CODES[self.name]

    @property
    def param(self) -> float:
        return float(self.slope) if self.name in PARAMETERISED else 0.0

    @property
    def is_identity(self) -> bool:
        return self.name == "identity"

    def derivative_bounds(self) -> tuple[float, float]:
        """``(gamma, Gamma)`` with ``gamma <= sigma' <= Gamma`` on the real line,
        the exact infimum and supremum (docs/theory.md §2, §7); ``gamma <= 0``
        means outside the rate theorems."""
        return {
            "identity": (1.0, 1.0),
            "leaky_relu": (self.param, 1.0),
            "tanh": (0.0, 1.0),
            "sigmoid": (0.0, 0.25),
            "softplus": (0.0, 1.0),
            "relu": (0.0, 1.0),
            "gelu": (GELU_DERIVATIVE_MIN, GELU_DERIVATIVE_MAX),
            "smooth_leaky": (self.param, 1.0),
            "skip_tanh": (1.0, 1.0 + self.param),
        }[self.name]

    def curvature_bound(self) -> float:
        """``sup |sigma''|`` on the real line (``inf`` at a kink): tanh's at
        ``tanh = 1/sqrt(3)``, ``4 / (3 sqrt 3)``; sigmoid's at ``sigma = (3 - sqrt 3) / 6``,
        ``sqrt(3) / 18``; gelu's ``phi(s) (2 - s^2)`` at 0, ``2 / sqrt(2 pi)``."""
        tanh2 = 4.0 / (3.0 * math.sqrt(3.0))
        return {
            "identity": 0.0,
            "leaky_relu": math.inf,
            "tanh": tanh2,
            "sigmoid": math.sqrt(3.0) / 18.0,
            "softplus": 0.25,
            "relu": math.inf,
            "gelu": 2.0 / math.sqrt(2.0 * math.pi),
            "smooth_leaky": (1.0 - self.param) / 4.0,
            "skip_tanh": self.param * tanh2,
        }[self.name]

    def value_bounds(self) -> tuple[float, float]:
        """``(lo, hi)``: the infimum and supremum of ``sigma`` on the real line
        (``-inf``/``inf`` where unbounded). A scalar equilibrium
        ``y = sigma(s0 + b y)`` lies in ``[lo, hi]``: the bracket of a bounded
        link's root."""
        inf = math.inf
        return {
            "identity": (-inf, inf),
            "leaky_relu": (-inf, inf),
            "tanh": (-1.0, 1.0),
            "sigmoid": (0.0, 1.0),
            "softplus": (0.0, inf),
            "relu": (0.0, inf),
            "gelu": (GELU_MIN, inf),
            "smooth_leaky": (-inf, inf),
            "skip_tanh": (-inf, inf),
        }[self.name]

    def derivative_range(self, lo, hi) -> tuple[np.ndarray, np.ndarray]:
        """The exact minimum and maximum of ``sigma'`` over each interval
        ``[min(lo_i, hi_i), max(lo_i, hi_i)]``: ``sigma'`` at both ends and at
        the interior extremes of ``sigma'`` (``DERIVATIVE_EXTREMES``) inside.
        The local ``(gamma, Gamma)`` of docs/theory.md §7; a ``ValueError``
        for relu and leaky_relu, whose derivative jumps at 0."""
        if self.name not in DERIVATIVE_EXTREMES:
            raise ValueError(f"derivative_range needs a twice-differentiable link, got "
                             f"{str(self)!r} (its derivative jumps at 0)")
        lo, hi = np.broadcast_arrays(np.asarray(lo, dtype=np.float64),
                                     np.asarray(hi, dtype=np.float64))
        a, b = np.minimum(lo, hi), np.maximum(lo, hi)
        da, db = self.derivative(a), self.derivative(b)
        low, high = np.minimum(da, db), np.maximum(da, db)
        for c in DERIVATIVE_EXTREMES[self.name]:
            inside = (a <= c) & (c <= b)
            dc = float(self.derivative(np.array([c]))[0])
            low = np.where(inside, np.minimum(low, dc), low)
            high = np.where(inside, np.maximum(high, dc), high)
        return low, high

    @property
    def lipschitz(self) -> float:
        lo, hi = self.derivative_bounds()
        return max(abs(lo), abs(hi))

    def _eval(self, x, derivative: bool) -> np.ndarray:
        """Float32 in, float32 out (the kernels' float32 path); anything else in float64."""
        dtype = np.float32 if np.asarray(x).dtype == np.float32 else np.float64
        a = np.ascontiguousarray(x, dtype=dtype)
        flat = a.reshape(-1)
        out = np.empty_like(flat)
        _apply(self.code, self.param, flat, out, derivative)
        return out.reshape(a.shape)

    def __call__(self, x) -> np.ndarray:
        return self._eval(x, False)

    def derivative(self, x) -> np.ndarray:
        return self._eval(x, True)

    def __str__(self) -> str:
        return f"{self.name}({self.slope:g})" if self.name in PARAMETERISED else self.name


def get_activation(spec, name: str = "activation") -> Activation:
    """Parse an activation argument (string or :class:`Activation`)."""
    if isinstance(spec, Activation):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"{name} must be a string or Activation, got {spec!r}")
    match = _PATTERN.match(spec)
    if match:
        kind = match.group(1)
        what = "eps" if kind == "skip_tanh" else "slope"
        try:
            value = float(match.group(2))
        except ValueError:
            raise ValueError(f"{name}: {kind} {what} must be a number, got {spec!r}") from None
        if kind == "skip_tanh":
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name}: skip_tanh eps must be finite and >= 0, got {spec!r}")
        elif not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise ValueError(f"{name}: {kind} slope must be in (0, 1], got {spec!r}")
        return Activation(kind, value)
    key = spec.strip()
    if key == "skip_tanh":
        raise ValueError(f"{name}: skip_tanh needs its eps, e.g. 'skip_tanh(0.25)', got {spec!r}")
    if key not in CODES:
        raise ValueError(
            f"{name} must be one of {sorted(CODES)} (or 'leaky_relu(slope)', "
            f"'smooth_leaky(slope)', 'skip_tanh(eps)'), got {spec!r}"
        )
    return Activation(key)
