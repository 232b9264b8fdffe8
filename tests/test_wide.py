"""Wide models (issue 11): m = d = n, the shape of the m = d = 4096 target at a size
a test can afford. Forward solve, implicit gradient and one training step with its
spectral diagnostics, against dense closed forms (linear model, docs/theory.md §3-§5)."""

import numpy as np
import pytest

import deqbench as db
from deqbench._training import auto_spectral_every

M = 320  # m = d = n: several row blocks of 128 and the parallel gemm_tn path


def _rel(a, b):
    return np.linalg.norm(np.asarray(a, float) - b) / np.linalg.norm(b)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_wide_forward_gradient_and_training_step(dtype):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((M, M))
    A *= 0.5 / np.linalg.norm(A, 2)
    B = rng.standard_normal((M, M)) / np.sqrt(M)
    X, Y = rng.standard_normal((M, M)), rng.standard_normal((M, M))
    A, B, X, Y = (a.astype(dtype) for a in (A, B, X, Y))
    A6, B6, X6, Y6 = (a.astype(np.float64) for a in (A, B, X, Y))
    tol, bar = (1e-10, 1e-8) if dtype == np.float64 else (1e-6, 1e-4)
    C = np.eye(M) - A6
    Zs = np.linalg.solve(C, B6 @ X6.T).T
    fp = db.fixed_point(X, A, B, tol=tol)
    assert fp.converged and fp.z.dtype == dtype and _rel(fp.z, Zs) < bar
    # linear model: Mu = G (I - A)^{-1}, grad_A = Mu^T Z, grad_B = Mu^T X
    G = (Zs - Y6) / M
    Mu = np.linalg.solve(C.T, G.T).T
    loss, gA, gB, info = db.loss_and_grad("linear", X, Y, A, B, tol=tol)
    assert info["converged"] and gA.dtype == dtype
    assert _rel(gA, Mu.T @ Zs) < bar and _rel(gB, Mu.T @ X6) < bar
    r = db.train("linear", X, Y, A, B, lr=0.1, steps=1, tol=tol, sufficient_stats=False)
    assert r.status == "max_steps" and r.A.dtype == dtype
    assert _rel(r.A, A6 - 0.1 * (Mu.T @ Zs)) < bar and _rel(r.B, B6 - 0.1 * (Mu.T @ X6)) < bar
    h = r.history
    s = np.linalg.svd(np.eye(M) - r.A.astype(np.float64), compute_uv=False)
    assert h["sigma_max"][-1] == pytest.approx(s[0], rel=1e-10)
    assert h["sigma_min"][-1] == pytest.approx(s[-1], rel=1e-10)
    rho = np.max(np.abs(np.linalg.eigvals(r.A.astype(np.float64))))
    assert h["spectral_radius"][-1] == pytest.approx(rho, rel=1e-10)
    assert np.isfinite(h["invariant_drift"][-1])
    assert r.spectral_every == auto_spectral_every(M, M, M, False, 1)
