"""Broyden's method: deqbench's (``method="broyden"``) against TorchDEQ's
(``f_solver = b_solver = "broyden"``, IFT backward), forward solve and step.

Both run one inverse-Jacobian estimate per sample: TorchDEQ's state is passed
as a batch of ``n`` elements of ``m`` features, its own layout (its
``broyden_solver`` keeps the batch axis), not as the one flattened element of
the Picard and Anderson peers of :mod:`torch_peers`. Differences that stay:

* stopping: TorchDEQ (``stop_mode="rel"``) stops once every element's
  ``||g_i|| / (||F_i|| + 1e-9)`` is at most ``tol`` (and returns each
  element's lowest-residual iterate), deqbench on the batch's
  ``||g||_F <= tol ||F||_F``; the worst element's rule is the stronger one;
* memory: TorchDEQ keeps up to ``LBFGS_thres`` pairs and then overwrites the
  oldest, deqbench keeps ``anderson_history`` pairs and restarts: both get
  :data:`HISTORY` pairs in the forward solve. TorchDEQ's IFT backward keeps
  ``b_max_iter`` pairs, allocated up front, so its iterations are capped at
  :data:`TORCHDEQ_MAX_ITER` (not the problem's ``max_iter``), and a peer whose
  pairs would exceed :data:`MEMORY_CAP` does not run (the factory returns
  None: at the harness's ``n = 8192``, ``m = 1024``);
* evaluations: both count the map evaluations, the initial one included
  (TorchDEQ's ``nstep + 1``, without line search).

Timing (the lead, on a quiet machine): ``python -m benchmarks.peers.run_peers``
with the peers ``"deqbench broyden"`` and ``"torchdeq broyden"`` of
:mod:`registry`; needs ``pip install -e ".[peers]"``.
"""

from __future__ import annotations

import numpy as np

from . import deqbench_peers
from .problems import Outcome, PeerMissing, Problem
from .torch_peers import _t, torch, torchdeq

HISTORY = 30
"""Secant pairs kept by either solver in the forward solve."""
TORCHDEQ_MAX_ITER = 60
"""TorchDEQ's ``f_max_iter`` and ``b_max_iter`` (the pairs of its backward)."""
MEMORY_CAP = 4 * 2**30
"""Bytes of secant pairs beyond which a peer is not run."""


def _pairs_fit(p: Problem, pairs: int) -> bool:
    return 2 * pairs * p.n * p.m * 8 <= MEMORY_CAP


def deqbench_forward(p: Problem):
    if not _pairs_fit(p, HISTORY):
        return None
    return deqbench_peers.forward(p, method="broyden", anderson_history=HISTORY)


def deqbench_step(p: Problem):
    if not _pairs_fit(p, HISTORY):
        return None
    return deqbench_peers.step(p, solver="broyden", anderson_history=HISTORY)


def _deq(p: Problem):
    if torch is None:
        raise PeerMissing("torch is not installed")
    if torchdeq is None:
        raise PeerMissing("torchdeq is not installed")
    from torchdeq import get_deq

    return get_deq(f_solver="broyden", b_solver="broyden", f_max_iter=TORCHDEQ_MAX_ITER,
                   b_max_iter=TORCHDEQ_MAX_ITER, f_tol=p.tol, b_tol=p.tol, f_stop_mode="rel",
                   b_stop_mode="rel", ift=True)


def _map(p: Problem, A, U):
    """``z -> phi(z A^T + U)`` on the ``(n, m)`` batch, one element per sample."""
    if p.activation == "tanh":
        return lambda z: torch.tanh(z @ A.T + U)
    return lambda z: z @ A.T + U


def torchdeq_forward(p: Problem):
    if not _pairs_fit(p, HISTORY):
        return None
    deq = _deq(p)
    deq.eval()
    X, B, A = _t(p.X), _t(p.B), _t(p.A)

    def run():
        with torch.no_grad():
            U = X @ B.T
            z0 = torch.zeros(p.n, p.m, dtype=torch.float64)
            z_out, info = deq(_map(p, A, U), z0, solver_kwargs={"LBFGS_thres": HISTORY})
        z = z_out[-1]
        return Outcome(int(info["nstep"].max()) + 1, 0, float(info["rel_lowest"].max()),
                       z=z.detach().numpy())

    return run


def torchdeq_step(p: Problem):
    """Loss and gradients through TorchDEQ's IFT backward (``loss.backward()``)."""
    if not _pairs_fit(p, max(HISTORY, TORCHDEQ_MAX_ITER)):
        return None
    deq = _deq(p)
    deq.train()
    X, Y = _t(p.X), _t(p.Y)
    counts = {}

    def writer(info):
        counts["b"] = int(info["nstep"].max()) + 1
        counts["b_res"] = float(info["rel_lowest"].max())

    def run():
        A = _t(p.A).clone().requires_grad_(True)
        B = _t(p.B).clone().requires_grad_(True)
        U = X @ B.T
        z0 = torch.zeros(p.n, p.m, dtype=torch.float64)
        z_out, info = deq(_map(p, A, U), z0, backward_writer=writer,
                          solver_kwargs={"LBFGS_thres": HISTORY})
        z = z_out[-1]
        loss = 0.5 * ((z - Y) ** 2).sum() / p.n
        loss.backward()
        return Outcome(int(info["nstep"].max()) + 1, counts.get("b", -1),
                       counts.get("b_res", np.nan), z=z.detach().numpy(),
                       grad_A=A.grad.numpy(), grad_B=B.grad.numpy(), loss=loss.item())

    return run


def factories(p: Problem, kind: str):
    """The registry's rows of this module: ``kind`` is ``"forward"`` or ``"step"``."""
    if kind == "forward":
        return [("deqbench broyden", lambda: deqbench_forward(p)),
                ("torchdeq broyden", lambda: torchdeq_forward(p))]
    return [("deqbench broyden", lambda: deqbench_step(p)),
            ("torchdeq broyden", lambda: torchdeq_step(p))]
