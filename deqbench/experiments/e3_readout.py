"""E3: read-out DEQ (docs/theory.md §2, §7).

Realizable teacher ``y = sigma(theta . x)`` (``L* = 0``), one step size
``lr = 0.5 / beta`` (``beta``: the largest Hessian norm measured along the
paths of the smooth links inside the theorems).

* Inside (``gamma <= sigma' <= Gamma``, ``gamma > 0``): identity, the smooth
  leaky link, leaky ReLU. At every step the PL inequality
  ``||g_k||^2 >= mu_k L_k``, ``mu_k = 2 gamma^4 lmin^2 ||u||^2 / (Gamma^2 lmax
  lambda_max(Q_k))`` with ``lambda_max(Q_k) <= q_0 + tr(Q_k - Q_0)``.
* The smooth links (identity, smooth leaky): every step's factor below
  ``1 - lr mu_k (1 - beta lr / 2)``; the whole-run verdict is reported
  ("vacuous" when ``1 - q < 1e-3``: the constant is loose). Leaky ReLU is not
  globally smooth: its rate is a local statement, reported.
* No global ``gamma > 0`` (tanh, sigmoid, softplus: ``sigma' > 0`` with infimum 0;
  gelu: ``sigma'`` negative somewhere): local statements with ``gamma_k``,
  ``Gamma_k`` the extremes of ``sigma'`` over the segments between the student's
  and the teacher's pre-activations at step ``k`` (replayed path). At every
  step with ``gamma_k > 0`` the PL inequality with that local ``mu_k``; every
  step's factor below ``1 - lr mu_k (1 - beta lr / 2)`` (1 where ``gamma_k <=
  0``); the run's verdict against the largest of those factors is "local"
  (never "holds": the constant is measured on this path, not global) or
  "vacuous" (``gamma_k <= 0`` somewhere, or ``1 - q < 1e-3``).
* Outside (relu: ``sigma' = 0`` on a half-line and a kink): reported.
* Gradient flow, smooth leaky link: ``L(t) <= L(0) exp(-mu t)`` up to
  ``t = 5 / mu`` (the envelope falls to ``e^-5 L(0)``, so it can fail).
"""

from __future__ import annotations

import numpy as np

from .. import data, theory
from .._flow import flow
from .._training import train
from ._common import (
    envelope_ok,
    fmt,
    local_bounds_along_path,
    path_smoothness,
    pyplot,
    safe_lr,
    step_ratios_ok,
)

SMOOTH = ("identity", "smooth_leaky(0.5)")
INSIDE = SMOOTH + ("leaky_relu(0.5)",)
LOCAL = ("tanh", "sigmoid", "softplus", "gelu")
OUTSIDE = ("relu",)


def run(ctx) -> None:
    m, d, n = (8, 8, 512) if ctx.quick else (32, 32, 2048)
    steps = 500 if ctx.quick else 1500
    A0, B0 = data.init_params(d, m, scale_A=0.5, scale_B=1.0, seed=ctx.seed(0, 1))
    Q0 = theory.invariant(A0, B0)
    teachers = {act: data.single_index_teacher(n, d, activation=act, seed=ctx.seed(0, 0))
                for act in INSIDE + LOCAL + OUTSIDE}
    # exact (direct) solves: with Picard to tol = 1e-10 the forward error leaves a
    # first-order term in the drift of Q, and the §5 identity's gap reached 7.6e-8 at the
    # full size (1e-13 with direct solves)
    kw = dict(L_star=0.0, sufficient_stats=False, solver="direct")
    lr = min(safe_lr("readout", X, y, A0, B0, fraction=0.5, steps=steps, activation=act,
                     **kw)[0] for act, (X, y, _) in teachers.items() if act in SMOOTH)
    runs = {}
    q0 = np.linalg.eigvalsh(Q0)[-1]
    for act in INSIDE + LOCAL + OUTSIDE:
        X, y, theta = teachers[act]
        res = train("readout", X, y, A0, B0, lr=lr, steps=steps, activation=act,
                    record_every=1, **kw)
        h = res.history
        L0 = float(h["loss"][0])
        row = dict(res=res, L0=L0, emp=theory.empirical_factor(h["loss"], 0.0, h["step"]))
        if act in INSIDE:
            mu1 = theory.pl_constant("readout", X, np.eye(m), activation=act)
            mu_k = mu1 / (q0 + np.maximum(h["drift_trace"], 0.0))
            pl = h["grad_norm"] ** 2 / (mu_k * h["loss"])
            sel = h["loss"] > 1e3 * np.finfo(float).eps * L0
            row["pl_min"] = float(np.min(pl[sel])) if sel.any() else float("nan")
        # lr beta for every link (docs/theory.md §7: the GD factor needs lr beta <= 1;
        # for the links outside the theorem it is reported only)
        beta = path_smoothness("readout", X, y, A0, B0, lr=lr, steps=steps,
                               activation=act, points=4 if act in SMOOTH + LOCAL else 2,
                               **kw)
        row["lr_beta"] = lr * beta
        if act in SMOOTH:
            q = theory.predicted_factor("readout", X, Q0, lr, smoothness=beta, L0=L0,
                                        L_star=0.0, activation=act)
            bounds = theory.step_factor_bounds("readout", X, Q0, lr,
                                               h["drift_trace"][:-1], smoothness=beta,
                                               activation=act)
            ok, worst, judged = step_ratios_ok(h["loss"], L0, bounds)
            row.update(q=q, ok=ok, worst=worst, judged=judged,
                       verdict=theory.rate_check(h["loss"], 0.0, q, h["step"])["verdict"])
        if act in LOCAL:
            row.update(_local_rate(X, y, theta, A0, B0, Q0, lr, beta, h, act))
        runs[act] = row
        ctx.record(f"readout {act}", {"model": "readout", "activation": act, "m": m,
                                           "d": d, "n": n, "lr": lr, "steps": steps},
                   status=res.status,
                   metrics={"predicted_factor": row.get("q", float("nan")),
                            "empirical_factor": row["emp"],
                            "rate_verdict": row.get("verdict", "not applicable"),
                            "lr_beta": row.get("lr_beta", float("nan")),
                            "min_pl_ratio": row.get("pl_min", float("nan")), "loss0": L0,
                            "final_loss": float(h["loss"][-1]),
                            "max_invariant_drift": float(np.nanmax(h["invariant_drift"]))},
                   history=h)
    ins = [runs[a] for a in INSIDE]
    ctx.check("read-out DEQ, links inside the theorem (" + ", ".join(INSIDE) + "): PL "
              "inequality ||g_k||^2 >= mu_k (L_k - L*) at every step (§7)",
              "min_k ||g_k||^2 / (mu_k L_k) >= 1",
              ", ".join(fmt(r["pl_min"], 3) for r in ins),
              all(np.isfinite(r["pl_min"]) and r["pl_min"] >= 1.0 - 1e-9 for r in ins))
    sm = [runs[a] for a in SMOOTH]
    ctx.check(f"read-out DEQ, smooth links ({', '.join(SMOOTH)}), GD lr = {fmt(lr, 3)} "
              "(0.5/beta): every step's L_k+1/L_k <= 1 - lr mu_k (1 - beta lr/2)",
              "lr beta = " + ", ".join(fmt(r["lr_beta"], 3) for r in sm)
              + "; q = " + ", ".join(fmt(r["q"], 5) for r in sm),
              "max ratio - bound " + ", ".join(fmt(r["worst"], 3) for r in sm) + "; fitted "
              + ", ".join(fmt(r["emp"], 4) for r in sm) + "; verdicts "
              + ", ".join(r["verdict"] for r in sm),
              all(r["ok"] and r["lr_beta"] <= 1.0 and r["verdict"] in ("holds", "vacuous")
                  for r in sm))
    lk = runs["leaky_relu(0.5)"]
    ctx.check("read-out DEQ, leaky_relu(0.5): inside the flow theorem, not globally smooth; "
              "its GD rate is local (no sample may cross the kink in a step)",
              "no global GD factor",
              f"{lk['res'].status}, loss {fmt(lk['L0'])} -> "
              f"{fmt(lk['res'].history['loss'][-1])}, fitted {fmt(lk['emp'], 4)}, lr beta "
              f"{fmt(lk['lr_beta'], 3)} (Hessian by differences across the kink: an estimate)",
              None)
    lo = [runs[a] for a in LOCAL]
    ctx.check(f"read-out DEQ, links with no global gamma > 0 ({', '.join(LOCAL)}): local "
              "statements (§7) with gamma_k, Gamma_k the extremes of sigma' between student "
              "and teacher pre-activations at step k: ||g_k||^2 >= mu_k L_k where gamma_k > "
              "0, and every step's L_k+1/L_k <= 1 - lr mu_k (1 - beta lr/2)",
              "; ".join(f"{a}: gamma_k in [{fmt(r['gamma_min'], 3)}, "
                        f"{fmt(r['gamma_max'], 3)}], lr beta {fmt(r['lr_beta'], 3)}, local q "
                        f"{fmt(r['q'], 5)}" for a, r in zip(LOCAL, lo, strict=True)),
              "; ".join(f"{a}: min PL ratio {fmt(r['pl_min'], 3)} over {r['pl_judged']} "
                        f"steps, max ratio - bound {fmt(r['worst'], 3)}, fitted "
                        f"{fmt(r['emp'], 4)}, {r['verdict']}, replay gap "
                        f"{fmt(r['replay_gap'], 2)}" for a, r in zip(LOCAL, lo, strict=True)),
              all(r["ok"] and (r["pl_judged"] == 0 or r["pl_min"] >= 1.0 - 1e-9)
                  and r["lr_beta"] <= 1.0 and r["verdict"] in ("local", "vacuous")
                  and r["replay_gap"] <= 1e-6 for r in lo))
    ctx.check(f"read-out DEQ outside the theorem ({', '.join(OUTSIDE)}; gamma = 0): "
              "no rate predicted",
              "no guarantee",
              "; ".join(f"{a}: {runs[a]['res'].status}, loss {fmt(runs[a]['L0'])} -> "
                        f"{fmt(runs[a]['res'].history['loss'][-1])}, fitted "
                        f"{fmt(runs[a]['emp'], 4)}, lr beta {fmt(runs[a]['lr_beta'], 3)}"
                        for a in OUTSIDE), None)
    # gradient flow, smooth leaky link: exp(-mu t) up to t = 5 / mu
    act = "smooth_leaky(0.5)"
    X, y, _ = teachers[act]
    mu = theory.pl_constant("readout", X, Q0, activation=act)
    fr = flow("readout", X, y, A0, B0, t_end=5.0 / mu, rtol=1e-8, atol=1e-12,
              activation=act, L_star=0.0, max_steps=20_000)
    hf = fr.history
    env_ok, worst = envelope_ok(hf["loss"], hf["t"], mu)
    ctx.record(f"flow readout {act}", {"model": "readout", "activation": act,
                                            "m": m, "d": d, "n": n, "t_end": 5.0 / mu},
               status=fr.status, metrics={"mu": mu, "envelope_worst_ratio": worst,
                                          "final_loss": float(hf["loss"][-1])},
               history=hf)
    ctx.check(f"read-out DEQ gradient flow ({act}): L(t) <= L(0) exp(-mu t) up to t = 5/mu "
              "(§7)",
              f"mu = {fmt(mu, 3)}; L(5/mu) <= {fmt(hf['loss'][0] * np.exp(-5.0))}",
              f"{fr.status}; max L(t) / envelope {fmt(worst, 3)}; L(5/mu) = "
              f"{fmt(hf['loss'][-1])}",
              fr.status == "finished" and env_ok)
    gaps = [abs(r["res"].history["drift_trace"][-1] - lr**2 * float(
        np.sum(r["res"].history["grad_norm"][:-1] ** 2)))
        / max(r["res"].history["drift_trace"][-1], 1e-300) for r in runs.values()]
    ctx.check("read-out DEQ: tr(Q_K - Q_0) = lr^2 sum ||g_k||^2 for every link (§5 holds for "
              "any sigma)",
              "relative gap <= 1e-8", f"max relative gap {fmt(max(gaps))}",
              max(gaps) <= 1e-8)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for act, r in runs.items():
        h, emp, q = r["res"].history, r["emp"], r.get("q")
        line = ax.semilogy(h["step"], h["loss"], label=f"{act} (fitted {emp:.4f})")
        if act in SMOOTH:
            ax.semilogy(h["step"], h["loss"][0] * q ** h["step"].astype(float), "--",
                        color=line[0].get_color(), lw=0.8, label=f"{act} envelope q={q:.4f}")
    ax.set_ylim(1e-16, None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (L* = 0)")
    ax.set_title(f"E3 read-out DEQ, m=d={m}, lr={lr:.3g}; dashed: predicted envelope")
    ax.legend(fontsize=7)
    ctx.save(fig, "e3_readout.png")


def _local_rate(X, y, theta, A0, B0, Q0, lr, beta, h, act) -> dict:
    """The local rate statement of docs/theory.md §7 for a link with no global
    ``gamma > 0``, judged on the history ``h`` of the run."""
    steps = int(h["step"][-1])
    gam, Gam, L = local_bounds_along_path(X, y, theta, A0, B0, lr=lr, steps=steps,
                                          activation=act)
    L0 = float(h["loss"][0])
    mu_k = theory.pl_constant("readout", X, np.eye(Q0.shape[0]), activation=act,
                              derivative_bounds=(gam, Gam)) / (
        np.linalg.eigvalsh(Q0)[-1] + np.maximum(h["drift_trace"], 0.0))
    sel = (gam > 0.0) & (h["loss"] > 1e3 * np.finfo(float).eps * L0)
    pl = h["grad_norm"][sel] ** 2 / (mu_k[sel] * h["loss"][sel])
    bounds = theory.step_factor_bounds("readout", X, Q0, lr, h["drift_trace"][:-1],
                                       smoothness=beta, activation=act,
                                       derivative_bounds=(gam[:-1], Gam[:-1]))
    ok, worst, judged = step_ratios_ok(h["loss"], L0, bounds)
    q = float(np.max(bounds))  # the largest local factor: a bound on the fitted one
    return dict(q=q, ok=ok, worst=worst, judged=judged, gamma_min=float(np.min(gam)),
                gamma_max=float(np.max(gam)), pl_judged=int(sel.sum()),
                pl_min=float(np.min(pl)) if sel.any() else float("nan"),
                replay_gap=float(np.max(np.abs(L - h["loss"])) / L0),
                verdict=theory.rate_check(h["loss"], 0.0, q, h["step"], local=True)["verdict"])
