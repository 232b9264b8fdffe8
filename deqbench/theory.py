"""What the theory predicts, as plain functions (docs/theory.md §3 and §5-§7).

These are the formulas every training run is measured against: the conserved
matrix ``Q``, its exact discrete drift under gradient descent, the drift
bound and the window of ``drift / (lr (L_0 - L_K))``, the PL constants, the
measured smoothness ``beta`` and the per-step factors
``1 - lr mu (1 - beta lr / 2)``, the global minimum of the linear model, the
empirical factor with the window rule of §7 and its verdict, the predicted
Picard iteration count and the conditioning bounds of §6; and for the
paper's scalar-state model ``y = sigma(<w, x> + b y)`` (§12) its implicit
gradient and backward approximations, the Hessian at the zero-risk point
``(xi, 0)``, the local rate of gradient descent there, where truncated
Neumann backwards stall, and the curvature of the weak nonlinearity
``s + eps tanh s`` as ``eps -> 0``.
"""

from __future__ import annotations

import math

import numpy as np

from . import _registry
from . import _validate as v
from .activations import Activation, get_activation

__all__ = [
    "backward_factor",
    "backward_roots",
    "certified_rate",
    "conditioning_bounds",
    "drift_bound",
    "drift_gain_bounds",
    "empirical_factor",
    "gd_invariant_step",
    "gd_local_rate",
    "global_min_loss",
    "invariant",
    "least_squares",
    "local_derivative_bounds",
    "loglog_fit",
    "pl_constant",
    "predicted_factor",
    "predicted_fp_iters",
    "rate_check",
    "scalar_gradient",
    "scalar_jacobian",
    "skip_tanh_curvature_limit",
    "smoothness",
    "stall_rate",
    "step_factor_bounds",
    "step_matrix",
    "steps_to_risk",
    "zero_risk_hessian",
]

MODELS = tuple(name for name, k in _registry.MODELS.items() if k.linear_fixed_point)
"""The models whose bounds this module gives: those with a linear fixed point."""
FLOOR = 1e3  # the window of empirical_factor stays above FLOOR * eps * L_0


def _sym_eigvals(Q) -> np.ndarray:
    """Eigenvalues of the symmetric part of ``Q``, computed on ``Q`` scaled to its
    largest entry so that no intermediate overflows (float64's range is the limit of
    the answer, not of the computation)."""
    big = float(np.max(np.abs(Q))) if Q.size else 0.0
    if big == 0.0:
        return np.zeros(Q.shape[0])
    S = Q / big
    with np.errstate(over="ignore"):
        return np.linalg.eigvalsh(0.5 * (S + S.T)) * big


def _vector(name, x) -> np.ndarray:
    """A 1-D float64 array of the numbers in ``x``, or an error naming ``name``."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of real numbers, got "
                        f"{v._describe(x)}") from None
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {a.shape}")
    return a


def _square(name, Q):
    Q = v.as_float64(name, Q)
    if Q.shape[0] != Q.shape[1]:
        raise ValueError(f"{name} must be square, got shape {Q.shape}")
    return Q


def invariant(A, B) -> np.ndarray:
    """The conserved matrix ``Q = (I - A)(I - A)^T + B B^T``.

    Parameters
    ----------
    A : (m, m), B : (m, d)

    Returns
    -------
    Q : (m, m) symmetric positive semidefinite

    Notes
    -----
    docs/theory.md §5: constant under gradient flow for the linear and
    readout models; row ``i`` gives the sphere
    ``||row_i(I - A)||^2 + ||row_i(B)||^2 = Q_ii``.
    """
    A = _square("A", A)
    B = v.as_float64("B", B, shape=(A.shape[0], None))
    C = np.eye(A.shape[0]) - A
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float64: inf entries
        return C @ C.T + B @ B.T


def gd_invariant_step(Q, grad_A, grad_B, lr) -> np.ndarray:
    """``Q_{k+1} = Q_k + lr^2 (grad_A grad_A^T + grad_B grad_B^T)``.

    Notes
    -----
    docs/theory.md §5: exact (to rounding) for one gradient-descent step
    ``A <- A - lr grad_A``, ``B <- B - lr grad_B`` of any loss that depends on
    ``(A, B)`` only through ``W = (I - A)^{-1} B``.
    """
    Q = _square("Q", Q)
    m = Q.shape[0]
    gA = v.as_float64("grad_A", grad_A, shape=(m, m))
    gB = v.as_float64("grad_B", grad_B, shape=(m, None))
    lr = v.positive("lr", lr)
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float64: inf entries
        return Q + lr * lr * (gA @ gA.T + gB @ gB.T)


def drift_bound(lr, L0, LK) -> float:
    """Upper bound ``tr(Q_K - Q_0) <= 2 lr (L_0 - L_K)``.

    Notes
    -----
    docs/theory.md §5: valid while ``lr <= 1 / beta_smooth`` along the path
    (descent lemma); the drift of the invariant is O(lr).
    """
    lr = v.positive("lr", lr)
    return 2.0 * lr * (v.real("L0", L0) - v.real("LK", LK))


def drift_gain_bounds(lr, smoothness) -> tuple[float, float]:
    """Window of ``tr(Q_K - Q_0) / (lr (L_0 - L_K))`` under gradient descent.

    ``(1 / (1 + beta lr / 2), 1 / (1 - beta lr / 2))`` with ``beta =
    smoothness`` a bound on the Hessian norm along the path; both ends tend to
    1 as ``lr -> 0`` with an ``O(beta lr)`` deviation. ``(nan, nan)`` when
    ``beta lr >= 2``.

    Notes
    -----
    docs/theory.md §5: each step adds ``lr^2 ||g_k||^2`` to the trace while the
    loss drops by between ``lr (1 - beta lr / 2) ||g_k||^2`` and
    ``lr (1 + beta lr / 2) ||g_k||^2``.
    """
    lr = v.positive("lr", lr)
    x = 0.5 * lr * v.positive("smoothness", smoothness, allow_zero=True)
    if x >= 1.0:
        return math.nan, math.nan
    return 1.0 / (1.0 + x), 1.0 / (1.0 - x)


def _sigma_extremes(X) -> tuple[float, float]:
    """Extreme eigenvalues of ``X^T X / n``: squared extreme singular values of ``X``
    over ``n``, from ``X`` scaled to its largest entry (no overflow on the way)."""
    X = v.as_float64("X", X)
    big = float(np.max(np.abs(X)))
    if big == 0.0:
        return 0.0, 0.0
    s = np.linalg.svd(X / big, compute_uv=False)
    smin = float(s[-1]) if X.shape[0] >= X.shape[1] else 0.0
    with np.errstate(over="ignore", under="ignore"):
        return (float(np.float64(smin * big) ** 2 / X.shape[0]),
                float(np.float64(float(s[0]) * big) ** 2 / X.shape[0]))


def _q_max(Q) -> float:
    return float(_sym_eigvals(_square("Q", Q))[-1])


def pl_constant(model: str, X, Q, *, u=None, activation: str | Activation = "identity",
                derivative_bounds=None) -> float:
    """PL constant ``mu`` with ``||grad L||^2 >= mu (L - L*)`` on the sphere set by ``Q``.

    Parameters
    ----------
    model : {"linear", "readout"}
    X : (n, d) data; ``Sigma = X^T X / n`` with extreme eigenvalues ``lmin``, ``lmax``
    Q : (m, m) the invariant (``Q_0``, or a bound on ``Q_k``); ``q = lambda_max(Q)``
    u : (m,) the read-out ``u`` of readout (default ``(1, ..., 1) / sqrt(m)``)
    activation : the readout link ``sigma``, with ``gamma <= sigma' <= Gamma``
    derivative_bounds : (gamma, Gamma), optional
        readout: bounds on ``sigma'`` to use instead of the link's global
        ones, e.g. the local ones of :func:`local_derivative_bounds` (then
        ``mu`` is the local constant at that point, docs/theory.md §7).

    Returns
    -------
    mu : float
        linear: ``2 lmin / q``; readout:
        ``2 gamma^4 lmin^2 ||u||^2 / (Gamma^2 lmax q)``; ``0.0`` where the
        theorem does not apply (``gamma <= 0``, singular ``Sigma``). An array
        when ``derivative_bounds`` holds arrays (one pair per step).

    Notes
    -----
    docs/theory.md §7.
    """
    _registry.choose_model(model, MODELS)
    lmin, lmax = (np.float64(x) for x in _sigma_extremes(X))  # / 0 is inf, not an error
    Q = _square("Q", Q)
    q = _q_max(Q)
    if not q > 0.0:
        raise ValueError(f"Q must have a positive largest eigenvalue, got {q!r}")
    if model == "linear":
        with np.errstate(over="ignore", under="ignore"):
            return float(np.float64(2.0) * lmin / q)
    m = Q.shape[0]
    if u is None:
        uu = 1.0
    else:
        uu = float(np.sum(v.as_float64("u", u, ndim=1, shape=(m,)) ** 2))
    if derivative_bounds is None:
        derivative_bounds = get_activation(activation).derivative_bounds()
    gamma, Gamma = (np.asarray(b, dtype=np.float64) for b in derivative_bounds)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        # in an order whose intermediates overflow only when mu itself does
        mu = 2.0 * gamma**4 * uu * (lmin / lmax) * (lmin / (Gamma**2 * q))
    mu = np.where((gamma > 0.0) & (lmax > 0.0), mu, 0.0)
    return float(mu) if mu.ndim == 0 else mu


def local_derivative_bounds(X, A, B, theta, *, u=None,
                            activation: str | Activation = "identity") -> tuple[float, float]:
    """The local ``(gamma, Gamma)`` of a readout model at ``(A, B)``.

    ``gamma`` and ``Gamma`` are the minimum and maximum of ``sigma'`` over the
    segments between each sample's pre-activation ``s_i = u . W x_i``
    (``W = (I - A)^{-1} B``) and the teacher's ``t_i = theta . x_i``: the
    points where the PL argument of docs/theory.md §7 evaluates ``sigma'``
    for a realizable target ``y = sigma(theta . x)``. With them in
    :func:`pl_constant` (``derivative_bounds=``) the PL inequality holds at
    ``(A, B)`` for links with no global positive ``gamma`` (tanh, sigmoid,
    softplus) or a negative one (gelu); ``gamma <= 0`` says it gives nothing.
    ``Gamma`` bounds ``|sigma'|`` on the segments.
    """
    A = _square("A", A)
    m = A.shape[0]
    B = v.as_float64("B", B, shape=(m, None))
    X = v.as_float64("X", X, shape=(None, B.shape[1]))
    theta = v.as_float64("theta", theta, ndim=1, shape=(B.shape[1],))
    uu = np.full(m, 1.0 / math.sqrt(m)) if u is None else v.as_float64("u", u, ndim=1,
                                                                        shape=(m,))
    w = np.linalg.solve(np.eye(m) - A, B).T @ uu
    lo, hi = get_activation(activation).derivative_range(X @ w, X @ theta)
    # Gamma bounds |sigma'| (gelu' is negative somewhere)
    return float(np.min(lo)), float(max(np.max(hi), -np.min(lo)))


def predicted_factor(model: str, X, Q, lr, *, smoothness, L0=None, L_star=0.0, u=None,
                     activation: str | Activation = "identity") -> float:
    """Predicted per-step factor of ``L_k - L*`` under gradient descent.

    ``1 - lr mu (1 - smoothness lr / 2)``, where ``mu`` is :func:`pl_constant`
    with ``q`` replaced by the bound on ``lambda_max(Q_k)``:
    ``q + 2 lr (L0 - L*)`` when ``L0`` is given (drift bound of §5), else
    ``q = lambda_max(Q)``.

    Parameters
    ----------
    smoothness : float >= 0
        ``beta``: a bound on the Hessian norm of the loss along the path (see
        :func:`smoothness`). NaN is returned when ``lr * smoothness > 1``:
        the descent lemma behind the factor does not apply there.

    Notes
    -----
    docs/theory.md §7. The first-order ``1 - lr mu`` is not an upper bound
    (``m = d = 1``, ``Y = 0``, ``a0 = 0``, ``b0 = 0.05``, ``lr beta = 0.2``:
    0.643 observed, 0.605 first order, 0.644 here). An empirical factor above
    this one means a bug or a violated assumption.
    """
    lr = v.positive("lr", lr)
    beta = v.positive("smoothness", smoothness, allow_zero=True)
    Q = _square("Q", Q)
    q = _q_max(Q)
    if L0 is not None:
        gap = max(v.real("L0", L0) - v.real("L_star", L_star), 0.0)
        q = q + 2.0 * lr * gap
    if lr * beta > 1.0:
        return math.nan
    Qb = np.eye(Q.shape[0]) * q  # lambda_max(Qb) = q
    mu = pl_constant(model, X, Qb, u=u, activation=activation)
    return max(1.0 - lr * mu * (1.0 - 0.5 * beta * lr), 0.0)


def step_factor_bounds(model: str, X, Q0, lr, drift_trace, *, smoothness, u=None,
                       activation: str | Activation = "identity",
                       derivative_bounds=None) -> np.ndarray:
    """Rigorous bound on each step's factor ``(L_{k+1} - L*) / (L_k - L*)``.

    ``1 - lr mu_k (1 - smoothness lr / 2)`` with ``mu_k`` the PL constant at
    ``lambda_max(Q_k) <= lambda_max(Q_0) + tr(Q_k - Q_0)`` (``Q_k - Q_0`` is
    positive semidefinite under GD, docs/theory.md §5), ``drift_trace[k] =
    tr(Q_k - Q_0)`` as recorded by :func:`deqbench.train`. All NaN when
    ``lr * smoothness > 1``. ``derivative_bounds`` (readout): a pair
    ``(gamma_k, Gamma_k)`` of arrays like ``drift_trace``, the local bounds of
    :func:`local_derivative_bounds` at each step (then each factor is a local
    statement, and 1 where ``gamma_k <= 0``).
    """
    lr = v.positive("lr", lr)
    beta = v.positive("smoothness", smoothness, allow_zero=True)
    Q0 = _square("Q0", Q0)
    drift = np.asarray(drift_trace, dtype=np.float64)
    if lr * beta > 1.0:
        return np.full(drift.shape, math.nan)
    mu1 = pl_constant(model, X, np.eye(Q0.shape[0]), u=u, activation=activation,
                      derivative_bounds=derivative_bounds)
    q = _q_max(Q0) + np.maximum(drift, 0.0)
    return np.maximum(1.0 - lr * (mu1 / q) * (1.0 - 0.5 * beta * lr), 0.0)


def smoothness(model: str, X, Y, A, B, *, u=None, activation: str | Activation = "identity",
               rtol: float = 1e-6) -> float:
    """Hessian norm of the loss at ``(A, B)``: the local smoothness ``beta``.

    The largest ``|eigenvalue|`` of the Hessian of :func:`deqbench.loss_and_grad`'s
    loss in ``(A, B)``, from Hessian-vector products computed as central
    differences of exact gradients (the sufficient statistics of §8 for
    ``linear``, direct solves for ``readout``, Picard to 1e-13 for
    ``nonlinear``): a dense eigenvalue solve up
    to 64 parameters, Lanczos (``scipy.sparse.linalg.eigsh``) above. The
    differences are accurate to about 1e-7 relative.

    Notes
    -----
    docs/theory.md §7: the loss is not globally smooth (it blows up as
    ``I - A`` becomes singular), so ``beta`` is measured along a path, at
    the points a caller passes; the maximum over them is an estimate of the
    constant of the descent lemma, not a bound.
    """
    import warnings

    from scipy.sparse.linalg import LinearOperator, eigsh

    from ._gradients import loss_and_grad
    from ._warnings import ConvergenceWarning

    _registry.choose_model(model, ("linear", "readout", "nonlinear"))
    rtol = v.positive("rtol", rtol)
    A = _square("A", A)
    B = v.as_float64("B", B, shape=(A.shape[0], None))
    m, d = B.shape
    kind = _registry.MODELS.get(model)
    solver = "direct" if kind is not None and kind.linear_fixed_point else "picard"
    kw = dict(u=u, activation=activation, solver=solver, tol=1e-13, max_iter=100_000)
    p0 = np.concatenate([A.ravel(), B.ravel()])
    h = 1e-5 * max(1.0, float(np.max(np.abs(p0))))
    if model != "nonlinear" and np.linalg.cond(np.eye(m) - A) * np.finfo(float).eps >= 1.0:
        raise ValueError("A: I - A is singular to working precision; the loss and its "
                         "Hessian are not defined there")

    if model == "linear":  # sufficient statistics (§8): n-independent gradients
        X = v.as_float64("X", X, shape=(None, d))
        Sxx = X.T @ X / X.shape[0]
        Syx = v.as_float64("Y", Y, shape=(X.shape[0], m)).T @ X / X.shape[0]

    def grad(p):
        Ap, Bp = p[: m * m].reshape(m, m), p[m * m:].reshape(m, d)
        if model == "linear":
            C = np.eye(m) - Ap
            try:
                W = np.linalg.solve(C, Bp)
                gB = np.linalg.solve(C.T, W @ Sxx - Syx)
            except np.linalg.LinAlgError:
                raise ValueError(f"A: I - A is singular within the difference step {h:.3g} "
                                 "of A; the Hessian is not defined there") from None
            return np.concatenate([np.ravel(gB @ W.T), np.ravel(gB)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # said below, as an error
            res = loss_and_grad(model, X, Y, Ap.copy(), Bp.copy(), **kw)
        if not res.converged:
            raise ValueError(f"A: the fixed point at A (or within the difference step {h:.3g} "
                             f"of it) did not converge (forward {res.fp_status!r}, adjoint "
                             f"{res.adj_status!r}); the Hessian needs exact gradients")
        return np.concatenate([np.ravel(res.grad_A), np.ravel(res.grad_B)])

    def hv(x):
        x = np.ravel(x)
        nx = float(np.linalg.norm(x))
        if nx == 0.0:
            return np.zeros_like(x)
        return (grad(p0 + (h / nx) * x) - grad(p0 - (h / nx) * x)) * (nx / (2.0 * h))

    N = p0.size
    if N <= 64:
        H = np.column_stack([hv(e) for e in np.eye(N)])
        return float(np.max(np.abs(np.linalg.eigvalsh(0.5 * (H + H.T)))))
    op = LinearOperator((N, N), matvec=hv, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(N)
    return float(np.max(np.abs(eigsh(op, k=1, which="LM", tol=rtol, v0=v0,
                                     return_eigenvectors=False))))


def least_squares(X, Y) -> tuple[np.ndarray, float]:
    """Minimum-norm ``W*`` of ``min_W ||X W^T - Y||^2 / 2n`` and that minimum ``L*``.

    ``Y`` may be ``(n, m)`` (``W*`` is ``(m, d)``) or ``(n,)`` (``W*`` is ``(d,)``).
    ``L*`` is the mean of the squared residuals (no cancellation).
    """
    X = v.as_float64("X", X)
    ndim = np.ndim(Y)
    if ndim not in (1, 2):
        raise ValueError(f"Y must be 1- or 2-dimensional, got shape {np.shape(Y)}")
    Y = v.as_float64("Y", Y, ndim=ndim, shape=(X.shape[0], None)[:ndim])
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            sol = np.linalg.lstsq(X, Y, rcond=None)[0]
            r = X @ sol - Y
    except np.linalg.LinAlgError as exc:
        raise ValueError(f"X: the least-squares solve failed ({exc}); X spans too many "
                         "orders of magnitude for float64") from None
    if not np.isfinite(r).all():  # W* beyond float64: L* from the projection of Y instead
        U, sv, _ = np.linalg.svd(X / np.max(np.abs(X)), full_matrices=False)
        U = U[:, sv > sv[0] * np.finfo(float).eps * max(X.shape)]
        r = Y - U @ (U.T @ Y)
    return np.ascontiguousarray(sol.T), 0.5 * _sumsq(r) / X.shape[0]


def _sumsq(x) -> float:
    """``sum(x**2)`` without overflow on the way (inf only when the sum is beyond float64)."""
    big = float(np.max(np.abs(x))) if np.size(x) else 0.0
    if big == 0.0 or not math.isfinite(big):
        return big
    return big * big * float(np.sum((x / big) ** 2))  # Python floats: inf, not an error


def global_min_loss(model: str, X, Y, *, activation: str | Activation = "identity") -> float:
    """Global minimum ``L*`` of the loss over all parameters.

    Closed form for ``model="linear"`` (least squares over all ``W``, every
    ``W`` being reachable as ``(I - A)^{-1} B``) and for ``readout``
    with the identity link (least squares on ``y``). Other links have no
    closed form: a ``ValueError`` (pass ``L_star`` explicitly, e.g. 0 for a
    realizable teacher).

    Notes
    -----
    docs/theory.md §7.
    """
    _registry.choose_model(model, MODELS)
    X = v.as_float64("X", X)
    n = X.shape[0]
    if model == "linear":
        Y = v.as_float64("Y", Y, shape=(n, None))
    else:
        if not get_activation(activation).is_identity:
            raise ValueError(
                f"global_min_loss has no closed form for readout with activation="
                f"{str(get_activation(activation))!r}; pass L_star (0 for a realizable teacher)"
            )
        Y = v.as_float64("Y", Y, ndim=1, shape=(n,))
    return least_squares(X, Y)[1]


def empirical_factor(losses, L_star, steps=None) -> float:
    """Per-step factor fitted to ``log(L_k - L*)`` (least squares on the window).

    The window starts at the first ``k`` with ``L_k - L* < 0.5 (L_0 - L*)``
    and ends before the first later ``k`` with ``L_k - L* <= 1e3 eps L_0``
    (never into the float floor). ``steps`` gives the step number of each
    entry (default ``0, 1, ...``), so recorded-every-``k`` histories give a
    per-step factor. Returns NaN when the window holds fewer than 3 points.

    Notes
    -----
    docs/theory.md §7.
    """
    L = _vector("losses", losses)
    k = np.arange(L.size, dtype=np.float64) if steps is None else _vector("steps", steps)
    if k.shape != L.shape:
        raise ValueError(f"steps must have the shape of losses {L.shape}, got {k.shape}")
    if not (np.isfinite(k).all() and np.all(k[1:] > k[:-1])):
        raise ValueError("steps must be strictly increasing finite numbers (the step of each "
                         f"loss), got {v._describe(steps)}")
    if L.size < 3:
        return math.nan
    Ls = v.real("L_star", L_star)
    with np.errstate(over="ignore", invalid="ignore"):  # inf or NaN: outside the window
        e = L - Ls
    e0 = e[0]
    floor = FLOOR * np.finfo(float).eps * abs(L[0])
    below = np.nonzero(e < 0.5 * e0)[0]
    if e0 <= 0 or below.size == 0:
        return math.nan
    start = below[0]
    stop = start
    while stop < L.size and e[stop] > floor and np.isfinite(e[stop]):
        stop += 1
    if stop - start < 3:
        return math.nan
    x, y = k[start:stop], np.log(e[start:stop])
    # least squares on x shifted and scaled to [0, 1] (no overflow, no cancellation)
    with np.errstate(over="ignore"):
        dx = x - x[0]
    c = float(dx[-1]) if np.isfinite(dx[-1]) else float(np.max(np.abs(x)))
    xs = (dx if np.isfinite(dx[-1]) else x) / c
    xs = xs - xs.mean()
    slope = float(np.dot(xs, y - y.mean()) / np.dot(xs, xs)) / c
    with np.errstate(over="ignore", under="ignore"):
        return float(np.exp(slope))


VACUOUS = 1e-3
"""A predicted factor ``q`` with ``1 - q < VACUOUS`` predicts nothing: "vacuous"."""


def rate_check(losses, L_star, predicted, steps=None, *, local=False) -> dict:
    """Predicted vs empirical factor for one run.

    Returns ``{"predicted", "empirical", "ratio", "violated", "verdict"}``.
    ``violated`` is True when the empirical factor exceeds the predicted one
    by more than 1e-12 (a bug or a violated assumption, docs/theory.md §7).
    ``verdict`` is one of ``"holds"`` (``"local"`` when ``local``: the
    prediction rests on the derivative bounds measured along this run's path,
    not on global ones, so it is no global claim), ``"violated"``,
    ``"vacuous"`` (``1 - predicted < VACUOUS``: never reported as holding),
    ``"not applicable"`` (NaN prediction: ``lr beta > 1`` or a link outside
    the theorem) or ``"no fit"`` (NaN empirical factor: too few points in
    the window, which is not a pass either).
    """
    pred = v.real("predicted", predicted, allow_nan=True)
    emp = empirical_factor(losses, L_star, steps)
    ratio = emp / pred if pred > 0 else (math.nan if math.isnan(pred) else math.inf)
    violated = bool(np.isfinite(emp) and emp > pred + 1e-12)
    if math.isnan(pred):
        verdict = "not applicable"
    elif violated:
        verdict = "violated"
    elif 1.0 - pred < VACUOUS:
        verdict = "vacuous"
    elif math.isnan(emp):
        verdict = "no fit"
    else:
        verdict = "local" if local else "holds"
    return {"predicted": pred, "empirical": emp, "ratio": ratio, "violated": violated,
            "verdict": verdict}


def predicted_fp_iters(rate, tol, *, gap=None) -> float:
    """Predicted Picard iterations from ``Z0 = 0`` to the relative residual ``tol``.

    The count of the slowest mode: an eigenvalue ``lam`` of ``A`` at distance
    ``gap = |1 - lam|`` from 1, iterated at the rate ``mu = max(rate, 1 - gap)``,
    has relative residual ``gap mu^k / (1 - lam mu^k)`` after ``k`` iterations
    (exactly, for the scalar map ``z -> lam z + u``), so
    ``K = ceil(log(1 + gap (1 - tol) / tol) / -log(mu))``, at least 1: about
    ``log(gap / tol) / log(rate)`` when ``gap >> tol``, and about ``1 / tol`` as
    ``gap -> 0``. ``inf`` when ``rate >= 1`` or ``gap <= 0``; 1 when ``rate = 0``
    or ``tol >= 1``.

    Parameters
    ----------
    rate : float >= 0
        Asymptotic rate of the iteration: ``rho(A)`` for Picard,
        ``rho((1 - beta) I + beta A)`` for Picard damped by ``beta``.
    tol : float > 0
    gap : float, optional
        ``min_i |1 - lambda_i(A)|``, the distance of ``A``'s spectrum from 1
        (default ``1 - rate``: undamped Picard whose slowest eigenvalue is the
        one nearest 1, e.g. a spectrum in ``[-rho, rho]``). For damped Picard
        on that spectrum pass ``gap = 1 - rho(A)``.

    Notes
    -----
    docs/theory.md §3: the residual decays like ``rate^k ||U||`` while
    ``||F(Z_k)|| -> ||Z*|| ~ ||U|| / gap``, hence the correction (the plain
    ``log(tol) / log(rate)`` says 2292 where about 1850 are measured at
    ``rho = 0.99``). Leading order for normal ``A``; a non-normal ``A`` can
    have a long transient that this does not predict.
    """
    rate = v.positive("rate", rate, allow_zero=True)
    tol = v.positive("tol", tol)
    gap = 1.0 - rate if gap is None else v.real("gap", gap)
    if rate >= 1.0 or gap <= 0.0:
        return math.inf
    if rate == 0.0 or tol >= 1.0:
        return 1.0
    # the slowest mode iterates at mu = 1 - e: its eigenvalue is gap away from 1, so no
    # damping makes it faster than 1 - gap; log1p keeps e, gap/tol down to 1e-300
    e = min(1.0 - rate, gap)
    if e >= 1.0:  # the mode's rate rounds to 0: one iteration
        return 1.0
    x = gap * (1.0 - tol) / tol
    top = math.log1p(x) if math.isfinite(x) else math.log(gap) + math.log1p(-tol) - math.log(tol)
    k = top / -math.log1p(-e)
    return float(max(1, math.ceil(k))) if math.isfinite(k) else math.inf


CERT_MARGIN = 1e-6
"""The certified rate of :func:`certified_rate` is at most ``1 - CERT_MARGIN``."""


def certified_rate(tol, max_iter) -> float:
    """The largest iteration rate that :func:`deqbench.train` and
    :func:`deqbench.flow` certify for the solvers whose certificate is
    ``"rate"`` (Picard and Anderson, ``deqbench._registry.SOLVERS``) with
    ``tol`` and ``max_iter`` (docs/theory.md §3, certificate).

    The rate ``r`` whose predicted count :func:`predicted_fp_iters` (from
    ``Z0 = 0``) is ``max_iter``, found by bisection; at most
    ``1 - CERT_MARGIN``, and at most ``1 - 3 tol``, beyond which that
    leading-order count stops growing with the rate. A step whose iteration
    matrix has a larger spectral radius is refused on both gradient paths:
    the sufficient-statistics path runs no iteration, and a per-sample solve
    there would run out of ``max_iter`` (from a cold start, on a normal ``A``).
    """
    tol = v.positive("tol", tol)
    max_iter = v.integer("max_iter", max_iter, minimum=1)
    # K(r) increases on r <= 1 - e tol (docs/theory.md §3): bisect below 1 - 3 tol
    lo, hi = 0.0, min(1.0 - CERT_MARGIN, 1.0 - 3.0 * tol)
    if hi <= 0.0 or predicted_fp_iters(hi, tol) <= max_iter:
        return max(hi, 0.0)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if predicted_fp_iters(mid, tol) <= max_iter:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15:
            break
    return lo


def conditioning_bounds(Q, W) -> tuple[float, float]:
    """Bounds on the singular values of ``I - A`` from the invariant.

    Returns ``(lower, upper)`` with
    ``sigma_min(I - A) >= lower = sqrt(lambda_min(Q) / (1 + ||W||_2^2))`` and
    ``sigma_max(I - A) <= upper = sqrt(lambda_max(Q))``
    (so every singular value of ``(I - A)^{-1}`` is ``>= 1 / upper``).

    Notes
    -----
    docs/theory.md §6, from ``B = C W`` so ``Q = C (I + W W^T) C^T``.
    """
    Q = _square("Q", Q)
    W = v.as_float64("W", W, shape=(Q.shape[0], None))
    ev = _sym_eigvals(Q)
    bw = float(np.max(np.abs(W)))
    w = float(np.linalg.norm(W / bw, 2)) * bw if bw > 0.0 else 0.0
    # sqrt(lmin / (1 + w^2)) without squaring w (which may overflow)
    lower = math.sqrt(max(ev[0], 0.0)) / math.hypot(1.0, w)
    return float(lower), float(math.sqrt(max(ev[-1], 0.0)))


def loglog_fit(x, y) -> tuple[float, float]:
    """Least-squares slope and intercept of ``log y`` against ``log x``.

    The one log-log fit of the package, its experiments and its benchmarks
    (scaling exponents, drift against the step size). Pairs that are not
    positive and finite are left out; ``(nan, nan)`` when fewer than two
    distinct ``x`` remain.
    """
    x, y = _vector("x", x), _vector("y", y)
    if y.shape != x.shape:
        raise ValueError(f"y must have the shape of x, both 1-D, got x {x.shape} and y "
                         f"{y.shape}")
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2 or np.unique(x[ok]).size < 2:
        return math.nan, math.nan
    slope, icpt = np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)
    return float(slope), float(icpt)



# --------------------------------------------------------------------------
# §12 The paper's model: one scalar state per sample, y = sigma(<w, x> + b y)
# --------------------------------------------------------------------------

BACKWARDS = ("exact", "jfb", "neumann", "damped_neumann")
"""Backward rules of :func:`backward_factor` (docs/theory.md §12)."""
CONVENTIONS = ("deqbench", "paper")
"""Loss scalings: deqbench's ``sum (z - y)^2 / 2n``, the paper's ``sum (z - y)^2 / n``."""
EQUILIBRIUM_RTOL = 1e-6
"""The state ``z`` passed to the §12 functions must solve ``z = sigma(X w + b z)`` to
this relative accuracy (it is checked: a wrong ``z`` gives a wrong gradient)."""


def _backward(backward, neumann_terms, damping) -> tuple[int, float]:
    v.choice("backward", backward, BACKWARDS)
    return (v.integer("neumann_terms", neumann_terms, minimum=0),
            v.unit_interval("damping", damping))


def _series(a, backward: str, k: int, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """A truncated rule's factor ``f(a)`` and its derivative ``f'(a)`` (Horner in the
    multiplier ``m``: ``a`` for Neumann, ``1 - lam + lam a`` damped)."""
    a = np.asarray(a, dtype=np.float64)
    if backward == "jfb":
        return np.ones_like(a), np.zeros_like(a)
    scale = 1.0 if backward == "neumann" else lam
    m = a if backward == "neumann" else 1.0 - lam + lam * a
    f, df = np.ones_like(a), np.zeros_like(a)
    for _ in range(k):  # f <- 1 + m f, f' <- f + m f' (in m)
        df = f + m * df
        f = 1.0 + m * f
    return scale * f, scale * scale * df


def backward_factor(a, backward: str = "exact", *, neumann_terms: int = 1,
                    damping: float = 0.5) -> np.ndarray:
    """The per-sample factor a backward rule puts where the exact gradient has ``1 / (1 - a)``.

    Parameters
    ----------
    a : array_like
        ``a = b sigma'(s)``, the derivative of the scalar map ``y -> sigma(s0 + b y)``
        at the equilibrium.
    backward : {"exact", "jfb", "neumann", "damped_neumann"}
        ``exact``: ``1 / (1 - a)``; ``jfb``: ``1``; ``neumann``:
        ``1 + a + ... + a^k``; ``damped_neumann``: the Neumann series of the
        damped map ``y -> (1 - lam) y + lam sigma(s0 + b y)``,
        ``lam sum_{j <= k} (1 - lam + lam a)^j``.
    neumann_terms : int >= 0
        ``k``, the highest power (deqbench's counting: ``k = 1`` is the
        paper's "two terms" ``1 + a``).
    damping : float in (0, 1]
        ``lam`` of ``damped_neumann`` (the paper's "damped two terms" is
        ``k = 1``, ``lam = 1/2``: ``0.75 + 0.25 a``).

    Returns
    -------
    ndarray of the shape of ``a``

    Notes
    -----
    docs/theory.md §12. Every rule agrees with the exact factor to first
    order at ``a = 0`` except JFB, and the truncated ones vanish where
    :func:`backward_roots` says.
    """
    k, lam = _backward(backward, neumann_terms, damping)
    a = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("a must be finite")
    if backward == "exact":
        if np.any(a == 1.0):
            raise ValueError("a must differ from 1 for the exact factor 1 / (1 - a) "
                             "(a = 1: the equilibrium is singular)")
        return 1.0 / (1.0 - a)
    return _series(a, backward, k, lam)[0]


def backward_roots(backward: str, *, neumann_terms: int = 1, damping: float = 0.5) -> np.ndarray:
    """The real ``a`` at which :func:`backward_factor` vanishes: where the approximate step
    is zero whatever the residual, so its dynamics can stall (docs/theory.md §12).

    ``exact`` and ``jfb``: none. ``neumann``: ``1 + ... + a^k = (1 - a^{k+1}) / (1 - a)``
    vanishes at ``a = -1`` when ``k`` is odd, nowhere when it is even.
    ``damped_neumann``: the same in the multiplier ``1 - lam + lam a``, so at
    ``a = 1 - 2 / lam`` when ``k`` is odd (``-3`` at ``lam = 1/2``).
    """
    k, lam = _backward(backward, neumann_terms, damping)
    if backward in ("exact", "jfb") or k % 2 == 0:
        return np.empty(0)
    return np.array([-1.0 if backward == "neumann" else 1.0 - 2.0 / lam])


def stall_rate(c, lr, *, backward: str = "neumann", neumann_terms: int = 1,
               damping: float = 0.5, root=None, sxx: float = 1.0, sxy: float = 1.0) -> float:
    """Per-step factor by which the scalar linear DEQ's approximate gradient descent
    approaches the stall line ``b = r`` of a backward rule.

    The scalar linear DEQ ``y = c x + b y`` has ``phi = c / (1 - b)`` and the loss
    ``(phi^2 sxx - 2 phi sxy) / 2 + const`` (``sxx = mean x^2``, ``sxy = mean x y``;
    the paper's counterexample is one sample ``x = y = 1``). A backward factor ``f``
    takes the step ``lr g(phi) f(b) (1, phi)`` with ``g = phi sxx - sxy``; where
    ``f(r) = 0`` every point of the line ``b = r`` is fixed, and near it
    ``b_{k+1} - r = (1 - lr g(phi) phi f'(r)) (b_k - r)`` with ``phi = c / (1 - r)``.
    The line attracts where that factor lies in ``(-1, 1)``.

    Parameters
    ----------
    c : float
        The point of the line approached (its ``c``).
    lr : float > 0
        deqbench's step on the loss with ``1/2`` (the paper's ``eta`` is ``lr / 2``).
    root : float, optional
        The stall line; default the one real root of :func:`backward_roots`
        (a ``ValueError`` when the rule has none: no stall).

    Notes
    -----
    docs/theory.md §12. The other eigenvalue of the step's Jacobian on the
    line is 1 (the line is a set of fixed points), so the loss tends to a
    non-zero limit at this rate.
    """
    k, lam = _backward(backward, neumann_terms, damping)
    c, lr = v.real("c", c), v.positive("lr", lr)
    sxx, sxy = v.positive("sxx", sxx), v.real("sxy", sxy)
    roots = backward_roots(backward, neumann_terms=k, damping=lam)
    if root is None:
        if roots.size == 0:
            raise ValueError(f"backward={backward!r} (neumann_terms={k}) has no real root: "
                             "its dynamics have no stall line")
        root = float(roots[0])
    root = v.real("root", root)
    if backward == "exact" or root == 1.0:
        raise ValueError(f"root must be a real root of the {backward!r} factor other than "
                         f"1, got {root!r}")
    f, df = _series(root, backward, k, lam)
    if abs(float(f)) > 1e-12:
        raise ValueError(f"root must be a real root of the {backward!r} factor other than "
                         f"1, got {root!r}")
    phi = c / (1.0 - root)
    return float(1.0 - lr * (phi * sxx - sxy) * phi * float(df))


def _state(X, w, b, z, activation):
    """Validated ``(X, w, b, z, sigma, s)`` of the scalar model; ``z`` must solve
    ``z = sigma(X w + b z)`` (``z=None`` at ``b = 0``: ``z = sigma(X w)``)."""
    X = v.as_float64("X", X)
    n, d = X.shape
    w = v.as_float64("w", w, ndim=1, shape=(d,))
    b = v.real("b", b)
    act = get_activation(activation)
    if z is None:
        if b != 0.0:
            raise ValueError(f"z (the equilibrium) is needed when b != 0, got b = {b!r}")
        z = act(X @ w)
    z = v.as_float64("z", z, ndim=1, shape=(n,))
    s = X @ w + b * z
    gap = float(np.max(np.abs(z - act(s))))
    if gap > EQUILIBRIUM_RTOL * (1.0 + float(np.max(np.abs(z)))):
        raise ValueError(f"z must solve z = sigma(X w + b z) to relative accuracy "
                         f"{EQUILIBRIUM_RTOL:g}; its largest residual is {gap:.3g}")
    return X, w, b, z, act, s


def _jacobian(X, z, b, act, s, backward, neumann_terms, damping) -> np.ndarray:
    sp = act.derivative(s)
    f = backward_factor(b * sp, backward, neumann_terms=neumann_terms, damping=damping)
    return (sp * f)[:, None] * np.column_stack([X, z])


def scalar_jacobian(X, w, b, z=None, *, activation: str | Activation = "identity",
                    backward: str = "exact", neumann_terms: int = 1,
                    damping: float = 0.5) -> np.ndarray:
    """Per-sample derivative of the equilibrium ``z_i`` in ``(w, b)``, as a backward rule sees it.

    Row ``i`` is ``sigma'(s_i) f(a_i) (x_i, z_i)`` with ``s_i = <w, x_i> + b z_i``,
    ``a_i = b sigma'(s_i)`` and ``f`` the :func:`backward_factor` (exact:
    ``1 / (1 - a_i)``, the implicit function theorem).

    Parameters
    ----------
    X : (n, d)
    w : (d,), b : float
    z : (n,), optional
        The equilibrium ``z = sigma(X w + b z)`` (checked to
        :data:`EQUILIBRIUM_RTOL`); may be omitted at ``b = 0``.

    Returns
    -------
    J : (n, d + 1), columns ``w`` then ``b``

    Notes
    -----
    docs/theory.md §12.
    """
    X, w, b, z, act, s = _state(X, w, b, z, activation)
    return _jacobian(X, z, b, act, s, backward, neumann_terms, damping)


def scalar_gradient(X, y, w, b, z=None, *, activation: str | Activation = "identity",
                    backward: str = "exact", neumann_terms: int = 1, damping: float = 0.5,
                    convention: str = "deqbench") -> tuple[np.ndarray, float]:
    """The implicit gradient of the squared loss of ``y = sigma(<w, x> + b y)`` (or the
    direction a backward rule takes instead).

    ``(grad_w, grad_b) = c J^T (z - y) / n`` with ``J`` from :func:`scalar_jacobian`:
    per sample ``dz/dw = sigma'(s) x / (1 - a)``, ``dz/db = sigma'(s) z / (1 - a)``.
    ``c = 1`` for deqbench's loss ``sum (z - y)^2 / 2n`` (``convention="deqbench"``),
    ``c = 2`` for the paper's ``sum (z - y)^2 / n`` (``"paper"``).

    Returns
    -------
    grad_w : (d,), grad_b : float

    Notes
    -----
    docs/theory.md §12. deqbench's ``loss_and_grad("nonlinear", ...)`` with
    ``m = 1`` (``A = [[b]]``, ``B = w[None, :]``) returns the same numbers.
    """
    v.choice("convention", convention, CONVENTIONS)
    X, w, b, z, act, s = _state(X, w, b, z, activation)
    y = v.as_float64("y", y, ndim=1, shape=(X.shape[0],))
    J = _jacobian(X, z, b, act, s, backward, neumann_terms, damping)
    g = (1.0 if convention == "deqbench" else 2.0) * (J.T @ (z - y)) / X.shape[0]
    return g[:-1].copy(), float(g[-1])


def zero_risk_hessian(X, w, b=0.0, z=None, *, activation: str | Activation = "identity",
                      convention: str = "deqbench") -> np.ndarray:
    """Hessian of the loss at a zero-risk point of the scalar model.

    Where every residual vanishes the second-derivative term of the loss drops
    out and the Hessian is the Gauss-Newton matrix ``c J^T J / n`` (``J``: the
    exact :func:`scalar_jacobian`; ``c = 1`` deqbench, ``c = 2`` paper). For a
    realizable target ``y = sigma(X xi)`` the zero-risk point is ``(w, b) =
    (xi, 0)``, where ``J = diag(sigma'(X xi)) [X, sigma(X xi)]``: pass
    ``w = xi`` and the default ``b = 0``. It is positive definite exactly
    when ``sigma' > 0`` on the samples and the columns of ``[X, sigma(X xi)]``
    are linearly independent, which also makes ``(xi, 0)`` the only zero-risk
    point. For the identity link ``sigma(X xi)`` is a column combination of
    ``X``: the zero-risk set is the line ``w = xi (1 - b)`` and the Hessian
    has a zero eigenvalue along it.

    It is the Hessian only where the residuals are zero: the caller passes
    such a point (it is not checked, since the target is not an argument).

    Notes
    -----
    docs/theory.md §12. The paper's step ``eta`` on its risk and deqbench's
    ``lr = 2 eta`` on its loss see the same dynamics:
    ``lr H_deqbench = eta H_paper``.
    """
    v.choice("convention", convention, CONVENTIONS)
    J = scalar_jacobian(X, w, b, z, activation=activation)
    H = J.T @ J / J.shape[0]
    return (1.0 if convention == "deqbench" else 2.0) * H


def step_matrix(X, w, b=0.0, z=None, *, activation: str | Activation = "identity",
                backward: str = "exact", neumann_terms: int = 1,
                damping: float = 0.5) -> np.ndarray:
    """The matrix ``M = J_f^T J / n`` of gradient descent linearised at a zero-risk point.

    With the residual zero at ``theta*``, a step ``theta - lr J_f^T r / n``
    (``J_f``: the backward rule's :func:`scalar_jacobian`, ``J``: the exact one)
    maps ``theta* + e`` to ``theta* + (I - lr M) e + O(|e|^2)``. For the exact
    backward ``M`` is :func:`zero_risk_hessian` (deqbench's scaling); otherwise
    it need not be symmetric. Rates: :func:`gd_local_rate`.

    Notes
    -----
    docs/theory.md §12.
    """
    J = scalar_jacobian(X, w, b, z, activation=activation)
    Jf = scalar_jacobian(X, w, b, z, activation=activation, backward=backward,
                         neumann_terms=neumann_terms, damping=damping)
    return Jf.T @ J / J.shape[0]


def gd_local_rate(M, lr, *, rank_tol: float = 1e-9) -> float:
    """Predicted per-step contraction of gradient descent near a minimum: ``max_i |1 - lr mu_i|``.

    Parameters
    ----------
    M : (p, p)
        The Hessian at the minimum (or :func:`step_matrix` for an approximate
        backward), in the scaling of the loss ``lr`` is a step on.
    lr : float > 0
    rank_tol : float >= 0
        Eigenvalues with ``|mu| <= rank_tol max |mu|`` are left out: directions
        along a set of minima (the zero-risk line of the linear model), which
        gradient descent neither contracts nor expands to first order.

    Returns
    -------
    q : float
        The parameter error falls like ``q^k`` and the loss like ``q^{2k}``;
        ``q >= 1``: no local convergence at this step.

    Notes
    -----
    docs/theory.md §12. The slowest direction is the smallest eigenvalue
    while ``lr (mu_min + mu_max) <= 2`` and the largest beyond (past
    ``lr mu_max = 2`` the iteration diverges).
    """
    M = _square("M", M)
    lr = v.positive("lr", lr)
    tol = v.positive("rank_tol", rank_tol, allow_zero=True)
    mu = np.linalg.eigvals(M)
    keep = np.abs(mu) > tol * np.max(np.abs(mu)) if np.any(mu != 0) else np.zeros(mu.shape, bool)
    if not keep.any():
        raise ValueError("M has no eigenvalue above rank_tol * max |eigenvalue|: no rate")
    return float(np.max(np.abs(1.0 - lr * mu[keep])))


def steps_to_risk(risk0, level, rate) -> float:
    """Steps for a loss decaying like ``rate^{2k}`` to fall from ``risk0`` to ``level``.

    ``K = ceil(log(level / risk0) / (2 log rate))``; 0 when ``risk0 <= level``,
    ``inf`` when ``rate >= 1``. ``rate``: the parameter factor of
    :func:`gd_local_rate` (the loss is quadratic in the parameter error).

    Notes
    -----
    docs/theory.md §12: a prediction from a point where the slowest
    direction already dominates the error.
    """
    risk0 = v.positive("risk0", risk0)
    level = v.positive("level", level)
    rate = v.positive("rate", rate, allow_zero=True)
    if risk0 <= level:
        return 0.0
    if rate >= 1.0:
        return math.inf
    if rate == 0.0:
        return 1.0
    return float(math.ceil(math.log(level / risk0) / (2.0 * math.log(rate)) - 1e-9))


def skip_tanh_curvature_limit(X=None, xi=None, *, convention: str = "deqbench",
                              nodes: int = 200) -> float:
    """``lim_{eps -> 0} lambda_min(H_eps) / eps^2`` for the link ``s + eps tanh s``.

    ``H_eps`` is :func:`zero_risk_hessian` at the target ``(xi, 0)`` of
    ``y = sigma_eps(<xi, x>)``. At ``eps = 0`` the model is linear and
    ``(-xi, 1)`` is a null direction; to second order in ``eps`` the smallest
    eigenvalue is ``c eps^2 R / (1 + |xi|^2)`` with ``R`` the mean squared
    residual of ``tanh(X xi)`` regressed on the columns of ``X`` (``c = 1``
    deqbench, ``2`` paper).

    Parameters
    ----------
    X : (n, d), xi : (d,), optional
        The samples and the target direction: the empirical limit. Omitted:
        the population limit for ``x ~ N(0, I)`` and a unit ``xi``,
        ``(c / 2) (1 - s - s^2)`` with ``s = E sech^2 Z``, ``Z ~ N(0, 1)``
        (regressing ``tanh Z`` on ``Z`` leaves ``E tanh^2 Z - (E Z tanh Z)^2``,
        and ``E Z tanh Z = E sech^2 Z`` by Stein's identity), evaluated by
        Gauss-Hermite quadrature with ``nodes`` nodes.

    Notes
    -----
    docs/theory.md §12: 0.0137 (deqbench) and 0.0274 (paper) in the
    population, against the paper's "about 0.028" on 4096 samples at
    ``eps = 1/8``.
    """
    v.choice("convention", convention, CONVENTIONS)
    c = 1.0 if convention == "deqbench" else 2.0
    if (X is None) != (xi is None):
        raise ValueError("pass both X and xi (the empirical limit) or neither (the "
                         "population limit)")
    if X is None:
        t, wts = np.polynomial.hermite_e.hermegauss(v.integer("nodes", nodes, minimum=20))
        s = float(np.sum(wts / np.cosh(t) ** 2) / math.sqrt(2.0 * math.pi))
        return 0.5 * c * (1.0 - s - s * s)
    X = v.as_float64("X", X)
    xi = v.as_float64("xi", xi, ndim=1, shape=(X.shape[1],))
    t = np.tanh(X @ xi)
    beta = np.linalg.lstsq(X, t, rcond=None)[0]
    r = t - X @ beta
    return c * float(np.mean(r * r)) / (1.0 + float(xi @ xi))
