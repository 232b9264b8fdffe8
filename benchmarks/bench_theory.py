"""Convergence against the theory (docs/theory.md §3, §5 and §7).

Every value is phrased so that LOWER IS BETTER:

* ``track_rate_ratio``: empirical per-step factor of ``L_k - L*`` divided by the
  predicted factor ``1 - lr mu (1 - beta lr / 2)`` (``theory.rate_check``); above
  1 means the theorem's bound was violated (a bug or a broken assumption).
* ``track_lr_beta``: ``lr`` times the Hessian norm (larger of start and end);
  above 1 the predicted factor does not apply (NaN rate ratio).
* ``track_drift_over_lr_gain``: ``tr(Q_K - Q_0) / (lr (L_0 - L_K))``; tends to 1
  as ``lr -> 0``, at most ``1 / (1 - lr beta / 2)`` (§5).
* ``track_fp_iters_over_predicted``: forward iterations per step over
  ``theory.predicted_fp_iters(rho(A_k), tol)`` along a cold-started run (§3).
* ``track_invariant_drift``: ``||Q_K - Q_0||_F / ||Q_0||_F`` (O(lr^2) per step
  for linear and single_index; the nonlinear model has no conservation law and
  its drift is reported, not judged).

Each class trains once per parameter set in ``setup_cache`` and the tracks read
the stored history.
"""

from __future__ import annotations

import numpy as np

from .common import grid, problem, strict, theory, training

#: case -> (model, activation, lr, steps); the first two are inside the theorem. The
#: step sizes give lr beta ~ 0.5 (beta: the Hessian norm along the run, measured at
#: its ends); at lr beta > 1 (0.1, 0.5, 0.2, 0.5 before) the GD factor does not apply.
CASES = {
    "linear": ("linear", "identity", 0.04, 400),
    "single_index-leaky_relu": ("single_index", "leaky_relu(0.2)", 0.13, 400),
    "single_index-identity": ("single_index", "identity", 0.065, 400),
    "single_index-tanh": ("single_index", "tanh", 0.15, 400),
    "nonlinear-tanh": ("nonlinear", "tanh", 0.1, 400),
}
TOL = 1e-12
M, N = 8, 2048


def summarize(case: str) -> dict:
    """Train one case; return the numbers every track reads."""
    th = theory()
    model, activation, lr, steps = CASES[case]
    p = problem(model, M, N, rho=0.5, activation=activation)
    L_star = 0.0  # realizable teachers: linear and single_index targets are exact
    extra = {}
    if model == "nonlinear":
        L_star = None
    if model == "linear":
        extra["sufficient_stats"] = False  # the per-sample path, so fixed points are solved
    res = strict(
        training(),
        model,
        p.X,
        p.Y,
        p.A,
        p.B,
        lr=lr,
        steps=steps,
        tol=TOL,
        warm_start=False,
        spectral_every=1,
        L_star=L_star,
        **p.model_kwargs(),
        **extra,
    )
    if res.status not in ("max_steps", "converged"):
        raise RuntimeError(f"{case}: training run failed: status={res.status!r}")
    h = res.history
    loss = np.asarray(h["loss"])
    out = {
        "invariant_drift": float(h["invariant_drift"][-1]),
        "drift_over_lr_gain": float(h["drift_trace"][-1] / (lr * (loss[0] - loss[-1]))),
        "fp_iters_over_predicted": float(
            np.mean(
                [
                    it / th.predicted_fp_iters(r, TOL)
                    for it, r in zip(h["fp_iters"], h["spectral_radius"], strict=True)
                    if np.isfinite(r) and 0.0 < r < 1.0
                ]
            )
        ),
        "rate_ratio": float("nan"),
        "lr_beta": float("nan"),
    }
    if model != "nonlinear":
        Q0 = th.invariant(p.A, p.B)
        kw = {}
        if hasattr(th, "smoothness"):  # the factor with the smoothness term (§7)
            beta = max(th.smoothness(model, p.X, p.Y, P, R, u=p.u, activation=activation)
                       for P, R in ((p.A, p.B), (res.A, res.B)))
            kw["smoothness"] = beta
            out["lr_beta"] = lr * beta
        pred = th.predicted_factor(
            model, p.X, Q0, lr, L0=loss[0], L_star=0.0, u=p.u, activation=activation, **kw
        )
        check = th.rate_check(loss, 0.0, pred, steps=h["step"])
        out["rate_ratio"] = float(check["ratio"])
    return out


class Convergence:
    """Training runs with ``m = d = 8``, ``n = 2048``, 400 steps, ``tol = 1e-12``."""

    params = [grid(["linear", "single_index-leaky_relu"], list(CASES))]
    param_names = ["case"]
    timeout = 600.0

    def setup_cache(self):
        try:
            training()
            theory()
        except NotImplementedError:
            return None
        return {case: summarize(case) for case in self.params[0]}

    def setup(self, cache, case):
        if cache is None:
            training()  # raises NotImplementedError: asv skips
            theory()
        if case not in cache:
            raise NotImplementedError(f"{case!r} not in this grid")

    def track_rate_ratio(self, cache, case):
        return cache[case]["rate_ratio"]

    track_rate_ratio.unit = "empirical/predicted"

    def track_drift_over_lr_gain(self, cache, case):
        return cache[case]["drift_over_lr_gain"]

    track_drift_over_lr_gain.unit = "ratio"

    def track_lr_beta(self, cache, case):
        return cache[case]["lr_beta"]

    track_lr_beta.unit = "lr x smoothness"

    def track_fp_iters_over_predicted(self, cache, case):
        return cache[case]["fp_iters_over_predicted"]

    track_fp_iters_over_predicted.unit = "ratio"

    def track_invariant_drift(self, cache, case):
        return cache[case]["invariant_drift"]

    track_invariant_drift.unit = "relative"
