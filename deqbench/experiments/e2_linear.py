"""E2: linear convergence of the linear DEQ (docs/theory.md §7).

Gradient descent on the squared loss, several ``(m, d)``: the excess loss
``L_k - L*`` (``L*``: least squares over all ``W``) stays below the predicted
envelope ``(L_0 - L*) q^k`` with ``q = 1 - lr mu``, ``mu = 2 lmin / (lambda_max(Q_0)
+ 2 lr (L_0 - L*))``; the fitted per-step factor is below ``q``. Gradient flow:
``L(t) - L* <= (L(0) - L*) exp(-mu t)`` with ``mu = 2 lmin / lambda_max(Q_0)``.
"""

from __future__ import annotations

import numpy as np

from .. import data, theory
from .._flow import flow
from .._training import train
from ._common import fmt, pyplot

FLOOR = 1e3 * np.finfo(float).eps


def envelope_ok(excess, L0, start, factor, steps) -> tuple[bool, float]:
    """Whether ``excess_k <= start * factor^k`` wherever the excess is above the float
    floor; also the worst ratio ``excess_k / bound_k`` there."""
    bound = start * np.power(factor, np.asarray(steps, dtype=float))
    above = excess > FLOOR * L0
    if not above.any():
        return True, 0.0
    worst = float(np.max(excess[above] / bound[above]))
    return worst <= 1.0 + 1e-9, worst


def run(ctx) -> None:
    sizes = [(2, 4), (8, 8), (16, 32)] if ctx.quick else [(2, 4), (8, 8), (32, 32), (64, 128)]
    n = 512 if ctx.quick else 4096
    lr, steps = 0.05, 600
    out = []
    for i, (m, d) in enumerate(sizes):
        X, Y, _ = data.linear_teacher(n, d, m, noise=0.1, seed=ctx.seed(i, 0))
        A0, B0 = data.init_params(d, m, scale_A=0.5, scale_B=1.0, seed=ctx.seed(i, 1))
        res = train("linear", X, Y, A0, B0, lr=lr, steps=steps, record_every=1)
        h = res.history
        Ls = res.L_star
        L0 = float(h["loss"][0])
        Q0 = theory.invariant(A0, B0)
        q = theory.predicted_factor("linear", X, Q0, lr, L0=L0, L_star=Ls)
        emp = theory.empirical_factor(h["loss"], Ls, h["step"])
        ok, worst = envelope_ok(h["excess_loss"], L0, L0 - Ls, q, h["step"])
        out.append((m, d, h, q, emp, ok, worst, L0 - Ls))
        ctx.record(f"gd m={m} d={d}", {"model": "linear", "m": m, "d": d, "n": n, "lr": lr,
                                       "steps": steps},
                   status=res.status,
                   metrics={"predicted_factor": q, "empirical_factor": emp,
                            "envelope_worst_ratio": worst, "L_star": Ls, "loss0": L0,
                            "final_excess_loss": float(h["excess_loss"][-1])},
                   history=h)
    ctx.check(f"linear DEQ, GD lr={lr}: L_k - L* <= (L_0 - L*) q^k, q = 1 - lr mu (§7), "
              "(m, d) = " + ", ".join(f"({m}, {d})" for m, d, *_ in out),
              "q = " + ", ".join(fmt(o[3], 4) for o in out),
              "fitted " + ", ".join(fmt(o[4], 4) for o in out) + "; max excess/envelope "
              + fmt(max(o[6] for o in out), 2),
              all(o[5] and o[4] <= o[3] for o in out))

    # gradient flow: exp(-mu t)
    m = mf = sizes[1][0]
    d = sizes[1][1]
    X, Y, _ = data.linear_teacher(n, d, m, noise=0.1, seed=ctx.seed(9, 0))
    A0, B0 = data.init_params(d, m, scale_A=0.5, scale_B=1.0, seed=ctx.seed(9, 1))
    fr = flow("linear", X, Y, A0, B0, t_end=30.0, rtol=1e-10, atol=1e-12)
    hf = fr.history
    mu = theory.pl_constant("linear", X, theory.invariant(A0, B0))
    L0f = float(hf["loss"][0])
    okf, worstf = envelope_ok(hf["excess_loss"], L0f, L0f - fr.L_star, np.exp(-mu), hf["t"])
    above = hf["excess_loss"] > FLOOR * L0f
    t_ = hf["t"][above]
    rate = -np.polyfit(t_[t_ > 1.0], np.log(hf["excess_loss"][above][t_ > 1.0]), 1)[0] if (
        (t_ > 1.0).sum() > 3) else np.nan
    ctx.record(f"flow m={m} d={d}", {"model": "linear", "m": m, "d": d, "n": n, "t_end": 30.0,
                                     "rtol": 1e-10},
               status=fr.status, metrics={"mu": mu, "fitted_rate": rate,
                                          "envelope_worst_ratio": worstf},
               history=hf)
    ctx.check(f"linear DEQ, gradient flow (m=d={m}): L(t) - L* <= (L(0) - L*) exp(-mu t)",
              f"mu = 2 lmin / lambda_max(Q_0) = {fmt(mu)}",
              f"fitted decay rate {fmt(rate)}; max excess/envelope {fmt(worstf, 2)}",
              okf and rate >= mu)

    # figure
    plt = pyplot()
    fig, axes = plt.subplots(1, len(out) + 1, figsize=(4.2 * (len(out) + 1), 4))
    for ax, (m, d, h, q, emp, _, _, gap) in zip(axes, out, strict=False):
        k = h["step"]
        ax.semilogy(k, h["excess_loss"], label=f"GD, fitted {emp:.4f}")
        ax.semilogy(k, gap * q ** k.astype(float), "k--", label=f"envelope q={q:.4f}")
        ax.set_ylim(max(FLOOR * float(h["loss"][0]) / 10, 1e-18), gap * 3)
        ax.set_title(f"E2 linear m={m}, d={d}, lr={lr}")
        ax.set_xlabel("step")
        ax.set_ylabel("L_k - L*")
        ax.legend(fontsize=8)
    ax = axes[-1]
    ax.semilogy(hf["t"], hf["excess_loss"], label=f"flow (fitted rate {rate:.3f})")
    ax.semilogy(hf["t"], (L0f - fr.L_star) * np.exp(-mu * hf["t"]), "k--",
                label=f"exp(-mu t), mu={mu:.3f}")
    ax.set_ylim(max(FLOOR * L0f / 10, 1e-18), (L0f - fr.L_star) * 3)
    ax.set_xlabel("t")
    ax.set_title(f"E2 gradient flow m=d={mf}")
    ax.legend(fontsize=8)
    ctx.save(fig, "e2_linear_rates.png")
