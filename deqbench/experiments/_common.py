"""What every reproduce experiment shares: the context it records into, checks, figures."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Seeds of the experiments: SeedSequence(ROOT_SEED).spawn(...) per experiment.
ROOT_SEED = 20251121


@dataclass
class Check:
    """One row of summary.md: a prediction of docs/theory.md next to its measurement.

    ``holds`` is True / False, or None for quantities the theory does not
    predict (reported only).
    """

    experiment: str
    claim: str
    predicted: str
    measured: str
    holds: bool | None

    @property
    def verdict(self) -> str:
        return {True: "yes", False: "**NO**", None: "reported"}[self.holds]


@dataclass
class Context:
    """Collects the runs, checks and figures of one experiment."""

    name: str
    quick: bool
    fig_dir: Path
    rows: list = field(default_factory=list)
    hists: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)
    figures: list = field(default_factory=list)

    def seed(self, *key: int) -> np.random.SeedSequence:
        """A SeedSequence for this experiment: ``SeedSequence(ROOT_SEED, spawn_key=(E, *key))``."""
        e = int(self.name.lstrip("E"))
        return np.random.SeedSequence(ROOT_SEED, spawn_key=(e, *key))

    def rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng(self.seed(*key))

    def record(self, label: str, params: dict, *, status: str = "ok", metrics=None,
               history=None, keep: int = 400) -> str:
        """Add one run to runs.csv (and its history, thinned to about ``keep`` rows)."""
        rid = hashlib.sha256(json.dumps([self.name, label, params], sort_keys=True,
                                        default=str).encode()).hexdigest()[:16]
        row = {"run_id": rid, "experiment": self.name, "label": label, "status": status}
        row.update({k: _plain(v) for k, v in params.items()})
        row.update({k: _plain(v) for k, v in (metrics or {}).items()})
        self.rows.append(row)
        if history:
            h = {k: np.asarray(v, dtype=float) for k, v in history.items()}
            n = len(next(iter(h.values())))
            idx = thin(n, keep)
            self.hists[rid] = {k: v[idx].tolist() for k, v in h.items()}
        return rid

    def check(self, claim: str, predicted: str, measured: str, holds: bool | None) -> None:
        self.checks.append(Check(self.name, claim, predicted, measured,
                                 None if holds is None else bool(holds)))

    def save(self, fig, name: str) -> Path:
        import matplotlib.pyplot as plt

        path = self.fig_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        tmp = path.with_name(f".{path.stem}.tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        tmp.replace(path)
        self.figures.append(path.name)
        return path


def thin(n: int, keep: int) -> np.ndarray:
    """Indices of about ``keep`` log-and-linearly spaced entries of ``range(n)``, ends included."""
    if n <= keep:
        return np.arange(n)
    lin = np.linspace(0, n - 1, keep // 2)
    log = np.geomspace(1, n, keep // 2) - 1
    return np.unique(np.concatenate([lin, log, [0, n - 1]]).round().astype(int))


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    return v


def fmt(x, digits: int = 3) -> str:
    """Short number: ``1.23e-05``, ``0.123``, ``12``; ``nan`` / ``inf`` spelt out."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == int(x) and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.{digits}g}"


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def path_smoothness(model, X, Y, A0, B0, *, lr, steps, points=4, **train_kw) -> float:
    """Largest Hessian norm (:func:`deqbench.theory.smoothness`) at ``points + 1``
    parameters along the GD path ``A0, B0 -> step steps`` (re-run to each
    checkpoint): the measured ``beta`` of docs/theory.md §7. An estimate from
    samples of the path, not a bound between them."""
    from .. import theory
    from .._training import train

    act = train_kw.get("activation", "identity")
    u = train_kw.get("u")
    beta = theory.smoothness(model, X, Y, A0, B0, u=u, activation=act)
    for k in np.unique(np.linspace(0, steps, points + 1).round().astype(int))[1:]:
        r = train(model, X, Y, A0, B0, lr=lr, steps=int(k), record_every=None, **train_kw)
        beta = max(beta, theory.smoothness(model, X, Y, r.A, r.B, u=u, activation=act))
    return beta


def local_bounds_along_path(X, y, theta, A0, B0, *, lr, steps, activation, u=None):
    """The local derivative bounds ``(gamma_k, Gamma_k)`` of docs/theory.md §7
    (:func:`deqbench.theory.local_derivative_bounds`) at steps ``0..steps`` of
    the readout GD path from ``A0, B0`` towards the teacher ``theta``,
    and its losses ``L_k``: the path is replayed with exact (direct) solves,
    since :func:`deqbench.train` records no pre-activations. Compare ``L_k``
    with the run's history to see that it is the same path."""
    from .. import theory
    from .._gradients import loss_and_grad

    A, B = np.array(A0, dtype=float), np.array(B0, dtype=float)
    gamma, Gamma, loss = (np.empty(steps + 1) for _ in range(3))
    for k in range(steps + 1):
        gamma[k], Gamma[k] = theory.local_derivative_bounds(X, A, B, theta, u=u,
                                                            activation=activation)
        loss[k], gA, gB, _ = loss_and_grad("readout", X, y, A, B, u=u,
                                           activation=activation, solver="direct")
        A -= lr * gA
        B -= lr * gB
    return gamma, Gamma, loss


def step_ratios_ok(excess, L0, bounds) -> tuple[bool, float, int]:
    """Whether every step's ``excess[k+1] / excess[k] <= bounds[k]``, up to the rounding
    of ``L - L*`` (``8 eps L0`` on each excess), where both excesses are above
    ``1e6 eps L0``; a NaN bound or ratio fails. Returns ``(ok, worst ratio - bound,
    steps judged)``."""
    eps = np.finfo(float).eps
    e = np.asarray(excess, dtype=float)
    b = np.asarray(bounds, dtype=float)[: e.size - 1]
    with np.errstate(divide="ignore", invalid="ignore"):  # zero excess: not judged below
        ratio = e[1:] / e[:-1]
    judged = (e[:-1] > 1e6 * eps * L0) & (e[1:] > 1e6 * eps * L0)
    if not judged.any():
        return False, math.nan, 0
    gap = ratio[judged] - b[judged]
    slack = 1e-12 + 8.0 * eps * L0 * (1.0 / e[1:][judged] + ratio[judged] / e[:-1][judged])
    if not np.all(np.isfinite(gap)):
        return False, math.nan, int(judged.sum())
    return bool(np.all(gap <= slack)), float(np.max(gap)), int(judged.sum())


def safe_lr(model, X, Y, A0, B0, *, fraction, steps, **train_kw) -> tuple[float, float]:
    """``lr = fraction / beta`` with ``beta`` the path smoothness of the run with
    that ``lr`` (:func:`path_smoothness`; the Hessian grows along the path, so
    ``beta`` is re-measured until it settles within 10%). Returns ``(lr, beta)``."""
    from .. import theory

    beta = theory.smoothness(model, X, Y, A0, B0, u=train_kw.get("u"),
                             activation=train_kw.get("activation", "identity"))
    for _ in range(4):
        new = path_smoothness(model, X, Y, A0, B0, lr=fraction / beta, steps=steps, points=2,
                              **train_kw)
        if new <= 1.1 * beta:
            break
        beta = new
    return fraction / beta, beta


def sigma_min_lower(lambda_min_Q0: float, w_hat_norm: float, excess, l_min: float) -> np.ndarray:
    """The lower bound of docs/theory.md §6 on ``sigma_min(I - A)`` from the history:
    ``sqrt(lambda_min(Q_0) / (1 + (||W_hat|| + sqrt(2 (L - L*) / l_min))^2))``
    (``||W - W_hat||^2 <= 2 (L - L*) / l_min`` for the squared loss)."""
    w = w_hat_norm + np.sqrt(2.0 * np.maximum(np.asarray(excess, dtype=float), 0.0) / l_min)
    return np.sqrt(lambda_min_Q0 / (1.0 + w**2))


def envelope_ok(excess, t, mu: float, *, rtol: float = 1e-6) -> tuple[bool, float]:
    """Whether ``excess(t) <= excess(0) exp(-mu t)`` (docs/theory.md §7) wherever the
    envelope is above ``1e6 eps excess(0)`` (below, rounding decides), after ``t = 0``
    (where the ratio is 1 by construction); a NaN fails.
    Returns ``(ok, worst ratio excess / envelope)``."""
    e = np.asarray(excess, dtype=float)
    env = e[0] * np.exp(-mu * np.asarray(t, dtype=float))
    judged = (env > 1e6 * np.finfo(float).eps * e[0]) & (np.asarray(t) > 0)  # 1 at t = 0
    ratio = e[judged] / env[judged]
    if not judged.any() or not np.all(np.isfinite(ratio)):
        return False, math.nan
    worst = float(np.max(ratio))
    return worst <= 1.0 + rtol, worst
