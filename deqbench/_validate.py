"""Argument checks shared by the public API: each error names the argument,
the value and the rule."""

from __future__ import annotations

import numbers
import operator

import numpy as np


def _describe(x) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


#: The dtypes deqbench computes in. float32 data stays float32; every other real
#: floating dtype (float16, long double) is converted to float64, as before float32
#: support; integer, boolean, complex and object arrays are rejected.
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def compute_dtype(name: str, dtype) -> np.dtype:
    """The dtype an array of ``dtype`` is computed in (float32 or float64), or a
    ``TypeError`` naming ``name`` for non-floating data."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(
            f"{name} must be a real floating-point array, got dtype {dtype} "
            "(cast explicitly, e.g. np.asarray(x, dtype=np.float64))"
        )
    return dtype if dtype == np.float32 else np.dtype(np.float64)


def float_dtype(name: str, dtype) -> np.dtype:
    """``dtype`` as a NumPy real floating dtype, or a ``TypeError`` naming ``name``."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind != "f":
        raise TypeError(f"{name} must be a real floating-point dtype (float32, float64), got "
                        f"{_describe(dtype)}")
    return dt


def same_dtype(name: str, got, ref: str, want) -> None:
    """``TypeError`` unless ``got == want``: every array of a call shares one dtype."""
    if np.dtype(got) != np.dtype(want):
        raise TypeError(
            f"{name} has dtype {np.dtype(got)} but {ref} has dtype {np.dtype(want)}: "
            "pass every array of a call in one dtype, float32 or float64 (no silent "
            "mixing; convert with .astype)"
        )


def as_matrix(name: str, x, *, ndim: int = 2, shape=None, allow_empty: bool = False,
              dtype=None, ref: str = "A") -> np.ndarray:
    """Return ``x`` as a writable C-contiguous float32 or float64 array after checking it
    (non-contiguous and read-only arrays are copied; deqbench never writes into them).

    Integer, boolean, complex and object arrays are a ``TypeError`` (no silent
    casts of data that is probably wrong); float32 stays float32, other real
    floating arrays are converted to float64 (:data:`DTYPES`). With ``dtype``
    given, ``x`` must compute in that dtype (the dtype of the argument ``ref``),
    else a ``TypeError`` names both. ``shape`` may hold ``None`` for free axes.
    """
    a = np.asarray(x)
    dt = compute_dtype(name, a.dtype)
    if dtype is not None:
        same_dtype(name, dt, ref, dtype)
    check_shape(name, a.shape, ndim=ndim, shape=shape, allow_empty=allow_empty)
    a = np.ascontiguousarray(a, dtype=dt)
    if not a.flags.writeable:
        # numba types a read-only array apart and would compile every kernel it
        # reaches a second time (about a minute); no kernel writes into inputs
        a = a.copy()
    if not np.isfinite(a).all():
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name} must be finite, got {bad} non-finite entries (NaN or Inf)")
    return a


def as_float64(name: str, x, **kw) -> np.ndarray:
    """:func:`as_matrix` converted to float64: the diagnostics of
    :mod:`deqbench.theory` compute in float64 whatever the data's dtype."""
    return as_matrix(name, x, **kw).astype(np.float64, copy=False)


def check_shape(name: str, got: tuple, *, ndim: int, shape=None, allow_empty: bool = False):
    """Check an array shape ``got`` against ``ndim`` and ``shape`` (``None`` for free axes)."""
    got = tuple(got)
    if len(got) != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {got}")
    if shape is not None:
        for axis, (g, want) in enumerate(zip(got, shape, strict=True)):
            if want is not None and g != want:
                raise ValueError(
                    f"{name} must have shape {_shape_str(shape)}, got {got} "
                    f"(axis {axis}: expected {want}, got {g})"
                )
    if not allow_empty and 0 in got:
        raise ValueError(f"{name} must not be empty, got shape {got}")


def _shape_str(shape) -> str:
    parts = ["*" if s is None else str(s) for s in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def positive(name: str, value, *, allow_zero: bool = False) -> float:
    v = real(name, value)
    if not (v >= 0.0 if allow_zero else v > 0.0):
        rule = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {rule}, got {_describe(value)}")
    return v


def real(name: str, value, *, allow_nan: bool = False) -> float:
    """A finite real number (``allow_nan``: or NaN, e.g. "no prediction")."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    v = float(value)
    if not (np.isfinite(v) or (allow_nan and np.isnan(v))):
        raise ValueError(f"{name} must be finite{' or NaN' if allow_nan else ''}, got "
                         f"{_describe(value)}")
    return v


MAX_ITERATIONS = 10**7
"""Largest ``max_iter`` and ``neumann_terms``: a solve keeps one float64 of residual
history per iteration, allocated before it starts (80 MB at the bound)."""
MAX_ANDERSON_HISTORY = 256
"""Largest ``anderson_history``: Anderson keeps two ``(history, n, m)`` buffers and
solves a ``history x history`` system per iteration."""
MAX_STEPS = 2**53
"""Largest count of steps (``steps``, ``max_steps``, ``record_every``,
``spectral_every``): the history stores step numbers as float64, exact up to 2**53."""


def _bound_str(x: int) -> str:
    return "2**53" if x == MAX_STEPS else str(x)


def integer(name: str, value, *, minimum: int, maximum: int | None = None) -> int:
    """An integer (not a bool) in ``[minimum, maximum]``; the bounds of counts that size
    an allocation are documented (:data:`MAX_ITERATIONS`, :data:`MAX_ANDERSON_HISTORY`,
    :data:`MAX_STEPS`) and checked before it."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {_describe(value)}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {_describe(value)}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {_bound_str(maximum)}, got {v}")
    return v


def tolerance(name: str, value) -> float:
    """A relative tolerance in (0, 1): a relative residual starts at 1 (from zero), so a
    tolerance of 1 or more is met before any work."""
    v = positive(name, value)
    if not v < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {_describe(value)}")
    return v


def flag(name: str, value, *, also=()):
    """A strict flag: ``True``/``False`` (NumPy's too, returned as ``bool``), or one of the
    strings ``also``; never ``1``, ``1.0`` or None, which would pass ``== True`` tests."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value in also:
        return value
    allowed = ", ".join([*(repr(a) for a in also), "True", "False"])
    error = ValueError if isinstance(value, str) else TypeError  # a string: a wrong value
    raise error(f"{name} must be one of {allowed}, got {_describe(value)}")


def unit_interval(name: str, value) -> float:
    """A value in (0, 1]."""
    v = real(name, value)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {_describe(value)}")
    return v


def choice(name: str, value, options) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {sorted(options)}, got {_describe(value)}")
    return value


def seed(name: str, value):
    """A seed of ``numpy.random.default_rng``: an integer >= 0, a ``SeedSequence``, a
    ``Generator`` or a ``BitGenerator`` (returned as given), or None (fresh entropy)."""
    if value is None or isinstance(value, (np.random.SeedSequence, np.random.Generator,
                                           np.random.BitGenerator)):
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer >= 0 or a numpy SeedSequence, got "
                        f"{_describe(value)}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer >= 0 or a numpy SeedSequence, got "
                        f"{_describe(value)}") from None
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def boolean(name: str, value) -> bool:
    """:func:`flag` without alternatives."""
    return flag(name, value)


def rounded(x, dtype) -> np.ndarray:
    """``x`` rounded to ``dtype``; values beyond its range become inf without numpy's
    overflow warning (a computation on them reports a status)."""
    with np.errstate(over="ignore"):
        return np.asarray(x).astype(dtype)
