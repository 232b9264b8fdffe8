"""NumPy peers: the same Picard algorithm as a NumPy loop, and dense direct solves.

The loop is written the way a careful NumPy user would write it: one matmul
into a preallocated buffer per iteration, the residual from two dot products,
no temporaries in the loop. It stops on the same rule as deqbench: the
relative residual ``||F(Z) - Z|| / ||F(Z)||`` of the current iterate.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from .problems import Outcome, Problem


def picard(Z, M, U, tol, max_iter, D=None, act=None):
    """``Z <- h(Z M + U)`` until the relative residual of ``Z`` is ``<= tol``.

    ``h`` is the identity, ``act`` (forward, e.g. ``np.tanh``) or ``D * .``
    (nonlinear adjoint). Returns ``(Z, map evaluations, residual)``.
    """
    F = np.empty_like(Z)
    R = np.empty_like(Z)
    res = np.inf
    for k in range(max_iter + 1):
        np.matmul(Z, M, out=F)
        F += U
        if act is not None:
            act(F, out=F)
        if D is not None:
            F *= D
        np.subtract(F, Z, out=R)
        r = R.ravel()
        f = F.ravel()
        res = np.sqrt(np.dot(r, r) / np.dot(f, f))
        if res <= tol:
            return Z, k + 1, res
        Z, F = F, Z
    return Z, max_iter + 1, res


def forward(p: Problem):
    AT = np.ascontiguousarray(p.A.T)
    act = np.tanh if p.activation == "tanh" else None

    def run():
        U = p.X @ p.B.T
        Z, k, res = picard(np.zeros((p.n, p.m)), AT, U, p.tol, p.max_iter, act=act)
        return Outcome(k, 0, res, z=Z)

    return run


def step(p: Problem):
    """Loss and exact implicit gradient by two Picard loops (forward, adjoint)."""
    AT = np.ascontiguousarray(p.A.T)
    tanh = p.activation == "tanh"

    def run():
        n = p.n
        U = p.X @ p.B.T
        Z, kf, _ = picard(
            np.zeros((n, p.m)), AT, U, p.tol, p.max_iter, act=np.tanh if tanh else None
        )
        G = Z - p.Y
        loss = 0.5 * np.dot(G.ravel(), G.ravel()) / n
        G /= n
        D = None
        if tanh:
            D = Z * Z  # tanh' = 1 - tanh^2 at the fixed point, Z = tanh(Z A^T + U)
            np.subtract(1.0, D, out=D)
        Lam, kb, res = picard(np.zeros((n, p.m)), p.A, G, p.tol, p.max_iter, D=D)
        return Outcome(kf, kb, res, z=Z, grad_A=Lam.T @ Z, grad_B=Lam.T @ p.X, loss=loss)

    return run


def direct_forward(p: Problem):
    """``Z = U C^{-T}``: one LU of ``C = I - A`` (LAPACK getrf/getrs through SciPy)."""
    if p.activation != "identity":
        return None

    def run():
        C = np.eye(p.m) - p.A
        U = p.X @ p.B.T
        Z = sla.lu_solve(sla.lu_factor(C, check_finite=False), U.T, check_finite=False).T
        return Outcome(0, 0, 0.0, z=Z)

    return run


def direct_step(p: Problem):
    """Loss and exact gradient with one LU shared by the forward and adjoint solves."""
    if p.activation != "identity":
        return None

    def run():
        n = p.n
        C = np.eye(p.m) - p.A
        lu = sla.lu_factor(C, check_finite=False)
        U = p.X @ p.B.T
        Z = sla.lu_solve(lu, U.T, check_finite=False).T
        G = Z - p.Y
        loss = 0.5 * np.dot(G.ravel(), G.ravel()) / n
        G /= n
        LamT = sla.lu_solve(lu, G.T, trans=1, check_finite=False)  # C^T Lam^T = G^T
        return Outcome(0, 0, 0.0, z=Z, grad_A=LamT @ Z, grad_B=LamT @ p.X, loss=loss)

    return run
