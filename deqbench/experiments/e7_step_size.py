"""E7: step size, and where linear convergence stops (docs/theory.md §5 and §7).

The rate theorem needs ``lr <= 1 / beta``, ``beta`` the smoothness along the
path. We measure ``beta_0`` (the Hessian norm at the initialization,
:func:`deqbench.theory.smoothness`) and, for every run that finishes, ``beta``
along its path; we run gradient descent with the per-sample Picard solver over
a log grid of step sizes. Every step size with ``lr beta <= 1`` (or, for a run
that failed, ``lr beta_0 <= 1``) is judged: it must descend monotonically and
stay below the rigorous per-step factor ``1 - lr mu_k (1 - beta lr / 2)`` at
every step; a failed run, a NaN or a missing measurement fails. Above
``1 / beta`` nothing is predicted: the data show how far convergence goes
(large steps throw ``A`` far away where the fixed-point iteration no longer
converges, diverge, or stall).
"""

from __future__ import annotations

import math

import numpy as np

from .. import data, theory
from .._training import train
from ._common import fmt, path_smoothness, pyplot, step_ratios_ok


def run(ctx) -> None:
    m, d, n = (8, 8, 256) if ctx.quick else (16, 16, 1024)
    steps = 400 if ctx.quick else 800
    lrs = np.geomspace(0.01, 10.0, 10 if ctx.quick else 13)
    X, Y, _ = data.linear_teacher(n, d, m, noise=0.1, seed=ctx.seed(0, 0))
    A0, B0 = data.init_params(d, m, scale_A=0.5, scale_B=1.0, seed=ctx.seed(0, 1))
    beta0 = theory.smoothness("linear", X, Y, A0, B0)
    Q0 = theory.invariant(A0, B0)
    rows = []
    for lr in lrs:
        lr = float(lr)
        kw = dict(sufficient_stats=False, solver="picard", max_iter=2000)
        r = train("linear", X, Y, A0, B0, lr=lr, steps=steps, record_every=1, **kw)
        h = r.history
        Ls, L0 = r.L_star, float(h["loss"][0])
        gap0 = L0 - Ls
        final = float(h["excess_loss"][-1]) / gap0
        ran = r.status in ("max_steps", "converged")
        beta = (path_smoothness("linear", X, Y, A0, B0, lr=lr, steps=steps, points=2, **kw)
                if ran else math.nan)
        judged = (lr * beta <= 1.0) if ran else (lr * beta0 <= 1.0)
        ok, worst = False, math.nan
        q = math.nan
        if judged and ran:
            bounds = theory.step_factor_bounds("linear", X, Q0, lr, h["drift_trace"][:-1],
                                               smoothness=beta)
            ok, worst, _ = step_ratios_ok(h["excess_loss"], L0, bounds)
            q = theory.predicted_factor("linear", X, Q0, lr, smoothness=beta, L0=L0, L_star=Ls)
        emp = theory.empirical_factor(h["loss"], Ls, h["step"])
        monotone = bool(np.all(np.diff(h["loss"]) <= 1e-12 * L0))
        rows.append(dict(lr=lr, status=r.status, final=final, q=q, emp=emp, monotone=monotone,
                         beta=beta, judged=judged, ok=ok and monotone and ran, worst=worst,
                         rho=float(h["spectral_radius"][-1]), h=h, n_steps=r.n_steps))
        ctx.record(f"gd lr={lr:.3g}", {"model": "linear", "m": m, "d": d, "n": n, "lr": lr,
                                       "steps": steps, "solver": "picard"},
                   status=r.status,
                   metrics={"final_excess_rel": final, "predicted_factor": q,
                            "empirical_factor": emp, "monotone": monotone,
                            "final_spectral_radius": rows[-1]["rho"], "beta0": beta0,
                            "beta_path": beta, "lr_beta": lr * beta,
                            "worst_step_ratio_minus_bound": worst, "steps_done": r.n_steps},
                   history=h)
    small = [r for r in rows if r["judged"]]
    ctx.check("every step size with lr beta <= 1 (beta: Hessian norm along the path; "
              f"beta_0 = {fmt(beta0)}): monotone descent, every step below "
              "1 - lr mu_k (1 - beta lr/2)",
              "; ".join(f"lr {fmt(r['lr'])}: lr beta {fmt(r['lr'] * r['beta'], 2)}"
                        for r in small),
              "; ".join(f"{r['status']}, max ratio - bound {fmt(r['worst'], 2)}"
                        for r in small),
              bool(small) and all(r["ok"] for r in small))
    linear = [r for r in rows if r["status"] in ("max_steps", "converged") and r["final"] < 1e-6]
    largest = max((r["lr"] for r in linear), default=float("nan"))
    failed = [r for r in rows if r["status"] not in ("max_steps", "converged")]
    first_fail = min((r["lr"] for r in failed), default=float("nan"))
    ctx.check("above 1/beta (no prediction): where linear convergence stops",
              f"nothing predicted beyond lr = 1/beta_0 = {fmt(1 / beta0)}",
              f"largest lr reaching L - L* < 1e-6 (L_0 - L*): {fmt(largest)} "
              f"(= {fmt(largest * beta0, 2)}/beta_0); first failure at lr {fmt(first_fail)} "
              f"(= {fmt(first_fail * beta0, 2)}/beta_0); statuses: "
              + ", ".join(f"{fmt(r['lr'])} {r['status']}" for r in rows), None)

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    ax = axes[0]
    marks = {"max_steps": "o", "converged": "o", "diverged": "x", "fixed_point_failed": "s"}
    for st in sorted({r["status"] for r in rows}):
        sel = [r for r in rows if r["status"] == st]
        ax.loglog([r["lr"] for r in sel], [max(r["final"], 1e-18) for r in sel],
                  marks.get(st, "^"), ms=7, label=st)
    ax.axvline(1 / beta0, color="k", ls=":", lw=0.8, label="1/beta_0")
    ax.set_xlabel("lr")
    ax.set_ylabel(f"(L - L*) / (L_0 - L*) after {steps} steps (or at failure)")
    ax.set_title(f"E7 step size, linear m=d={m}, Picard solves")
    ax.legend(fontsize=7)
    ax = axes[1]
    cols = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(rows)))
    for r, c in zip(rows, cols, strict=True):
        ex = np.maximum(r["h"]["excess_loss"], 1e-18)
        ax.semilogy(r["h"]["step"], ex, color=c, lw=1, label=f"lr {r['lr']:.3g} {r['status']}")
    ax.set_xlabel("step")
    ax.set_ylabel("L - L*")
    ax.legend(fontsize=6, ncol=2)
    ctx.save(fig, "e7_step_size.png")
