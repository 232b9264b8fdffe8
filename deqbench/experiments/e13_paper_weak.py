"""E13: the paper's Appendix A.4, weak nonlinearity, against the authors' saved numbers.

The link ``sigma_eps(s) = s + eps tanh s`` (deqbench's ``skip_tanh(eps)``),
``eps`` in {1/2, 1/4, 1/8}; ``d = 10``, 4096 training and 16384 held-out
Gaussian samples, target ``sigma_eps(<xi, x>)``, the start ``(xi, 0) + 0.1 (-xi,
1) / sqrt 2 + 0.03 (v, 0)`` (``v`` a random unit vector orthogonal to ``xi``),
``eta = 0.05`` (``lr = 0.1``), seeds 1729-1733 (``default_rng(seed)`` draws
``xi``, the samples and ``v`` in that order).

* The Hessian at the target ``(xi, 0)`` (docs/theory.md §12): its extreme
  eigenvalues and ``lambda_min / eps^2`` against the authors' 15 values, and
  the limit of ``lambda_min / eps^2`` as ``eps -> 0`` (empirical on each seed's
  samples, and in the population) against numerics and the authors' "about
  0.028".
* Training, 60,000 updates (quick: seed 1729 at eps = 1/4; full: all 15 and
  eps = 1/2 again at a tighter forward tolerance): the risk never increases
  (the authors assert it), final parameter errors and risks against the
  authors' within what the forward tolerance allows, the local rate against
  the runs' tails.
"""

from __future__ import annotations

import math

import numpy as np

from .. import theory
from .._fixed_point import fixed_point
from . import _paper as P
from ._common import fmt, pyplot

SEEDS = (1729, 1730, 1731, 1732, 1733)
EPSILONS = (0.5, 0.25, 0.125)
TOL = 1e-12  # the authors' Newton tolerance (absolute; ours is relative)


def _act(eps: float) -> str:
    return f"skip_tanh({eps:g})"


def run(ctx) -> None:
    probs = {s: P.weak_problem(s) for s in SEEDS}
    limits = _hessian_rows(ctx, probs)
    runs = _training(ctx, probs)
    _figure(ctx, probs, limits, runs)


def _hessian_rows(ctx, probs) -> dict:
    worst = {"min": 0.0, "max": 0.0, "ratio": 0.0, "gram": 0.0}
    table = {}
    for s, pr in probs.items():
        z = pr.X @ pr.xi
        G = np.column_stack([pr.X, np.tanh(z)])
        gram = float(np.linalg.eigvalsh(G.T @ G / G.shape[0])[0])
        for eps in EPSILONS:
            lam = np.linalg.eigvalsh(theory.zero_risk_hessian(pr.X, pr.xi, activation=_act(eps),
                                                              convention="paper"))
            a = {k: P.ref(f"A4/{s}/{eps:g}/{k}") for k in (
                "hessian_minimum_eigenvalue", "hessian_maximum_eigenvalue",
                "hessian_minimum_over_epsilon_squared", "gram_minimum_eigenvalue")}
            worst["min"] = max(worst["min"], abs(lam[0] / a["hessian_minimum_eigenvalue"] - 1))
            worst["max"] = max(worst["max"], abs(lam[-1] / a["hessian_maximum_eigenvalue"] - 1))
            worst["ratio"] = max(worst["ratio"], abs(
                lam[0] / eps**2 / a["hessian_minimum_over_epsilon_squared"] - 1))
            worst["gram"] = max(worst["gram"], abs(gram / a["gram_minimum_eigenvalue"] - 1))
            table[(s, eps)] = lam[0] / eps**2
    a_ratio = [P.ref(f"A4/{s}/{e:g}/hessian_minimum_over_epsilon_squared") for s in SEEDS
               for e in EPSILONS]
    ctx.check("A.4 Hessian at the target (xi, 0) (§12), 5 seeds x eps = 1/2, 1/4, 1/8: "
              "2 J^T J / n in the paper's scale (J = sigma_eps'(X xi) [X, sigma_eps(X xi)]), "
              "its extreme eigenvalues and lambda_min / eps^2; and the Gram matrix of [X, "
              "tanh(X xi)] (positive definite: (xi, 0) is the only zero-risk point); rel. "
              "diff <= 1e-9 " + P.cite("A4/1729/0.5/hessian_minimum_over_epsilon_squared"),
              f"lambda_min / eps^2 from {fmt(min(a_ratio), 4)} to {fmt(max(a_ratio), 4)}",
              f"max rel. diff: lambda_min {fmt(worst['min'], 2)}, lambda_max "
              f"{fmt(worst['max'], 2)}, ratio {fmt(worst['ratio'], 2)}, Gram "
              f"{fmt(worst['gram'], 2)}",
              max(worst.values()) <= 1e-9)

    # the limit eps -> 0: empirical (each seed's samples) and population
    lims, gaps, ok = {}, [], True
    for s, pr in probs.items():
        lims[s] = theory.skip_tanh_curvature_limit(pr.X, pr.xi, convention="paper")
        g = []
        for k in (10, 11):
            eps = 2.0**-k
            lam = np.linalg.eigvalsh(theory.zero_risk_hessian(
                pr.X, pr.xi, activation=_act(eps), convention="paper"))[0]
            g.append(abs(lam / eps**2 / lims[s] - 1.0))
        gaps.append(g)
        ok &= g[1] <= 1e-3 and 1.8 <= g[0] / g[1] <= 2.2
    ctx.check("A.4 lambda_min(H_eps) / eps^2 -> R / (1 + |xi|^2) as eps -> 0 (§12; paper's "
              "scale), R the mean squared residual of tanh(X xi) regressed on X: the gap "
              "is O(eps), so at eps = 2^-10 and 2^-11 it is below 1e-3 and halves",
              "limits " + ", ".join(fmt(lims[s], 5) for s in SEEDS),
              "rel. gaps at 2^-10 / 2^-11: " + ", ".join(f"{fmt(a, 2)} / {fmt(b, 2)}"
                                                       for a, b in gaps), ok)
    pop = theory.skip_tanh_curvature_limit(convention="paper")
    vals = np.array(list(lims.values()))
    se = float(np.std(vals, ddof=1) / math.sqrt(vals.size))
    ctx.check("A.4 the population limit (x ~ N(0, I), |xi| = 1): 1 - s - s^2, s = E sech^2 Z "
              "(Gauss-Hermite), against the mean of the 5 seeds' limits (within 3 standard "
              "errors) and the authors' 'about 0.028' (their 15 values) "
              + P.cite("A4/1729/0.125/hessian_minimum_over_epsilon_squared"),
              f"{fmt(pop, 5)} (deqbench's scale: half)",
              f"seeds' mean {fmt(vals.mean(), 5)} +- {fmt(se, 2)}; authors' mean "
              f"{fmt(np.mean(a_ratio), 5)} (range {fmt(min(a_ratio), 4)} - "
              f"{fmt(max(a_ratio), 4)})",
              abs(vals.mean() - pop) <= 3.0 * se)
    return {"table": table, "limits": lims, "population": pop}


def _training(ctx, probs) -> dict:
    steps = int(P.ref("A4/config/updates"))
    # quick: one of the 15 runs at full length (eps = 1/4, whose final error is well above
    # the forward-solve floor); full: all 15, and eps = 1/2 once more at tol 1e-14
    cases = [(SEEDS[0], 0.25, TOL)] if ctx.quick else (
        [(s, e, TOL) for s in SEEDS for e in EPSILONS] + [(SEEDS[0], 0.5, 1e-14)])
    eta = float(P.ref("A4/config/step_size"))
    runs = {}
    for s, eps, tol in cases:
        pr = probs[s]
        z, ze = pr.X @ pr.xi, pr.X_eval @ pr.xi
        y, ye = z + eps * np.tanh(z), ze + eps * np.tanh(ze)
        r = P.fit(pr.X, y, pr.theta0, eta=eta, steps=steps, activation=_act(eps), tol=tol,
                  record_every=1)
        fp = fixed_point(pr.X_eval, np.array([[r.b]]), r.w[None, :].copy(),
                         activation=_act(eps), tol=1e-13)
        ev = float(np.mean((fp.z[:, 0] - ye) ** 2))
        H = theory.zero_risk_hessian(pr.X, pr.xi, activation=_act(eps))
        runs[(s, eps, tol)] = dict(fit=r, pe=float(np.linalg.norm(r.theta - pr.target)), ev=ev,
                                   inc=float(np.max(np.diff(r.risk))), H=H,
                                   floor=P.forward_floor(H, TOL))
        ctx.record(f"A.4 seed {s} eps {eps:g} tol {tol:g}",
                   {"model": "scalar DEQ", "activation": _act(eps), "seed": s, "eta": eta,
                    "steps": steps, "tol": tol}, status=r.status,
                   metrics={"parameter_error": runs[(s, eps, tol)]["pe"],
                            "final_train_risk": r.risk[-1], "final_eval_risk": ev,
                            "max_risk_increase": runs[(s, eps, tol)]["inc"]},
                   history={k: r.history[k] for k in ("step", "risk", "grad_norm", "fp_iters")})
    main = {k: r for k, r in runs.items() if k[2] == TOL}
    inc = max(r["inc"] for r in main.values())
    ctx.check(f"A.4 the training risk never increases ({len(main)} run(s) of {steps} updates; "
              "the authors assert increases < 1e-14 and record 0) "
              + P.cite("A4/1729/0.5/final_parameter_error"),
              "largest increase <= 1e-14",
              f"largest increase {fmt(inc, 2)}; forward iterations per step <= "
              f"{max(int(r['fit'].history['fp_iters'][1:].max()) for r in main.values())}",
              inc <= 1e-14 and all(r["fit"].status == "max_steps" for r in main.values()))

    # final numbers against nonlinearity/summary.json, within the forward-solve floor
    worst, ok, at_floor = {"pe": 0.0, "tr": 0.0, "ev": 0.0}, True, []
    for (s, eps, _), r in main.items():
        a = {k: P.ref(f"A4/{s}/{eps:g}/{k}") for k in (
            "final_parameter_error", "final_training_risk", "final_evaluation_risk")}
        rel = 2.0 * r["floor"] / a["final_parameter_error"]
        if rel > 0.5:
            at_floor.append((s, eps))
        worst["pe"] = max(worst["pe"], abs(r["pe"] / a["final_parameter_error"] - 1))
        worst["tr"] = max(worst["tr"], abs(r["fit"].risk[-1] / a["final_training_risk"] - 1))
        worst["ev"] = max(worst["ev"], abs(r["ev"] / a["final_evaluation_risk"] - 1))
        ok &= (P.floor_agrees(r["pe"], a["final_parameter_error"], r["floor"])
               and abs(r["fit"].risk[-1] / a["final_training_risk"] - 1) <= 2.0 * rel
               and abs(r["ev"] / a["final_evaluation_risk"] - 1) <= 2.0 * rel)
    label = "; ".join(f"seed {s} eps {e:g}: {fmt(P.ref(f'A4/{s}/{e:g}/final_parameter_error'), 4)}"
                      for s, e, _ in main) if ctx.quick else "mean parameter error " + ", ".join(
        f"eps {e:g}: {fmt(P.ref(f'A4/aggregate/{e:g}/final_parameter_error_mean'), 3)}"
        for e in EPSILONS)
    meas = (f"max rel. diff: parameter error {fmt(worst['pe'], 2)}, train risk "
            f"{fmt(worst['tr'], 2)}, held-out risk {fmt(worst['ev'], 2)}")
    if at_floor:
        tight = runs[(SEEDS[0], 0.5, 1e-14)]["pe"] / runs[(SEEDS[0], 0.5, TOL)]["pe"] - 1
        meas += (f"; eps 1/2 errors (1e-10) are below 2 floor = "
                 f"{fmt(2 * runs[(SEEDS[0], 0.5, TOL)]['floor'], 2)}: reproducible only to "
                 f"the forward-solve floor (tol 1e-14 moves ours by {fmt(tight, 2)})")
    ctx.check(f"A.4 final parameter error within 2 floor, train and held-out risks within 4 "
              f"floor / error (relative), floor = sqrt(lambda_max) tol / lambda_min at tol "
              f"1e-12 (§12) ({len(main)} run(s), {steps} updates) "
              + P.cite("A4/1729/0.25/final_parameter_error"), label, meas,
              ok and all(r["fit"].status == "max_steps" for r in main.values()))

    # the local rate at (xi, 0) against the runs' tails, where they reach the local regime
    rows, ok, slow = [], True, []
    for (s, eps, _), r in main.items():
        q = theory.gd_local_rate(r["H"], 2.0 * eta)
        risk = r["fit"].risk
        f, k0, k1 = P.tail_factor(risk, 1e-22, 1e-6 * risk[0])
        if math.isnan(f):  # never below 1e-6 of its start: the late half, reported
            k = np.arange(steps // 2, steps + 1)
            late = float(np.exp(np.polyfit(k, np.log(risk[steps // 2:]), 1)[0]))
            slow.append((s, eps, q * q, late, r["pe"]))
            continue
        ok &= P.rate_agrees(f, q * q, 0.01)
        rows.append((s, eps, q * q, f))
    if rows:
        ctx.check("A.4 local rate at (xi, 0) (§12): once the risk is below 1e-6 of its start "
                  "it falls by q^2 per update, q = 1 - lr lambda_min (lr = 0.1); 1 - q^2 "
                  "within 1%",
                  "; ".join(f"{s}/{e:g}: {fmt(q, 7)}" for s, e, q, _ in rows),
                  "; ".join(f"{s}/{e:g}: {fmt(f, 7)}" for s, e, _, f in rows), ok)
    if slow:
        ctx.check("A.4 eps = 1/8 never gets within 1e-6 of its start risk in 60000 updates: "
                  "its error (0.02) is not small against eps, where the Hessian at (xi, 0) "
                  "sets the rate",
                  "q^2 " + ", ".join(fmt(q, 7) for _, _, q, _, _ in slow),
                  "last half fitted " + ", ".join(
                      f"{fmt(f, 7)} ((1 - f) / (1 - q^2) = {fmt((1 - f) / (1 - q), 3)})"
                      for _, _, q, f, _ in slow), None)
    return {"runs": main, "steps": steps}


def _figure(ctx, probs, limits, runs) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    ax = axes[0]
    for eps in EPSILONS:
        curves = [r["fit"].risk for (s, e, _), r in runs["runs"].items() if e == eps]
        if not curves:
            continue
        mean = np.mean(curves, axis=0)
        ax.semilogy(np.arange(mean.size), np.where(mean > 1e-30, mean, np.nan),
                    label=f"eps = {eps:g} ({len(curves)} seed{'s' * (len(curves) > 1)})")
    ax.set_xlabel("update")
    ax.set_ylabel("training risk (paper's scale)")
    ax.set_title(f"A.4 sigma_eps(s) = s + eps tanh s, eta 0.05, {runs['steps']} updates")
    ax.legend(fontsize=7)
    ax = axes[1]
    es = 2.0 ** -np.arange(1, 12)
    for s, pr in probs.items():
        vals = [np.linalg.eigvalsh(theory.zero_risk_hessian(
            pr.X, pr.xi, activation=_act(e), convention="paper"))[0] / e**2 for e in es]
        line = ax.semilogx(es, vals, ".-", lw=0.8, label=f"seed {s}")
        ax.axhline(limits["limits"][s], color=line[0].get_color(), ls=":", lw=0.8)
        ax.plot(EPSILONS, [P.ref(f"A4/{s}/{e:g}/hessian_minimum_over_epsilon_squared")
                           for e in EPSILONS], "x", color=line[0].get_color(), ms=7)
    ax.axhline(limits["population"], color="k", ls="--", lw=1, label="population limit")
    ax.set_xlabel("eps")
    ax.set_ylabel("lambda_min(H) / eps^2 at (xi, 0), paper's scale")
    ax.set_title("A.4 slow-direction curvature (x: authors, dotted: limits)")
    ax.legend(fontsize=7)
    ctx.save(fig, "e13_paper_weak.png")
