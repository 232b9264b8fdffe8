"""E9: teacher recovery and noisy targets, read-out DEQ (docs/theory.md §7, §10).

The prediction is ``sigma(u^T W x)`` with ``W = (I - A)^{-1} B``, so the
identifiable quantity is the index vector ``w = W^T u`` (not ``A``, ``B`` or ``W``).

* Realizable ``y = sigma(theta . x)``, ``gamma <= sigma' <= Gamma``, ``gamma > 0``
  (identity, smooth leaky link): ``L >= gamma^2 l_min ||w - theta||^2 / 2``, so
  ``||w_k - theta|| <= sqrt(2 L_k / (gamma^2 l_min))`` at every checkpoint of the GD
  path, and ``w_K -> theta`` as ``L_K -> 0``.
* Noisy identity link ``y = theta . x + noise``: ``L* > 0`` is the least-squares
  minimum; the excess ``L_k - L*`` obeys the GD factor of §7 at every step (it
  converges to the noisy optimum, not to 0), and ``w_k -> w_LS`` with
  ``||w_k - w_LS||^2 <= 2 (L_k - L*) / l_min`` (``w_LS`` is ``theta`` only up to
  ``~ noise sqrt(d / n)``).
* Noisy smooth leaky link: no closed-form ``L*`` and no rate theorem (the PL
  argument needs a realizable target); reported against ``L(theta)``, an upper
  bound on ``L*``.
"""

from __future__ import annotations

import math

import numpy as np

from .. import data, theory
from .._gradients import loss_and_grad
from .._training import train
from ..activations import get_activation
from ._common import fmt, path_smoothness, pyplot, safe_lr, step_ratios_ok

NOISE = 0.3
CASES = {  # label -> (link, noise)
    "identity": ("identity", 0.0),
    "smooth_leaky(0.5)": ("smooth_leaky(0.5)", 0.0),
    "identity noisy": ("identity", NOISE),
    "smooth_leaky(0.5) noisy": ("smooth_leaky(0.5)", NOISE),
}


def index_vector(A, B, u) -> np.ndarray:
    """``w = W^T u``, ``W = (I - A)^{-1} B``: what the read-out model identifies."""
    return np.linalg.solve(np.eye(A.shape[0]) - A, B).T @ u


def recovery_ratios(path, target, L_star, gamma, l_min) -> np.ndarray:
    """``||w_k - target|| / sqrt(2 (L_k - L*) / (gamma^2 l_min))`` per checkpoint
    ``(w_k, L_k)`` of ``path`` (docs/theory.md §10): at most 1 by the theory. NaN where
    ``L_k - L*`` is below ``1e6 eps L_0`` (rounding decides there)."""
    floor = 1e6 * np.finfo(float).eps * path[0][1]
    return np.array([np.linalg.norm(w - target)
                     / math.sqrt(2.0 * (L - L_star) / (gamma**2 * l_min))
                     if L - L_star > floor else math.nan for w, L in path])


def _max(x) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(np.max(x)) if x.size else math.nan


def ratios_ok(ratios) -> bool:
    """At least two checkpoints judged and every judged ratio <= 1 (to rounding)."""
    r = np.asarray(ratios, dtype=float)
    judged = r[np.isfinite(r)]
    return judged.size >= 2 and bool(np.all(judged <= 1.0 + 1e-9))


def run(ctx) -> None:
    m, d, n = (8, 8, 512) if ctx.quick else (32, 32, 2048)
    steps = 400 if ctx.quick else 1500
    A0, B0 = data.init_params(d, m, scale_A=0.5, scale_B=1.0, seed=ctx.seed(0, 1))
    u = np.ones(m) / math.sqrt(m)
    Q0 = theory.invariant(A0, B0)
    out = {}
    for label, (act, noise) in CASES.items():
        X, y, theta = data.single_index_teacher(n, d, activation=act, noise=noise,
                                                seed=ctx.seed(0, 0))
        l_min = float(np.linalg.eigvalsh(X.T @ X / n)[0])
        gamma = get_activation(act).derivative_bounds()[0]
        if noise == 0.0:
            L_star, target = 0.0, theta
        elif act == "identity":
            target, L_star = theory.least_squares(X, y)
        else:
            L_star, target = math.nan, theta
        kw = dict(activation=act, u=u, sufficient_stats=False, solver="direct",
                  L_star=None if math.isnan(L_star) else L_star)
        lr, _ = safe_lr("readout", X, y, A0, B0, fraction=0.5, steps=steps, **kw)
        res = train("readout", X, y, A0, B0, lr=lr, steps=steps, record_every=1, **kw)
        h = res.history
        beta = path_smoothness("readout", X, y, A0, B0, lr=lr, steps=steps, points=2,
                               **kw)
        # checkpoints spread over the steps where L - L* is above rounding (1e6 eps L_0), and
        # the last step
        floor = 1e6 * np.finfo(float).eps * float(h["loss"][0])
        above = np.flatnonzero(h["loss"] - (0.0 if math.isnan(L_star) else L_star) > floor)
        k_floor = int(h["step"][above[-1]]) if above.size else 0
        path = []
        ks = np.unique(np.r_[np.linspace(0, k_floor, 4).round(), steps].astype(int))
        for k in ks:
            A, B = A0, B0
            if k > 0:  # the same deterministic path, stopped at step k
                rk = train("readout", X, y, A0, B0, lr=lr, steps=int(k), record_every=None,
                           **kw)
                A, B = rk.A, rk.B
            L = loss_and_grad("readout", X, y, A, B, u=u, activation=act,
                              solver="direct").loss
            path.append((index_vector(A, B, u), L))
        r = dict(res=res, lr=lr, ks=ks, lr_beta=lr * beta, theta=theta, target=target,
                 L_star=L_star,
                 path=path, dist=float(np.linalg.norm(path[-1][0] - target)),
                 theta_dist=float(np.linalg.norm(path[-1][0] - theta)),
                 L_theta=float(0.5 * np.mean((get_activation(act)(X @ theta) - y) ** 2)))
        if not math.isnan(L_star):
            r["ratios"] = recovery_ratios(path, target, L_star, gamma, l_min)
            # at the last step: the bound with L_K - L* floored at rounding
            r["final_ok"] = r["dist"] <= math.sqrt(
                2.0 * (max(path[-1][1] - L_star, 0.0) + floor) / (gamma**2 * l_min))
        if label == "identity noisy":
            bounds = theory.step_factor_bounds("readout", X, Q0, lr,
                                               h["drift_trace"][:-1], smoothness=beta, u=u,
                                               activation=act)
            r["steps_ok"], r["worst"], _ = step_ratios_ok(h["loss"] - L_star, h["loss"][0],
                                                          bounds)
            r["expected_L_star"] = 0.5 * NOISE**2 * (n - d) / n
        out[label] = r
        ctx.record(f"readout {label}", {"model": "readout", "activation": act,
                                              "noise": noise, "m": m, "d": d, "n": n, "lr": lr,
                                              "steps": steps},
                   status=res.status,
                   metrics={"lr_beta": lr * beta, "L_star": L_star, "loss0": float(h["loss"][0]),
                            "final_loss": float(h["loss"][-1]), "loss_at_theta": r["L_theta"],
                            "index_error": r["dist"], "theta_error": r["theta_dist"],
                            "max_recovery_ratio": _max(r.get("ratios", []))},
                   history={"step": h["step"], "loss": h["loss"]})
    real = [out["identity"], out["smooth_leaky(0.5)"]]
    ctx.check("read-out DEQ, realizable (identity, smooth_leaky(0.5)): ||w_k - theta|| <= "
              "sqrt(2 L_k / (gamma^2 l_min)) at 4 checkpoints above rounding and at the last step "
              "(L_K floored at 1e6 eps L_0), w = W^T u (§10)",
              "ratio <= 1; lr beta " + ", ".join(fmt(r["lr_beta"], 3) for r in real)
              + " (<= 1)",
              "max ratio " + ", ".join(fmt(_max(r["ratios"]), 3) for r in real)
              + "; ||w_K - theta|| " + ", ".join(fmt(r["dist"]) for r in real)
              + "; L_K " + ", ".join(fmt(r["res"].history["loss"][-1]) for r in real),
              all(ratios_ok(r["ratios"]) and r["final_ok"] and r["lr_beta"] <= 1.0 for r in real))
    r = out["identity noisy"]
    h = r["res"].history
    ctx.check(f"read-out DEQ, identity link, noise {NOISE:g} (not realizable): every step's "
              "(L_k+1 - L*)/(L_k - L*) <= 1 - lr mu_k (1 - beta lr/2) with L* the least-squares "
              "minimum > 0; ||w_k - w_LS||^2 <= 2 (L_k - L*)/l_min (§10)",
              f"L* = {fmt(r['L_star'], 4)} (E: noise^2 (n-d)/2n = "
              f"{fmt(r['expected_L_star'], 4)}); lr beta {fmt(r['lr_beta'], 3)}",
              f"{r['res'].status}; max ratio - bound {fmt(r['worst'], 3)}; L_K - L* "
              f"{fmt(h['loss'][-1] - r['L_star'])}; max ||w - w_LS|| ratio "
              f"{fmt(_max(r['ratios']), 3)}; ||w_LS - theta|| "
              f"{fmt(np.linalg.norm(r['target'] - r['theta']), 3)}",
              r["steps_ok"] and r["lr_beta"] <= 1.0 and r["L_star"] > 0
              and ratios_ok(r["ratios"]) and r["final_ok"])
    r = out["smooth_leaky(0.5) noisy"]
    ctx.check(f"read-out DEQ, smooth_leaky(0.5), noise {NOISE:g}: no rate theorem (L* has no "
              "closed form; the PL argument needs a realizable target)",
              "L* <= L(theta); nothing predicted",
              f"{r['res'].status}; L_K {fmt(r['res'].history['loss'][-1], 4)} vs L(theta) "
              f"{fmt(r['L_theta'], 4)}; ||w_K - theta|| {fmt(r['theta_dist'], 3)}; lr beta "
              f"{fmt(r['lr_beta'], 3)}", None)

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, r in out.items():
        h = r["res"].history
        ls = 0.0 if math.isnan(r["L_star"]) else r["L_star"]
        axes[0].semilogy(h["step"], np.maximum(h["loss"] - ls, 1e-300),
                         label=f"{label}" + ("" if ls == 0 else " (L - L*)"))
        axes[1].semilogy(r["ks"], [np.linalg.norm(w - r["target"]) + 1e-300 for w, _ in r["path"]],
                         "o-", label=label)
    axes[0].set_ylim(1e-16, None)
    axes[0].set_xlabel("step")
    axes[0].set_title("E9 loss (excess for the noisy identity link)")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("||w - target||")
    axes[1].set_title("E9 recovery of w = W^T u (target theta, or w_LS when noisy)")
    axes[1].legend(fontsize=7)
    ctx.save(fig, "e9_recovery.png")
