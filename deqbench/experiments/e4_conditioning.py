"""E4: conditioning of ``I - A`` during training (docs/theory.md §6).

Along gradient descent on the linear DEQ, ``Q_k`` only grows (``Q_k - Q_0`` is
PSD), so at every step

* ``sigma_max(I - A_k)^2 <= lambda_max(Q_k) <= lambda_max(Q_0) + tr(Q_k - Q_0)``;
* ``sigma_min(I - A_k)^2 >= lambda_min(Q_k) / (1 + ||W_k||^2) >= lambda_min(Q_0) /
  (1 + (||W_hat|| + sqrt(2 (L_k - L*) / lmin))^2)``, where ``W_hat`` is the
  least-squares solution and ``L - L* = tr((W - W_hat) Sigma (W - W_hat)^T) / 2``.

Both bounds are computed from the recorded history alone and compared with the
measured singular values, from ``||A_0|| = 0``, ``0.9``, and from a near-singular
``I - A_0 = eps V`` (``V`` orthogonal, ``B_0 = eps G``, so ``lambda_min(Q_0) ~
eps^2``) where the lower bound is nearly 0 and the step must be small
(``lr = 0.5 / beta``, ``beta`` along the path): the report says how far the
loss gets there.
"""

from __future__ import annotations

import numpy as np

from .. import data, theory
from .._flow import flow
from .._training import train
from ._common import fmt, path_smoothness, pyplot, safe_lr, sigma_min_lower

EPS = 1e-2  # I - A_0 = EPS V in the near-singular case


def run(ctx) -> None:
    m, d, n = (16, 16, 1024) if ctx.quick else (64, 64, 8192)
    lr, steps = 0.05, 400 if ctx.quick else 1000
    X, Y, _ = data.linear_teacher(n, d, m, noise=0.1, seed=ctx.seed(0, 0))
    W_hat, _ = theory.least_squares(X, Y)
    w_hat = float(np.linalg.norm(W_hat, 2))
    ev = np.linalg.eigvalsh(X.T @ X / n)
    lmin = float(ev[0])
    out = {}
    rng = ctx.rng(2)
    V = np.linalg.qr(rng.standard_normal((m, m)))[0]
    inits = {
        0.0: data.init_params(d, m, scale_A=0.0, scale_B=1.0, seed=ctx.seed(1, 0)),
        0.9: data.init_params(d, m, scale_A=0.9, scale_B=1.0, seed=ctx.seed(1, 1)),
        "near-singular": (np.eye(m) - EPS * V,
                          EPS * rng.standard_normal((m, d)) / np.sqrt(d)),
    }
    lrs, lr_beta = {}, {}
    for scale_A, (A0, B0) in inits.items():
        lrs[scale_A] = lr if scale_A != "near-singular" else safe_lr(
            "linear", X, Y, A0, B0, fraction=0.5, steps=steps)[0]
        Q0 = theory.invariant(A0, B0)
        q_ev = np.linalg.eigvalsh(Q0)
        # the exact solve: the bounds are about the GD path, not about a solver, and
        # the near-singular start has rho(A_0) ~ 1, where Picard cannot evaluate it
        res = train("linear", X, Y, A0, B0, lr=lrs[scale_A], steps=steps, record_every=1,
                    spectral_every=1, solver="direct")
        h = res.history
        upper = np.sqrt(q_ev[-1] + np.maximum(h["drift_trace"], 0.0))
        lower = sigma_min_lower(q_ev[0], w_hat, h["excess_loss"], lmin)
        WK = np.linalg.solve(np.eye(m) - res.A, res.B)
        lo_K, up_K = theory.conditioning_bounds(theory.invariant(res.A, res.B), WK)
        s = np.linalg.svd(np.eye(m) - res.A, compute_uv=False)
        ok = bool(np.all(h["sigma_max"] <= upper * (1 + 1e-12))
                  and np.all(h["sigma_min"] >= lower * (1 - 1e-12))
                  and lo_K <= s[-1] * (1 + 1e-12) and s[0] <= up_K * (1 + 1e-12))
        # the bounds need no step-size condition (Q_k - Q_0 is PSD for any lr): lr beta
        # is reported, not required
        lr_beta[scale_A] = lrs[scale_A] * path_smoothness(
            "linear", X, Y, A0, B0, lr=lrs[scale_A], steps=steps, points=2)
        out[scale_A] = (h, upper, lower, ok, (lo_K, s[-1], s[0], up_K), q_ev[0], res.status)
        ctx.record(f"conditioning scale_A={scale_A}",
                   {"model": "linear", "m": m, "d": d, "n": n, "lr": lrs[scale_A],
                    "steps": steps,
                    "scale_A": scale_A},
                   status=res.status,
                   metrics={"min_sigma_min": float(np.min(h["sigma_min"])),
                            "min_lower_bound": float(np.min(lower)),
                            "max_sigma_max": float(np.max(h["sigma_max"])),
                            "max_upper_bound": float(np.max(upper)),
                            "final_cond": float(s[0] / s[-1]),
                            "lr_beta": lr_beta[scale_A]},
                   history={"step": h["step"], "sigma_min": h["sigma_min"],
                            "sigma_max": h["sigma_max"], "lower_bound": lower,
                            "upper_bound": upper, "excess_loss": h["excess_loss"]})
    regular = [out[0.0], out[0.9]]
    ctx.check(f"sigma(I - A_k) within the invariant's bounds at every step (§6), linear "
              f"m=d={m}, ||A_0|| = 0 and 0.9, lr = {lr} (lr beta {fmt(lr_beta[0.0], 3)}, "
              f"{fmt(lr_beta[0.9], 3)}; the bounds hold for any lr)",
              "lower_k <= sigma_min, sigma_max <= upper_k; min lower bound "
              + ", ".join(fmt(np.min(o[2])) for o in regular),
              "min sigma_min " + ", ".join(fmt(np.min(o[0]["sigma_min"])) for o in regular)
              + "; max sigma_max / upper " + ", ".join(
                  fmt(np.max(o[0]["sigma_max"] / o[1]), 3) for o in regular),
              all(o[3] for o in regular))
    # gradient flow: Q is constant, so the bounds hold with Q_0 for all time
    A0, B0 = inits[0.9]
    q_ev = np.linalg.eigvalsh(theory.invariant(A0, B0))
    fr = flow("linear", X, Y, A0, B0, t_end=40.0, rtol=1e-9, atol=1e-12, spectral_every=1,
              solver="direct")
    hf = fr.history
    lower_f = sigma_min_lower(q_ev[0], w_hat, hf["excess_loss"], lmin)
    upper_f = np.sqrt(q_ev[-1]) * (1 + 1e-7)  # Q(t) = Q_0 up to the integration error
    ok_f = bool(np.all(hf["sigma_min"] >= lower_f * (1 - 1e-7))
                and np.all(hf["sigma_max"] <= upper_f))
    ctx.record("conditioning flow scale_A=0.9", {"model": "linear", "m": m, "d": d, "n": n,
                                                 "t_end": 40.0, "scale_A": 0.9},
               status=fr.status,
               metrics={"min_sigma_min": float(np.min(hf["sigma_min"])),
                        "min_lower_bound": float(np.min(lower_f)),
                        "max_sigma_max": float(np.max(hf["sigma_max"]))},
               history={"t": hf["t"], "sigma_min": hf["sigma_min"],
                        "sigma_max": hf["sigma_max"], "lower_bound": lower_f})
    ctx.check("gradient flow (||A_0|| = 0.9, t to 40): sqrt(lmin(Q_0) / (1 + ||W(t)||^2 bound)) "
              "<= sigma_min(I - A(t)), sigma_max <= sqrt(lmax(Q_0)) for all t (§6)",
              f"min lower bound {fmt(np.min(lower_f))}; upper {fmt(np.sqrt(q_ev[-1]))}",
              f"{fr.status}; min sigma_min {fmt(np.min(hf['sigma_min']))}, max sigma_max "
              f"{fmt(np.max(hf['sigma_max']))}; excess {fmt(hf['excess_loss'][0])} -> "
              f"{fmt(hf['excess_loss'][-1])}",
              ok_f and fr.status == "finished")
    h, upper, lower, ok, _, lq, status = out["near-singular"]
    ctx.check(f"near-singular start I - A_0 = {EPS:g} V, lambda_min(Q_0) = {fmt(lq)}: "
              "sigma_min(I - A_k) >= sqrt(lambda_min(Q_0) / (1 + ||W_k||^2 bound)) and "
              "sigma_max <= upper at every step (§6)",
              f"min lower bound {fmt(np.min(lower))}; lr = 0.5/beta = "
              f"{fmt(lrs['near-singular'], 3)}",
              f"{status}; min sigma_min {fmt(np.min(h['sigma_min']))} (min sigma_min / lower "
              f"{fmt(np.min(h['sigma_min'] / lower), 3)}); excess loss "
              f"{fmt(h['excess_loss'][0])} -> {fmt(h['excess_loss'][-1])} in {steps} steps",
              ok and status in ("max_steps", "converged"))

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for ax, (scale_A, (h, upper, lower, *_rest)) in zip(axes, out.items(), strict=True):
        ax.plot(h["step"], h["sigma_max"], label="sigma_max(I - A)")
        ax.plot(h["step"], upper, "--", label="sqrt(lmax(Q_0) + tr(Q_k - Q_0))")
        ax.plot(h["step"], h["sigma_min"], label="sigma_min(I - A)")
        ax.plot(h["step"], lower, "--", label="sqrt(lmin(Q_0) / (1 + ||W||^2 bound))")
        ax.set_ylim(0, None)
        ax.set_xlabel("step")
        ax.set_title(f"E4 conditioning, m=d={m}, A_0: {scale_A}")
        ax.legend(fontsize=7)
    ctx.save(fig, "e4_conditioning.png")
