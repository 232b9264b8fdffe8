"""What the paper's experiments E11-E13 share (docs/theory.md §12).

* the authors' saved numbers (``paper_reference.json``, package data): each with
  the file of their repository and the key it was read from;
* their problems, drawn with the same seeds, generators and draw order as
  their scripts (written here in our words);
* :func:`fit`, the one place these experiments call deqbench to train the
  paper's model ``y = sigma(<w, x> + b y)``;
* small comparison helpers.

The paper's risk is ``mean (z - y)^2`` and its step ``eta``; deqbench's loss
is half that, so a paper step ``eta`` is ``lr = 2 eta`` here and a paper risk
is ``2 loss``.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

REFERENCE_FILE = "paper_reference.json"

#: The backward rules of the paper's Appendix A.3, in its order, as :func:`fit` spells them.
METHODS = ("exact", "jfb", "neumann2", "neumann3", "damped2")
LABELS = {"exact": "exact", "jfb": "JFB", "neumann2": "two terms", "neumann3": "three terms",
          "damped2": "damped two terms (lambda 1/2)"}


#: ``fit``'s backward names as deqbench train options.
BACKWARD_OPTIONS = {
    "exact": {},
    "jfb": {"grad_solver": "jfb"},
    "neumann2": {"grad_solver": "neumann", "neumann_terms": 1},
    "neumann3": {"grad_solver": "neumann", "neumann_terms": 2},
    "damped2": {"grad_solver": "neumann", "neumann_terms": 1, "neumann_damping": 0.5},
}
#: The same rules in :mod:`deqbench.theory`'s terms (backward, neumann_terms, damping).
THEORY_BACKWARD = {
    "exact": ("exact", 1, 0.5),
    "jfb": ("jfb", 0, 0.5),
    "neumann2": ("neumann", 1, 0.5),
    "neumann3": ("neumann", 2, 0.5),
    "damped2": ("damped_neumann", 1, 0.5),
}


# ---------------------------------------------------------------- the authors' numbers

@functools.cache
def reference() -> dict:
    """The parsed ``paper_reference.json``."""
    text = resources.files(__package__).joinpath(REFERENCE_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def ref(key: str):
    """The authors' value stored under ``key``."""
    return reference()["values"][key]["value"]


def cite(*keys: str) -> str:
    """Where ``keys`` come from, short: ``[legacy/summary.json runs.linear.final_theta]``."""
    vals = reference()["values"]
    parts = []
    for k in keys:
        e = vals[k]
        parts.append(f"{e['file'].removeprefix('experiments/results/')} {e['key']}")
    return "[authors: " + "; ".join(parts) + "]"


# ---------------------------------------------------------------- the authors' problems

def scalar_problem() -> tuple[np.ndarray, np.ndarray]:
    """Appendix A.1-A.2: ``x`` (1000 draws of U(0, 1), ``default_rng(42)``) and the
    start ``p`` (``default_rng(43).normal(0, 0.1, 2)``, read as ``(c, b)``)."""
    x = np.random.default_rng(42).uniform(0.0, 1.0, 1000)
    p = np.random.default_rng(43).normal(0.0, 0.1, 2)
    return x, p


def selection_start(seed: int) -> np.ndarray:
    """The near-singular start of Figure 3's candidates: ``normal(0, 0.1, 2) + (0, 1)``."""
    return np.random.default_rng(seed).normal(0.0, 0.1, 2) + np.array([0.0, 1.0])


def counterexample_starts() -> list[np.ndarray]:
    """Appendix A.3's scalar starts ``(c, b)``: ``(sqrt 8, 0)`` and four 0.025 away."""
    r8, h = math.sqrt(8.0), 0.025
    return [np.array(p) for p in ((r8, 0.0), (r8 - h, 0.0), (r8 + h, 0.0), (r8, -h), (r8, h))]


@dataclass
class Problem:
    """A single-index problem with a target direction: train and held-out samples, the
    target ``(xi, 0)`` and the start ``theta0 = (w0, b0)``."""

    X: np.ndarray
    X_eval: np.ndarray
    xi: np.ndarray
    theta0: np.ndarray

    @property
    def target(self) -> np.ndarray:
        return np.r_[self.xi, 0.0]


def tanh_problem(seed: int, d: int = 20, n: int = 8000) -> Problem:
    """Appendix A.3's tanh problem: one ``default_rng(seed)`` draws ``xi`` (normalised),
    ``delta`` (scaled to norm 0.2), ``X`` and ``X_eval`` in that order; the start is
    ``(xi + delta, 0.15)``."""
    rng = np.random.default_rng(seed)
    xi = rng.normal(size=d)
    xi /= np.linalg.norm(xi)
    delta = rng.normal(size=d)
    delta *= 0.2 / np.linalg.norm(delta)
    X = rng.normal(size=(n, d))
    X_eval = rng.normal(size=(n, d))
    return Problem(X, X_eval, xi, np.r_[xi + delta, 0.15])


def weak_problem(seed: int, d: int = 10, n_train: int = 4096, n_eval: int = 16384) -> Problem:
    """Appendix A.4's problem: one ``default_rng(seed)`` draws ``xi`` (normalised), ``X``,
    ``X_eval`` and a direction ``v`` (made orthogonal to ``xi`` and unit) in that order;
    the start is ``(xi, 0) + 0.1 (-xi, 1) / sqrt 2 + 0.03 (v, 0)``."""
    rng = np.random.default_rng(seed)
    xi = rng.normal(size=d)
    xi /= np.linalg.norm(xi)
    X = rng.normal(size=(n_train, d))
    X_eval = rng.normal(size=(n_eval, d))
    v = rng.normal(size=d)
    v -= (v @ xi) * xi
    v /= np.linalg.norm(v)
    theta0 = np.r_[xi, 0.0] + 0.1 * np.r_[-xi, 1.0] / math.sqrt(2.0) + 0.03 * np.r_[v, 0.0]
    return Problem(X, X_eval, xi, theta0)


# ---------------------------------------------------------------- the one model call

@dataclass
class Fit:
    """A gradient-descent run of the paper's model: final ``(w, b)``, status, history
    (deqbench's, plus ``risk`` = the paper's risk ``2 loss``)."""

    w: np.ndarray
    b: float
    status: str
    history: dict = field(repr=False)

    @property
    def theta(self) -> np.ndarray:
        return np.r_[self.w, self.b]

    @property
    def risk(self) -> np.ndarray:
        return self.history["risk"]


#: The model and forward solver of the paper's runs: deqbench's ``single_index`` (the
#: paper's model) by safeguarded Newton.
MODEL, SOLVER = "single_index", "newton"


def fit(X, y, theta0, *, eta: float, steps: int, activation: str = "identity",
        backward: str = "exact", tol: float = 1e-13, record_every: int | None = 1) -> Fit:
    """Gradient descent with the paper's step ``eta`` on ``y = sigma(<w, x> + b y)``.

    The model is :data:`MODEL` (``A = [[b]]``, ``B = w[None, :]``) solved by
    :data:`SOLVER` to the absolute residual ``tol`` per sample, and for the
    identity link the ``linear`` DEQ with ``m = 1`` and a direct solve: the
    same model (``y = <w, x> / (1 - b)``), whose history carries the invariant
    ``Q`` of §5 as the compiled matrix loop computes it (E11 reads the distance
    to the singular point off it); ``lr = 2 eta`` (deqbench's loss has a 1/2).
    """
    from .._training import train

    theta0 = np.asarray(theta0, dtype=np.float64)
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None].copy()
    y = np.ascontiguousarray(np.asarray(y, dtype=np.float64).reshape(-1))
    A0, B0 = np.array([[theta0[-1]]]), theta0[None, :-1].copy()
    kw = dict(lr=2.0 * eta, steps=steps, record_every=record_every, **BACKWARD_OPTIONS[backward])
    if activation == "identity":
        model, Y = "linear", y[:, None].copy()
        kw.update(solver="direct", sufficient_stats="auto" if backward == "exact" else False)
    else:
        model, Y = MODEL, y
        kw.update(activation=activation, solver=SOLVER, tol=tol)
    res = train(model, X, Y, A0, B0, **kw)
    h = dict(res.history)
    h["risk"] = 2.0 * h["loss"]
    return Fit(res.B[0].copy(), float(res.A[0, 0]), res.status, h)


def trajectory(X, y, theta0, *, eta: float, steps: int, every: int, **kw) -> np.ndarray:
    """``theta`` at steps ``0, every, 2 every, ..., steps`` (rows), by runs of :func:`fit`
    of ``every`` steps, each from where the last stopped."""
    theta = np.asarray(theta0, dtype=np.float64).copy()
    out = [theta.copy()]
    done = 0
    while done < steps:
        k = min(every, steps - done)
        r = fit(X, y, theta, eta=eta, steps=k, record_every=None, **kw)
        if r.status not in ("max_steps", "converged"):
            break
        theta = r.theta
        out.append(theta.copy())
        done += k
    return np.array(out)


# ---------------------------------------------------------------- comparisons

def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))))


def max_rel_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def same_risk(measured, expected, *, rtol: float, floor: float) -> bool:
    """Risks agree: to ``rtol`` where the authors' is above ``floor``; where it is below
    (rounding level), ours must be below ``floor`` too."""
    m, e = np.atleast_1d(np.asarray(measured, float)), np.atleast_1d(np.asarray(expected, float))
    above = e > floor
    ok_above = np.all(np.abs(m[above] - e[above]) <= rtol * e[above])
    return bool(ok_above and np.all(m[~above] <= floor))


def tail_factor(values, lo: float, hi: float, steps=None) -> tuple[float, int, int]:
    """Per-step factor of ``values`` fitted (least squares on the log) over the entries
    between ``lo`` and ``hi`` that follow the first entry below ``hi``.

    Returns ``(factor, first step, last step)``; NaN with fewer than 10 entries.
    """
    v = np.asarray(values, dtype=float)
    k = np.arange(v.size, dtype=float) if steps is None else np.asarray(steps, dtype=float)
    below = np.nonzero(v <= hi)[0]
    if below.size == 0:
        return math.nan, -1, -1
    start = below[0]
    stop = start
    while stop < v.size and v[stop] >= lo and np.isfinite(v[stop]):
        stop += 1
    if stop - start < 10:
        return math.nan, int(k[start]), int(k[stop - 1])
    slope = np.polyfit(k[start:stop], np.log(v[start:stop]), 1)[0]
    return float(np.exp(slope)), int(k[start]), int(k[stop - 1])


def forward_floor(H, tol: float) -> float:
    """How far a forward solve accurate to ``tol`` per sample (RMS) can move the limit of
    gradient descent near a minimum with Hessian ``H`` (deqbench's loss): the gradient
    moves by at most ``|J^T dz| / n <= sqrt(lambda_max) tol``, its zero by that over
    ``lambda_min`` (docs/theory.md §12)."""
    lam = np.linalg.eigvalsh(H)
    return float(math.sqrt(lam[-1]) * tol / lam[0])


def floor_agrees(ours, theirs, floor: float) -> bool:
    """Final parameter errors of two runs whose limits may each move by ``floor``."""
    return abs(float(ours) - float(theirs)) <= 2.0 * floor


def rate_agrees(fitted: float, predicted: float, rtol: float) -> bool:
    """``1 - fitted`` within ``rtol`` of ``1 - predicted`` (the decay rates, not the
    factors near 1, are compared)."""
    if not (math.isfinite(fitted) and math.isfinite(predicted)) or predicted >= 1.0:
        return False
    return abs((1.0 - fitted) / (1.0 - predicted) - 1.0) <= rtol
