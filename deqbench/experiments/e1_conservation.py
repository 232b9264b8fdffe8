"""E1: the conservation law (docs/theory.md §5).

* GD on the linear DEQ at several step sizes, all run to the same horizon
  ``t = lr * steps``: the exact identity ``tr(Q_K - Q_0) = lr^2 sum_k ||g_k||^2``,
  ``Q_K - Q_0`` positive semidefinite, and the limit the theory gives:
  ``tr(Q_K - Q_0) / (lr (L_0 - L_K))`` lies in ``[1 / (1 + beta lr / 2),
  1 / (1 - beta lr / 2)]`` (``beta``: the Hessian norm measured along the path),
  so it tends to 1 as ``lr -> 0``; judged where ``lr beta < 2``, reported above.
* ``m = 1``: the parameters stay on the sphere ``(1 - a)^2 + ||b||^2 = const``
  up to the same drift (judged by the same window).
* Gradient flow: the drift is the integration error, below ``10 rtol``.
"""

from __future__ import annotations

import math

import numpy as np

from .. import data, theory
from .._flow import flow
from .._gradients import loss_and_grad
from .._training import train
from ._common import fmt, path_smoothness, pyplot

HORIZON = 10.0


def _problem(ctx, m, d, n, key):
    X, Y, _ = data.linear_teacher(n, d, m, noise=0.1, seed=ctx.seed(key, 0))
    A0, B0 = data.init_params(d, m, scale_A=0.5, scale_B=1.0, seed=ctx.seed(key, 1))
    return X, Y, A0, B0


def run(ctx) -> None:
    m, d, n = (8, 8, 512) if ctx.quick else (32, 32, 4096)
    lrs = [0.005, 0.01, 0.02, 0.05, 0.1] if ctx.quick else [0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
    X, Y, A0, B0 = _problem(ctx, m, d, n, 0)
    Q0 = theory.invariant(A0, B0)
    gd = {}
    for lr in lrs:
        steps = int(math.ceil(HORIZON / lr))
        res = train("linear", X, Y, A0, B0, lr=lr, steps=steps, record_every=1)
        h = res.history
        identity = lr**2 * float(np.sum(h["grad_norm"][:-1] ** 2))
        dQ = theory.invariant(res.A, res.B) - Q0
        psd = float(np.linalg.eigvalsh(0.5 * (dQ + dQ.T))[0] / np.linalg.norm(Q0, 2))
        bound = theory.drift_bound(lr, h["loss"][0], h["loss"][-1])
        gd[lr] = dict(res=res, identity=identity, psd=psd, bound=bound,
                      trace=float(h["drift_trace"][-1]))
        ctx.record(f"gd lr={lr}", {"model": "linear", "m": m, "d": d, "n": n, "lr": lr,
                                   "steps": steps},
                   status=res.status,
                   metrics={"final_drift_trace": gd[lr]["trace"], "lr2_sum_grad2": identity,
                            "drift_bound": bound, "min_eig_dQ_rel": psd,
                            "final_invariant_drift": float(h["invariant_drift"][-1]),
                            "loss0": float(h["loss"][0]), "final_loss": float(h["loss"][-1])},
                   history=h)
    rel = max(abs(g["trace"] - g["identity"]) / g["identity"] for g in gd.values())
    ctx.check("GD: tr(Q_K - Q_0) = lr^2 sum_k ||g_k||^2 exactly (§5), linear, "
              f"m=d={m}, {len(lrs)} step sizes",
              "relative gap ~ 1e-12", f"max relative gap {fmt(rel)}", rel <= 1e-8)
    worst_psd = min(g["psd"] for g in gd.values())
    ctx.check("GD: Q_K - Q_0 positive semidefinite", "lambda_min(Q_K - Q_0) >= 0",
              f"min lambda_min / ||Q_0|| = {fmt(worst_psd)}", worst_psd >= -1e-12)
    for lr, g in gd.items():
        steps = len(g["res"].history["loss"]) - 1
        beta = path_smoothness("linear", X, Y, A0, B0, lr=lr, steps=steps, points=2)
        h = g["res"].history
        g["lr_beta"] = lr * beta
        g["gain"] = g["trace"] / (lr * (h["loss"][0] - h["loss"][-1]))
        g["window"] = theory.drift_gain_bounds(lr, beta)
    judged = [lr for lr in lrs if gd[lr]["lr_beta"] < 2.0]
    ctx.check("GD: tr(Q_K - Q_0) / (lr (L_0 - L_K)) -> 1 as lr -> 0, inside "
              "[1/(1 + lr beta/2), 1/(1 - lr beta/2)] (§5); lr = " + ", ".join(map(fmt, lrs)),
              "windows " + ", ".join(
                  f"[{fmt(gd[lr]['window'][0], 3)}, {fmt(gd[lr]['window'][1], 3)}]"
                  if lr in judged else f"none (lr beta {fmt(gd[lr]['lr_beta'], 2)})"
                  for lr in lrs),
              "ratios " + ", ".join(fmt(gd[lr]["gain"], 4) for lr in lrs),
              bool(judged) and all(gd[lr]["window"][0] - 1e-9 <= gd[lr]["gain"]
                                   <= gd[lr]["window"][1] + 1e-9 for lr in judged))
    slope, _ = theory.loglog_fit(lrs, [gd[lr]["trace"] for lr in lrs])

    # --- m = 1: the sphere (1 - a)^2 + ||b||^2 = const
    d1 = 4
    X1, Y1, _ = data.linear_teacher(n, d1, 1, noise=0.1, seed=ctx.seed(1, 0))
    a0, b0 = data.init_params(d1, 1, scale_A=0.5, scale_B=1.0, seed=ctx.seed(1, 1))
    paths = {}
    for lr in (0.02, 0.3):
        A, B = a0.copy(), b0.copy()
        pts = []
        for _ in range(int(math.ceil(3.0 / lr)) + 1):
            pts.append((1.0 - A[0, 0], float(np.linalg.norm(B[0]))))
            _, gA, gB, _ = loss_and_grad("linear", X1, Y1, A, B, solver="direct")
            A, B = A - lr * gA, B - lr * gB
        res = train("linear", X1, Y1, a0, b0, lr=lr, steps=len(pts) - 1, record_every=1)
        paths[lr] = (np.array(pts), res)
        c = res.history["invariant_drift"]
        ctx.record(f"m=1 sphere lr={lr}", {"model": "linear", "m": 1, "d": d1, "n": n, "lr": lr,
                                           "steps": len(pts) - 1},
                   status=res.status, metrics={"max_sphere_drift": float(np.nanmax(c))},
                   history=res.history)
    gains = {}
    for lr, (pts, res) in paths.items():
        h = res.history
        sphere = (1.0 - res.A[0, 0]) ** 2 + float(np.sum(res.B**2))
        sphere0 = (1.0 - a0[0, 0]) ** 2 + float(np.sum(b0**2))
        beta = path_smoothness("linear", X1, Y1, a0, b0, lr=lr, steps=len(pts) - 1, points=2)
        gains[lr] = ((sphere - sphere0) / (lr * (h["loss"][0] - h["loss"][-1])),
                     theory.drift_gain_bounds(lr, beta), lr * beta)
    ctx.check("m = 1: (1-a)^2 + ||b||^2 drifts by lr (L_0 - L_K) x [1/(1 + lr beta/2), "
              "1/(1 - lr beta/2)] (§5), lr = 0.02, 0.3",
              "; ".join(f"lr beta {fmt(g[2], 2)}: [{fmt(g[1][0], 3)}, {fmt(g[1][1], 3)}]"
                        for g in gains.values()),
              "sphere drift / (lr (L_0 - L_K)) = " + ", ".join(fmt(g[0], 4)
                                                             for g in gains.values()),
              all(g[2] < 2.0 and g[1][0] - 1e-9 <= g[0] <= g[1][1] + 1e-9
                  for g in gains.values()))

    # --- gradient flow: drift at the integrator tolerance
    rtols = [1e-6, 1e-8, 1e-10]
    fl = {}
    for rtol in rtols:
        r = flow("linear", X, Y, A0, B0, t_end=HORIZON, rtol=rtol, atol=rtol * 1e-2,
                 spectral_every=1)
        fl[rtol] = r
        ctx.record(f"flow rtol={rtol}", {"model": "linear", "m": m, "d": d, "n": n,
                                         "rtol": rtol, "t_end": HORIZON},
                   status=r.status,
                   metrics={"max_invariant_drift": float(np.nanmax(r.history["invariant_drift"])),
                            "n_steps": r.n_steps, "n_rejected": r.n_rejected},
                   history=r.history)
    drifts = [float(np.nanmax(fl[r].history["invariant_drift"])) for r in rtols]
    ctx.check("gradient flow: Q constant; drift at the integrator tolerance",
              "max drift <= 10 rtol, rtol = " + ", ".join(fmt(r) for r in rtols),
              ", ".join(fmt(x) for x in drifts),
              all(x <= 10 * r for x, r in zip(drifts, rtols, strict=True)))

    # --- figure
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    ax = axes[0]
    ax.loglog(lrs, [gd[lr]["trace"] for lr in lrs], "o-", label="tr(Q_K - Q_0) measured")
    ax.loglog(lrs, [gd[lr]["identity"] for lr in lrs], "x", ms=9,
              label="lr^2 sum ||g_k||^2 (exact identity)")
    ax.loglog(lrs, [gd[lr]["bound"] for lr in lrs], "k--", label="bound 2 lr (L_0 - L_K)")
    ax.set_xlabel("step size lr")
    ax.set_ylabel(f"drift at t = lr K = {HORIZON:g}")
    ax.set_title(f"E1 GD drift vs step size (slope {slope:.2f})")
    ax.legend(fontsize=8)
    ax = axes[1]
    c0 = math.sqrt(float(theory.invariant(a0, b0)[0, 0]))
    th = np.linspace(0, math.pi / 2, 200)
    ax.plot(c0 * np.cos(th), c0 * np.sin(th), "k-", lw=0.8, label="initial sphere")
    for lr, (pts, _) in paths.items():
        ax.plot(pts[:, 0], pts[:, 1], ".-", ms=3, lw=0.8, label=f"GD lr={lr}")
    ax.set_aspect("equal")
    ax.set_xlabel("1 - a")
    ax.set_ylabel("||b||")
    ax.set_title("E1 m = 1: parameters stay on the sphere")
    ax.legend(fontsize=8)
    ax = axes[2]
    for rtol in rtols:
        h = fl[rtol].history
        ok = np.isfinite(h["invariant_drift"]) & (h["invariant_drift"] > 0)
        line = ax.semilogy(h["t"][ok], h["invariant_drift"][ok], label=f"flow rtol={rtol:g}")
        ax.axhline(rtol, color=line[0].get_color(), ls=":", lw=0.8)
    ax.set_xlabel("t")
    ax.set_ylabel("||Q(t) - Q(0)|| / ||Q(0)||")
    ax.set_title("E1 gradient flow drift (dotted: rtol)")
    ax.legend(fontsize=8)
    ctx.save(fig, "e1_conservation.png")
