"""E6: the nonlinear DEQ ``z = phi(A z + B x)``: how far ``Q`` drifts (docs/theory.md §5).

The conservation law needs the loss to depend on ``(A, B)`` only through
``W = (I - A)^{-1} B``, which fails for a nonlinear ``phi``. So along gradient
flow ``Q`` is conserved for the linear model (drift = integration error) but
not for the nonlinear one, and under gradient descent at a fixed horizon
``t = lr K`` the linear drift falls like ``lr`` while the nonlinear drift tends
to the flow's drift. Teacher: a random contractive DEQ with the same ``phi``
(realizable, ``L* = 0``).
"""

from __future__ import annotations

import math

import numpy as np

from .._flow import flow
from .._training import train
from ..sweep.run_functions import build_problem
from ._common import fmt, pyplot

HORIZON = 10.0
RTOL = 1e-6


def run(ctx) -> None:
    m, d, n = (8, 8, 256) if ctx.quick else (16, 16, 1024)
    lrs = (0.1, 0.05, 0.025)
    cases = [("linear", "identity"), ("nonlinear", "tanh"), ("nonlinear", "leaky_relu(0.2)")]
    out = {}
    for model, act in cases:
        p = {"model": model, "activation": act, "m": m, "d": d, "n": n, "noise": 0.0,
             "scale_A": 0.5, "scale_B": 1.0, "teacher_scale": 0.5}
        X, Y, A0, B0 = build_problem(p, ctx.seed(0))
        L_star = None if model == "linear" else 0.0
        fr = flow(model, X, Y, A0, B0, t_end=HORIZON, rtol=RTOL, atol=RTOL * 1e-2,
                  activation=act, L_star=L_star, spectral_every=1)
        gd = {}
        for lr in lrs:
            steps = int(math.ceil(HORIZON / lr))
            r = train(model, X, Y, A0, B0, lr=lr, steps=steps, activation=act, L_star=L_star,
                      record_every=1, sufficient_stats=False)
            h = r.history
            ident = lr**2 * float(np.sum(h["grad_norm"][:-1] ** 2))
            gd[lr] = (r, float(h["invariant_drift"][-1]), float(h["drift_trace"][-1]), ident)
            ctx.record(f"gd {model} {act} lr={lr}",
                       {"model": model, "activation": act, "m": m, "d": d, "n": n, "lr": lr,
                        "steps": steps},
                       status=r.status,
                       metrics={"final_invariant_drift": gd[lr][1],
                                "final_drift_trace": gd[lr][2], "lr2_sum_grad2": ident,
                                "final_loss": float(h["loss"][-1])},
                       history=h)
        fdrift = float(np.nanmax(fr.history["invariant_drift"]))
        ctx.record(f"flow {model} {act}", {"model": model, "activation": act, "m": m, "d": d,
                                           "n": n, "t_end": HORIZON, "rtol": RTOL},
                   status=fr.status, metrics={"max_invariant_drift": fdrift},
                   history=fr.history)
        out[(model, act)] = (fr, fdrift, gd)

    lin = out[("linear", "identity")]
    ctx.check("gradient flow: Q conserved for the linear DEQ, not for the nonlinear one",
              f"linear drift <= 10 rtol = {fmt(10 * RTOL)}; nonlinear drift >> rtol",
              "; ".join(f"{act}: {fmt(o[1])}" for (_, act), o in out.items()),
              lin[1] <= 10 * RTOL and all(o[1] > 1e3 * RTOL for k, o in out.items()
                                          if k[0] == "nonlinear"))
    ratio = {k: o[2][lrs[0]][1] / o[2][lrs[-1]][1] for k, o in out.items()}
    ctx.check(f"GD at horizon t = {HORIZON:g}: drift(lr={lrs[0]}) / drift(lr={lrs[-1]})",
              f"linear ~ {lrs[0] / lrs[-1]:g} (O(lr)); nonlinear ~ 1 (O(1))",
              "; ".join(f"{act}: {fmt(r)}" for (_, act), r in ratio.items()),
              2.0 < ratio[("linear", "identity")] < 8.0
              and all(r < 1.5 for k, r in ratio.items() if k[0] == "nonlinear"))
    gaps = {k: abs(o[2][lrs[-1]][2] - o[2][lrs[-1]][3]) / o[2][lrs[-1]][3]
            for k, o in out.items()}
    ctx.check("nonlinear DEQ: how far Q drifts (the law does not hold)",
              "not predicted",
              "; ".join(f"{act}: ||Q_K - Q_0|| / ||Q_0|| = {fmt(o[2][lrs[-1]][1])}, "
                        f"|tr drift - lr^2 sum ||g||^2| / (lr^2 sum ||g||^2) = {fmt(gaps[k])}"
                        for k, o in out.items() for act in [k[1]]
                        if k[0] == "nonlinear")
              + f" (linear: {fmt(gaps[('linear', 'identity')])})",
              None)

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    for (model, act), (fr, _, _) in out.items():
        h = fr.history
        ok = np.isfinite(h["invariant_drift"]) & (h["invariant_drift"] > 0)
        ax.semilogy(h["t"][ok], h["invariant_drift"][ok], label=f"flow {model} {act}")
    ax.axhline(RTOL, color="k", ls=":", lw=0.8, label="rtol")
    ax.set_xlabel("t")
    ax.set_ylabel("||Q(t) - Q(0)|| / ||Q(0)||")
    ax.set_title("E6 gradient flow: Q drift")
    ax.legend(fontsize=7)
    ax = axes[1]
    for (model, act), (_, fdrift, gd) in out.items():
        line = ax.loglog(lrs, [gd[lr][1] for lr in lrs], "o-", label=f"GD {model} {act}")
        ax.axhline(fdrift, color=line[0].get_color(), ls=":", lw=0.8)
    ax.set_xlabel("lr")
    ax.set_ylabel(f"drift at t = lr K = {HORIZON:g}")
    ax.set_title("E6 GD drift vs lr (dotted: the flow's drift)")
    ax.legend(fontsize=7)
    ctx.save(fig, "e6_nonlinear_drift.png")
