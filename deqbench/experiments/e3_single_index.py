"""E3: single-index DEQ (docs/theory.md §7).

Realizable teacher ``y = sigma(theta . x)`` (``L* = 0``). Leaky ReLU (and the
identity link) satisfy ``gamma <= sigma' <= Gamma`` with ``gamma > 0``: the
loss must fall at least as fast as ``q = 1 - lr mu``,
``mu = 2 gamma^4 lmin^2 ||u||^2 / (Gamma^2 lmax q_Q)`` (loose but valid). tanh
and ReLU are outside the theorem (``gamma = 0``): what happens is reported.
"""

from __future__ import annotations

import numpy as np

from .. import data, theory
from .._training import train
from ._common import fmt, pyplot
from .e2_linear import envelope_ok

INSIDE = ("identity", "leaky_relu(0.2)")
OUTSIDE = ("tanh", "relu")


def run(ctx) -> None:
    m, d, n = (8, 8, 512) if ctx.quick else (32, 32, 2048)
    lr, steps = 0.2, 500 if ctx.quick else 1500
    A0, B0 = data.init_params(d, m, scale_A=0.5, scale_B=1.0, seed=ctx.seed(0, 1))
    Q0 = theory.invariant(A0, B0)
    runs = {}
    for j, act in enumerate(INSIDE + OUTSIDE):
        X, y, _ = data.single_index_teacher(n, d, activation=act, seed=ctx.seed(0, 0))
        res = train("single_index", X, y, A0, B0, lr=lr, steps=steps, activation=act,
                    L_star=0.0, record_every=1, sufficient_stats=False)
        h = res.history
        L0 = float(h["loss"][0])
        q = theory.predicted_factor("single_index", X, Q0, lr, L0=L0, L_star=0.0,
                                    activation=act)
        emp = theory.empirical_factor(h["loss"], 0.0, h["step"])
        ok, worst = envelope_ok(h["loss"], L0, L0, q, h["step"])
        runs[act] = (res, q, emp, ok, worst)
        ctx.record(f"single_index {act}", {"model": "single_index", "activation": act, "m": m,
                                           "d": d, "n": n, "lr": lr, "steps": steps},
                   status=res.status,
                   metrics={"predicted_factor": q, "empirical_factor": emp,
                            "envelope_worst_ratio": worst, "loss0": L0,
                            "final_loss": float(h["loss"][-1]),
                            "max_invariant_drift": float(np.nanmax(h["invariant_drift"]))},
                   history=h)
        del j
    inside = [runs[a] for a in INSIDE]
    ctx.check(f"single-index, link inside the theorem ({', '.join(INSIDE)}), GD lr={lr}: "
              "L_k <= L_0 q^k and fitted factor <= q",
              "q = " + ", ".join(fmt(r[1], 4) for r in inside),
              "fitted " + ", ".join(fmt(r[2], 4) for r in inside) + "; final loss "
              + ", ".join(fmt(r[0].history["loss"][-1]) for r in inside),
              all(r[3] and (not np.isfinite(r[2]) or r[2] <= r[1]) for r in inside))
    outside = [runs[a] for a in OUTSIDE]
    ctx.check(f"single-index outside the theorem ({', '.join(OUTSIDE)}; gamma = 0): "
              "no rate predicted",
              "no guarantee (q = 1)",
              "; ".join(f"{a}: {r[0].status}, loss {fmt(r[0].history['loss'][0])} -> "
                        f"{fmt(r[0].history['loss'][-1])}, fitted {fmt(r[2], 4)}"
                        for a, r in zip(OUTSIDE, outside, strict=True)), None)
    drift = max(float(np.nanmax(r[0].history["invariant_drift"])) for r in runs.values())
    ctx.check("single-index: Q drift only O(lr) for every link (§5 holds for any sigma)",
              "tr drift <= lr^2 sum ||g||^2 identity",
              f"max relative drift {fmt(drift)}",
              all(abs(r[0].history["drift_trace"][-1] - lr**2 * float(
                  np.sum(r[0].history["grad_norm"][:-1] ** 2)))
                  <= 1e-8 * max(r[0].history["drift_trace"][-1], 1e-300)
                  for r in runs.values()))

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for act, (res, q, emp, *_rest) in runs.items():
        h = res.history
        line = ax.semilogy(h["step"], h["loss"], label=f"{act} (fitted {emp:.4f})")
        if act in INSIDE:
            ax.semilogy(h["step"], h["loss"][0] * q ** h["step"].astype(float), "--",
                        color=line[0].get_color(), lw=0.8, label=f"{act} envelope q={q:.4f}")
    ax.set_ylim(1e-16, None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (L* = 0)")
    ax.set_title(f"E3 single-index DEQ, m=d={m}, lr={lr}; dashed: predicted envelope")
    ax.legend(fontsize=7)
    ctx.save(fig, "e3_single_index.png")
