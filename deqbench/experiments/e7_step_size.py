"""E7: step size, and where linear convergence stops (docs/theory.md §5 and §7).

The rate theorem needs a small step (``lr <= 1 / beta``, ``beta`` the
smoothness along the path). We measure the local smoothness at the
initialization, ``beta_0 = |lambda|_max(Hessian)`` (power iteration on
finite-difference Hessian-vector products), run gradient descent with the
per-sample Picard solver over a log grid of step sizes, and report for each
the status and the final excess loss: small steps converge linearly, large
steps throw ``A`` far away where the fixed-point iteration no longer
converges (``fixed_point_failed``), diverge, or stall at a non-global loss.
"""

from __future__ import annotations

import numpy as np

from .. import data, theory
from .._gradients import loss_and_grad
from .._training import train
from ._common import fmt, pyplot


def smoothness(X, Y, A, B, *, iters: int = 60, h: float = 1e-5, seed=0) -> float:
    """Dominant eigenvalue (largest in magnitude: the local smoothness) of the loss
    Hessian at ``(A, B)`` (linear model), by power iteration on central-difference
    Hessian-vector products."""
    m, d = B.shape

    def grad(P):
        _, gA, gB, _ = loss_and_grad("linear", X, Y, P[: m * m].reshape(m, m),
                                     P[m * m:].reshape(m, d), solver="direct")
        return np.concatenate([gA.ravel(), gB.ravel()])

    P = np.concatenate([A.ravel(), B.ravel()])
    v = np.random.default_rng(seed).standard_normal(P.size)
    v /= np.linalg.norm(v)
    lam = 0.0
    for _ in range(iters):
        Hv = (grad(P + h * v) - grad(P - h * v)) / (2 * h)
        lam_new = float(v @ Hv)
        nrm = np.linalg.norm(Hv)
        if nrm == 0:
            break
        v = Hv / nrm
        if abs(lam_new - lam) <= 1e-6 * abs(lam_new):
            lam = lam_new
            break
        lam = lam_new
    return lam


def run(ctx) -> None:
    m, d, n = (8, 8, 256) if ctx.quick else (16, 16, 1024)
    steps = 400 if ctx.quick else 800
    lrs = np.geomspace(0.01, 10.0, 10 if ctx.quick else 13)
    X, Y, _ = data.linear_teacher(n, d, m, noise=0.1, seed=ctx.seed(0, 0))
    A0, B0 = data.init_params(d, m, scale_A=0.5, scale_B=1.0, seed=ctx.seed(0, 1))
    beta0 = abs(smoothness(X, Y, A0, B0, seed=ctx.seed(0, 2)))
    Q0 = theory.invariant(A0, B0)
    rows = []
    for lr in lrs:
        lr = float(lr)
        r = train("linear", X, Y, A0, B0, lr=lr, steps=steps, record_every=1,
                  sufficient_stats=False, solver="picard", max_iter=2000)
        h = r.history
        Ls, L0 = r.L_star, float(h["loss"][0])
        gap0 = L0 - Ls
        final = float(h["excess_loss"][-1]) / gap0
        q = theory.predicted_factor("linear", X, Q0, lr, L0=L0, L_star=Ls)
        emp = theory.empirical_factor(h["loss"], Ls, h["step"])
        monotone = bool(np.all(np.diff(h["loss"]) <= 1e-12 * L0))
        rows.append(dict(lr=lr, status=r.status, final=final, q=q, emp=emp, monotone=monotone,
                         rho=float(h["spectral_radius"][-1]), h=h, n_steps=r.n_steps))
        ctx.record(f"gd lr={lr:.3g}", {"model": "linear", "m": m, "d": d, "n": n, "lr": lr,
                                       "steps": steps, "solver": "picard"},
                   status=r.status,
                   metrics={"final_excess_rel": final, "predicted_factor": q,
                            "empirical_factor": emp, "monotone": monotone,
                            "final_spectral_radius": rows[-1]["rho"], "beta0": beta0,
                            "steps_done": r.n_steps},
                   history=h)
    small = [r for r in rows if r["lr"] <= 1.0 / beta0]
    ok_small = all(r["monotone"] and r["status"] == "max_steps"
                   and (not np.isfinite(r["emp"]) or r["emp"] <= r["q"]) for r in small)
    ctx.check(f"step size lr <= 1/beta_0 = {fmt(1 / beta0)} (beta_0 = local smoothness at "
              "init): monotone descent, fitted factor <= predicted",
              "; ".join(f"lr {fmt(r['lr'])}: q {fmt(r['q'], 4)}" for r in small),
              "; ".join(f"fitted {fmt(r['emp'], 4)}" for r in small), ok_small)
    linear = [r for r in rows if r["status"] in ("max_steps", "converged") and r["final"] < 1e-6]
    largest = max((r["lr"] for r in linear), default=float("nan"))
    failed = [r for r in rows if r["status"] not in ("max_steps", "converged")]
    first_fail = min((r["lr"] for r in failed), default=float("nan"))
    ctx.check("where linear convergence stops (large steps: fixed point lost / divergence / "
              "stall)",
              f"stable up to about 2/beta_0 = {fmt(2 / beta0)}",
              f"largest lr reaching L - L* < 1e-6 (L_0 - L*): {fmt(largest)}; first failure "
              f"at lr {fmt(first_fail)}; statuses: "
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
    ax.axvline(2 / beta0, color="k", ls="--", lw=0.8, label="2/beta_0")
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
