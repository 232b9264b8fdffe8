"""E8: the initialization condition lambda_min(Q_0) > 0 (docs/theory.md §6, §7, §9).

Linear DEQ, one teacher, one initial model ``W_0``, written as ``C_0 = I - A_0 =
V diag(c) V^T`` with singular values ``c`` from 1 down to ``eps`` and ``B_0 = C_0
W_0``: the same function at every ``eps``, with ``lambda_min(Q_0) ~ eps^2`` and
``lambda_max(Q_0)`` nearly fixed; ``eps -> 0`` is a near-singular ``I - A_0``.

* Gradient descent: the Hessian in ``B`` alone has norm ``l_max / sigma_min(C_0)^2``,
  so ``beta >= l_max / sigma_min(C_0)^2 >= l_max / lambda_min(Q_0)`` (Cauchy
  interlacing): the theorem's step ``lr <= 1 / beta`` shrinks like
  ``lambda_min(Q_0)``, and the guaranteed number of steps to reduce the excess
  loss by ``TOL`` grows like ``1 / lambda_min(Q_0)``. Judged: the measured ``beta``
  against that lower bound, the measured steps (at ``lr = 0.5 / beta``) against the
  predicted count, and the fitted exponent of steps against ``lambda_min(Q_0)``
  (``-1``). ``beta`` is re-measured on the whole path after each run; where it
  grew past ``lr beta = 0.75`` (the Hessian grows over the 10^5 steps of a
  near-singular start) the run is repeated at ``0.5 / beta``. A run at the fixed
  step that suits ``eps = 1`` shows where GD fails.
* Gradient flow: ``mu = 2 l_min / lambda_max(Q_0)`` does not depend on
  ``lambda_min(Q_0)``, so the envelope ``exp(-mu t)`` must hold up to ``t = 5 / mu``
  for every ``eps`` (only the integrator's work grows: the flow is stiff), and
  ``sigma_min(I - A(t))`` stays above ``sqrt(lambda_min(Q_0) / (1 + ||W(t)||^2
  bound))`` for all ``t`` (§6): well-conditioning for all time under the flow.
"""

from __future__ import annotations

import math

import numpy as np

from .. import data, theory
from .._flow import flow
from .._training import train
from ._common import envelope_ok, fmt, path_smoothness, pyplot, safe_lr, sigma_min_lower

TOL = 1e-6  # excess-loss reduction the step counts are measured to
RETRIES = 3  # runs at lr = 0.5 / beta, beta re-measured on the whole path after each
SOLVER = dict(solver="direct", sufficient_stats=True)


def near_singular_init(W0, V, eps: float):
    """``(A_0, B_0)`` with ``I - A_0 = V diag(c) V^T``, ``c`` geometric from 1 to
    ``eps``, and ``B_0 = (I - A_0) W_0``: the model ``W_0`` for every ``eps``."""
    m = V.shape[0]
    C = (V * np.geomspace(1.0, eps, m)) @ V.T
    return np.eye(m) - C, C @ W0


def run(ctx) -> None:
    m, d, n = (8, 8, 512) if ctx.quick else (16, 16, 2048)
    epss = (1.0, 0.3, 0.1, 0.03) if ctx.quick else (1.0, 0.3, 0.1, 0.03, 0.01)
    X, Y, _ = data.linear_teacher(n, d, m, noise=0.1, seed=ctx.seed(0, 0))
    rng = ctx.rng(1)
    V = np.linalg.qr(rng.standard_normal((m, m)))[0]
    W0 = 0.5 * rng.standard_normal((m, d)) / np.sqrt(d)
    W_hat, L_star = theory.least_squares(X, Y)
    ev = np.linalg.eigvalsh(X.T @ X / n)
    lmin, lmax = float(ev[0]), float(ev[-1])
    out = {}
    lr_fixed = None
    for eps in epss:
        A0, B0 = near_singular_init(W0, V, eps)
        Q0 = theory.invariant(A0, B0)
        qmin, qmax = (float(x) for x in np.linalg.eigvalsh(Q0)[[0, -1]])
        smin = float(np.linalg.svd(np.eye(m) - A0, compute_uv=False)[-1])
        beta0 = theory.smoothness("linear", X, Y, A0, B0)
        lr, beta = safe_lr("linear", X, Y, A0, B0, fraction=0.5, steps=200, **SOLVER)
        L0 = float(np.sum((X @ W0.T - Y) ** 2) / (2 * n))
        stop = L_star + TOL * (L0 - L_star)
        for attempt in range(RETRIES):
            q = theory.predicted_factor("linear", X, Q0, lr, smoothness=beta, L0=L0,
                                        L_star=L_star)
            k_pred = math.ceil(math.log(TOL) / math.log(q)) if 0.0 < q < 1.0 else math.inf
            cap = int(min(4 * k_pred, 2_000_000)) if math.isfinite(k_pred) else 100_000
            res = train("linear", X, Y, A0, B0, lr=lr, steps=cap, stop_loss=stop,
                        L_star=L_star, record_every=max(1, cap // 1600), **SOLVER)
            k_meas = res.n_steps if res.status == "converged" else math.inf
            # beta along the path actually run (safe_lr measured it on the first 200
            # steps; near-singular starts run 10^5 steps and more, and the Hessian grows
            # on the way): if it grew past lr beta = 0.75, run again at 0.5 / beta
            path_beta = max(beta, path_smoothness("linear", X, Y, A0, B0, lr=lr,
                                                  steps=max(res.n_steps, 1), points=2,
                                                  **SOLVER))
            if lr * path_beta <= 0.75 or attempt == RETRIES - 1:
                break
            lr = 0.5 / path_beta
            beta = path_beta
        beta = path_beta
        q = theory.predicted_factor("linear", X, Q0, lr, smoothness=beta, L0=L0,
                                    L_star=L_star)
        k_pred = math.ceil(math.log(TOL) / math.log(q)) if 0.0 < q < 1.0 else math.inf
        if lr_fixed is None:
            lr_fixed = lr  # 0.5 / beta at eps = 1
        fixed = train("linear", X, Y, A0, B0, lr=lr_fixed, steps=2000, stop_loss=stop,
                      L_star=L_star, record_every=None, **SOLVER)
        # gradient flow to 5 / mu, mu independent of lambda_min(Q_0)
        mu = theory.pl_constant("linear", X, Q0)
        fr = flow("linear", X, Y, A0, B0, t_end=5.0 / mu, rtol=1e-8, atol=1e-12,
                  L_star=L_star, spectral_every=1, max_steps=200_000, **SOLVER)
        hf = fr.history
        env_ok, env_worst = envelope_ok(hf["excess_loss"], hf["t"], mu)
        lower = sigma_min_lower(qmin, float(np.linalg.norm(W_hat, 2)), hf["excess_loss"], lmin)
        cond_ratio = float(np.min(hf["sigma_min"] / lower))
        upper_ratio = float(np.max(hf["sigma_max"]) / math.sqrt(qmax))
        t_hit = hf["t"][np.argmax(hf["excess_loss"] <= 1e-3 * hf["excess_loss"][0])] \
            if np.any(hf["excess_loss"] <= 1e-3 * hf["excess_loss"][0]) else math.nan
        out[eps] = dict(qmin=qmin, qmax=qmax, smin=smin, beta0=beta0, beta=beta, lr=lr,
                        k_pred=k_pred, k_meas=k_meas, res=res, fixed=fixed, fr=fr, mu=mu,
                        env_ok=env_ok, env_worst=env_worst, cond_ratio=cond_ratio,
                        upper_ratio=upper_ratio, t_hit=t_hit,
                        beta_lower=lmax / smin**2,
                        fixed_rel=float(fixed.history["excess_loss"][-1]
                                        / fixed.history["excess_loss"][0]))
        ctx.record(f"init eps={eps:g} GD", {"model": "linear", "m": m, "d": d, "n": n,
                                            "eps": eps, "lr": lr},
                   status=res.status,
                   metrics={"lambda_min_Q0": qmin, "lambda_max_Q0": qmax,
                            "sigma_min_C0": smin, "beta0": beta0,
                            "beta_lower_bound": lmax / smin**2, "lr_beta": lr * beta,
                            "predicted_steps": k_pred, "steps": k_meas},
                   history={"step": res.history["step"],
                            "excess_loss": res.history["excess_loss"]})
        ctx.record(f"init eps={eps:g} GD fixed lr", {"model": "linear", "m": m, "d": d,
                                                     "n": n, "eps": eps, "lr": lr_fixed},
                   status=fixed.status,
                   metrics={"lambda_min_Q0": qmin, "lr_beta": lr_fixed * beta0,
                            "steps": fixed.n_steps})
        ctx.record(f"init eps={eps:g} flow", {"model": "linear", "m": m, "d": d, "n": n,
                                              "eps": eps, "t_end": 5.0 / mu},
                   status=fr.status,
                   metrics={"lambda_min_Q0": qmin, "mu": mu, "envelope_worst_ratio": env_worst,
                            "min_sigma_min_over_lower": cond_ratio,
                            "max_sigma_max_over_upper": upper_ratio,
                            "t_excess_1e-3": t_hit, "accepted_steps": fr.n_steps,
                            "max_invariant_drift": float(np.nanmax(hf["invariant_drift"]))},
                   history={"t": hf["t"], "excess_loss": hf["excess_loss"],
                            "sigma_min": hf["sigma_min"], "lower_bound": lower})
    rows = list(out.values())
    ctx.check("GD: beta(A_0, B_0) >= l_max / sigma_min(I - A_0)^2 >= l_max / "
              "lambda_min(Q_0) (the B-block of the Hessian, §9), eps = "
              + ", ".join(f"{e:g}" for e in out),
              "lower bound " + ", ".join(fmt(r["beta_lower"], 3) for r in rows),
              "measured beta_0 " + ", ".join(fmt(r["beta0"], 3) for r in rows),
              all(r["beta0"] >= r["beta_lower"] * (1 - 1e-4) for r in rows))
    # the exponent where the B-block dominates beta (lambda_min(Q_0) < 1: eps < 1)
    small = [r for e, r in out.items() if e < 1.0]
    slope, _ = theory.loglog_fit([r["qmin"] for r in small], [r["k_meas"] for r in small])
    slope_pred, _ = theory.loglog_fit([r["qmin"] for r in small], [r["k_pred"] for r in small])
    ctx.check(f"GD at lr = 0.5/beta: steps to reduce L - L* by {TOL:g} at most the predicted "
              "count log(TOL)/log(q), and growing like 1/lambda_min(Q_0) (§9)",
              "predicted steps " + ", ".join(fmt(r["k_pred"]) for r in rows) + " (lr beta "
              + ", ".join(fmt(r["lr"] * r["beta"], 3) for r in rows) + ")"
              + f"; exponent in lambda_min(Q_0) for eps < 1: -1 +- 0.25 (of the predicted counts: "
              f"{fmt(slope_pred, 3)})",
              "lambda_min(Q_0) " + ", ".join(fmt(r["qmin"], 2) for r in rows) + "; steps "
              + ", ".join(fmt(r["k_meas"]) for r in rows) + f"; fitted exponent {fmt(slope, 3)}",
              all(r["k_meas"] <= r["k_pred"] < math.inf and r["lr"] * r["beta"] <= 1.0
                  for r in rows) and abs(slope + 1.0) <= 0.25)
    ctx.check(f"GD at the fixed lr = {fmt(lr_fixed, 3)} (0.5/beta at eps = 1): where the "
              "guarantee stops (lr beta > 1) and what happens",
              "guarantee only where lr beta <= 1",
              "; ".join(f"eps {e:g}: lr beta {fmt(lr_fixed * r['beta0'], 3)}, "
                        f"{r['fixed'].status} after {r['fixed'].n_steps} steps, "
                        f"(L - L*) / (L_0 - L*) {fmt(r['fixed_rel'], 3)}"
                        for e, r in out.items()), None)
    ctx.check("gradient flow: L(t) - L* <= (L(0) - L*) exp(-mu t) up to t = 5/mu, mu = "
              "2 l_min / lambda_max(Q_0) independent of lambda_min(Q_0) (§7, §9)",
              "max ratio to the envelope <= 1 for every eps; mu = "
              + ", ".join(fmt(r["mu"], 3) for r in rows),
              ", ".join(f"{r['fr'].status} {fmt(r['env_worst'], 3)}" for r in rows)
              + "; t to 1e-3: " + ", ".join(fmt(r["t_hit"], 3) for r in rows)
              + "; accepted steps " + ", ".join(str(r["fr"].n_steps) for r in rows),
              all(r["env_ok"] and r["fr"].status == "finished" for r in rows))
    ctx.check("gradient flow from near-singular I - A_0: sigma_min(I - A(t)) >= "
              "sqrt(lambda_min(Q_0) / (1 + ||W(t)||^2 bound)), sigma_max <= "
              "sqrt(lambda_max(Q_0)) for all t (§6)",
              "min sigma_min / lower >= 1, max sigma_max / upper <= 1",
              ", ".join(f"{fmt(r['cond_ratio'], 3)} / {fmt(r['upper_ratio'], 6)}"
                        for r in rows),
              all(r["cond_ratio"] >= 1 - 1e-7 and r["upper_ratio"] <= 1 + 1e-7
                  for r in rows))

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for e, r in out.items():
        h = r["res"].history
        axes[0].semilogy(h["step"], h["excess_loss"], label=f"eps {e:g}, lr {r['lr']:.2g}")
        hf = r["fr"].history
        axes[1].semilogy(hf["t"], hf["excess_loss"], label=f"flow eps {e:g}")
    axes[0].set_xscale("symlog")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("L - L*")
    axes[0].set_title("E8 GD at lr = 0.5/beta")
    axes[0].legend(fontsize=7)
    mu = rows[0]["mu"]
    t = np.linspace(0, 5 / mu, 50)
    axes[1].semilogy(t, rows[0]["fr"].history["excess_loss"][0] * np.exp(-mu * t), "k--",
                     lw=0.8, label="envelope (eps 1)")
    axes[1].set_xlabel("t")
    axes[1].set_title("E8 gradient flow")
    axes[1].legend(fontsize=7)
    qs = np.array([r["qmin"] for r in rows])
    axes[2].loglog(qs, [r["k_meas"] for r in rows], "o-", label="measured steps")
    axes[2].loglog(qs, [r["k_pred"] for r in rows], "s--", label="predicted bound")
    axes[2].set_xlabel("lambda_min(Q_0)")
    axes[2].set_ylabel(f"GD steps to {TOL:g}")
    axes[2].set_title(f"E8 steps vs lambda_min(Q_0) (exponent {slope:.2f})")
    axes[2].legend(fontsize=7)
    ctx.save(fig, "e8_initialization.png")
