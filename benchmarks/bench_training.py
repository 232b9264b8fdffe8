"""One gradient-descent step and whole training runs per model (THEORY.md sections 5-8).

``GDStep`` uses the public ``loss_and_grad`` (one exact implicit step plus the
parameter update); ``Train*`` use ``deqbench.train`` (whole loop compiled) and
are skipped on commits that do not have it.
"""

from __future__ import annotations

import numpy as np

import deqbench as db

from .common import Bench, grid, problem, strict, training

MODELS = ["linear", "single_index", "nonlinear"]
#: Step sizes that decrease the loss monotonically on these problems.
LR = {"linear": 0.1, "single_index": 0.5, "nonlinear": 0.1}
TOL = 1e-10


class GDStep(Bench):
    """One exact GD step (forward solve, adjoint solve, update) at the
    parameters after one step from the initialization; ``warm`` starts both
    solves from the previous step's fixed point and adjoint.

    ``track_fp_iters`` / ``track_adj_iters``: iterations of that step (lower is
    better; warm should be below cold)."""

    params = [MODELS, ["cold", "warm"], grid([32], [32, 128]), grid([2048], [2048, 16384])]
    param_names = ["model", "start", "m", "n"]

    def setup(self, model, start, m, n):
        p = problem(model, m, n, rho=0.5)
        self.p, self.lr = p, LR[model]
        self.kw = dict(p.model_kwargs(), tol=TOL)
        _, gA, gB, info = strict(db.loss_and_grad, model, p.A, p.B, p.X, p.Y, **self.kw)
        self.A = p.A - self.lr * gA
        self.B = p.B - self.lr * gB
        if start == "warm":
            self.kw.update(z0=info["z"], adj0=info["adjoint"])
        self.info = self.time_gd_step(model, start, m, n)

    def time_gd_step(self, model, start, m, n):
        _, gA, gB, info = db.loss_and_grad(model, self.A, self.B, self.p.X, self.p.Y, **self.kw)
        _ = self.A - self.lr * gA, self.B - self.lr * gB
        return info

    def track_fp_iters(self, model, start, m, n):
        return self.info["fp_iters"]

    track_fp_iters.unit = "iterations"

    def track_adj_iters(self, model, start, m, n):
        return self.info["adj_iters"]

    track_adj_iters.unit = "iterations"


def run_training(p, *, steps, lr, **kw):
    """``deqbench.train`` on problem ``p``; a failed run is a broken benchmark."""
    train = training()
    res = strict(
        train, p.model, p.X, p.Y, p.A, p.B, lr=lr, steps=steps, tol=TOL, **p.model_kwargs(), **kw
    )
    if res.status not in ("max_steps", "converged"):
        raise RuntimeError(f"training run failed: status={res.status!r}")
    return res


class Train(Bench):
    """A whole training run (``steps = 20``) per model, warm starts on and off,
    per-sample gradients (``sufficient_stats=False``), ``m = 32, n = 2048``.

    ``track_fp_iters_per_step`` / ``track_adj_iters_per_step``: mean iterations
    per step over the run (lower is better; the warm-start saving)."""

    params = [MODELS, [False, True]]
    param_names = ["model", "warm_start"]
    steps = 20
    rounds = 1

    def setup(self, model, warm_start):
        self.p = problem(model, 32, 2048, rho=0.5)
        self.kw = {"steps": self.steps, "lr": LR[model], "warm_start": warm_start}
        if model == "linear":
            self.kw["sufficient_stats"] = False
        self.result = run_training(self.p, **self.kw)

    def time_train(self, model, warm_start):
        training()(
            self.p.model,
            self.p.X,
            self.p.Y,
            self.p.A,
            self.p.B,
            tol=TOL,
            **self.p.model_kwargs(),
            **self.kw,
        )

    def track_fp_iters_per_step(self, model, warm_start):
        return float(np.mean(self.result.history["fp_iters"]))

    track_fp_iters_per_step.unit = "iterations"

    def track_adj_iters_per_step(self, model, warm_start):
        return float(np.mean(self.result.history["adj_iters"]))

    track_adj_iters_per_step.unit = "iterations"


class TrainSufficientStats(Bench):
    """Linear model, ``steps = 20``: per-sample implicit steps against the
    sufficient-statistics step whose cost does not grow with ``n``
    (THEORY.md section 8); ``m = d = 32``."""

    params = [grid([2048, 16384], [2048, 16384, 131072]), [False, True]]
    param_names = ["n", "sufficient_stats"]
    steps = 20
    rounds = 1

    def setup(self, n, sufficient_stats):
        self.p = problem("linear", 32, n, rho=0.5)
        self.kw = {"steps": self.steps, "lr": LR["linear"], "sufficient_stats": sufficient_stats}
        self.result = run_training(self.p, **self.kw)

    def time_train(self, n, sufficient_stats):
        training()(
            self.p.model,
            self.p.X,
            self.p.Y,
            self.p.A,
            self.p.B,
            tol=TOL,
            **self.p.model_kwargs(),
            **self.kw,
        )
