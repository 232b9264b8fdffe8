"""Argument checks shared by the public API: each error names the argument,
the value and the rule."""

from __future__ import annotations

import numbers
import operator

import numpy as np


def _describe(x) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def as_matrix(name: str, x, *, ndim: int = 2, shape=None, allow_empty: bool = False) -> np.ndarray:
    """Return ``x`` as a C-contiguous float64 array after checking it.

    Integer, boolean, complex and object arrays are a ``TypeError`` (no silent
    casts of data that is probably wrong); real floating arrays of any precision
    are converted to float64. ``shape`` may hold ``None`` for free axes.
    """
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise TypeError(
            f"{name} must be a real floating-point array, got dtype {a.dtype} "
            "(cast explicitly, e.g. np.asarray(x, dtype=np.float64))"
        )
    check_shape(name, a.shape, ndim=ndim, shape=shape, allow_empty=allow_empty)
    a = np.ascontiguousarray(a, dtype=np.float64)
    if not np.isfinite(a).all():
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name} must be finite, got {bad} non-finite entries (NaN or Inf)")
    return a


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


def real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {_describe(value)}")
    return v


def integer(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {_describe(value)}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {_describe(value)}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


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
