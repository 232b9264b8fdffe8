"""Activations (``phi`` of the nonlinear DEQ, ``sigma`` of the readout link).

One table, :data:`ACTIVATIONS`, holds every activation a call may name: the
built-in ones below and those a user adds with :func:`register_activation`.
An entry carries what the kernels need (its integer ``code``, see
:mod:`deqbench._kernels.activations`) and what the solvers and the theory
need to know of it: its parameter and the rule on it, the exact range of
``sigma'`` on the real line (:meth:`Activation.derivative_bounds`, the
Lipschitz constant, the rate theorems), where ``sigma''`` changes sign (the
local constants of :meth:`Activation.derivative_range`) and the range of
``sigma`` itself (:meth:`Activation.value_bounds`, a bracket for a scalar
equilibrium).

An :class:`Activation` is a name plus its parameter. Public functions accept
an :class:`Activation` or a string: ``"tanh"``, ``"leaky_relu"`` (slope 0.01),
``"leaky_relu(0.2)"``, ``"smooth_leaky(0.2)"``, ``"skip_tanh(0.25)"``, a
registered ``"softsign"``, or ``"package.module:softsign"``, which imports
``package.module`` first (where the module registers it): the spelling for
another process, e.g. a sweep's grid file.

Adding a built-in activation: its entry in :data:`ACTIVATIONS` here, its
branches in :mod:`deqbench._kernels.activations` (the SIMD loops), its NumPy
reference in ``tests/naive.py``; the tests iterate over the table.
The supremum of ``|sigma''|`` (:meth:`Activation.curvature_bound`) certifies a
Newton step of a scalar equilibrium without evaluating it.
"""

from __future__ import annotations

import importlib
import math
import numbers
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numba
import numpy as np
from numba.core.dispatcher import Dispatcher

from ._jit import jit
from ._kernels import activations as _k

__all__ = ["ACTIVATIONS", "Activation", "ActivationEntry", "get_activation",
           "register_activation"]

DEFAULT_SLOPE = 0.01
# gelu'(s) = Phi(s) + s phi(s) has its extremes at s = +-sqrt(2), where it is
# 1/2 (1 +- erf(1)) +- exp(-1) / sqrt(pi) (docs/theory.md §2)
GELU_DERIVATIVE_MAX = 0.5 * (1.0 + math.erf(1.0)) + math.exp(-1.0) / math.sqrt(math.pi)
GELU_DERIVATIVE_MIN = 1.0 - GELU_DERIVATIVE_MAX
# gelu's smallest value, at the root s = -0.7517915246935645 of gelu' (brentq to 1e-16)
GELU_MIN = -0.16997120747990369

_INF = math.inf
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(\s*([^)]*)\s*\)\s*$")
_QUALIFIED = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*:\s*(.+)$")


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _slope_ok(a: float) -> bool:
    return math.isfinite(a) and 0.0 < a <= 1.0


def _eps_ok(eps: float) -> bool:
    return math.isfinite(eps) and eps >= 0.0


@dataclass(frozen=True)
class ActivationEntry:
    """One activation of :data:`ACTIVATIONS`.

    Attributes
    ----------
    name : str
    code : int
        Its kernel code: built-in below ``deqbench._kernels.activations.USER``,
        registered from it on.
    formula : str
        ``sigma(s)`` in words (documentation).
    parameter : str or None
        The name of its parameter (``"slope"``, ``"eps"``; ``"param"`` for a
        registered one), None without one.
    default : float or None
        The parameter when the name is given bare; None: it must be given
        (``"skip_tanh(0.25)"``).
    rule : str
        The rule on the parameter, in words (error messages).
    valid : callable
        ``valid(value) -> bool``, the rule.
    bounds : callable or None
        ``bounds(param) -> (gamma, Gamma)``, the infimum and supremum of
        ``sigma'`` on the real line; None: unknown.
    extremes : callable or None
        ``extremes(param) -> points`` where ``sigma''`` changes sign (the
        interior extremes of ``sigma'``); None: unknown, or a kink.
    kink : bool
        ``sigma'`` jumps (at 0): no local derivative range.
    values : callable or None
        ``values(param) -> (inf, sup)`` of ``sigma`` on the real line; None: unknown.
    examples : tuple
        Parameter values the tests run it at (None: the bare name).
    functions : tuple
        A registered activation's ``(sigma, sigma')`` as given, and their C
        callbacks (kept alive while the kernels may call them); empty for the
        built-ins.
    """

    name: str
    code: int
    formula: str
    parameter: str | None = None
    default: float | None = None
    rule: str = "finite"
    valid: Callable[[float], bool] = _finite
    bounds: Callable | None = None
    extremes: Callable | None = None
    kink: bool = False
    values: Callable | None = None
    examples: tuple = (None,)
    functions: tuple = field(default=(), repr=False, compare=False)

    @property
    def registered(self) -> bool:
        """Added by :func:`register_activation` (called through a function pointer)."""
        return self.code >= _k.USER

    def instances(self) -> list[Activation]:
        """The activations of :attr:`examples`."""
        return [Activation(self.name, value) for value in self.examples]

    def spelling(self) -> str:
        """How a call names it: ``"tanh"``, ``"leaky_relu(slope)"``."""
        return f"{self.name}({self.parameter})" if self.parameter else self.name


def _const(pair):
    return lambda _param: pair


def _builtin(name, code, formula, bounds, values, extremes=None, kink=False, **kw):
    return ActivationEntry(name, code, formula, bounds=bounds, values=values,
                           extremes=extremes, kink=kink, **kw)


_SLOPE = dict(parameter="slope", default=DEFAULT_SLOPE, rule="in (0, 1]", valid=_slope_ok)
_NONE = _const(())

ACTIVATIONS: dict[str, ActivationEntry] = {e.name: e for e in (
    _builtin("identity", _k.IDENTITY, "s", _const((1.0, 1.0)), _const((-_INF, _INF)), _NONE),
    _builtin("leaky_relu", _k.LEAKY_RELU, "max(s, a s)", lambda a: (a, 1.0),
             _const((-_INF, _INF)), kink=True, **_SLOPE),
    _builtin("tanh", _k.TANH, "tanh(s)", _const((0.0, 1.0)), _const((-1.0, 1.0)),
             _const((0.0,))),
    _builtin("sigmoid", _k.SIGMOID, "1 / (1 + exp(-s))", _const((0.0, 0.25)),
             _const((0.0, 1.0)), _const((0.0,))),
    _builtin("softplus", _k.SOFTPLUS, "log(1 + exp(s))", _const((0.0, 1.0)),
             _const((0.0, _INF)), _NONE),
    _builtin("relu", _k.RELU, "max(s, 0)", _const((0.0, 1.0)), _const((0.0, _INF)),
             kink=True),
    _builtin("gelu", _k.GELU, "s Phi(s)", _const((GELU_DERIVATIVE_MIN, GELU_DERIVATIVE_MAX)),
             _const((GELU_MIN, _INF)), _const((-math.sqrt(2.0), math.sqrt(2.0)))),
    _builtin("smooth_leaky", _k.SMOOTH_LEAKY, "a s + (1 - a) softplus(s)",
             lambda a: (a, 1.0), _const((-_INF, _INF)), _NONE, examples=(0.3, None),
             **_SLOPE),
    _builtin("skip_tanh", _k.SKIP_TANH, "s + eps tanh(s) (the paper's Appendix A.4)",
             lambda eps: (1.0, 1.0 + eps), _const((-_INF, _INF)), _const((0.0,)),
             parameter="eps", default=None, rule="finite and >= 0", valid=_eps_ok,
             examples=(0.25, 0.0)),
)}
"""Every activation by name: the built-in ones, then the registered ones in the
order of registration."""

_LOCK = threading.Lock()
_KEPT: list = []  # every callback ever registered: a replaced one may still be running


def names() -> list[str]:
    """The activation names, sorted."""
    return sorted(ACTIVATIONS)


def examples() -> list[Activation]:
    """Every entry's :attr:`~ActivationEntry.examples`, in table order (what the
    tests run)."""
    return [a for e in list(ACTIVATIONS.values()) for a in e.instances()]


def _entry(name: str) -> ActivationEntry:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation must be one of {names()}, got {name!r}") from None


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
        A name of :data:`ACTIVATIONS`: ``identity, leaky_relu, tanh, sigmoid,
        softplus, relu, gelu, smooth_leaky, skip_tanh`` or a registered one.
    slope : float, optional
        Its parameter: ``a`` in (0, 1], the negative-side slope of
        ``leaky_relu``, and of ``smooth_leaky`` ``a s + (1 - a) softplus(s)``
        (derivative in ``[a, 1]``); ``eps >= 0`` of ``skip_tanh``
        ``s + eps tanh(s)`` (derivative in ``[1, 1 + eps]``); a registered
        activation's ``param``. None: the entry's default (0.01 for the
        slopes; ``skip_tanh`` has none). Ignored by an activation without one.
    """

    name: str
    slope: float | None = None

    def __post_init__(self):
        if not isinstance(self.name, str):  # (a list would not even hash)
            raise ValueError(f"activation must be one of {names()}, got {self.name!r}")
        entry = _entry(self.name)
        if entry.parameter is None:
            if self.slope is None:
                object.__setattr__(self, "slope", DEFAULT_SLOPE)
            return
        value = self.slope
        if value is None:
            if entry.default is None:
                raise ValueError(f"{self.name} needs its {entry.parameter}, e.g. "
                                 f"{str(entry.instances()[0])!r}")
            value = entry.default
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{self.name} {entry.parameter} must be a real number, got "
                            f"{value!r}")
        if not entry.valid(float(value)):
            raise ValueError(f"{self.name} {entry.parameter} must be {entry.rule}, got "
                             f"{value!r}")
        object.__setattr__(self, "slope", float(value))

    @property
    def entry(self) -> ActivationEntry:
        """Its entry of :data:`ACTIVATIONS`."""
        return ACTIVATIONS[self.name]

    @property
    def code(self) -> int:
        return self.entry.code

    @property
    def param(self) -> float:
        return float(self.slope) if self.entry.parameter else 0.0

    @property
    def is_identity(self) -> bool:
        return self.name == "identity"

    def _unknown(self, what: str, keyword: str) -> ValueError:
        return ValueError(f"{what} of activation {str(self)!r} is unknown: pass {keyword}= "
                          f"to register_activation")

    def derivative_bounds(self) -> tuple[float, float]:
        """``(gamma, Gamma)`` with ``gamma <= sigma' <= Gamma`` on the real line,
        the exact infimum and supremum (docs/theory.md §2, §7); ``gamma <= 0``
        means outside the rate theorems. A registered activation's come from its
        registration (``derivative_range``; a ``ValueError`` without one)."""
        if self.entry.bounds is None:
            raise self._unknown("the derivative range", "derivative_range")
        lo, hi = self.entry.bounds(self.param)
        return float(lo), float(hi)

    def curvature_bound(self) -> float:
        """``sup |sigma''|`` on the real line (``inf`` at a kink): tanh's at
        ``tanh = 1/sqrt(3)``, ``4 / (3 sqrt 3)``; sigmoid's at ``sigma = (3 - sqrt 3) / 6``,
        ``sqrt(3) / 18``; gelu's ``phi(s) (2 - s^2)`` at 0, ``2 / sqrt(2 pi)``."""
        tanh2 = 4.0 / (3.0 * math.sqrt(3.0))
        known = {
            "identity": 0.0,
            "leaky_relu": math.inf,
            "tanh": tanh2,
            "sigmoid": math.sqrt(3.0) / 18.0,
            "softplus": 0.25,
            "relu": math.inf,
            "gelu": 2.0 / math.sqrt(2.0 * math.pi),
            "smooth_leaky": (1.0 - self.param) / 4.0,
            "skip_tanh": self.param * tanh2,
        }
        # a registered activation declares no curvature: no step is certified unevaluated
        return known.get(self.name, math.inf)

    def value_bounds(self) -> tuple[float, float]:
        """``(lo, hi)``: the infimum and supremum of ``sigma`` on the real line
        (``-inf``/``inf`` where unbounded). A scalar equilibrium
        ``y = sigma(s0 + b y)`` lies in ``[lo, hi]``: the bracket of a bounded
        link's root."""
        if self.entry.values is None:
            raise self._unknown("the range", "value_range")
        lo, hi = self.entry.values(self.param)
        return float(lo), float(hi)

    def derivative_range(self, lo, hi) -> tuple[np.ndarray, np.ndarray]:
        """The exact minimum and maximum of ``sigma'`` over each interval
        ``[min(lo_i, hi_i), max(lo_i, hi_i)]``: ``sigma'`` at both ends and at
        the interior extremes of ``sigma'`` (the entry's ``extremes``) inside.
        The local ``(gamma, Gamma)`` of docs/theory.md §7; a ``ValueError``
        for relu and leaky_relu, whose derivative jumps at 0, and for a
        registered activation without ``derivative_extremes``."""
        entry = self.entry
        if entry.kink:
            raise ValueError(f"derivative_range needs a twice-differentiable link, got "
                             f"{str(self)!r} (its derivative jumps at 0)")
        if entry.extremes is None:
            raise self._unknown("where sigma'' changes sign", "derivative_extremes")
        lo, hi = np.broadcast_arrays(np.asarray(lo, dtype=np.float64),
                                     np.asarray(hi, dtype=np.float64))
        a, b = np.minimum(lo, hi), np.maximum(lo, hi)
        da, db = self.derivative(a), self.derivative(b)
        low, high = np.minimum(da, db), np.maximum(da, db)
        for c in entry.extremes(self.param):
            inside = (a <= c) & (c <= b)
            dc = float(self.derivative(np.array([c], dtype=np.float64))[0])
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
        return f"{self.name}({self.slope:g})" if self.entry.parameter else self.name


def get_activation(spec, name: str = "activation") -> Activation:
    """Parse an activation argument (string or :class:`Activation`); ``name`` is
    the argument's name in error messages."""
    if isinstance(spec, Activation):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"{name} must be a string or Activation, got {spec!r}")
    text = spec
    qualified = _QUALIFIED.match(spec)
    if qualified:
        module, text = qualified.groups()
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"{name}: cannot import module {module!r} of {spec!r} "
                             f"({exc})") from None
    match = _CALL.match(text)
    key = match.group(1) if match else text.strip()
    entry = ACTIVATIONS.get(key)
    if entry is None:
        sloped = ", ".join(repr(e.spelling()) for e in ACTIVATIONS.values() if e.parameter)
        raise ValueError(f"{name} must be one of {names()} (or {sloped}), got {spec!r}")
    what = entry.parameter
    if match is None:
        if what and entry.default is None:
            raise ValueError(f"{name}: {key} needs its {what}, e.g. "
                             f"{str(entry.instances()[0])!r}, got {spec!r}")
        return Activation(key)
    if what is None:
        raise ValueError(f"{name}: {key} takes no parameter, got {spec!r}")
    try:
        value = float(match.group(2))
    except ValueError:
        raise ValueError(f"{name}: {key} {what} must be a number, got {spec!r}") from None
    if not entry.valid(value):
        raise ValueError(f"{name}: {key} {what} must be {entry.rule}, got {spec!r}")
    return Activation(key, value)


# --- registered activations -------------------------------------------------

_SIGNATURE = numba.float64(numba.float64, numba.float64)


def _callback(fn, arg: str, takes_param: bool):
    """``fn`` as a C callback ``double(double x, double param)`` (the kernels' table
    entry); a ``TypeError`` naming ``arg`` when numba cannot compile it so."""
    if not callable(fn):
        raise TypeError(f"{arg} must be a numba-compilable function, got {fn!r}")
    jitted = fn if isinstance(fn, Dispatcher) else numba.njit(fn)
    if takes_param:
        def wrapper(x, param):
            return jitted(x, param)
    else:
        def wrapper(x, param):
            return jitted(x)
    try:
        # as written: no fast-math, so the user's formula is evaluated as given
        return numba.cfunc(_SIGNATURE, error_model="numpy")(wrapper)
    except Exception as exc:  # numba's typing and lowering errors
        what = "(x, param)" if takes_param else "(x)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TypeError(f"{arg} must be a numba-compilable scalar function {what} -> float "
                        f"({'with' if takes_param else 'without'} param=): {first}") from None


def _per_param(value, arg: str, check):
    """``value`` as a callable of the parameter: a callable as given, a constant
    otherwise (checked now by ``check``), None as None."""
    if value is None or callable(value):
        return value
    checked = check(arg, value)
    return lambda _param: checked


def _pair(arg: str, value) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in value)
    except (TypeError, ValueError):
        raise TypeError(f"{arg} must be a pair (lo, hi) of numbers or a function of param, "
                        f"got {value!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"{arg} must be (lo, hi) with lo <= hi, got {value!r}")
    return lo, hi


def _points(arg: str, value) -> tuple[float, ...]:
    try:
        points = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        raise TypeError(f"{arg} must be a sequence of numbers or a function of param, "
                        f"got {value!r}") from None
    if not all(math.isfinite(p) for p in points):
        raise ValueError(f"{arg} must be finite points, got {value!r}")
    return points


def register_activation(name: str, f, df, *, param: float | None = None,
                        derivative_range=None, derivative_extremes=None,
                        value_range=None) -> Activation:
    """Add an activation ``sigma`` (with ``sigma' = df``) to :data:`ACTIVATIONS`, under
    ``name``, for every call that takes an activation: the kernels of
    :func:`~deqbench.fixed_point`, :func:`~deqbench.implicit_grad`,
    :func:`~deqbench.loss_and_grad`, :func:`~deqbench.train`, :func:`~deqbench.flow`,
    the sweeps (grid files name it ``"package.module:name"``, the module that
    registers it) and the theory (from the ranges given here).

    Parameters
    ----------
    name : str
        An identifier that is not a built-in activation; registering a name again
        replaces its functions (the kernels call the new ones at once).
    f, df : callable
        ``sigma`` and ``sigma'``: ``numba.njit`` functions or plain Python
        functions numba can compile, of a float ``x`` (``f(x)``), or of ``x``
        and the parameter (``f(x, param)``) when ``param`` is given,
        returning a float. Compiled here into C callbacks in float64 (float32
        data is converted per element), without fast-math.
    param : float, optional
        The parameter's default: the activation is then named ``"name"`` (this
        value) or ``"name(value)"`` with any finite value.
    derivative_range : (lo, hi) or callable, optional
        The infimum and supremum of ``sigma'`` on the real line (or
        ``derivative_range(param) -> (lo, hi)``): :meth:`Activation.derivative_bounds`,
        :attr:`Activation.lipschitz` and the theory read it; without it they
        raise a ``ValueError``.
    derivative_extremes : sequence or callable, optional
        The points where ``sigma''`` changes sign (or a function of ``param``
        returning them): :meth:`Activation.derivative_range` needs them.
    value_range : (lo, hi) or callable, optional
        The infimum and supremum of ``sigma`` (:meth:`Activation.value_bounds`).

    Returns
    -------
    Activation
        The activation ``name`` (at the default ``param``).

    Notes
    -----
    Cost: a registered activation is called through a function pointer, one
    float64 call per element, where a built-in one is inlined arithmetic that
    LLVM vectorises; the kernels are the same compiled (and cached) machine
    code for both (:mod:`deqbench._kernels.activations`). The registration
    lives in this process: another process (a sweep worker) registers it by
    importing the module named in ``"package.module:name"``.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name must be an identifier (letters, digits, _), got {name!r}")
    held = ACTIVATIONS.get(name)
    if held is not None and not held.registered:
        raise ValueError(f"name {name!r} is a built-in activation; choose another name")
    if param is not None:
        if isinstance(param, bool) or not isinstance(param, (int, float, np.floating,
                                                             np.integer)):
            raise TypeError(f"param must be a number or None, got {param!r}")
        if not math.isfinite(float(param)):
            raise ValueError(f"param must be finite, got {param!r}")
        param = float(param)
    takes = param is not None
    bounds = _per_param(derivative_range, "derivative_range", _pair)
    values = _per_param(value_range, "value_range", _pair)
    extremes = _per_param(derivative_extremes, "derivative_extremes", _points)
    c_f = _callback(f, "f", takes)
    c_df = _callback(df, "df", takes)
    with _LOCK:
        held = ACTIVATIONS.get(name)
        if held is not None:
            slot = held.code - _k.USER
        else:
            used = {e.code for e in ACTIVATIONS.values()}
            free = [k for k in range(_k.SLOTS) if _k.USER + k not in used]
            if not free:
                raise ValueError(f"no room for activation {name!r}: {_k.SLOTS} are "
                                 "registered already")
            slot = free[0]
        # the table first: the code is handed out only once both pointers are in place
        _KEPT.extend((c_f, c_df))
        _k.TABLE[2 * slot] = c_f.address
        _k.TABLE[2 * slot + 1] = c_df.address
        ACTIVATIONS[name] = ActivationEntry(
            name, _k.USER + slot, f"registered: {getattr(f, '__name__', f)!s}",
            parameter="param" if takes else None, default=param,
            bounds=bounds, extremes=extremes, values=values,
            examples=(None,), functions=(f, df, c_f, c_df))
    return Activation(name)
