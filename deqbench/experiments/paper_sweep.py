"""The paper's Appendix A.4 as a sweep run function: ``run = "paper_a4"`` in a grid.

One run is one of the authors' 15 runs: the problem of their seed
(``numpy.random.default_rng(paper_seed)`` draws as their script does), the link
``sigma_eps(s) = s + eps tanh s``, ``eta = 0.05`` (``lr = 0.1``), 60,000 updates,
Newton to ``tol`` per sample. Its metrics sit next to the authors' saved numbers
(``nonlinearity/summary.json``) where the run is one of theirs. The sweep's own
seed does not enter: the paper's seed is a grid parameter.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..sweep.grid import _float, _int
from . import _paper as P

__all__ = ["run_a4"]


def run_a4(params: dict, seed: np.random.SeedSequence) -> dict:
    """One A.4 run: final parameter error and risks (the paper's risk, twice
    deqbench's loss), the authors' where they saved them, the risk history."""
    from .._fixed_point import fixed_point

    eps, steps = params["eps"], params["steps"]
    pr = P.weak_problem(params["paper_seed"])
    z, ze = pr.X @ pr.xi, pr.X_eval @ pr.xi
    y, ye = z + eps * np.tanh(z), ze + eps * np.tanh(ze)
    act = f"skip_tanh({eps!r})"
    kw = dict(eta=params["eta"], activation=act, tol=params["tol"])
    P.fit(pr.X[:8], y[:8], pr.theta0, steps=1, record_every=1, **kw)  # compiled before timing
    t0 = time.perf_counter()
    fit = P.fit(pr.X, y, pr.theta0, steps=steps, record_every=params["record_every"], **kw)
    elapsed = time.perf_counter() - t0
    fp = fixed_point(pr.X_eval, np.array([[fit.b]]), fit.w[None, :].copy(), activation=act,
                     tol=1e-13)
    metrics = {"parameter_error": float(np.linalg.norm(fit.theta - pr.target)),
               "final_train_risk": float(fit.risk[-1]),
               "final_eval_risk": float(np.mean((fp.z[:, 0] - ye) ** 2)),
               "train_s": elapsed, "time_per_step_s": elapsed / steps}
    key = f"A4/{params['paper_seed']}/{eps:g}/final_parameter_error"
    entry = P.reference()["values"].get(key)
    ours = (steps, params["eta"]) == (60000, 0.05)  # the authors' protocol
    metrics["authors_parameter_error"] = float(entry["value"]) if entry and ours else math.nan
    hist = {k: np.asarray(fit.history[k]) for k in ("step", "risk", "grad_norm")}
    return {"status": fit.status, "metrics": metrics, "history": hist}


run_a4.PARAMS = {
    "paper_seed": (_int(0), None),
    "eps": (_float(0.0), None),
    "steps": (_int(1), 60000),
    "eta": (_float(0.0), 0.05),
    "tol": (_float(0.0), 1e-12),
    "record_every": (_int(1), 100),
}
run_a4.REQUIRED = ("paper_seed", "eps")
