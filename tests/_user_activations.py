"""Two activations registered the way a user would (deqbench.register_activation),
imported by tests/conftest.py: every test that iterates over the activation table
(``tests.activation_cases``) runs them too, against tests/naive.py, which evaluates
their Python functions in the interpreter. Grid files name them
``"tests._user_activations:erf_link"``.

* ``erf_link``: ``erf(s)``, a bounded link with ``sigma' = 2 exp(-s^2) / sqrt(pi)``
  in ``(0, 2 / sqrt(pi)]``, a plain Python function (numba compiles it);
* ``sin_skip(a)``: ``s + a sin(s)`` (``numba.njit``, parameter ``a``, default 0.1),
  ``sigma'`` in ``[1 - |a|, 1 + |a|]``.
"""

import math

import numba

import deqbench as db

TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def erf_link(x):
    return math.erf(x)


def erf_link_derivative(x):
    return TWO_OVER_SQRT_PI * math.exp(-x * x)


@numba.njit
def sin_skip(x, a):
    return x + a * math.sin(x)


@numba.njit
def sin_skip_derivative(x, a):
    return 1.0 + a * math.cos(x)


ERF_LINK = db.register_activation(
    "erf_link", erf_link, erf_link_derivative, derivative_range=(0.0, TWO_OVER_SQRT_PI),
    derivative_extremes=(0.0,), value_range=(-1.0, 1.0))
SIN_SKIP = db.register_activation(
    "sin_skip", sin_skip, sin_skip_derivative, param=0.1,
    derivative_range=lambda a: (1.0 - abs(a), 1.0 + abs(a)),
    value_range=(-math.inf, math.inf))
