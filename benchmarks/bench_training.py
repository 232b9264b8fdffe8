"""One gradient-descent step and whole training runs per model (THEORY.md sections 5-8).

``GDStep`` uses the public ``loss_and_grad`` (one exact implicit step plus the
parameter update); ``Train*`` use ``deqbench.train`` (whole loop compiled) and
are skipped on commits that do not have it.
"""

from __future__ import annotations

import numpy as np

import deqbench as db

from .common import Bench, cached, grid, problem, strict, sweep, training

MODELS = ["linear", "single_index", "nonlinear"]
#: Step sizes that decrease the loss monotonically on these problems.
LR = {"linear": 0.1, "single_index": 0.5, "nonlinear": 0.1}
TOL = 1e-10


GD_PARAMS = [MODELS, ["cold", "warm"], grid([32], [32, 128]), grid([2048], [2048, 16384])]
GD_PARAM_NAMES = ["model", "start", "m", "n"]


#: GD steps taken from the initialization before the measured step.
PRE_STEPS = 5


def setup_step(model, start, m, n):
    """Parameters after ``PRE_STEPS`` GD steps from the initialization, and the
    options of the next step (``warm``: the previous step's fixed point and
    adjoint as initial guesses, as inside a training loop)."""
    p = problem(model, m, n, rho=0.5)
    kw = dict(p.model_kwargs(), tol=TOL)
    A, B, info = p.A, p.B, {"z": None, "adjoint": None}
    for _ in range(PRE_STEPS):
        A, B, info = strict(gd_step, p, A, B, dict(kw, z0=info["z"], adj0=info["adjoint"]))
    if start == "warm":
        kw.update(z0=info["z"], adj0=info["adjoint"])
    return p, A, B, kw


def gd_step(p, A, B, kw):
    _, gA, gB, info = db.loss_and_grad(p.model, p.X, p.Y, A, B, **kw)
    return A - LR[p.model] * gA, B - LR[p.model] * gB, info


class GDStep(Bench):
    """One exact GD step (forward solve, adjoint solve, update) at the
    parameters after 5 steps from the initialization; ``warm`` starts both
    solves from the previous step's fixed point and adjoint."""

    params = GD_PARAMS
    param_names = GD_PARAM_NAMES

    def setup(self, model, start, m, n):
        self.args = setup_step(model, start, m, n)
        strict(gd_step, *self.args)

    def time_gd_step(self, model, start, m, n):
        gd_step(*self.args)


class GDStepIterations:
    """Iterations of the step timed by ``GDStep`` (lower is better; warm
    should be below cold)."""

    params = GD_PARAMS
    param_names = GD_PARAM_NAMES
    timeout = 600.0

    def measure(self, model, start, m, n):
        info = strict(gd_step, *setup_step(model, start, m, n))[2]
        return {"fp": info["fp_iters"], "adj": info["adj_iters"]}

    def setup_cache(self):
        return sweep(self)

    def setup(self, cache, *params):
        cached(cache, params)

    def track_fp_iters(self, cache, *params):
        return cached(cache, params)["fp"]

    track_fp_iters.unit = "iterations"

    def track_adj_iters(self, cache, *params):
        return cached(cache, params)["adj"]

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


TRAIN_STEPS = 20


def setup_train(model, warm_start):
    p = problem(model, 32, 2048, rho=0.5)
    kw = {"steps": TRAIN_STEPS, "lr": LR[model], "warm_start": warm_start}
    if model == "linear":
        kw["sufficient_stats"] = False
    return p, kw


class Train(Bench):
    """A whole training run (``steps = 20``) per model, warm starts on and off,
    per-sample gradients (``sufficient_stats=False``), ``m = 32, n = 2048``."""

    params = [MODELS, [False, True]]
    param_names = ["model", "warm_start"]
    rounds = 1

    def setup(self, model, warm_start):
        self.p, self.kw = setup_train(model, warm_start)
        run_training(self.p, **self.kw)

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


class TrainIterations:
    """Mean forward / adjoint iterations per step of the runs timed by
    ``Train`` (lower is better; the warm-start saving)."""

    params = [MODELS, [False, True]]
    param_names = ["model", "warm_start"]
    timeout = 600.0

    def measure(self, model, warm_start):
        p, kw = setup_train(model, warm_start)
        h = run_training(p, **kw).history
        return {"fp": float(np.mean(h["fp_iters"])), "adj": float(np.mean(h["adj_iters"]))}

    def setup_cache(self):
        try:
            training()
        except NotImplementedError:
            return {}
        return sweep(self)

    def setup(self, cache, *params):
        training()
        cached(cache, params)

    def track_fp_iters_per_step(self, cache, *params):
        return cached(cache, params)["fp"]

    track_fp_iters_per_step.unit = "iterations"

    def track_adj_iters_per_step(self, cache, *params):
        return cached(cache, params)["adj"]

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
