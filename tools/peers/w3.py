"""W3: time to reach excess loss 1e-8 on the linear teacher (m = d = 256, n = 16384).

Gradient descent on ``(A, B)`` from the same initialisation with the same
step size; every system computes the exact gradient (forward and adjoint to
1e-10, or a direct solve), so all follow the same trajectory and need the
same number of steps ``K``. Each system runs in its best mode:

* deqbench: ``deqbench.train`` with ``solver="direct"`` (the path leaves the
  contraction domain at its first step, where Picard and Anderson are not
  certified; sufficient statistics are selected automatically), timed end to
  end to ``stop_loss = L* + 1e-8``; this run gives ``K``.
* NumPy direct: LU of ``I - A`` per step, forward and adjoint from it.
* PyTorch (eager): autograd through ``W = torch.linalg.solve(I - A, B)``.
* TorchDEQ: Anderson forward and IFT backward (Anderson), warm-started from
  the previous fixed point.
* jaxopt: ``AndersonAcceleration`` with implicit differentiation (GMRES,
  tol 1e-10), ``jax.jit``-compiled step, warm-started.

The peers are timed per step (median of ``reps`` steps after a warm-up step)
and charged ``K`` steps: a peer's time to the target is ``K x median step``
(running ~1000 steps of each peer would take hours on 2 cores). For the
iterative peers this slightly overstates the time (warm starts get cheaper as
the parameters settle); for the direct and autograd peers it is exact up to
noise. Each peer's loss after its first steps is checked against deqbench's
trajectory.
"""

from __future__ import annotations

import time

import numpy as np

import deqbench as db
from benchmarks.peers.problems import PeerMissing

M = D = 256
N = 16384
TARGET = 1e-8
LR = 2.0
MAX_STEPS = 10000
TOL = 1e-10
#: deqbench's best mode here. The path leaves the contraction domain at the
#: first step (rho(A) = 0.26 -> 5.4 at lr = 1; lr = 2 here), where train certifies no
#: iterative solver (docs/theory.md §3); the direct peers solve the same way.
SOLVER = "direct"


def problem():
    X, Y, _ = db.data.linear_teacher(N, D, M, seed=0)
    A0, B0 = db.data.init_params(D, M, scale_A=0.5, scale_B=1.0, seed=1)
    return X, Y, A0, B0


# ---- peers: one GD step each, state kept between calls -------------------------------------


class NumpyDirect:
    name = "numpy direct"

    def __init__(self, X, Y, A0, B0):
        import scipy.linalg as sla

        self.sla, self.X, self.Y, self.A, self.B = sla, X, Y, A0.copy(), B0.copy()

    def step(self):
        sla, X, Y, A, B = self.sla, self.X, self.Y, self.A, self.B
        n, m = Y.shape
        lu = sla.lu_factor(np.eye(m) - A, check_finite=False)
        ZT = sla.lu_solve(lu, B @ X.T, check_finite=False)  # Z^T = C^{-1} B X^T
        RT = ZT - Y.T
        loss = 0.5 * np.vdot(RT, RT) / n
        LamT = sla.lu_solve(lu, RT / n, trans=1, check_finite=False)
        A -= LR * (LamT @ ZT.T)
        B -= LR * (LamT @ X)
        return loss


class TorchSolve:
    name = "pytorch eager"

    def __init__(self, X, Y, A0, B0):
        try:
            import torch
        except ImportError as e:
            raise PeerMissing("torch is not installed") from e
        self.torch = torch
        self.X, self.Y = torch.from_numpy(X), torch.from_numpy(Y)
        self.A = torch.from_numpy(A0.copy()).requires_grad_(True)
        self.B = torch.from_numpy(B0.copy()).requires_grad_(True)
        self.I = torch.eye(M, dtype=torch.float64)

    def step(self):
        torch = self.torch
        W = torch.linalg.solve(self.I - self.A, self.B)
        R = self.X @ W.T - self.Y
        loss = 0.5 * (R * R).sum() / R.shape[0]
        gA, gB = torch.autograd.grad(loss, (self.A, self.B))
        with torch.no_grad():
            self.A -= LR * gA
            self.B -= LR * gB
        return loss.item()


class TorchDEQAnderson:
    name = "torchdeq"

    def __init__(self, X, Y, A0, B0):
        try:
            import torch
            from torchdeq import get_deq
        except ImportError as e:
            raise PeerMissing(f"{e.name} is not installed") from e
        self.torch = torch
        self.deq = get_deq(
            f_solver="anderson",
            b_solver="anderson",
            f_max_iter=500,
            b_max_iter=500,
            f_tol=TOL,
            b_tol=TOL,
            f_stop_mode="rel",
            b_stop_mode="rel",
            ift=True,
        )
        self.deq.train()
        self.X, self.Y = torch.from_numpy(X), torch.from_numpy(Y)
        self.A = torch.from_numpy(A0.copy()).requires_grad_(True)
        self.B = torch.from_numpy(B0.copy()).requires_grad_(True)
        self.z = torch.zeros(1, N * M, dtype=torch.float64)

    def step(self):
        torch = self.torch
        A, B = self.A, self.B
        U = self.X @ B.T

        def f(z):
            return (z.view(N, M) @ A.T + U).view(1, N * M)

        z_out, _ = self.deq(f, self.z)
        z = z_out[-1]
        self.z = z.detach().clone()
        R = z.view(N, M) - self.Y
        loss = 0.5 * (R * R).sum() / N
        gA, gB = torch.autograd.grad(loss, (A, B))
        with torch.no_grad():
            A -= LR * gA
            B -= LR * gB
        return loss.item()


class JaxoptAnderson:
    name = "jaxopt"

    def __init__(self, X, Y, A0, B0):
        try:
            from functools import partial

            import jax

            jax.config.update("jax_enable_x64", True)
            import jax.numpy as jnp
            import jaxopt
        except ImportError as e:
            raise PeerMissing(f"{e.name} is not installed") from e
        self.jax = jax
        Xj, Yj = jnp.asarray(X), jnp.asarray(Y)
        # jaxopt stops on the absolute distance: tol relative to ||Z*|| (~ ||Y|| here)
        tol_abs = TOL * float(np.linalg.norm(Y))
        solver = jaxopt.AndersonAcceleration(
            fixed_point_fun=lambda z, A, U: z @ A.T + U,
            history_size=5,
            maxiter=500,
            tol=tol_abs,
            implicit_diff=True,
            jit=True,
            implicit_diff_solve=partial(jaxopt.linear_solve.solve_gmres, tol=TOL),
        )

        def loss_fn(A, B, z0):
            z = solver.run(z0, A, Xj @ B.T).params
            r = z - Yj
            return 0.5 * jnp.vdot(r, r) / N, z

        vg = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)

        @jax.jit
        def step(A, B, z0):
            (loss, z), (gA, gB) = vg(A, B, z0)
            return A - LR * gA, B - LR * gB, jax.lax.stop_gradient(z), loss

        self._step = step
        self.A, self.B = jnp.asarray(A0), jnp.asarray(B0)
        self.z = jnp.zeros((N, M))

    def step(self):
        self.A, self.B, self.z, loss = self._step(self.A, self.B, self.z)
        return float(self.jax.block_until_ready(loss))


PEERS = (NumpyDirect, TorchSolve)
#: Timed only with ``--w3-iterative``: each of their steps does >= 20 gemms of
#: the (n, m) x (m, m) size, strictly more work than the direct peers' step, so
#: they cannot be the best peer; and in a trial at n = 1024 TorchDEQ's Anderson
#: (default ridge lam = 1e-4, absolute) stalled above the 1e-10 tolerance (its
#: loss left deqbench's trajectory at 6e-6 relative after one step), while
#: jaxopt's Anderson + GMRES step did not finish in 10 minutes.
ITERATIVE = (TorchDEQAnderson, JaxoptAnderson)


def run(*, reps: int, log, iterative: bool = False):
    if not hasattr(db, "train"):
        log("  W3: not measured: dependency not landed (deqbench.train, issue 3)")
        return (
            [
                dict(
                    workload="W3",
                    m=M,
                    n=N,
                    d=D,
                    peer="all",
                    note="not measured: dependency not landed (deqbench.train)",
                )
            ],
            [
                (
                    "W3: >= 10x the best peer",
                    "not measured",
                    "dependency not landed (deqbench.train, issue 3)",
                )
            ],
        )
    X, Y, A0, B0 = problem()
    # reference trajectory for the checks (first steps), and compilation
    ref = db.train("linear", X, Y, A0, B0, lr=LR, steps=reps + 1, record_every=1, solver=SOLVER)
    ref_loss = ref.history["loss"]
    L_star = ref.L_star if np.isfinite(ref.L_star) else 0.0
    t = time.perf_counter()
    r = db.train(
        "linear", X, Y, A0, B0, lr=LR, steps=MAX_STEPS, stop_loss=L_star + TARGET,
        record_every=None, solver=SOLVER,
    )
    t_db = time.perf_counter() - t
    K = int(r.n_steps)
    log(
        f"  W3 deqbench: {r.status} after {K} steps in {t_db:.1f} s "
        f"(sufficient statistics: {r.sufficient_stats}), final excess "
        f"{r.history['excess_loss'][-1]:.2e}"
    )
    rows = [
        dict(
            workload="W3",
            m=M,
            n=N,
            d=D,
            peer="deqbench",
            median_s=t_db,
            rounds=1,
            fp_evals=K,
            adj_evals="",
            gflops="",
            ratio=1.0,
            speedup=1.0,
            rel_err="",
            note="" if r.status == "converged" else f"status {r.status}",
        )
    ]
    best = None
    for cls in PEERS + (ITERATIVE if iterative else ()):
        try:
            peer = cls(X, Y, A0, B0)
        except PeerMissing as e:
            rows.append(
                dict(workload="W3", m=M, n=N, d=D, peer=cls.name, note=f"not measured: {e}")
            )
            continue
        losses, times = [], []
        for _ in range(reps + 1):
            t = time.perf_counter()
            losses.append(peer.step())
            times.append(time.perf_counter() - t)
        err = float(
            np.max(np.abs(np.array(losses) - ref_loss[: len(losses)]) / ref_loss[: len(losses)])
        )
        per_step = float(np.median(times[1:]))  # the first step includes compilation
        total = K * per_step
        log(
            f"  W3 {cls.name}: {per_step:.3f} s/step (median of {reps}), x {K} steps = "
            f"{total:.0f} s; trajectory rel. diff {err:.1e}"
        )
        rows.append(
            dict(
                workload="W3",
                m=M,
                n=N,
                d=D,
                peer=cls.name,
                median_s=total,
                rounds=reps,
                fp_evals=K,
                adj_evals="",
                gflops="",
                ratio=t_db / total,
                speedup=total / t_db,
                rel_err=err,
                note=f"{per_step:.3f} s/step x {K} steps (extrapolated)",
            )
        )
        if err < 1e-6 and (best is None or total < best[1]):
            best = (cls.name, total)
    if not iterative:
        for cls in ITERATIVE:
            rows.append(
                dict(
                    workload="W3",
                    m=M,
                    n=N,
                    d=D,
                    peer=cls.name,
                    note="not timed: more work per step than the direct peers; "
                    "Anderson stalled above 1e-10 / did not finish in a trial (w3.py)",
                )
            )
    if best is None:
        tg = [("W3: >= 10x the best peer", "not measured", "no peer on the same trajectory")]
    else:
        s = best[1] / t_db
        reached = (
            "reached" if r.status == "converged" else f"NOT reached in {K} steps by any system"
        )
        tg = [
            (
                "W3: >= 10x the best peer",
                "met" if s >= 10 else "missed",
                f"deqbench {t_db:.1f} s for {K} steps vs {best[0]} {best[1]:.0f} s for the same "
                f"steps: {s:.2f}x (target excess 1e-8 {reached}; same trajectory, so the ratio "
                "is the per-step ratio)",
            )
        ]
    return rows, tg
