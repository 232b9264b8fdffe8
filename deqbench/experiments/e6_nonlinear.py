"""E6: the nonlinear DEQ ``z = phi(A z + B x)``: how far ``Q`` drifts (docs/theory.md §5).

The conservation law needs the loss to depend on ``(A, B)`` only through
``W = (I - A)^{-1} B``, which fails for a nonlinear ``phi``. So along gradient
flow ``Q`` is conserved for the linear model (drift = integration error) but
not for the nonlinear one. Under gradient descent at a fixed horizon ``t = lr K``
the linear model's ``tr(Q_K - Q_0) / (lr (L_0 - L_K))`` lies in ``[1 / (1 + beta
lr / 2), 1 / (1 - beta lr / 2)]`` (``beta``: the Hessian norm along the path),
so its drift vanishes like ``lr``; the nonlinear drift tends to the flow's
(non-zero) drift as ``lr -> 0``. Teacher: a random contractive DEQ with the same ``phi``
(realizable, ``L* = 0``).
"""

from __future__ import annotations

import math

import numpy as np

from .. import theory
from .._flow import flow
from .._training import train
from ..sweep.run_functions import build_problem
from ._common import fmt, path_smoothness, pyplot

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
        fend = float(fr.history["invariant_drift"][-1])  # at t = HORIZON
        out[(model, act)] = (fr, fdrift, gd, (X, Y, A0, B0), fend)

    lin = out[("linear", "identity")]
    ctx.check("gradient flow: Q conserved for the linear DEQ, not for the nonlinear one",
              f"linear drift <= 10 rtol = {fmt(10 * RTOL)}; nonlinear drift >> rtol",
              "; ".join(f"{act}: {fmt(o[1])}" for (_, act), o in out.items()),
              lin[1] <= 10 * RTOL and all(o[1] > 1e3 * RTOL for k, o in out.items()
                                          if k[0] == "nonlinear"))
    X, Y, A0, B0 = lin[3]
    win = {}
    for lr in lrs:
        r = lin[2][lr][0]
        h = r.history
        beta = path_smoothness("linear", X, Y, A0, B0, lr=lr, steps=len(h["loss"]) - 1,
                               points=2, sufficient_stats=False)
        win[lr] = (lin[2][lr][2] / (lr * (h["loss"][0] - h["loss"][-1])),
                   theory.drift_gain_bounds(lr, beta), lr * beta)
    ctx.check(f"linear DEQ, GD at horizon t = {HORIZON:g}: tr(Q_K - Q_0) / (lr (L_0 - L_K)) "
              "in [1/(1 + lr beta/2), 1/(1 - lr beta/2)] -> 1 (§5), lr = "
              + ", ".join(map(fmt, lrs)),
              "; ".join(f"lr beta {fmt(w[2], 2)}: [{fmt(w[1][0], 3)}, {fmt(w[1][1], 3)}]"
                        for w in win.values()),
              ", ".join(fmt(w[0], 4) for w in win.values()),
              all(w[2] < 2.0 and w[1][0] - 1e-9 <= w[0] <= w[1][1] + 1e-9 for w in win.values()))
    # nonlinear: ||Q_K - Q_0|| at t = HORIZON approaches the flow's as lr decreases
    far = {k: [abs(o[2][lr][1] - o[4]) for lr in lrs]
           for k, o in out.items() if k[0] == "nonlinear"}
    ctx.check(f"nonlinear DEQ, GD at horizon t = {HORIZON:g}: the drift of Q does not vanish "
              "with lr; it approaches the flow's drift as lr decreases",
              "|drift_GD(lr) - drift_flow| decreasing in lr = " + ", ".join(map(fmt, lrs))
              + "; drift_flow > 1e3 rtol",
              "; ".join(f"{act}: " + ", ".join(fmt(x, 2) for x in f)
                        + f" (flow {fmt(out[k][4], 3)})" for k, f in far.items() for act in [k[1]]),
              all(f[0] > f[1] > f[2] and out[k][4] > 1e3 * RTOL for k, f in far.items()))
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
    for (model, act), (fr, *_rest) in out.items():
        h = fr.history
        ok = np.isfinite(h["invariant_drift"]) & (h["invariant_drift"] > 0)
        ax.semilogy(h["t"][ok], h["invariant_drift"][ok], label=f"flow {model} {act}")
    ax.axhline(RTOL, color="k", ls=":", lw=0.8, label="rtol")
    ax.set_xlabel("t")
    ax.set_ylabel("||Q(t) - Q(0)|| / ||Q(0)||")
    ax.set_title("E6 gradient flow: Q drift")
    ax.legend(fontsize=7)
    ax = axes[1]
    for (model, act), (_, fdrift, gd, *_rest) in out.items():
        line = ax.loglog(lrs, [gd[lr][1] for lr in lrs], "o-", label=f"GD {model} {act}")
        ax.axhline(fdrift, color=line[0].get_color(), ls=":", lw=0.8)
    ax.set_xlabel("lr")
    ax.set_ylabel(f"drift at t = lr K = {HORIZON:g}")
    ax.set_title("E6 GD drift vs lr (dotted: the flow's drift)")
    ax.legend(fontsize=7)
    ctx.save(fig, "e6_nonlinear_drift.png")
