"""One gradient-descent step and whole training runs per model (docs/theory.md §5-§8).

``GDStep`` uses the public ``loss_and_grad`` (one exact implicit step plus the
parameter update); ``Train*`` use ``deqbench.train`` (whole loop compiled) and
are skipped on commits that do not have it.

Default suite: warm-started steps and runs of the three models at ``m = 32``
(what training does); cold starts, the sufficient-statistics grid in ``n``
and more widths under ``DEQBENCH_FULL=1``. Counts, allocations and the
efficiency ratio of every step in ``GDStepMetrics``.
"""

from __future__ import annotations

import numpy as np

import deqbench as db

from .common import (
    N_AT,
    Bench,
    Tracked,
    allocations,
    cost_ratio,
    grid,
    matmul,
    problem,
    strict,
    training,
)

MODELS = ["linear", "readout", "nonlinear"]
#: Step sizes that decrease the loss monotonically on these problems.
LR = {"linear": 0.1, "readout": 0.5, "nonlinear": 0.1}
TOL = 1e-10


GD_PARAMS = [MODELS, grid(["warm"], ["cold", "warm"]), grid([32], [32, 128])]
GD_PARAM_NAMES = ["model", "start", "m"]


#: GD steps taken from the initialization before the measured step.
PRE_STEPS = 5


def setup_step(model, start, m):
    """Parameters after ``PRE_STEPS`` GD steps from the initialization, and the
    options of the next step (``warm``: the previous step's fixed point and
    adjoint as initial guesses, as inside a training loop)."""
    p = problem(model, m, N_AT[m], rho=0.5)
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

    def setup(self, model, start, m):
        self.args = setup_step(model, start, m)
        strict(gd_step, *self.args)

    def time_gd_step(self, model, start, m):
        gd_step(*self.args)


class GDStepMetrics(Tracked):
    """Machine-independent numbers of the step timed by ``GDStep``, cold and warm.

    * ``fp_map_evaluations`` / ``adj_map_evaluations``: map evaluations of the
      forward and the adjoint solve (``n_iter + 1``), exact.
    * ``bytes_allocated``: ``tracemalloc`` peak of one step after a warm-up.
    * ``nrt_allocations``: allocations inside compiled code per step (exact).
    * ``efficiency``: CPU time of the step over the numpy matmuls of the same
      shapes that docs/theory.md §8 counts for it (one ``(n, m) @ (m, m)`` per
      map evaluation, ``X @ B^T`` and the two gradient products), timed in
      the same process.
    """

    params = [MODELS, ["cold", "warm"], GD_PARAMS[2]]
    param_names = GD_PARAM_NAMES
    tracks = {
        "fp_map_evaluations": "evaluations",
        "adj_map_evaluations": "evaluations",
        "bytes_allocated": "bytes",
        "nrt_allocations": "allocations",
        "efficiency": "time / numpy matmul time",
    }

    def setup_cache(self):
        return self.sweep()

    def measure(self, model, start, m):
        p, A, B, kw = setup_step(model, start, m)
        info = strict(gd_step, p, A, B, kw)[2]
        Z, Lam = info["z"], info["adjoint"]
        evals = info["fp_iters"] + info["adj_iters"] + 2
        step = lambda: gd_step(p, A, B, kw)  # noqa: E731
        alloc = allocations(step)
        refs = [
            (matmul(Z, A.T), evals),
            (matmul(p.X, B.T), 1),
            (matmul(Lam.T, Z), 1),
            (matmul(Lam.T, p.X), 1),
        ]
        return {
            "fp_map_evaluations": info["fp_iters"] + 1,
            "adj_map_evaluations": info["adj_iters"] + 1,
            "bytes_allocated": alloc["bytes"],
            "nrt_allocations": alloc["nrt"],
            "efficiency": cost_ratio(step, refs),
        }


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

    params = [MODELS, grid([True], [False, True])]
    param_names = ["model", "warm_start"]

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


class TrainIterations(Tracked):
    """Mean forward / adjoint iterations per step of the runs timed by
    ``Train`` (the warm-start saving); exact."""

    params = [MODELS, [False, True]]
    param_names = ["model", "warm_start"]
    tracks = {"fp_iters_per_step": "iterations", "adj_iters_per_step": "iterations"}

    def setup_cache(self):
        try:
            training()
        except NotImplementedError:
            return {}
        return self.sweep()

    def measure(self, model, warm_start):
        p, kw = setup_train(model, warm_start)
        h = run_training(p, **kw).history
        return {
            "fp_iters_per_step": float(np.mean(h["fp_iters"])),
            "adj_iters_per_step": float(np.mean(h["adj_iters"])),
        }


class TrainSufficientStats(Bench):
    """Linear model, ``steps = 20``: per-sample implicit steps against the
    sufficient-statistics step whose cost does not grow with ``n``
    (docs/theory.md §8); ``m = d = 32``. Default suite: the sufficient-statistics
    path only (the per-sample path is ``Train``'s, and at ``n = 16384`` one run
    takes seconds)."""

    params = [grid([16384], [2048, 16384, 131072]), grid([True], [False, True])]
    param_names = ["n", "sufficient_stats"]
    steps = 20

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


def _certificate_run(p, *, solver, lr, steps):
    """A callable that trains ``p`` for ``steps`` steps on the sufficient-statistics
    path with the compiled loop (statistics gathered once, here) and returns
    ``(evaluations, counts)``: the certificate's tallies
    (``deqbench._kernels.model.CERT_*``). ``solver="direct"`` certifies nothing
    beyond an invertible ``I - A``, so the same run with ``"picard"`` differs by
    the certificate's work alone. NotImplementedError on commits without the
    certificate."""
    try:
        from deqbench._kernels import model as _m  # noqa: PLC0415
        from deqbench._kernels import training as _k  # noqa: PLC0415
        from deqbench._training import prepare  # noqa: PLC0415

        _m.CERT_COUNTS, _k.gd_start  # noqa: B018
    except (ImportError, AttributeError) as exc:
        raise NotImplementedError(f"no solvability certificate: {exc}") from exc
    run = prepare(p.model, p.X, p.Y, p.A, p.B, u=None, activation="identity", solver=solver,
                  grad_solver=None, tol=TOL, max_iter=10_000, damping=1.0, neumann_terms=0,
                  anderson_history=5, anderson_ridge=1e-10, sufficient_stats=True, L_star=None,
                  record_every=None, stop_loss=None, spectral_every="auto")
    schedule = _k.Schedule(lr=lr, steps=steps, stop_loss=-1.0, divergence_factor=1e4,
                           warm_start=True, record_every=steps + 1,
                           spectral_every=run.spectral_every)

    def train():
        H = np.full((2, _m.NCOL), np.nan)
        A, B = run.A.copy(), run.B.copy()
        state = _k.gd_start(run.model, A, B, run.solve, run.stats, schedule, H)
        status, last, _ = _k.gd_run(run.model, A, B, run.solve, run.stats, schedule, state,
                                    steps + 1)
        if status != _k.MAX_STEPS:
            raise RuntimeError(f"certificate benchmark run failed: status={status}")
        return last + 1, state.sw.counts.copy()

    return train


class CertificateCost(Tracked):
    """What certifying Picard's fixed point costs on the sufficient-statistics
    path (docs/theory.md §3, certificate), per step of a 200-step run at
    ``m = d = 32``, counted and timed. Exact integers over the run's 201
    evaluations:

    * ``bound_products``: Collatz-Wielandt products ``|M| s`` (O(m^2) each);
    * ``squarings``: gemms of the repeated-squaring bound (``2 m^3`` each);
    * ``eig_solves``: eigendecompositions (the fallback, which also refreshes
      the reference norms that certify the next steps in O(m^2));

    ``work_fraction``: the certificate's flops per evaluation in units of
    the step's (``deqbench._training.certificate_flops`` over the
    docs/theory.md §8 step plus the ``2 m^3`` inverse of ``I - A``); and
    ``time_ratio``, the same timed: CPU time of the run certifying Picard
    over the same run with ``solver="direct"`` (which certifies nothing beyond
    an invertible ``I - A``), both timed alternately in one process
    (``cost_ratio``); 1 would be a free certificate.

    ``scale_A`` of the initialization: 0.5 (the suite's problems), 0.95
    (close to the boundary, where the cheap bounds must work harder).
    """

    params = [[0.5, 0.95]]
    param_names = ["scale_A"]
    tracks = {
        "bound_products": "evaluations",
        "squarings": "evaluations",
        "eig_solves": "evaluations",
        "work_fraction": "certificate flops / step flops",
        "time_ratio": "time with / without certificate",
    }
    steps = 200
    m = 32

    def setup_cache(self):
        return self.sweep()

    def measure(self, scale_A):
        from deqbench._kernels import model as _m  # noqa: PLC0415
        from deqbench._training import certificate_flops, step_flops  # noqa: PLC0415

        m = self.m
        p = problem("linear", m, 1024, rho=scale_A)
        run = _certificate_run(p, solver="picard", lr=LR["linear"], steps=self.steps)
        reference = _certificate_run(p, solver="direct", lr=LR["linear"], steps=self.steps)
        evals, counts = run()
        step = step_flops(m, m, 1024, True) + 2.0 * m**3
        return {
            "bound_products": int(counts[_m.CERT_MATVECS]),
            "squarings": int(counts[_m.CERT_SQUARINGS]),
            "eig_solves": int(counts[_m.CERT_BY_EIG]),
            "work_fraction": certificate_flops(m, counts) / (evals * step),
            "time_ratio": cost_ratio(run, [(reference, 1)]),
        }
