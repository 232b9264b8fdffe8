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
  for linear and readout; the nonlinear model has no conservation law and
  its drift is reported, not judged).

``Initialization``, ``Recovery`` and ``InexactGradients`` track the claims of
E8-E10 of ``deqbench reproduce`` (docs/theory.md §9-§11) at the quick size: each value
is a measured quantity over its bound (above 1: the prediction failed) or, for the
inexact gradients, the measured first-order drift and rate (no bound).

Each class trains once per parameter set in ``setup_cache`` and the tracks read
the stored history.
"""

from __future__ import annotations

import numpy as np

from .common import Tracked, grid, problem, strict, theory, training

#: case -> (model, activation, lr, steps); the first two are inside the theorem. The
#: step sizes give lr beta ~ 0.5 (beta: the Hessian norm along the run, measured at
#: its ends); at lr beta > 1 (0.1, 0.5, 0.2, 0.5 before) the GD factor does not apply.
CASES = {
    "linear": ("linear", "identity", 0.04, 400),
    "readout-leaky_relu": ("readout", "leaky_relu(0.2)", 0.13, 400),
    "readout-identity": ("readout", "identity", 0.065, 400),
    "readout-tanh": ("readout", "tanh", 0.15, 400),
    "nonlinear-tanh": ("nonlinear", "tanh", 0.1, 400),
}
TOL = 1e-12
M, N = 8, 2048


def summarize(case: str) -> dict:
    """Train one case; return the numbers every track reads."""
    th = theory()
    model, activation, lr, steps = CASES[case]
    p = problem(model, M, N, rho=0.5, activation=activation)
    L_star = 0.0  # realizable teachers: linear and readout targets are exact
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

    params = [grid(["linear", "readout-leaky_relu"], list(CASES))]
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


def experiment_rows(name: str) -> dict:
    """``{label: row}`` of one ``deqbench reproduce`` experiment at its quick size
    (``NotImplementedError`` on commits without it: asv skips)."""
    import tempfile

    theory()  # skips on commits before deqbench.theory
    try:
        from deqbench.experiments import EXPERIMENTS, run_experiment  # noqa: PLC0415
    except ImportError as exc:
        raise NotImplementedError(f"deqbench.experiments is not available: {exc}") from None
    if name not in EXPERIMENTS:
        raise NotImplementedError(f"{name} is not an experiment of this commit")
    with tempfile.TemporaryDirectory() as tmp:
        res = run_experiment(name, True, tmp)
    if res["error"]:
        raise RuntimeError(f"{name}: {res['error']}")
    return {r["label"]: r for r in res["rows"]}


class Initialization(Tracked):
    """E8 (docs/theory.md §9): the initialization condition, ``lambda_min(Q_0)`` from
    about 1 down to a near-singular ``I - A_0`` (quick size). Lower is better; above 1
    (the ratios) or above 0.25 (the exponent error) the prediction failed."""

    params = [["quick"]]
    param_names = ["size"]
    tracks = {"beta_bound_over_measured": "ratio", "steps_over_predicted": "ratio",
              "steps_exponent_error": "exponent", "flow_envelope_ratio": "ratio",
              "sigma_min_bound_over_measured": "ratio"}

    def setup_cache(self):
        return self.sweep()

    def measure(self, size):
        rows = experiment_rows("E8").values()
        gd = [r for r in rows if r["label"].endswith(" GD")]
        fl = [r for r in rows if r["label"].endswith(" flow")]
        small = [r for r in gd if r["eps"] < 1.0]  # as E8: where the B-block dominates beta
        slope, _ = theory().loglog_fit([r["lambda_min_Q0"] for r in small],
                                       [r["steps"] for r in small])
        return {
            "beta_bound_over_measured": max(r["beta_lower_bound"] / r["beta0"] for r in gd),
            "steps_over_predicted": max(r["steps"] / r["predicted_steps"] for r in gd),
            "steps_exponent_error": abs(slope + 1.0),
            "flow_envelope_ratio": max(r["envelope_worst_ratio"] for r in fl),
            "sigma_min_bound_over_measured": max(1.0 / r["min_sigma_min_over_lower"]
                                                 for r in fl),
        }


class Recovery(Tracked):
    """E9 (docs/theory.md §10): read-out DEQ teacher recovery ``w = W^T u -> theta`` and
    the noisy identity link (``w -> w_LS``); ratios above 1 break the bound."""

    params = [["quick"]]
    param_names = ["size"]
    tracks = {"recovery_ratio": "ratio", "noisy_recovery_ratio": "ratio",
              "index_error": "norm"}

    def setup_cache(self):
        return self.sweep()

    def measure(self, size):
        rows = experiment_rows("E9")
        real = [rows["readout identity"], rows["readout smooth_leaky(0.5)"]]
        return {
            "recovery_ratio": max(r["max_recovery_ratio"] for r in real),
            "noisy_recovery_ratio": rows["readout identity noisy"]["max_recovery_ratio"],
            "index_error": max(r["index_error"] for r in real),
        }


class InexactGradients(Tracked):
    """E10 (docs/theory.md §11): first-order drift of ``Q`` (relative to
    ``lr^2 sum ||d_k||^2``; 0 to rounding for exact gradients) and fitted per-step
    factor over the exact one, per adjoint."""

    params = [["exact", "jfb", "neumann(1)", "neumann(4)"]]
    param_names = ["grad_solver"]
    tracks = {"first_order_drift": "relative", "factor_over_exact": "ratio"}

    def setup_cache(self):
        try:
            rows = experiment_rows("E10")
        except NotImplementedError:
            return {}  # setup raises NotImplementedError: asv skips
        exact = rows["linear grad_solver=exact"]["fitted_factor"]
        out = {}
        for k in self.params[0]:
            r = rows[f"linear grad_solver={k}"]
            out[(k,)] = {"first_order_drift": r["drift_identity_gap"],
                         "factor_over_exact": r["fitted_factor"] / exact}
        return out
