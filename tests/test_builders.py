"""The one builder of matrices with a given spectrum and the one log-log fit."""

import math

import numpy as np
import pytest

import deqbench as db


def test_symmetric_with_spectrum_has_that_spectrum():
    lam = np.array([0.9, -0.5, 0.1, 0.0, -0.9])
    A = db.data.symmetric_with_spectrum(lam, seed=3)
    np.testing.assert_allclose(A, A.T, atol=1e-15)
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(A)), np.sort(lam), atol=1e-14)
    assert np.linalg.norm(A, 2) == pytest.approx(0.9, rel=1e-13)
    again = db.data.symmetric_with_spectrum(lam, seed=3)
    np.testing.assert_array_equal(A, again)


def test_with_spectral_radius_rescales():
    R = np.random.default_rng(0).standard_normal((6, 6))
    A = db.data.with_spectral_radius(R, 0.7)
    assert np.max(np.abs(np.linalg.eigvals(A))) == pytest.approx(0.7, rel=1e-12)
    with pytest.raises(ValueError, match="nilpotent"):
        db.data.with_spectral_radius(np.triu(np.ones((3, 3)), 1), 0.5)
    with pytest.raises(ValueError, match="eigenvalues must be"):
        db.data.symmetric_with_spectrum([])


def test_loglog_fit_recovers_a_power_law_and_skips_bad_pairs():
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0, -1.0, np.nan])
    y = 3.0 * np.abs(x) ** 1.7  # the bad x (negative, NaN) are left out by the fit
    slope, icpt = db.theory.loglog_fit(x, y)
    assert slope == pytest.approx(1.7, rel=1e-12)
    assert icpt == pytest.approx(math.log(3.0), rel=1e-12)
    assert all(math.isnan(v) for v in db.theory.loglog_fit([1.0, 1.0], [2.0, 3.0]))


@pytest.mark.parametrize("model", ["linear", "readout", "nonlinear"])
def test_problem_is_seeded_and_realizable(model):
    act = {"linear": "identity", "readout": "tanh", "nonlinear": "tanh"}[model]
    X, Y, A0, B0 = db.data.problem(model, 40, 3, 4, activation=act, seed=5)
    X2, Y2, A2, B2 = db.data.problem(model, 40, 3, 4, activation=act, seed=5)
    for a, b in ((X, X2), (Y, Y2), (A0, A2), (B0, B2)):
        np.testing.assert_array_equal(a, b)
    assert A0.shape == (4, 4) and B0.shape == (4, 3)
    assert np.linalg.norm(A0, 2) == pytest.approx(0.5, rel=1e-12)
    if model == "nonlinear":  # Y is the fixed point of a teacher DEQ: z = tanh(A* z + B* x)
        assert Y.shape == (40, 4) and np.all(np.abs(Y) < 1)
    with pytest.raises(ValueError, match="model must be one of"):
        db.data.problem("deep", 4, 2, 2)
