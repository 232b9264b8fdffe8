"""E4: conditioning of ``I - A`` during training (docs/theory.md §6).

Along gradient descent on the linear DEQ, ``Q_k`` only grows (``Q_k - Q_0`` is
PSD), so at every step

* ``sigma_max(I - A_k)^2 <= lambda_max(Q_k) <= lambda_max(Q_0) + tr(Q_k - Q_0)``;
* ``sigma_min(I - A_k)^2 >= lambda_min(Q_k) / (1 + ||W_k||^2) >= lambda_min(Q_0) /
  (1 + (||W_hat|| + sqrt(2 (L_k - L*) / lmin))^2)``, where ``W_hat`` is the
  least-squares solution and ``L - L* = tr((W - W_hat) Sigma (W - W_hat)^T) / 2``.

Both bounds are computed from the recorded history alone and compared with the
measured singular values.
"""

from __future__ import annotations

import math

import numpy as np

from .. import data, theory
from .._training import train
from ._common import fmt, pyplot


def run(ctx) -> None:
    m, d, n = (16, 16, 1024) if ctx.quick else (64, 64, 8192)
    lr, steps = 0.05, 400 if ctx.quick else 1000
    X, Y, _ = data.linear_teacher(n, d, m, noise=0.1, seed=ctx.seed(0, 0))
    W_hat, _ = theory.least_squares(X, Y)
    w_hat = float(np.linalg.norm(W_hat, 2))
    ev = np.linalg.eigvalsh(X.T @ X / n)
    lmin = float(ev[0])
    out = {}
    for j, scale_A in enumerate((0.0, 0.9)):
        A0, B0 = data.init_params(d, m, scale_A=scale_A, scale_B=1.0, seed=ctx.seed(1, j))
        Q0 = theory.invariant(A0, B0)
        q_ev = np.linalg.eigvalsh(Q0)
        res = train("linear", X, Y, A0, B0, lr=lr, steps=steps, record_every=1,
                    spectral_every=1)
        h = res.history
        upper = np.sqrt(q_ev[-1] + np.maximum(h["drift_trace"], 0.0))
        w_bound = w_hat + np.sqrt(2.0 * np.maximum(h["excess_loss"], 0.0) / lmin)
        lower = np.sqrt(q_ev[0] / (1.0 + w_bound**2))
        WK = np.linalg.solve(np.eye(m) - res.A, res.B)
        lo_K, up_K = theory.conditioning_bounds(theory.invariant(res.A, res.B), WK)
        s = np.linalg.svd(np.eye(m) - res.A, compute_uv=False)
        ok = bool(np.all(h["sigma_max"] <= upper * (1 + 1e-12))
                  and np.all(h["sigma_min"] >= lower * (1 - 1e-12))
                  and lo_K <= s[-1] * (1 + 1e-12) and s[0] <= up_K * (1 + 1e-12))
        out[scale_A] = (h, upper, lower, ok, (lo_K, s[-1], s[0], up_K))
        ctx.record(f"conditioning scale_A={scale_A}",
                   {"model": "linear", "m": m, "d": d, "n": n, "lr": lr, "steps": steps,
                    "scale_A": scale_A},
                   status=res.status,
                   metrics={"min_sigma_min": float(np.min(h["sigma_min"])),
                            "min_lower_bound": float(np.min(lower)),
                            "max_sigma_max": float(np.max(h["sigma_max"])),
                            "max_upper_bound": float(np.max(upper)),
                            "final_cond": float(s[0] / s[-1])},
                   history={"step": h["step"], "sigma_min": h["sigma_min"],
                            "sigma_max": h["sigma_max"], "lower_bound": lower,
                            "upper_bound": upper, "excess_loss": h["excess_loss"]})
    ctx.check(f"sigma(I - A_k) within the invariant's bounds at every step (§6), linear "
              f"m=d={m}, ||A_0|| = 0 and 0.9",
              "lower_k <= sigma_min, sigma_max <= upper_k; min lower bound "
              + ", ".join(fmt(np.min(o[2])) for o in out.values()),
              "min sigma_min " + ", ".join(fmt(np.min(o[0]["sigma_min"])) for o in out.values())
              + "; max sigma_max / upper " + ", ".join(
                  fmt(np.max(o[0]["sigma_max"] / o[1]), 3) for o in out.values()),
              all(o[3] for o in out.values()))
    worst_cond = max(float(np.max(o[0]["sigma_max"] / o[0]["sigma_min"])) for o in out.values())
    bound_cond = max(float(np.max(o[1] / o[2])) for o in out.values())
    ctx.check("I - A stays invertible and well-conditioned for all steps",
              f"cond(I - A) <= {fmt(bound_cond)} (ratio of the bounds)",
              f"max cond(I - A) = {fmt(worst_cond)}", worst_cond <= bound_cond and math.isfinite(
                  worst_cond))

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (scale_A, (h, upper, lower, _, _)) in zip(axes, out.items(), strict=True):
        ax.plot(h["step"], h["sigma_max"], label="sigma_max(I - A)")
        ax.plot(h["step"], upper, "--", label="sqrt(lmax(Q_0) + tr(Q_k - Q_0))")
        ax.plot(h["step"], h["sigma_min"], label="sigma_min(I - A)")
        ax.plot(h["step"], lower, "--", label="sqrt(lmin(Q_0) / (1 + ||W||^2 bound))")
        ax.set_ylim(0, None)
        ax.set_xlabel("step")
        ax.set_title(f"E4 conditioning, m=d={m}, ||A_0||_2 = {scale_A}")
        ax.legend(fontsize=7)
    ctx.save(fig, "e4_conditioning.png")
