import os

import numpy as np
import pytest

import deqbench as db

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
