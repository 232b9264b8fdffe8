"""E5: fixed-point iterations against the spectral radius (docs/theory.md §3).

Symmetric ``A`` with eigenvalues spread over ``[-rho, rho]`` (so ``rho(A) = rho``
exactly and the asymptotic rate is ``rho``): Picard from ``Z0 = 0`` should need
about ``log(tol) / log(rho)`` iterations, damped Picard
``log(tol) / log(rho((1 - beta) I + beta A))``, and Anderson fewer than
Picard. A spectrum in ``[-1.5, 0.5]`` (``rho = 1.5``) makes Picard diverge
while damping with ``beta = 2/3`` converges at rate ``2/3``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .. import ConvergenceWarning, data, fixed_point
from ._common import fmt, pyplot

TOL = 1e-10
BETA = 0.5


def predicted(rate: float, tol: float = TOL) -> float:
    """``ceil(log(tol) / log(rate))``, ``inf`` for ``rate >= 1``."""
    if rate >= 1.0:
        return math.inf
    if rate <= 0.0:
        return 1.0
    return float(math.ceil(math.log(tol) / math.log(rate)))


def damped_rate(eigenvalues, beta: float) -> float:
    return float(np.max(np.abs(1.0 - beta + beta * np.asarray(eigenvalues))))


def _solve(A, B, X, method, damping=1.0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # non-convergence is a status here
        return fixed_point(X, A, B, method=method, tol=TOL, max_iter=50_000, damping=damping)


def within(measured: float, pred: float) -> bool:
    """The prediction is an upper estimate, tight to a factor 2.

    For symmetric ``A`` the relative residual after ``k`` steps is at most
    ``rate^k (1 + rate) / (1 - rate^(k+1))``, about ``2 rate^k``, so
    ``measured <= pred (1 + log 2 / |log tol|) + 1``; it is smaller when the
    slowest eigenvector carries little of ``X B^T`` (the constant in front of
    ``rate^k``), and we ask that it is not smaller than ``pred / 2``.
    """
    upper = pred * (1.0 + math.log(2.0) / abs(math.log(TOL))) + 1.0
    return 0.5 * pred <= measured <= upper


def run(ctx) -> None:
    m, d, n = (32, 16, 256) if ctx.quick else (64, 32, 1024)
    rhos = [0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99] + ([] if ctx.quick else [0.995])
    rng = ctx.rng(0)
    X = rng.standard_normal((n, d))
    B = rng.standard_normal((m, d)) / math.sqrt(d)
    unit = np.linspace(-1.0, 1.0, m)
    results = {}
    for rho in rhos:
        lam = rho * unit
        A = data.symmetric_with_spectrum(lam, seed=rng)
        Zs = np.linalg.solve(np.eye(m) - A, B @ X.T).T
        for method, damping in (("picard", 1.0), ("damped", BETA), ("anderson", 1.0)):
            res = _solve(A, B, X, "anderson" if method == "anderson" else "picard", damping)
            rate = rho if method == "picard" else damped_rate(lam, BETA)
            pred = predicted(rate) if method != "anderson" else math.nan
            err = float(np.linalg.norm(res.z - Zs) / np.linalg.norm(Zs))
            bound = res.residual / (1.0 - rate) if method != "anderson" else math.nan
            results[(rho, method)] = (res, pred, err, bound)
            ctx.record(f"{method} rho={rho}", {"m": m, "d": d, "n": n, "rho": rho,
                                               "method": method, "damping": damping, "tol": TOL},
                       status=res.status,
                       metrics={"n_iter": res.n_iter, "predicted_iters": pred,
                                "residual": res.residual, "rel_error": err,
                                "error_bound": bound},
                       history={"step": np.arange(res.history.size), "residual": res.history})

    # rho(A) >= 1 with every eigenvalue's real part < 1: Picard diverges, damping converges
    lam_bad = np.linspace(-1.5, 0.5, m)
    A_bad = data.symmetric_with_spectrum(lam_bad, seed=rng)
    beta_bad = 2.0 / 3.0
    bad = {"picard": _solve(A_bad, B, X, "picard"),
           "damped": _solve(A_bad, B, X, "picard", beta_bad),
           "anderson": _solve(A_bad, B, X, "anderson")}
    for method, res in bad.items():
        ctx.record(f"{method} rho=1.5", {"m": m, "d": d, "n": n, "rho": 1.5, "method": method,
                                         "damping": beta_bad if method == "damped" else 1.0,
                                         "tol": TOL},
                   status=res.status, metrics={"n_iter": res.n_iter, "residual": res.residual},
                   history={"step": np.arange(res.history.size), "residual": res.history})

    # --- checks
    pic = [(rho, results[(rho, "picard")]) for rho in rhos]
    ok = all(within(r[0].n_iter, r[1]) for _, r in pic)
    ctx.check("Picard iterations ~ log(tol)/log(rho) (§3), tol 1e-10, rho = "
              + ", ".join(fmt(r) for r in rhos) + "; holds: pred/2 <= measured <= 1.03 pred + 1",
              ", ".join(fmt(r[1]) for _, r in pic),
              ", ".join(str(r[0].n_iter) for _, r in pic), ok)
    dam = [(rho, results[(rho, "damped")]) for rho in rhos]
    ok = all(within(r[0].n_iter, r[1]) for _, r in dam)
    ctx.check(f"damped Picard (beta={BETA}) ~ log(tol)/log(rho((1-beta)I+beta A))",
              ", ".join(fmt(r[1]) for _, r in dam),
              ", ".join(str(r[0].n_iter) for _, r in dam), ok)
    and_ = [results[(rho, "anderson")][0] for rho in rhos]
    fewer = all(a.n_iter <= p[1][0].n_iter for a, p in zip(and_, pic, strict=True))
    same = max(results[(rho, "anderson")][2] for rho in rhos)
    ctx.check("Anderson (history 5) reaches the same fixed point in fewer iterations than "
              "Picard",
              "iters <= Picard; error vs LU <= 1e-7",
              ", ".join(str(a.n_iter) for a in and_) + f"; max rel. error {fmt(same)}",
              fewer and same <= 1e-7)
    worst = max(results[(rho, m_)][2] / results[(rho, m_)][3]
                for rho in rhos for m_ in ("picard", "damped"))
    ctx.check("error <= residual / (1 - rho) (a-posteriori bound, §3)",
              "error / bound <= 1", f"max error / bound = {fmt(worst)}", worst <= 1.0)
    pb, db, ab = bad["picard"], bad["damped"], bad["anderson"]
    pred_bad = predicted(damped_rate(lam_bad, beta_bad))
    ctx.check("rho(A) = 1.5, Re(eig) < 1: Picard fails, damping (beta=2/3) converges at "
              "rate 2/3",
              f"Picard fails; damped ~{fmt(pred_bad)} iters",
              f"Picard {pb.status}; damped {db.status} in {db.n_iter}; Anderson {ab.status} "
              f"in {ab.n_iter}",
              (not pb.converged) and db.converged and within(db.n_iter, pred_bad))

    # --- figure
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    ax = axes[0]
    grid = np.linspace(min(rhos), max(rhos), 200)
    ax.semilogy(grid, [predicted(r) for r in grid], "k-", lw=1, label="predicted, Picard")
    ax.semilogy(grid, [predicted(0.5 + 0.5 * r) for r in grid], "k--", lw=1,
                label=f"predicted, damped beta={BETA}")
    for method, mk in (("picard", "o"), ("damped", "s"), ("anderson", "^")):
        ax.semilogy(rhos, [results[(r, method)][0].n_iter for r in rhos], mk, label=method)
    ax.set_xlabel("spectral radius rho(A)")
    ax.set_ylabel(f"iterations to tol {TOL:g}")
    ax.set_title(f"E5 fixed-point iterations (m={m}, n={n})")
    ax.legend(fontsize=8)
    ax = axes[1]
    for method, style in (("picard", "-"), ("damped", "--"), ("anderson", ":")):
        res = results[(0.9, method)][0]
        ax.semilogy(res.history, style, label=f"{method}, rho=0.9")
    k = np.arange(results[(0.9, "picard")][0].history.size)
    ax.semilogy(k, 0.9**k, "k-", lw=0.6, label="rho^k")
    ax.semilogy(db.history, "-.", label="damped beta=2/3, rho=1.5")
    ax.set_ylim(TOL / 10, 10)
    ax.set_xlabel("iteration")
    ax.set_ylabel("relative residual")
    ax.legend(fontsize=7)
    ctx.save(fig, "e5_fixed_point_iterations.png")
