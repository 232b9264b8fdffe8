"""Seeded problems, the shared result type and the flop counts (docs/theory.md §8)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import deqbench as db

TOL = 1e-10  # relative residual, every peer, forward and adjoint
MAX_ITER = 500  # generous: W1/W2 need ~35 iterations at rho = 0.5


class PeerMissing(RuntimeError):
    """The peer's library is not installed (``pip install -e ".[peers]"``)."""


@dataclass
class Problem:
    """One workload instance; every peer reads the same arrays."""

    name: str
    A: np.ndarray  # (m, m)
    B: np.ndarray  # (m, d)
    X: np.ndarray  # (n, d)
    Y: np.ndarray  # (n, m)
    activation: str = "identity"
    tol: float = TOL
    max_iter: int = MAX_ITER
    z_norm: float = 1.0  # ||Z*||_F, turns a relative tolerance into jaxopt's absolute one
    lam_norm: float = 1.0  # ||Lam*||_F (W2, W4)
    extra: dict = field(default_factory=dict)

    @property
    def m(self) -> int:
        return self.A.shape[0]

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]


@dataclass
class Outcome:
    """What one call of a peer produced (for checks and flop counts)."""

    fp_evals: int  # forward map evaluations
    adj_evals: int = 0  # adjoint map evaluations (0 for a forward solve)
    residual: float = float("nan")
    z: np.ndarray | None = field(default=None, repr=False)
    grad_A: np.ndarray | None = field(default=None, repr=False)
    grad_B: np.ndarray | None = field(default=None, repr=False)
    loss: float = float("nan")


def _rng(seed):
    return np.random.default_rng(seed)


def linear_problem(
    m: int, n: int, d: int | None = None, *, rho: float = 0.5, seed: int = 0, name: str = ""
) -> Problem:
    """W1/W2: linear DEQ with spectral radius ``rho(A) = rho``, linear-teacher targets."""
    d = m if d is None else d
    rng = _rng(seed)
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((m, d)) / np.sqrt(d)
    Y = X @ W.T
    A = db.data.with_spectral_radius(rng.standard_normal((m, m)), rho)
    B = rng.standard_normal((m, d)) / np.sqrt(d)
    C = np.eye(m) - A
    Z = np.linalg.solve(C, (X @ B.T).T).T
    Lam = np.linalg.solve(C.T, ((Z - Y) / n).T).T
    return Problem(
        name or f"linear m={m}",
        A,
        B,
        X,
        Y,
        z_norm=float(np.linalg.norm(Z)),
        lam_norm=float(np.linalg.norm(Lam)),
        extra={"rho": rho},
    )


def tanh_problem(
    m: int, n: int, d: int | None = None, *, norm_A: float = 0.9, seed: int = 0, name: str = ""
) -> Problem:
    """W4: ``z = tanh(A z + B x)`` with ``||A||_2 = norm_A < 1`` (a contraction)."""
    d = m if d is None else d
    rng = _rng(seed)
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((m, d)) / np.sqrt(d)
    Y = np.tanh(X @ W.T)
    R = rng.standard_normal((m, m))
    A = norm_A * R / np.linalg.norm(R, 2)
    B = rng.standard_normal((m, d)) / np.sqrt(d)
    # reference fixed point and adjoint by plain iteration to machine precision
    U = X @ B.T
    Z = np.zeros((n, m))
    for _ in range(2000):
        Zn = np.tanh(Z @ A.T + U)
        if np.linalg.norm(Zn - Z) <= 1e-15 * np.linalg.norm(Zn):
            Z = Zn
            break
        Z = Zn
    D = 1.0 - np.tanh(Z @ A.T + U) ** 2
    G = (Z - Y) / n
    Mu = np.zeros((n, m))
    for _ in range(2000):
        Mn = D * (Mu @ A + G)
        if np.linalg.norm(Mn - Mu) <= 1e-15 * np.linalg.norm(Mn):
            Mu = Mn
            break
        Mu = Mn
    return Problem(
        name or f"tanh m={m}",
        A,
        B,
        X,
        Y,
        activation="tanh",
        z_norm=float(np.linalg.norm(Z)),
        lam_norm=float(np.linalg.norm(Mu)),
        extra={"norm_A": norm_A, "Z": Z, "grad_A": Mu.T @ Z, "grad_B": Mu.T @ X},
    )


def reference_linear(p: Problem):
    """Exact fixed point and gradients of the linear problem by dense solves."""
    m, n = p.m, p.n
    C = np.eye(m) - p.A
    Z = np.linalg.solve(C, (p.X @ p.B.T).T).T
    G = (Z - p.Y) / n
    Lam = np.linalg.solve(C.T, G.T).T
    return Z, Lam.T @ Z, Lam.T @ p.X


# ---- flop counts (docs/theory.md §8) -------------------------------------------------


def flops_map(p: Problem) -> float:
    """One map evaluation ``Z M + U`` on the batch: ``2 m^2 n``."""
    return 2.0 * p.m * p.m * p.n


def flops_forward(p: Problem, evals: int) -> float:
    """W1: ``X B^T`` once plus ``evals`` map evaluations."""
    return 2.0 * p.m * p.d * p.n + evals * flops_map(p)


def flops_step(p: Problem, fp_evals: int, adj_evals: int) -> float:
    """W2/W4: ``(K_f + K_b) 2 m^2 n + 2 m d n + 2 m n (m + d)``."""
    m, d, n = p.m, p.d, p.n
    return (fp_evals + adj_evals) * flops_map(p) + 2.0 * m * d * n + 2.0 * m * n * (m + d)


def flops_direct_step(p: Problem) -> float:
    """Direct-solve step: ``(2/3) m^3 + 4 m^2 n`` plus ``X B^T`` and the gradients."""
    m, d, n = p.m, p.d, p.n
    return (2.0 / 3.0) * m**3 + 4.0 * m * m * n + 2.0 * m * d * n + 2.0 * m * n * (m + d)


def check(p: Problem, out: Outcome, *, what: str, grads: bool, rtol: float = 1e-7) -> float:
    """Relative error of a peer's answer against the dense reference; raises if too large."""
    if p.activation == "identity":
        Z, gA, gB = reference_linear(p)
    else:
        Z, gA, gB = p.extra["Z"], p.extra["grad_A"], p.extra["grad_B"]
    err = np.linalg.norm(out.z - Z) / np.linalg.norm(Z)
    if grads:
        err = max(
            err,
            np.linalg.norm(out.grad_A - gA) / np.linalg.norm(gA),
            np.linalg.norm(out.grad_B - gB) / np.linalg.norm(gB),
        )
    if not err <= rtol:
        raise AssertionError(f"{what} on {p.name}: relative error {err:.2e} > {rtol:.0e}")
    return float(err)
