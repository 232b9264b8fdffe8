"""E10: inexact gradients, JFB and truncated Neumann series (docs/theory.md §4, §5, §11).

Linear DEQ, one problem, one step ``lr = 0.5 / beta`` (``beta`` along the exact
path), the same per-sample gradient path for every adjoint:

* exact (LU of I - A, forward and adjoint): each step adds exactly ``lr^2 ||g_k||^2`` to ``tr(Q)``,
  so ``tr(Q_K - Q_0) = lr^2 sum_k ||g_k||^2`` to rounding and
  ``tr(Q_K - Q_0) / (lr (L_0 - L_K))`` lies in the window of §5 (the drift is
  at the discretization level, ``O(lr)``); the run converges at the GD factor.
* JFB (``Lambda = G``) and Neumann with ``k = 1, 4`` (``Lambda = G (I + ... +
  A^k)``): not gradients of ``L``, so the descent lemma and the rate theorem do
  not apply, but the first-order term of ``Q_k+1 - Q_k`` cancels for every adjoint
  ``Lambda = G P`` (§11): judged, ``tr(Q_K - Q_0) = lr^2 sum ||d_k||^2`` with
  ``d_k`` the direction taken. Reported: the fitted rate against the exact one,
  ``tr(Q_K - Q_0) / (lr (L_0 - L_K))``, ``||Q_K - Q_0|| / ||Q_0||`` and whether the
  run reaches ``L*`` (§11: their limits are least-squares solutions).
"""

from __future__ import annotations

import numpy as np

from .. import data, theory
from .._training import train
from ._common import fmt, path_smoothness, pyplot, safe_lr

METHODS = {
    "exact": dict(grad_solver="direct"),
    "jfb": dict(grad_solver="jfb"),
    "neumann(1)": dict(grad_solver="neumann", neumann_terms=1),
    "neumann(4)": dict(grad_solver="neumann", neumann_terms=4),
}


def drift_identity_gap(drift_trace, grad_norm, lr) -> float:
    """``|tr(Q_K - Q_0) - lr^2 sum_k ||g_k||^2| / (lr^2 sum_k ||g_k||^2)``: 0 to rounding for
    exact gradients (docs/theory.md §5), the first-order drift otherwise."""
    s = lr**2 * float(np.sum(np.asarray(grad_norm, dtype=float)[:-1] ** 2))
    return abs(float(drift_trace[-1]) - s) / s


def run(ctx) -> None:
    m, d, n = (8, 8, 512) if ctx.quick else (32, 32, 4096)
    steps = 400 if ctx.quick else 1500
    X, Y, _ = data.linear_teacher(n, d, m, noise=0.1, seed=ctx.seed(0, 0))
    A0, B0 = data.init_params(d, m, scale_A=0.5, scale_B=1.0, seed=ctx.seed(0, 1))
    L_star = theory.global_min_loss("linear", X, Y)
    kw = dict(sufficient_stats=False, solver="direct", L_star=L_star)
    lr, _ = safe_lr("linear", X, Y, A0, B0, fraction=0.5, steps=steps, **kw)
    out = {}
    for name, opts in METHODS.items():
        res = train("linear", X, Y, A0, B0, lr=lr, steps=steps, record_every=1, **kw,
                    **opts)
        h = res.history
        beta = path_smoothness("linear", X, Y, A0, B0, lr=lr, steps=steps, points=2, **kw,
                               **opts)
        gain = float(h["drift_trace"][-1] / (lr * (h["loss"][0] - h["loss"][-1])))
        r = dict(res=res, lr_beta=lr * beta, gain=gain,
                 gap=drift_identity_gap(h["drift_trace"], h["grad_norm"], lr),
                 q_drift=float(h["invariant_drift"][np.isfinite(h["invariant_drift"])][-1]),
                 trace=float(h["drift_trace"][-1]),
                 rate=theory.empirical_factor(h["loss"], L_star, h["step"]),
                 rel_excess=float(h["excess_loss"][-1] / h["excess_loss"][0]),
                 window=theory.drift_gain_bounds(lr, beta))
        out[name] = r
        ctx.record(f"linear grad_solver={name}", {"model": "linear", "m": m, "d": d, "n": n,
                                                  "lr": lr, "steps": steps, **opts},
                   status=res.status,
                   metrics={"lr_beta": r["lr_beta"], "fitted_factor": r["rate"],
                            "final_rel_excess": r["rel_excess"], "drift_trace": r["trace"],
                            "drift_over_lr_gain": gain, "drift_identity_gap": r["gap"],
                            "invariant_drift": r["q_drift"]},
                   history={"step": h["step"], "excess_loss": h["excess_loss"],
                            "drift_trace": h["drift_trace"]})
    ex = out["exact"]
    lo, hi = ex["window"]
    ctx.check(f"exact gradients (per-sample, lr = {fmt(lr, 3)}): tr(Q_K - Q_0) = lr^2 sum "
              "||g_k||^2 and tr(Q_K - Q_0) / (lr (L_0 - L_K)) in [1/(1 + lr beta/2), "
              "1/(1 - lr beta/2)] (§5): drift at the discretization level",
              f"gap <= 1e-8; window [{fmt(lo, 4)}, {fmt(hi, 4)}]; lr beta "
              f"{fmt(ex['lr_beta'], 3)} (<= 1)",
              f"{ex['res'].status}; gap {fmt(ex['gap'])}; ratio {fmt(ex['gain'], 4)}; "
              f"||Q_K - Q_0|| / ||Q_0|| {fmt(ex['q_drift'])}; fitted factor "
              f"{fmt(ex['rate'], 4)}",
              ex["gap"] <= 1e-8 and lo - 1e-9 <= ex["gain"] <= hi + 1e-9
              and ex["lr_beta"] <= 1.0 and ex["res"].status in ("max_steps", "converged"))
    inexact = [k for k in out if k != "exact"]
    ctx.check("inexact gradients (JFB, Neumann k = 1, 4): the first-order term of Q_k+1 - Q_k "
              "cancels for every adjoint Lambda = G P, so tr(Q_K - Q_0) = lr^2 sum ||d_k||^2 "
              "(d_k: the direction taken) as for exact gradients (§11)",
              "relative gap <= 1e-8 each",
              ", ".join(f"{k}: {fmt(out[k]['gap'])}" for k in inexact),
              all(out[k]["gap"] <= 1e-8 for k in inexact))
    ctx.check("inexact gradients at the same lr: rate, convergence and drift of Q against exact "
              "gradients (no descent lemma, no rate theorem: §11)",
              "not predicted; exact: fitted factor " + fmt(ex["rate"], 4) + ", tr(Q_K - Q_0) "
              + fmt(ex["trace"], 3) + ", tr(Q_K - Q_0) / (lr (L_0 - L_K)) " + fmt(ex["gain"], 4),
              "; ".join(f"{k}: {out[k]['res'].status}, factor {fmt(out[k]['rate'], 4)}, "
                        f"(L_K - L*)/(L_0 - L*) {fmt(out[k]['rel_excess'], 3)}, "
                        f"tr(Q_K - Q_0) {fmt(out[k]['trace'], 3)}, "
                        f"tr(Q_K - Q_0) / (lr (L_0 - L_K)) {fmt(out[k]['gain'], 4)}, "
                        f"||Q_K - Q_0||/||Q_0|| {fmt(out[k]['q_drift'], 3)}"
                        for k in inexact), None)

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, r in out.items():
        h = r["res"].history
        axes[0].semilogy(h["step"], np.maximum(h["excess_loss"], 1e-300), label=name)
        axes[1].plot(h["step"], h["drift_trace"], label=name)
    axes[0].set_ylim(1e-16, None)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("L - L*")
    axes[0].set_title(f"E10 excess loss, lr = {lr:.3g}")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("tr(Q_k - Q_0)")
    axes[1].set_title("E10 drift of Q: exact vs inexact adjoints")
    axes[1].legend(fontsize=7)
    ctx.save(fig, "e10_inexact.png")
