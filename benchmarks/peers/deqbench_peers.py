"""deqbench through its public API (validation included in every timed call)."""

from __future__ import annotations

import deqbench as db

from .problems import Outcome, Problem


def forward(p: Problem, method: str = "picard", **options):
    def run():
        r = db.fixed_point(
            p.A,
            p.B,
            p.X,
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
        loss, gA, gB, info = db.loss_and_grad(
            model,
            p.A,
            p.B,
            p.X,
            p.Y,
            activation=p.activation,
            solver=solver,
            tol=p.tol,
            max_iter=p.max_iter,
            **options,
        )
        direct = solver == "direct"
        return Outcome(
            0 if direct else info["fp_iters"] + 1,
            0 if direct else info["adj_iters"] + 1,
            info["adj_residual"],
            z=info["z"],
            grad_A=gA,
            grad_B=gB,
            loss=loss,
        )

    return run
