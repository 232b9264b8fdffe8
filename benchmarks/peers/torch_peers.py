"""PyTorch peers (CPU, float64): an eager loop of the same algorithm, and TorchDEQ.

PyTorch eager: the NumPy loop of :mod:`numpy_peers` in torch, under
``torch.no_grad`` with ``out=`` buffers, gradients by the same adjoint loop.

TorchDEQ: ``get_deq(f_solver=..., b_solver=..., ift=True)`` (IFT backward, its
documented implicit mode), ``stop_mode="rel"`` and ``tol = 1e-10`` for both
solves. TorchDEQ measures residuals per batch element; the whole state is
passed as ONE batch element of shape ``(1, n*m)`` so that its relative
residual is the same Frobenius-norm ratio deqbench stops on.
"""

from __future__ import annotations

import os

import numpy as np

from .problems import Outcome, PeerMissing, Problem

try:
    import torch

    if os.environ.get("DEQBENCH_PEERS_THREADS"):  # run_peers --threads N
        torch.set_num_threads(int(os.environ["DEQBENCH_PEERS_THREADS"]))
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

try:
    import torchdeq
except ImportError:  # pragma: no cover
    torchdeq = None


def _need_torch():
    if torch is None:
        raise PeerMissing("torch is not installed")


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def _picard(Z, M, U, tol, max_iter, D=None, tanh=False):
    F = torch.empty_like(Z)
    R = torch.empty_like(Z)
    res = float("inf")
    for k in range(max_iter + 1):
        torch.matmul(Z, M, out=F)
        F += U
        if tanh:
            torch.tanh(F, out=F)
        if D is not None:
            F *= D
        torch.sub(F, Z, out=R)
        r = R.view(-1)
        f = F.view(-1)
        res = float(torch.sqrt(torch.dot(r, r) / torch.dot(f, f)))
        if res <= tol:
            return Z, k + 1, res
        Z, F = F, Z
    return Z, max_iter + 1, res


def eager_forward(p: Problem):
    _need_torch()
    X, B = _t(p.X), _t(p.B)
    AT = _t(p.A.T)
    tanh = p.activation == "tanh"

    def run():
        with torch.no_grad():
            U = X @ B.T
            Z, k, res = _picard(
                torch.zeros(p.n, p.m, dtype=torch.float64), AT, U, p.tol, p.max_iter, tanh=tanh
            )
        return Outcome(k, 0, res, z=Z.numpy())

    return run


def eager_step(p: Problem):
    _need_torch()
    X, B, Y = _t(p.X), _t(p.B), _t(p.Y)
    A, AT = _t(p.A), _t(p.A.T)
    tanh = p.activation == "tanh"

    def run():
        n = p.n
        with torch.no_grad():
            U = X @ B.T
            Z, kf, _ = _picard(
                torch.zeros(n, p.m, dtype=torch.float64), AT, U, p.tol, p.max_iter, tanh=tanh
            )
            G = Z - Y
            loss = 0.5 * float(torch.dot(G.view(-1), G.view(-1))) / n
            G /= n
            D = (1.0 - Z * Z) if tanh else None
            Lam, kb, res = _picard(
                torch.zeros(n, p.m, dtype=torch.float64), A, G, p.tol, p.max_iter, D=D
            )
            gA = Lam.T @ Z
            gB = Lam.T @ X
        return Outcome(kf, kb, res, z=Z.numpy(), grad_A=gA.numpy(), grad_B=gB.numpy(), loss=loss)

    return run


def _deq(p: Problem, solver: str, **solver_kwargs):
    _need_torch()
    if torchdeq is None:
        raise PeerMissing("torchdeq is not installed")
    from torchdeq import get_deq

    deq = get_deq(
        f_solver=solver,
        b_solver=solver,
        f_max_iter=p.max_iter,
        b_max_iter=p.max_iter,
        f_tol=p.tol,
        b_tol=p.tol,
        f_stop_mode="rel",
        b_stop_mode="rel",
        ift=True,
        **solver_kwargs,
    )
    deq.train()
    return deq


def _map(p: Problem, A, U):
    n, m = p.n, p.m
    if p.activation == "tanh":
        return lambda z: torch.tanh(z.view(n, m) @ A.T + U).view(1, n * m)
    return lambda z: (z.view(n, m) @ A.T + U).view(1, n * m)


def torchdeq_forward(p: Problem, solver: str = "fixed_point_iter", **solver_kwargs):
    deq = _deq(p, solver, **solver_kwargs)
    X, B, A = _t(p.X), _t(p.B), _t(p.A)
    deq.eval()

    def run():
        with torch.no_grad():
            U = X @ B.T
            z0 = torch.zeros(1, p.n * p.m, dtype=torch.float64)
            z_out, info = deq(_map(p, A, U), z0)
        z = z_out[-1].view(p.n, p.m)
        return Outcome(
            int(info["nstep"].max()), 0, float(info["rel_lowest"].max()), z=z.detach().numpy()
        )

    return run


def torchdeq_step(p: Problem, solver: str = "fixed_point_iter", **solver_kwargs):
    """Loss and gradients through TorchDEQ's IFT backward (``loss.backward()``)."""
    deq = _deq(p, solver, **solver_kwargs)
    X, Y = _t(p.X), _t(p.Y)
    counts = {}

    def writer(info):
        counts["b"] = int(info["nstep"].max())
        counts["b_res"] = float(info["rel_lowest"].max())

    def run():
        A = _t(p.A).clone().requires_grad_(True)
        B = _t(p.B).clone().requires_grad_(True)
        U = X @ B.T
        z0 = torch.zeros(1, p.n * p.m, dtype=torch.float64)
        z_out, info = deq(_map(p, A, U), z0, backward_writer=writer)
        z = z_out[-1].view(p.n, p.m)
        loss = 0.5 * ((z - Y) ** 2).sum() / p.n
        loss.backward()
        return Outcome(
            int(info["nstep"].max()),
            counts.get("b", -1),
            counts.get("b_res", np.nan),
            z=z.detach().numpy(),
            grad_A=A.grad.numpy(),
            grad_B=B.grad.numpy(),
            loss=loss.item(),
        )

    return run
