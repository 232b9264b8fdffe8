"""What the theory predicts, as plain functions (docs/theory.md §3 and §5-§7).

These are the formulas every training run is measured against: the conserved
matrix ``Q``, its exact discrete drift under gradient descent, the drift
bound and the window of ``drift / (lr (L_0 - L_K))``, the PL constants, the
measured smoothness ``beta`` and the per-step factors
``1 - lr mu (1 - beta lr / 2)``, the global minimum of the linear model, the
empirical factor with the window rule of §7 and its verdict, the predicted
Picard iteration count and the conditioning bounds of §6.
"""

from __future__ import annotations

import math

import numpy as np

from . import _registry
from . import _validate as v
from .activations import Activation, get_activation

__all__ = [
    "certified_rate",
    "conditioning_bounds",
    "drift_bound",
    "drift_gain_bounds",
    "empirical_factor",
    "gd_invariant_step",
    "global_min_loss",
    "invariant",
    "least_squares",
    "local_derivative_bounds",
    "loglog_fit",
    "pl_constant",
    "predicted_factor",
    "predicted_fp_iters",
    "rate_check",
    "smoothness",
    "step_factor_bounds",
]

MODELS = tuple(name for name, k in _registry.MODELS.items() if k.linear_fixed_point)
"""The models whose bounds this module gives: those with a linear fixed point."""
FLOOR = 1e3  # the window of empirical_factor stays above FLOOR * eps * L_0


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
    single_index models; row ``i`` gives the sphere
    ``||row_i(I - A)||^2 + ||row_i(B)||^2 = Q_ii``.
    """
    A = _square("A", A)
    B = v.as_float64("B", B, shape=(A.shape[0], None))
    C = np.eye(A.shape[0]) - A
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
    X = v.as_float64("X", X)
    ev = np.linalg.eigvalsh(X.T @ X / X.shape[0])
    return float(max(ev[0], 0.0)), float(ev[-1])


def _q_max(Q) -> float:
    Q = _square("Q", Q)
    return float(np.linalg.eigvalsh(0.5 * (Q + Q.T))[-1])


def pl_constant(model: str, X, Q, *, u=None, activation: str | Activation = "identity",
                derivative_bounds=None) -> float:
    """PL constant ``mu`` with ``||grad L||^2 >= mu (L - L*)`` on the sphere set by ``Q``.

    Parameters
    ----------
    model : {"linear", "single_index"}
    X : (n, d) data; ``Sigma = X^T X / n`` with extreme eigenvalues ``lmin``, ``lmax``
    Q : (m, m) the invariant (``Q_0``, or a bound on ``Q_k``); ``q = lambda_max(Q)``
    u : (m,) read-out of single_index (default ``(1, ..., 1) / sqrt(m)``)
    activation : the single_index link ``sigma``, with ``gamma <= sigma' <= Gamma``
    derivative_bounds : (gamma, Gamma), optional
        single_index: bounds on ``sigma'`` to use instead of the link's global
        ones, e.g. the local ones of :func:`local_derivative_bounds` (then
        ``mu`` is the local constant at that point, docs/theory.md §7).

    Returns
    -------
    mu : float
        linear: ``2 lmin / q``; single_index:
        ``2 gamma^4 lmin^2 ||u||^2 / (Gamma^2 lmax q)``; ``0.0`` where the
        theorem does not apply (``gamma <= 0``, singular ``Sigma``). An array
        when ``derivative_bounds`` holds arrays (one pair per step).

    Notes
    -----
    docs/theory.md §7.
    """
    v.choice("model", model, MODELS)
    lmin, lmax = _sigma_extremes(X)
    Q = _square("Q", Q)
    q = _q_max(Q)
    if not q > 0.0:
        raise ValueError(f"Q must have a positive largest eigenvalue, got {q!r}")
    if model == "linear":
        return 2.0 * lmin / q
    m = Q.shape[0]
    if u is None:
        uu = 1.0
    else:
        uu = float(np.sum(v.as_float64("u", u, ndim=1, shape=(m,)) ** 2))
    if derivative_bounds is None:
        derivative_bounds = get_activation(activation).derivative_bounds()
    gamma, Gamma = (np.asarray(b, dtype=np.float64) for b in derivative_bounds)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = 2.0 * gamma**4 * lmin**2 * uu / (Gamma**2 * lmax * q)
    mu = np.where((gamma > 0.0) & (lmax > 0.0), mu, 0.0)
    return float(mu) if mu.ndim == 0 else mu


def local_derivative_bounds(X, A, B, theta, *, u=None,
                            activation: str | Activation = "identity") -> tuple[float, float]:
    """The local ``(gamma, Gamma)`` of a single_index model at ``(A, B)``.

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
    ``lr * smoothness > 1``. ``derivative_bounds`` (single_index): a pair
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
    ``linear``, direct solves for ``single_index``, Picard to 1e-13 for
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
    from scipy.sparse.linalg import LinearOperator, eigsh

    from ._gradients import loss_and_grad

    A = _square("A", A)
    B = v.as_float64("B", B, shape=(A.shape[0], None))
    m, d = B.shape
    kind = _registry.MODELS.get(model)
    solver = "direct" if kind is not None and kind.linear_fixed_point else "picard"
    kw = dict(u=u, activation=activation, solver=solver, tol=1e-13, max_iter=100_000)
    p0 = np.concatenate([A.ravel(), B.ravel()])
    h = 1e-5 * max(1.0, float(np.max(np.abs(p0))))

    if model == "linear":  # sufficient statistics (§8): n-independent gradients
        X = v.as_float64("X", X, shape=(None, d))
        Sxx = X.T @ X / X.shape[0]
        Syx = v.as_float64("Y", Y, shape=(X.shape[0], m)).T @ X / X.shape[0]

    def grad(p):
        Ap, Bp = p[: m * m].reshape(m, m), p[m * m:].reshape(m, d)
        if model == "linear":
            C = np.eye(m) - Ap
            W = np.linalg.solve(C, Bp)
            gB = np.linalg.solve(C.T, W @ Sxx - Syx)
            return np.concatenate([np.ravel(gB @ W.T), np.ravel(gB)])
        res = loss_and_grad(model, X, Y, Ap.copy(), Bp.copy(), **kw)
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
    Y = np.asarray(Y, dtype=np.float64)
    sol = np.linalg.lstsq(X, Y, rcond=None)[0]
    r = X @ sol - Y
    return np.ascontiguousarray(sol.T), float(0.5 * np.sum(r * r) / X.shape[0])


def global_min_loss(model: str, X, Y, *, activation: str | Activation = "identity") -> float:
    """Global minimum ``L*`` of the loss over all parameters.

    Closed form for ``model="linear"`` (least squares over all ``W``, every
    ``W`` being reachable as ``(I - A)^{-1} B``) and for ``single_index``
    with the identity link (least squares on ``y``). Other links have no
    closed form: a ``ValueError`` (pass ``L_star`` explicitly, e.g. 0 for a
    realizable teacher).

    Notes
    -----
    docs/theory.md §7.
    """
    v.choice("model", model, MODELS)
    X = v.as_float64("X", X)
    n = X.shape[0]
    if model == "linear":
        Y = v.as_float64("Y", Y, shape=(n, None))
    else:
        if not get_activation(activation).is_identity:
            raise ValueError(
                f"global_min_loss has no closed form for single_index with activation="
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
    L = np.asarray(losses, dtype=np.float64)
    if L.ndim != 1:
        raise ValueError(f"losses must be 1-dimensional, got shape {L.shape}")
    k = np.arange(L.size, dtype=np.float64) if steps is None else np.asarray(steps, float)
    if k.shape != L.shape:
        raise ValueError(f"steps must have the shape of losses {L.shape}, got {k.shape}")
    if L.size < 3:
        return math.nan
    Ls = v.real("L_star", L_star)
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
    slope = np.polyfit(k[start:stop], np.log(e[start:stop]), 1)[0]
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
    emp = empirical_factor(losses, L_star, steps)
    pred = float(predicted)
    if math.isinf(pred):
        raise ValueError(f"predicted must be finite or NaN, got {predicted!r}")
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

    ``K = ceil(log(tol / gap) / log(rate))``, at least 1; ``inf`` when
    ``rate >= 1`` or ``gap <= 0``, 1 when ``rate = 0``.

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
    target = tol / gap
    if rate == 0.0 or target >= 1.0:
        return 1.0
    return float(max(1, math.ceil(math.log(target) / math.log(rate))))


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
    ev = np.linalg.eigvalsh(0.5 * (Q + Q.T))
    w2 = np.linalg.norm(W, 2) ** 2
    return float(math.sqrt(max(ev[0], 0.0) / (1.0 + w2))), float(math.sqrt(max(ev[-1], 0.0)))


def loglog_fit(x, y) -> tuple[float, float]:
    """Least-squares slope and intercept of ``log y`` against ``log x``.

    The one log-log fit of the package, its experiments and its benchmarks
    (scaling exponents, drift against the step size). Pairs that are not
    positive and finite are left out; ``(nan, nan)`` when fewer than two
    distinct ``x`` remain.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2 or np.unique(x[ok]).size < 2:
        return math.nan, math.nan
    slope, icpt = np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)
    return float(slope), float(icpt)

