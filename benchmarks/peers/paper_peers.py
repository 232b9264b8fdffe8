"""The paper's own algorithm as a peer: Appendix A.3 and A.4 of "Gradient flow
for deep equilibrium single-index models" (Dandapanthula & Ramdas), against
deqbench's fused scalar loop (:func:`deqbench._scalar.train_scalar`).

The peers are the authors' algorithm as their published scripts run it
(``experiments/synthetic/approximate.py`` and ``nonlinearity.py`` of
``sanjitdp/single-index-deq``), written here in our own words: plain NumPy,
one process, vectorised over the samples.

* A.3 (:func:`numpy_a3`): ``tanh``, ``d = 20``, ``n = 8000``. Forward: Newton
  on ``y`` for all samples at once from the last step's ``y`` (clipped to
  ``[-1, 1]``; the first solve from ``tanh(u)``), with per-sample brackets that
  start at ``[-1, 1]`` and move to ``y`` on the side the residual's sign rules
  out, a Newton proposal outside its bracket replaced by the midpoint, until
  ``max |y - tanh(u + b y)| <= 1e-12`` (at most 80 sweeps; ``|b| < 1`` is
  required). Gradient of the risk ``mean((y - Y)^2)`` (no 1/2) with the
  backward factor of the method; ``theta <- theta - eta grad``, ``eta = 0.2``,
  40,000 updates; every 20th step (and the last) the held-out risk from a
  cold solve on ``x_eval`` and the parameter error to ``(xi, 0)``.
* A.4 (:func:`numpy_a4`): ``sigma_eps(z) = z + eps tanh z``, ``d = 10``,
  4096 training and 16384 held-out samples. Forward: Newton on the
  pre-activation ``z = u + v sigma_eps(z)`` from ``z = u / (1 - v)`` every
  step, to ``max |z - u - v sigma_eps(z)| <= 1e-12`` (at most 20 sweeps;
  ``|v| (1 + eps) < 0.95`` required); exact gradient; ``eta = 0.05``, 60,000
  updates; every 100th step the held-out risk and the parameter error.

Data (:func:`a3_problem`, :func:`a4_problem`) are drawn as their scripts draw
them: ``numpy.random.default_rng(seed)``, A.3 ``xi, delta, x, x_eval`` (seeds
100-104), A.4 ``xi1, x_train, x_eval, transverse`` (seeds 1729-1733).

deqbench runs the same protocol through ``train_scalar`` (step ``lr = 2 eta``
on its loss with the 1/2; backward ``neumann_terms`` = the paper's terms minus
one), Newton to the same absolute residual.

Timing, one thread, on a quiet machine: ``python -m tools.peers.paper_peers``
(see there). ``bench_paper.py`` times a slice of A.3 with asv.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

#: Backward methods of A.3: the paper's name -> train_scalar's keywords.
METHODS = {
    "exact": dict(backward="exact"),
    "jfb": dict(backward="jfb"),
    "neumann2": dict(backward="neumann", neumann_terms=1),
    "neumann3": dict(backward="neumann", neumann_terms=2),
    "damped2": dict(backward="neumann", neumann_terms=1, neumann_damping=0.5),
}
A3_SEEDS = (100, 101, 102, 103, 104)
A4_SEEDS = (1729, 1730, 1731, 1732, 1733)
A4_EPS = (0.5, 0.25, 0.125)


@dataclass
class Problem:
    """One run's data: training and held-out inputs and targets, the target
    parameters ``theta_star = (xi, 0)``, the start ``theta0`` and the link."""

    X: np.ndarray
    Y: np.ndarray
    X_eval: np.ndarray
    Y_eval: np.ndarray
    theta_star: np.ndarray
    theta0: np.ndarray
    eps: float | None = None  # A.4's sigma_eps; None: tanh


@dataclass
class Trajectory:
    """What a run recorded: steps, ``theta`` there, training risk (every step
    for the peers, at the recorded steps for deqbench), held-out risk and
    parameter error at the recorded steps, and the run's seconds."""

    steps: np.ndarray
    theta: np.ndarray
    train_risk: np.ndarray
    eval_risk: np.ndarray
    param_error: np.ndarray
    seconds: float


def a3_problem(seed: int, n: int = 8000, d: int = 20) -> Problem:
    rng = np.random.default_rng(seed)
    xi = rng.normal(size=d)
    xi /= np.linalg.norm(xi)
    delta = rng.normal(size=d)
    delta *= 0.2 / np.linalg.norm(delta)
    X = rng.normal(size=(n, d))
    Xe = rng.normal(size=(n, d))
    return Problem(X, np.tanh(X @ xi), Xe, np.tanh(Xe @ xi), np.r_[xi, 0.0],
                   np.r_[xi + delta, 0.15])


def sigma_eps(z, eps):
    return z + eps * np.tanh(z)


def a4_problem(seed: int, eps: float, d: int = 10, n_train: int = 4096,
               n_eval: int = 16384) -> Problem:
    rng = np.random.default_rng(seed)
    xi1 = rng.normal(size=d)
    xi1 /= np.linalg.norm(xi1)
    X = rng.normal(size=(n_train, d))
    Xe = rng.normal(size=(n_eval, d))
    v = rng.normal(size=d)
    v -= (v @ xi1) * xi1
    v /= np.linalg.norm(v)
    star = np.r_[xi1, 0.0]
    theta0 = star + 0.1 * np.r_[-xi1, 1.0] / np.sqrt(2.0) + 0.03 * np.r_[v, 0.0]
    return Problem(X, sigma_eps(X @ xi1, eps), Xe, sigma_eps(Xe @ xi1, eps), star, theta0,
                   eps)


# --- the authors' algorithm, in NumPy -------------------------------------------------


def backward_factor(a, method):
    """The paper's backward factors replacing ``1 / (1 - a)``."""
    if method == "exact":
        return 1.0 / (1.0 - a)
    if method == "jfb":
        return np.ones_like(a)
    if method == "neumann2":
        return 1.0 + a
    if method == "neumann3":
        return 1.0 + a * (1.0 + a)
    if method == "damped2":  # two steps of mu <- mu / 2 + (a mu + 1) / 2 from 0
        return 0.75 + 0.25 * a
    raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")


def tanh_equilibrium(u, b, start=None, tol=1e-12, sweeps=80):
    """``y = tanh(u + b y)`` for every sample at once (A.3's forward); returns
    ``(y, max residual, sweeps)``."""
    if not abs(b) < 1.0:
        raise RuntimeError(f"A.3's contraction guard |b| < 1 fails: b = {b}")
    y = np.tanh(u) if start is None else np.clip(start, -1.0, 1.0)
    lower = np.full_like(u, -1.0)
    upper = np.full_like(u, 1.0)
    for k in range(1, sweeps + 1):
        t = np.tanh(u + b * y)
        r = y - t
        worst = float(np.abs(r).max())
        if worst <= tol:
            return y, worst, k
        above = r > 0.0  # y - tanh(u + b y) increases in y: the root is below y
        upper = np.where(above, y, upper)
        lower = np.where(above, lower, y)
        step = y - r / (1.0 - b * (1.0 - t * t))
        outside = ~((step >= lower) & (step <= upper))  # NaN counts as outside
        y = np.where(outside, 0.5 * (lower + upper), step)
    raise RuntimeError(f"A.3's forward solve did not reach {tol}: residual {worst}")


def skip_tanh_equilibrium(u, v, eps, tol=1e-12, sweeps=20):
    """``y = sigma_eps(u + v y)`` through its pre-activation ``z = u + v y``
    (A.4's forward, cold start ``z = u / (1 - v)``); returns ``(y, sigma_eps'(z),
    sweeps)``."""
    if not abs(v) * (1.0 + eps) < 0.95:
        raise RuntimeError(f"A.4's contraction guard |v| (1 + eps) < 0.95 fails: v = {v}")
    z = u / (1.0 - v)
    for k in range(1, sweeps + 1):
        t = np.tanh(z)
        y = z + eps * t
        slope = 1.0 + eps * (1.0 - t * t)
        r = z - u - v * y
        if np.abs(r).max() <= tol:
            return y, slope, k
        z = z - r / (1.0 - v * slope)
    raise RuntimeError(f"A.4's forward solve did not reach {tol} in {sweeps} sweeps")


def numpy_a3(p: Problem, method: str = "exact", steps: int = 40000, eta: float = 0.2,
             every: int = 20, tol: float = 1e-12) -> Trajectory:
    """The A.3 run as the authors' script runs it (see the module docstring)."""
    t0 = time.perf_counter()
    X, Y, n = p.X, p.Y, p.X.shape[0]
    theta = p.theta0.copy()
    warm = None
    rec = sorted(set(range(0, steps + 1, every)) | {steps})
    train = np.empty(steps + 1)
    thetas, evals, errors = [], [], []
    for k in range(steps + 1):
        w, b = theta[:-1], theta[-1]
        u = X @ w
        y, _, _ = tanh_equilibrium(u, b, warm, tol)
        warm = y
        t = np.tanh(u + b * y)
        slope = 1.0 - t * t
        e = y - Y
        train[k] = np.mean(e * e)
        weight = 2.0 * e * slope * backward_factor(b * slope, method)
        grad = np.r_[X.T @ weight, y @ weight] / n
        if k in rec:
            ye, _, _ = tanh_equilibrium(p.X_eval @ w, b, None, tol)
            evals.append(np.mean((ye - p.Y_eval) ** 2))
            thetas.append(theta.copy())
            errors.append(np.linalg.norm(theta - p.theta_star))
        if k < steps:
            theta = theta - eta * grad
    return Trajectory(np.array(rec), np.array(thetas), train, np.array(evals),
                      np.array(errors), time.perf_counter() - t0)


def numpy_a4(p: Problem, steps: int = 60000, eta: float = 0.05, every: int = 100,
             tol: float = 1e-12) -> Trajectory:
    """The A.4 run as the authors' script runs it (see the module docstring)."""
    t0 = time.perf_counter()
    X, Y, n, eps = p.X, p.Y, p.X.shape[0], p.eps
    theta = p.theta0.copy()
    rec = sorted(set(range(0, steps + 1, every)) | {steps})
    train = np.empty(steps + 1)
    thetas, evals, errors = [], [], []
    for k in range(steps + 1):
        w, v = theta[:-1], theta[-1]
        y, slope, _ = skip_tanh_equilibrium(X @ w, v, eps, tol)
        e = y - Y
        train[k] = np.mean(e * e)
        weight = 2.0 * e * slope / (1.0 - v * slope)
        grad = np.r_[X.T @ weight, y @ weight] / n
        if k in rec:
            ye, _, _ = skip_tanh_equilibrium(p.X_eval @ w, v, eps, tol)
            evals.append(np.mean((ye - p.Y_eval) ** 2))
            thetas.append(theta.copy())
            errors.append(np.linalg.norm(theta - p.theta_star))
        if k < steps:
            theta = theta - eta * grad
    return Trajectory(np.array(rec), np.array(thetas), train, np.array(evals),
                      np.array(errors), time.perf_counter() - t0)


# --- deqbench on the same protocol ------------------------------------------------------


def deqbench_run(p: Problem, method: str = "exact", steps: int = 40000, eta: float = 0.2,
                 every: int = 20, tol: float = 1e-12, threads: int | None = None) -> Trajectory:
    """The same run through deqbench's fused loop: ``lr = 2 eta`` on
    ``sum (y - Y)^2 / (2 n)``, risks reported as the paper's (twice the loss)."""
    from deqbench._scalar import train_scalar

    act = "tanh" if p.eps is None else f"skip_tanh({p.eps!r})"
    t0 = time.perf_counter()
    r = train_scalar(p.X, p.Y, p.theta0[:-1], p.theta0[-1], lr=2.0 * eta, steps=steps,
                     activation=act, tol=tol, record_every=every, X_eval=p.X_eval,
                     Y_eval=p.Y_eval, target=p.theta_star, record_theta=True,
                     threads=threads, **METHODS[method])
    seconds = time.perf_counter() - t0
    if r.status != "max_steps":
        raise RuntimeError(f"deqbench run ended with {r.status} ({r.solve_status}) at step "
                           f"{r.n_steps}")
    h = r.history
    return Trajectory(h["step"], h["theta"], 2.0 * h["loss"], 2.0 * h["eval_loss"],
                      h["param_error"], seconds)


def difference(a: Trajectory, b: Trajectory) -> float:
    """Largest difference of the parameters at the steps both recorded."""
    common, ia, ib = np.intersect1d(a.steps, b.steps, return_indices=True)
    if common.size == 0:
        raise ValueError("the trajectories share no recorded step")
    return float(np.abs(a.theta[ia] - b.theta[ib]).max())
