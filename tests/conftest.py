import os

import numpy as np
import pytest

from hypothesis import settings

import deqbench as db
from tests import _user_activations  # noqa: F401  (registers erf_link, sin_skip)

# The activation table (deqbench.activations.ACTIVATIONS, built-in and registered
# alike): tests iterate over these instead of naming activations, so an added one
# is tested without editing a list.
ACTIVATIONS = [str(a) for a in db.activations.examples()]
"""Every entry at each of its example parameters."""
ONE_EACH = [str(e.instances()[0]) for e in db.activations.ACTIVATIONS.values()]
"""Every entry once (its first example)."""
NONLINEAR = [name for name in ONE_EACH if name != "identity"]
"""Every entry once but the identity (``phi`` of a nonlinear map)."""

# Property tests draw the same examples on every run (a CI run must not fail on
# a draw the developer never saw); HYPOTHESIS_PROFILE=explore draws new ones,
# five times as many, to look for bugs.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

# the suite runs with the built-in kernel settings, whatever calibration file the user
# made (deqbench calibrate); tests/test_calibration.py points it at files of its own
os.environ["DEQBENCH_CALIBRATION"] = "off"


def symmetric_with_radius(m, rho, rng):
    """Symmetric ``A`` whose spectral radius is exactly ``rho`` (eigenvalue ``rho`` present)."""
    lam = rng.uniform(-rho, rho, m)
    lam[0] = rho
    return db.data.symmetric_with_spectrum(lam, seed=rng)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def small_problem(rng, n=7, d=3, m=4, scale_A=0.5):
    A = rng.standard_normal((m, m))
    A *= scale_A / np.linalg.norm(A, 2)
    B = rng.standard_normal((m, d)) / np.sqrt(d)
    X = rng.standard_normal((n, d))
    return A, B, X
