"""E2: linear convergence of the linear DEQ (docs/theory.md §7).

Gradient descent on the squared loss, several ``(m, d)``, with ``lr beta``
reported (``beta``: the Hessian norm measured along the path). At EVERY step the
factor ``(L_{k+1} - L*) / (L_k - L*)`` (``L*``: least squares over all ``W``)
is below the rigorous ``1 - lr mu_k (1 - beta lr / 2)``, ``mu_k = 2 lmin /
(lambda_max(Q_0) + tr(Q_k - Q_0))``; ``lr beta > 1`` fails the check. The
whole-run factor ``q`` (with ``lambda_max(Q_k) <= q_0 + 2 lr (L_0 - L*)``) is
compared with the fitted one; a vacuous ``q`` (``1 - q < 1e-3``) fails. Gradient flow:
``L(t) - L* <= (L(0) - L*) exp(-mu t)`` with ``mu = 2 lmin / lambda_max(Q_0)``.
"""

from __future__ import annotations

import numpy as np

from .. import data, theory
from .._flow import flow
from .._training import train
from ._common import fmt, path_smoothness, pyplot, safe_lr, step_ratios_ok

FLOOR = 1e3 * np.finfo(float).eps
FRACTION = 0.5  # lr = FRACTION / beta, beta measured along the path


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
    steps = 600
    out = []
    for i, (m, d) in enumerate(sizes):
        X, Y, _ = data.linear_teacher(n, d, m, noise=0.1, seed=ctx.seed(i, 0))
        A0, B0 = data.init_params(d, m, scale_A=0.5, scale_B=1.0, seed=ctx.seed(i, 1))
        lr, _ = safe_lr("linear", X, Y, A0, B0, fraction=FRACTION, steps=steps)
        res = train("linear", X, Y, A0, B0, lr=lr, steps=steps, record_every=1)
        h = res.history
        Ls = res.L_star
        L0 = float(h["loss"][0])
        Q0 = theory.invariant(A0, B0)
        beta = path_smoothness("linear", X, Y, A0, B0, lr=lr, steps=steps)
        q = theory.predicted_factor("linear", X, Q0, lr, smoothness=beta, L0=L0, L_star=Ls)
        check = theory.rate_check(h["loss"], Ls, q, h["step"])
        bounds = theory.step_factor_bounds("linear", X, Q0, lr, h["drift_trace"][:-1],
                                           smoothness=beta)
        ok, worst, judged = step_ratios_ok(h["excess_loss"], L0, bounds)
        out.append(dict(m=m, d=d, h=h, lr=lr, q=q, emp=check["empirical"], verdict=check["verdict"],
                        ok=ok, worst=worst, judged=judged, gap=L0 - Ls, lr_beta=lr * beta))
        ctx.record(f"gd m={m} d={d}", {"model": "linear", "m": m, "d": d, "n": n, "lr": lr,
                                       "steps": steps},
                   status=res.status,
                   metrics={"predicted_factor": q, "empirical_factor": check["empirical"],
                            "rate_verdict": check["verdict"], "lr_beta": lr * beta,
                            "worst_step_ratio_minus_bound": worst, "steps_judged": judged,
                            "L_star": Ls, "loss0": L0,
                            "final_excess_loss": float(h["excess_loss"][-1])},
                   history=h)
    ctx.check(f"linear DEQ, GD lr = {FRACTION}/beta: every step's (L_k+1 - L*)/(L_k - L*) <= "
              "1 - lr mu_k (1 - beta lr/2) (§7), (m, d) = "
              + ", ".join(f"({o['m']}, {o['d']})" for o in out),
              "lr beta = " + ", ".join(fmt(o["lr_beta"], 3) for o in out) + " (<= 1)",
              "max over steps of ratio - bound: " + ", ".join(fmt(o["worst"], 3) for o in out)
              + " (steps judged " + ", ".join(str(o["judged"]) for o in out) + ")",
              all(o["ok"] and o["lr_beta"] <= 1.0 for o in out))
    ctx.check(f"linear DEQ, GD lr = {FRACTION}/beta: fitted factor <= q = "
              "1 - lr mu (1 - beta lr/2), "
              "q not vacuous",
              "q = " + ", ".join(fmt(o["q"], 4) for o in out),
              "fitted " + ", ".join(fmt(o["emp"], 4) for o in out) + "; verdicts "
              + ", ".join(o["verdict"] for o in out),
              all(o["verdict"] == "holds" for o in out))

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
    for ax, o in zip(axes, out, strict=False):
        m, d, h, q, emp, gap = o["m"], o["d"], o["h"], o["q"], o["emp"], o["gap"]
        k = h["step"]
        ax.semilogy(k, h["excess_loss"], label=f"GD, fitted {emp:.4f}")
        ax.semilogy(k, gap * q ** k.astype(float), "k--", label=f"envelope q={q:.4f}")
        ax.set_ylim(max(FLOOR * float(h["loss"][0]) / 10, 1e-18), gap * 3)
        ax.set_title(f"E2 linear m={m}, d={d}, lr={o['lr']:.3g}")
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
