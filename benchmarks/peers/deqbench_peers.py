"""deqbench through its public API (validation included in every timed call)."""

from __future__ import annotations

import deqbench as db

from .problems import Outcome, Problem


def forward(p: Problem, method: str = "picard", **options):
    def run():
        r = db.fixed_point(
            p.X,
            p.A,
            p.B,
            activation=p.activation,
            method=method,
            tol=p.tol,
            max_iter=p.max_iter,
            **options,
        )
        return Outcome(r.n_iter + 1 if method != "direct" else 0, 0, r.residual, z=r.z)

    return run


def step(p: Problem, solver: str = "picard", **options):
    model = "linear" if p.activation == "identity" else "nonlinear"

    def run():
        res = db.loss_and_grad(
            model,
            p.X,
            p.Y,
            p.A,
            p.B,
            activation=p.activation,
            solver=solver,
            tol=p.tol,
            max_iter=p.max_iter,
            **options,
        )
        direct = solver == "direct"
        return Outcome(
            0 if direct else res.fp_iters + 1,
            0 if direct else res.adj_iters + 1,
            res.adj_residual,
            z=res.z,
            grad_A=res.grad_A,
            grad_B=res.grad_B,
            loss=res.loss,
        )

    return run
