"""E12: the paper's Appendix A.3, backward approximations, against the authors' saved numbers.

Five backward rules put a factor ``f(a)``, ``a = b sigma'(s)``, where the exact
gradient has ``1 / (1 - a)``: exact, JFB (``1``), two terms (``1 + a``), three
terms (``1 + a + a^2``) and damped two terms (``0.75 + 0.25 a``:
``neumann_terms = 1``, ``neumann_damping = 1/2``).

* The scalar counterexample: one sample ``x = y = 1`` of the linear DEQ, risk
  ``(c / (1 - b) - 1)^2``, ``eta = 0.02`` (``lr = 0.04``), 5,000 steps from
  ``(sqrt 8, 0)`` and four starts 0.025 away. Two terms stall on the line
  ``b = -1`` where ``1 + a`` vanishes (docs/theory.md §12); the stall rate
  and the local rate of the other rules at their limits are predicted.
* The tanh problem: ``d = 20``, ``n = 8000``, ``xi`` a random unit vector,
  start ``(xi + delta, 0.15)`` with ``|delta| = 0.2``, ``eta = 0.2``, seeds
  100-104. Quick: seed 100 for 1,000 steps (the authors' pilot numbers are
  at that step); full: 40,000 steps, 5 seeds x the 5 rules.
"""

from __future__ import annotations

import math

import numpy as np

from .. import theory
from .._fixed_point import fixed_point
from .._gradients import loss_and_grad
from . import _paper as P
from ._common import fmt, pyplot

RISK_FLOOR = 1e-20
RATE_RTOL = 0.01
SEEDS = (100, 101, 102, 103, 104)
TOL = 1e-12  # the forward tolerance of the authors' tanh runs (an absolute residual, as ours)


def run(ctx) -> None:
    scalar = _counterexample(ctx)
    tanh = _tanh(ctx)
    _figure(ctx, scalar, tanh)


# ---------------------------------------------------------------- the scalar counterexample

def _counterexample(ctx) -> dict:
    X, y = np.ones((1, 1)), np.ones(1)
    starts = P.counterexample_starts()
    res = {}
    for m in P.METHODS:
        res[m] = [P.fit(X, y, s, eta=0.02, steps=5000, backward=m) for s in starts]
        for i, r in enumerate(res[m]):
            ctx.record(f"A.3 counterexample {m} start {i}",
                       {"model": "scalar linear DEQ", "backward": m, "eta": 0.02, "steps": 5000,
                        "c0": starts[i][0], "b0": starts[i][1]}, status=r.status,
                       metrics={"final_c": r.theta[0], "final_b": r.theta[1],
                                "final_risk": r.risk[-1]},
                       history=r.history if i == 0 else None)

    meas, pred, ok = [], [], True
    for m, rs in res.items():
        a_th = P.ref(f"A3/scalar/{m}/final_theta")
        a_r = [P.ref(f"A3/scalar/{m}/final_risk"), *P.ref(f"A3/scalar/{m}/nearby_final_risks")]
        d = P.max_abs_diff(rs[0].theta, a_th)
        risks = [r.risk[-1] for r in rs]
        good = (all(r.status == "max_steps" for r in rs) and d <= 1e-12
                and P.same_risk(risks, a_r, rtol=1e-6, floor=RISK_FLOOR))
        ok &= good
        pred.append(f"{P.LABELS[m]}: ({fmt(a_th[0], 6)}, {fmt(a_th[1], 6)}), risks "
                    + "/".join(fmt(v, 3) for v in a_r))
        meas.append(f"{P.LABELS[m]}: |d theta| {fmt(d, 2)}, risks "
                    + "/".join(fmt(v, 3) for v in risks))
    ctx.check("A.3 scalar counterexample (eta 0.02, 5000 steps) from (sqrt 8, 0) and four "
              "starts 0.025 away: final theta (first start) within 1e-12, risks within 1e-6 "
              f"(below {fmt(RISK_FLOOR)}: both below) "
              + P.cite("A3/scalar/exact/final_theta", "A3/scalar/exact/nearby_final_risks"),
              "; ".join(pred), "; ".join(meas), ok)

    # where each rule stalls (§12): the real roots of its factor, reached or not
    rows, ok = [], True
    for m, rs in res.items():
        bk, k, lam = P.THEORY_BACKWARD[m]
        roots = theory.backward_roots(bk, neumann_terms=k, damping=lam)
        b_end = np.array([r.theta[1] for r in rs])
        risk_end = np.array([r.risk[-1] for r in rs])
        # the exact limit line phi = 1 is met before b reaches a root below the start's
        # exact limit (b about -1.13): a root in between stops the run on it
        hit = [r for r in roots if -1.2 < r < 0.0]
        if hit:
            good = bool(np.all(np.abs(b_end - hit[0]) <= 1e-10) and np.all(risk_end > 1e-6))
        else:
            good = bool(np.all(risk_end <= RISK_FLOOR))
        ok &= good
        rows.append((m, roots, b_end, risk_end))
    ctx.check("A.3 why two terms stall (§12): a rule's step vanishes on the line b = r for "
              "every real root r of its factor f(a) (a = b on this linear problem); the "
              "runs pass b = 0 -> -1.13, so a root in (-1.2, 0) stops them on it with a "
              "non-zero risk, and without one they reach zero risk "
              + P.cite("A3/audit/scalar_displayed_two_term_final_risk"),
              "; ".join(f"{P.LABELS[m]}: roots "
                        + ("none" if r.size == 0 else ", ".join(fmt(v) for v in r))
                        for m, r, _, _ in rows)
              + " -> stall at b = -1 for two terms only",
              "; ".join(f"{P.LABELS[m]}: final b {fmt(b.min(), 6)} to {fmt(b.max(), 6)}, "
                        f"risk {fmt(rk.min(), 3)} to {fmt(rk.max(), 3)}"
                        for m, _, b, rk in rows), ok)

    rates, meas, ok = [], [], True
    if "neumann2" in res:
        fits = []
        for r in res["neumann2"]:
            q = theory.stall_rate(r.theta[0], 0.04)
            ex = r.risk - r.risk[-1]
            # the linear regime (excess below 1e-6 of the start), above the error of the limit
            # estimate risk[-1] (the excess left at step 5000 is about 1e-11)
            f, k0, k1 = P.tail_factor(ex, 1e-10 * r.risk[0], 1e-6 * r.risk[0])
            fits.append((q, f, k0, k1))
            ok &= P.rate_agrees(f, q, RATE_RTOL)
        rates.append("two terms -> b = -1: 1 - lr phi (phi - 1) = "
                     + ", ".join(fmt(q, 6) for q, *_ in fits))
        meas.append("two terms: risk - limit fitted " + ", ".join(fmt(f, 6) for _, f, *_ in fits))
    for m in ("exact", "jfb", "neumann3", "damped2"):
        if m not in res:
            continue
        bk, k, lam = P.THEORY_BACKWARD[m]
        qs, fs = [], []
        for r in res[m]:
            c, b = r.theta
            M = theory.step_matrix(np.ones((1, 1)), np.array([c]), b,
                                   np.array([c / (1.0 - b)]), backward=bk, neumann_terms=k,
                                   damping=lam)
            q = theory.gd_local_rate(M, 0.04)
            f = P.tail_factor(r.risk, 1e-28, 1e-6 * r.risk[0])[0]
            ok &= P.rate_agrees(f, q * q, RATE_RTOL)
            qs.append(q * q)
            fs.append(f)
        rates.append(f"{P.LABELS[m]} at its limit: q^2 = {fmt(min(qs), 6)} to {fmt(max(qs), 6)}")
        meas.append(f"{P.LABELS[m]}: fitted {fmt(min(fs), 6)} to {fmt(max(fs), 6)}")
    ctx.check("A.3 scalar counterexample, rates (§12): two terms approach the stall line "
              "b = -1 by the factor 1 - lr (phi - 1) phi f'(-1) per step (phi = c / 2); the "
              "other rules converge at their limit point by q^2 per step, q = max |1 - lr "
              "mu|, mu the eigenvalues of J_f^T J (the linearised approximate step); "
              f"1 - factor within {RATE_RTOL:.0%}, 5 starts each",
              "; ".join(rates), "; ".join(meas), ok)
    return res


# ---------------------------------------------------------------- the tanh problem

def _tanh(ctx) -> dict:
    quick = ctx.quick
    steps = 1000 if quick else int(P.ref("A3/tanh/config/steps"))
    seeds = (SEEDS[0],) if quick else SEEDS
    eta = float(P.ref("A3/tanh/config/eta"))
    probs = {s: P.tanh_problem(s) for s in SEEDS}

    # the data and starts: the initial risk of every seed (one forward solve each)
    r0 = {}
    for s, pr in probs.items():
        y = np.tanh(pr.X @ pr.xi)
        lg = loss_and_grad("single_index", pr.X, y, np.array([[pr.theta0[-1]]]),
                           pr.theta0[None, :-1].copy(), activation="tanh", tol=1e-14)
        r0[s] = 2.0 * lg.loss
    gap = max(abs(r0[s] / P.ref(f"A3/tanh/{s}/exact/initial_risk") - 1.0) for s in SEEDS)
    ctx.check("A.3 tanh problem (d = 20, n = 8000): the authors' data and starts, drawn with "
              "default_rng(seed) in their order, give their initial risks (seeds 100-104), "
              "rel. diff <= 1e-10 " + P.cite("A3/tanh/100/exact/initial_risk"),
              ", ".join(fmt(P.ref(f"A3/tanh/{s}/exact/initial_risk"), 8) for s in SEEDS),
              ", ".join(fmt(r0[s], 8) for s in SEEDS) + f"; max rel. diff {fmt(gap, 2)}",
              gap <= 1e-10)

    # the Hessian at the target (xi, 0), seed 100
    pr = probs[100]
    H = theory.zero_risk_hessian(pr.X, pr.xi, activation="tanh")
    Hfd = _fd_hessian(pr)
    herr = float(np.max(np.abs(H - Hfd)) / np.max(np.abs(H)))
    lam = np.linalg.eigvalsh(theory.zero_risk_hessian(pr.X, pr.xi, activation="tanh",
                                                      convention="paper"))
    a_lam = P.ref("A3/tanh/pilot_hessian_min_eigenvalue")
    ctx.check("A.3 tanh, seed 100: Hessian at the zero-risk point (xi, 0) (§12): J^T J / n, "
              "J = sech^2(X xi) [X, tanh(X xi)] (deqbench's loss; x2 in the paper's), against "
              "central differences of deqbench's gradients; its smallest eigenvalue in the "
              "paper's scale to the authors' 4 digits "
              + P.cite("A3/tanh/pilot_hessian_min_eigenvalue"),
              f"differences <= 1e-6 of max |H|; lambda_min {fmt(a_lam, 4)}",
              f"max difference {fmt(herr, 2)}; lambda_min {fmt(lam[0], 6)} (rounds to "
              f"{float(f'{lam[0]:.4g}'):g}), lambda_max {fmt(lam[-1], 4)}",
              herr <= 1e-6 and float(f"{lam[0]:.4g}") == a_lam)

    # the runs
    runs = {}
    for s in seeds:
        pr = probs[s]
        y = np.tanh(pr.X @ pr.xi)
        ye = np.tanh(pr.X_eval @ pr.xi)
        for m in P.METHODS:
            r = P.fit(pr.X, y, pr.theta0, eta=eta, steps=steps, activation="tanh", backward=m,
                      tol=TOL, record_every=1)
            fp = fixed_point(pr.X_eval, np.array([[r.b]]), r.w[None, :].copy(),
                             activation="tanh", tol=1e-13)
            ev = float(np.mean((fp.z[:, 0] - ye) ** 2))
            pe = float(np.linalg.norm(r.theta - pr.target))
            runs[(s, m)] = dict(fit=r, pe=pe, ev=ev)
            ctx.record(f"A.3 tanh seed {s} {m}", {"model": "scalar DEQ", "activation": "tanh",
                                                  "backward": m, "seed": s, "eta": eta,
                                                  "steps": steps, "d": 20, "n": 8000},
                       status=r.status, metrics={"final_train_risk": r.risk[-1],
                                                 "final_eval_risk": ev, "parameter_error": pe,
                                                 "max_fp_iters": int(r.history["fp_iters"].max())},
                       history={k: r.history[k] for k in ("step", "risk", "grad_norm",
                                                          "fp_iters", "adj_iters")})

    if quick:
        e = runs[(100, "exact")]
        a_pe, a_r = P.ref("A3/tanh/pilot_parameter_error"), P.ref("A3/tanh/pilot_risk")
        same = (float(f"{e['pe']:.4g}") == a_pe and float(f"{e['fit'].risk[-1]:.4g}") == a_r)
        ctx.check("A.3 tanh, seed 100, exact backward, 1000 steps (the authors' pilot): "
                  "parameter error |theta - (xi, 0)| and risk to their 4 digits "
                  + P.cite("A3/tanh/pilot_parameter_error", "A3/tanh/pilot_risk"),
                  f"{fmt(a_pe, 4)}, {fmt(a_r, 4)}",
                  f"{fmt(e['pe'], 7)}, {fmt(e['fit'].risk[-1], 7)}",
                  e["fit"].status == "max_steps" and same)
        ctx.check("A.3 tanh, seed 100, 1000 steps, the other rules (no authors' numbers at "
                  "this step)", "not predicted",
                  "; ".join(f"{P.LABELS[m]}: parameter error {fmt(r['pe'], 5)}, risk "
                            f"{fmt(r['fit'].risk[-1], 4)}" for (s, m), r in runs.items()
                            if m != "exact"), None)
    else:
        _tanh_full(ctx, runs, probs, eta)
    return {"runs": runs, "steps": steps}


def _tanh_full(ctx, runs, probs, eta) -> None:
    # final numbers against nonlinear_runs.json, within what the forward tolerance allows
    floors = {s: P.forward_floor(theory.zero_risk_hessian(probs[s].X, probs[s].xi,
                                                          activation="tanh"), TOL)
              for s in SEEDS}
    worst, ok, lines = {"pe": 0.0, "tr": 0.0, "ev": 0.0}, True, []
    for (s, m), r in runs.items():
        a = {k: P.ref(f"A3/tanh/{s}/{m}/{k}") for k in ("final_parameter_error",
                                                        "final_train_risk", "final_eval_risk")}
        rel = 2.0 * floors[s] / a["final_parameter_error"]  # risks are quadratic in it
        worst["pe"] = max(worst["pe"], abs(r["pe"] / a["final_parameter_error"] - 1.0))
        worst["tr"] = max(worst["tr"], abs(r["fit"].risk[-1] / a["final_train_risk"] - 1.0))
        worst["ev"] = max(worst["ev"], abs(r["ev"] / a["final_eval_risk"] - 1.0))
        ok &= (r["fit"].status == "max_steps"
               and P.floor_agrees(r["pe"], a["final_parameter_error"], floors[s])
               and abs(r["fit"].risk[-1] / a["final_train_risk"] - 1.0) <= 2.0 * rel
               and abs(r["ev"] / a["final_eval_risk"] - 1.0) <= 2.0 * rel)
    for m in P.METHODS:
        pe = [runs[(s, m)]["pe"] for s in SEEDS if (s, m) in runs]
        if pe:
            lines.append(f"{P.LABELS[m]}: mean parameter error {fmt(np.mean(pe), 4)} (authors "
                         f"{fmt(P.ref(f'A3/tanh/summary/{m}/final_parameter_error/mean'), 4)})")
    ctx.check("A.3 tanh, 5 seeds x the 5 rules, 40000 steps: final parameter error "
              "within 2 floor, train and held-out risks within 4 floor / error (relative), "
              "floor = sqrt(lambda_max) tol / lambda_min: how far a forward tolerance tol = "
              "1e-12 can move each run's limit (§12) "
              + P.cite("A3/tanh/100/exact/final_parameter_error"),
              "; ".join(lines) + "; floors " + ", ".join(fmt(f, 2) for f in floors.values()),
              f"max rel. diff: parameter error {fmt(worst['pe'], 2)}, train risk "
              f"{fmt(worst['tr'], 2)}, held-out risk {fmt(worst['ev'], 2)}", ok)
    # the local rate at (xi, 0) against each exact run's tail
    fits, ok = [], True
    for s in SEEDS:
        pr = probs[s]
        q = theory.gd_local_rate(theory.zero_risk_hessian(pr.X, pr.xi, activation="tanh"),
                                 2.0 * eta)
        risk = runs[(s, "exact")]["fit"].risk
        f, k0, k1 = P.tail_factor(risk, 1e-22, 1e-6 * risk[0])
        ok &= P.rate_agrees(f, q * q, RATE_RTOL)
        fits.append((q * q, f, k0, k1))
    ctx.check("A.3 tanh, exact: local rate at (xi, 0) (§12): the risk falls like q^2k, "
              "q = max |1 - lr lambda| from the Hessian, once below 1e-6 of its start; "
              f"1 - q^2 within {RATE_RTOL:.0%}",
              "q^2 = " + ", ".join(fmt(q, 7) for q, *_ in fits),
              "fitted " + ", ".join(f"{fmt(f, 7)} ({a}-{b})" for _, f, a, b in fits), ok)


def _fd_hessian(pr, h: float = 1e-5) -> np.ndarray:
    """Central differences of deqbench's gradients at ``(xi, 0)`` (loss with the 1/2)."""
    y = np.tanh(pr.X @ pr.xi)
    p0 = pr.target
    cols = []
    for j in range(p0.size):
        g = []
        for sgn in (1.0, -1.0):
            p = p0.copy()
            p[j] += sgn * h
            r = loss_and_grad("single_index", pr.X, y, np.array([[p[-1]]]), p[None, :-1].copy(),
                              activation="tanh", tol=1e-14)
            g.append(np.r_[r.grad_B[0], r.grad_A[0, 0]])
        cols.append((g[0] - g[1]) / (2.0 * h))
    H = np.column_stack(cols)
    return 0.5 * (H + H.T)


def _figure(ctx, scalar, tanh) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    X, y = np.ones((1, 1)), np.ones(1)
    ax = axes[0]
    for m, rs in scalar.items():
        r = rs[0]
        ax.semilogy(r.history["step"], np.where(r.risk >= 1e-30, r.risk, np.nan),
                    label=P.LABELS[m])
    ax.set_xlabel("step")
    ax.set_ylabel("risk (c / (1 - b) - 1)^2")
    ax.set_title("A.3 counterexample, from (sqrt 8, 0)")
    ax.legend(fontsize=7)
    ax = axes[1]
    for m in scalar:
        traj = P.trajectory(X, y, P.counterexample_starts()[0], eta=0.02, steps=1500,
                            every=15, backward=m)
        ax.plot(traj[:, 0], traj[:, 1], ".-", ms=2, lw=0.7, label=P.LABELS[m])
    g = np.linspace(1.9, 2.9, 50)
    ax.plot(g, 1.0 - g, "--", color="green", lw=1, label="zero risk c = 1 - b")
    ax.axhline(-1.0, color="red", ls=":", lw=1, label="b = -1: 1 + a = 0")
    ax.set_xlabel("c")
    ax.set_ylabel("b")
    ax.set_title("A.3 counterexample: theta plane (first 1500 steps)")
    ax.legend(fontsize=7)
    ax = axes[2]
    for m in P.METHODS:
        curves = [r["fit"].risk for (s, mm), r in tanh["runs"].items() if mm == m]
        if not curves:
            continue
        mean = np.mean(curves, axis=0)
        ax.semilogy(np.arange(mean.size), np.where(mean >= 1e-30, mean, np.nan),
                    label=f"{P.LABELS[m]} ({len(curves)} seed{'s' * (len(curves) > 1)})")
    ax.set_xlabel("step")
    ax.set_ylabel("training risk (mean over seeds)")
    ax.set_title(f"A.3 tanh, d = 20, n = 8000, eta 0.2, {tanh['steps']} steps")
    ax.legend(fontsize=7)
    if math.isfinite(ax.get_ylim()[0]):
        ax.set_ylim(bottom=max(ax.get_ylim()[0], 1e-18))
    ctx.save(fig, "e12_paper_backward.png")
