"""Seeded problem builders (docs/theory.md §2 and §7).

Every builder takes ``seed`` (int or ``numpy.random.SeedSequence``) and is
deterministic given it. Data rows are i.i.d. standard normal, so
``Sigma = X^T X / n`` is well-conditioned for ``n >> d``.
"""

from __future__ import annotations

import numpy as np

from . import _validate as v
from .activations import Activation, get_activation

__all__ = [
    "init_params",
    "problem",
    "linear_teacher",
    "single_index_teacher",
    "symmetric_with_spectrum",
    "with_spectral_radius",
]


def _rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


def linear_teacher(n: int, d: int, m: int, *, noise: float = 0.0, seed=0):
    """Linear teacher ``Y = X W*^T + noise``.

    Returns
    -------
    X : (n, d), Y : (n, m), W_star : (m, d)
        ``W_star`` has i.i.d. ``N(0, 1/d)`` entries; ``noise`` is the standard
        deviation of i.i.d. Gaussian label noise (``noise > 0`` makes the
        problem non-realizable: ``L* > 0``).
    """
    n = v.integer("n", n, minimum=1)
    d = v.integer("d", d, minimum=1)
    m = v.integer("m", m, minimum=1)
    noise = v.positive("noise", noise, allow_zero=True)
    rng = _rng(seed)
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((m, d)) / np.sqrt(d)
    Y = X @ W.T
    if noise > 0:
        Y += noise * rng.standard_normal((n, m))
    return X, Y, W


def single_index_teacher(n: int, d: int, *, activation: str | Activation, noise: float = 0.0,
                         seed=0):
    """Single-index teacher ``y = sigma(theta* . x) + noise`` with ``||theta*|| = 1``.

    Returns
    -------
    X : (n, d), y : (n,), theta_star : (d,)
    """
    n = v.integer("n", n, minimum=1)
    d = v.integer("d", d, minimum=1)
    noise = v.positive("noise", noise, allow_zero=True)
    act = get_activation(activation)
    rng = _rng(seed)
    X = rng.standard_normal((n, d))
    theta = rng.standard_normal(d)
    theta /= np.linalg.norm(theta)
    y = act(X @ theta)
    if noise > 0:
        y += noise * rng.standard_normal(n)
    return X, y, theta


def init_params(d: int, m: int, *, scale_A: float, scale_B: float, seed=0):
    """Random initial parameters for data of width ``d`` and a model of width ``m``
    (sizes in the order of :func:`linear_teacher`: ``n, d, m``).

    ``A0 = scale_A R / ||R||_2`` with Gaussian ``R``, so ``||A0||_2 = scale_A``
    and hence the spectral radius ``rho(A0) <= scale_A`` (a contraction when
    ``scale_A < 1``; ``scale_A = 0`` gives ``A0 = 0``). ``B0`` has i.i.d.
    ``N(0, scale_B^2 / d)`` entries.

    Returns
    -------
    A0 : (m, m), B0 : (m, d)
    """
    d = v.integer("d", d, minimum=1)
    m = v.integer("m", m, minimum=1)
    scale_A = v.positive("scale_A", scale_A, allow_zero=True)
    scale_B = v.positive("scale_B", scale_B, allow_zero=True)
    rng = _rng(seed)
    R = rng.standard_normal((m, m))
    B0 = scale_B * rng.standard_normal((m, d)) / np.sqrt(d)
    A0 = np.zeros((m, m))
    if scale_A > 0:
        A0 = scale_A * R / np.linalg.norm(R, 2)
    return A0, B0


def symmetric_with_spectrum(eigenvalues, *, seed=0) -> np.ndarray:
    """``V diag(eigenvalues) V^T`` with a Haar-random orthogonal ``V``: a normal
    ``A`` whose spectral radius and ``||A||_2`` are both ``max |eigenvalue|``, so
    Picard on the linear map contracts at exactly that rate (no transient).

    ``seed``: int, ``SeedSequence`` or ``Generator`` (drawn from in place).
    """
    lam = np.asarray(eigenvalues, dtype=float)
    if lam.ndim != 1 or lam.size == 0 or not np.isfinite(lam).all():
        raise ValueError(f"eigenvalues must be a non-empty finite 1-D sequence, got {lam!r}")
    V, _ = np.linalg.qr(_rng(seed).standard_normal((lam.size, lam.size)))
    return np.ascontiguousarray((V * lam) @ V.T)


def with_spectral_radius(A, rho: float) -> np.ndarray:
    """``A`` rescaled to spectral radius ``rho`` (a Gaussian ``A`` is non-normal:
    its norm is then about ``2 rho``, so Picard sees a transient)."""
    A = v.as_matrix("A", A)
    rho = v.positive("rho", rho, allow_zero=True)
    r = float(np.max(np.abs(np.linalg.eigvals(A))))
    if r == 0.0:
        raise ValueError("A is nilpotent (spectral radius 0): it cannot be rescaled to rho")
    return A * (rho / r)


def problem(model: str, n: int, d: int, m: int, *, activation="identity", noise: float = 0.0,
            teacher_scale: float = 0.5, scale_A: float = 0.5, scale_B: float = 1.0,
            seed=0, init_seed=None):
    """Data and initial parameters of a seeded problem: ``(X, Y, A0, B0)``.

    The one problem builder of sweeps, experiments and benchmarks.
    ``linear``: :func:`linear_teacher`. ``single_index``:
    :func:`single_index_teacher` with the link ``activation``. ``nonlinear``:
    a realizable teacher DEQ, ``Y`` the fixed point of ``phi = activation`` at
    random ``A*`` (``||A*||_2 = teacher_scale``), ``B*``. ``noise``: Gaussian
    label noise. ``A0, B0`` from :func:`init_params` with ``init_seed``
    (default: spawned from ``seed``, so data and initialization are
    independent streams).
    """
    from . import _validate

    _validate.choice("model", model, ("linear", "single_index", "nonlinear"))
    if init_seed is None:
        seed, init_seed = np.random.SeedSequence(seed).spawn(2) if not isinstance(
            seed, np.random.SeedSequence) else seed.spawn(2)
    if model == "linear":
        X, Y, _ = linear_teacher(n, d, m, noise=noise, seed=seed)
    elif model == "single_index":
        X, Y, _ = single_index_teacher(n, d, activation=activation, noise=noise, seed=seed)
    else:
        from ._fixed_point import fixed_point

        seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        t_seed, x_seed = seq.spawn(2)
        X = np.random.default_rng(x_seed).standard_normal((n, d))
        As, Bs = init_params(d, m, scale_A=teacher_scale, scale_B=1.0, seed=t_seed)
        Y = fixed_point(X, As, Bs, activation=activation, tol=1e-13).z
        if noise > 0:
            Y = Y + noise * np.random.default_rng(x_seed.spawn(1)[0]).standard_normal(Y.shape)
    A0, B0 = init_params(d, m, scale_A=scale_A, scale_B=scale_B, seed=init_seed)
    return X, Y, A0, B0

