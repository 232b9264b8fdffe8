"""Slow, obviously-correct NumPy references (dense solves, explicit loops,
finite differences). Fast kernels are compared against these."""

from __future__ import annotations

import math

import numpy as np

# --- activations, written independently of the kernels -------------------

_ERFC = np.vectorize(math.erfc)


def _split(name, slope):
    """``"skip_tanh(0.25)"`` -> ``("skip_tanh", 0.25)``; a bare name keeps ``slope``."""
    if "(" in name:
        base, value = name.rstrip(")").split("(")
        return base.strip(), float(value)
    return name, slope


def act(name, x, slope=0.01):
    name, slope = _split(name, slope)
    x = np.asarray(x, dtype=float)
    if name == "identity":
        return x.copy()
    if name == "leaky_relu":
        return np.where(x >= 0, x, slope * x)
    if name == "tanh":
        return np.tanh(x)
    if name == "sigmoid":
        return np.exp(-np.logaddexp(0.0, -x))
    if name == "softplus":
        return np.logaddexp(0.0, x)
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "gelu":
        return 0.5 * x * _ERFC(-x / math.sqrt(2.0))  # erfc: no 1 + erf cancellation for x << 0
    if name == "smooth_leaky":
        return slope * x + (1.0 - slope) * np.logaddexp(0.0, x)
    if name == "skip_tanh":
        return x + slope * np.tanh(x)  # slope is eps here
    return _registered(name, x, slope)


def _registered(name, x, param):
    """A registered activation (deqbench.register_activation): its Python function as
    given, evaluated by the interpreter element by element (not the compiled callback
    the kernels call); its derivative comes from the central differences of
    :func:`dact`, so the registered ``df`` is checked too."""
    from deqbench.activations import ACTIVATIONS

    entry = ACTIVATIONS.get(name)
    if entry is None or not entry.registered:
        raise ValueError(name)
    f = entry.functions[0]
    f = getattr(f, "py_func", f)
    args = (param,) if entry.parameter else ()
    flat = [float(f(float(v), *args)) for v in x.reshape(-1)]
    return np.array(flat, dtype=float).reshape(x.shape)


def dact(name, x, slope=0.01, h=1e-6):
    """Derivative by central differences of :func:`act` (kinks: one-sided rule
    away from 0 is exact for the piecewise-linear ones)."""
    name, slope = _split(name, slope)
    x = np.asarray(x, dtype=float)
    if name in ("leaky_relu", "relu"):
        lo = slope if name == "leaky_relu" else 0.0
        return np.where(x > 0, 1.0, np.where(x < 0, lo, 1.0 if name == "leaky_relu" else 0.0))
    return (act(name, x + h, slope) - act(name, x - h, slope)) / (2 * h)


# --- forward --------------------------------------------------------------


def linear_fixed_point(A, B, X):
    """Dense solve ``Z = X B^T (I - A)^{-T}``."""
    m = A.shape[0]
    return np.linalg.solve(np.eye(m) - A, B @ X.T).T


def picard_loop(A, B, X, name="identity", slope=0.01, iters=5000, tol=1e-15):
    """Plain Picard, row by row, until the iterate stops moving."""
    Z = np.zeros((X.shape[0], A.shape[0]))
    for _ in range(iters):
        Zn = act(name, Z @ A.T + X @ B.T, slope)
        if np.linalg.norm(Zn - Z) <= tol * max(np.linalg.norm(Zn), 1e-300):
            return Zn
        Z = Zn
    return Z


def map_residual(A, B, X, Z, name="identity", slope=0.01):
    F = act(name, Z @ A.T + X @ B.T, slope)
    return np.linalg.norm(F - Z) / max(np.linalg.norm(F), 1e-300)


# --- losses and exact gradients ------------------------------------------


def loss(model, A, B, X, Y, u=None, name="identity", slope=0.01):
    """The model loss computed from a dense / long-Picard fixed point."""
    n, m = X.shape[0], A.shape[0]
    if model == "nonlinear":
        Z = picard_loop(A, B, X, name, slope)
    else:
        Z = linear_fixed_point(A, B, X)
    if model == "readout":
        u = np.full(m, 1 / np.sqrt(m)) if u is None else u
        r = act(name, Z @ u, slope) - Y
    else:
        r = Z - Y
    return 0.5 * np.sum(r * r) / n


def grad_dense(model, A, B, X, Y, u=None, name="identity", slope=0.01):
    """Exact gradient by a dense adjoint solve, sample by sample."""
    n, m = X.shape[0], A.shape[0]
    gA = np.zeros_like(A)
    gB = np.zeros_like(B)
    u = np.full(m, 1 / np.sqrt(m)) if (u is None and model == "readout") else u
    Z = picard_loop(A, B, X, name, slope) if model == "nonlinear" else linear_fixed_point(A, B, X)
    for i in range(n):
        z, x = Z[i], X[i]
        if model == "readout":
            s = z @ u
            g = (act(name, s, slope) - Y[i]) * dact(name, s, slope) * u / n
        else:
            g = (z - Y[i]) / n
        if model == "nonlinear":
            D = dact(name, A @ z + B @ x, slope)
            J = np.diag(D) @ A  # dF/dz
            mu = D * np.linalg.solve(np.eye(m) - J.T, g)  # lam = J^T lam + g; mu = D lam
        else:
            mu = np.linalg.solve(np.eye(m) - A.T, g)
        gA += np.outer(mu, z)
        gB += np.outer(mu, x)
    return gA, gB


def grad_fd(model, A, B, X, Y, u=None, name="identity", slope=0.01, h=1e-6):
    """Central finite differences of :func:`loss` in every entry of A and B."""
    out = []
    for P in (A, B):
        g = np.zeros_like(P)
        for idx in np.ndindex(P.shape):
            old = P[idx]
            P[idx] = old + h
            lp = loss(model, A, B, X, Y, u, name, slope)
            P[idx] = old - h
            lm = loss(model, A, B, X, Y, u, name, slope)
            P[idx] = old
            g[idx] = (lp - lm) / (2 * h)
        out.append(g)
    return tuple(out)


# --- training references (issue 3): plain gradient descent, dense solves ---


def gd_reference(model, A, B, X, Y, lr, steps, u=None, name="identity", slope=0.01):
    """Plain NumPy gradient descent with a dense (or long-Picard) fixed point and a
    dense per-sample adjoint at every step.

    Returns ``(As, Bs, losses)``: the parameters after ``0..steps`` updates and
    the loss at each of them.
    """
    A = np.array(A, dtype=float)
    B = np.array(B, dtype=float)
    As, Bs, losses = [A.copy()], [B.copy()], []
    for _ in range(steps):
        losses.append(loss(model, A, B, X, Y, u, name, slope))
        gA, gB = grad_dense(model, A, B, X, Y, u, name, slope)
        A = A - lr * gA
        B = B - lr * gB
        As.append(A.copy())
        Bs.append(B.copy())
    losses.append(loss(model, A, B, X, Y, u, name, slope))
    return np.array(As), np.array(Bs), np.array(losses)


def invariant_q(A, B):
    """``Q = (I - A)(I - A)^T + B B^T`` written out."""
    C = np.eye(A.shape[0]) - A
    return C @ C.T + B @ B.T


def broyden(F, Z0, history, tol, max_iter, skip=1e-10):
    """Broyden's method on ``g(z) = F(z) - z``, one dense inverse-Jacobian estimate
    ``H`` (``m x m``) per row, written out (docs/theory.md §3, Broyden).

    ``F`` maps the whole ``(n, m)`` batch (row by row). Each row starts from
    ``H = -I`` and steps ``z <- z - H g(z)``; after a step ``dz`` with change
    ``dg`` of ``g``, the good-Broyden update of the inverse is
    ``H <- H + (dz - H dg) (dz^T H) / (dz^T H dg)`` (Sherman-Morrison), skipped
    when ``|dz^T H dg| <= skip ||H^T dz|| ||dg||``; after ``history`` updates
    ``H`` restarts from ``-I`` before the next one. Stops on the batch rule
    ``||g||_F <= tol ||F||_F``. Returns ``(Z, n_iter, history)``.
    """
    Z = np.array(Z0, dtype=float)
    n, m = Z.shape
    H = np.array([-np.eye(m) for _ in range(n)])
    kept = 0
    Fz = F(Z)
    G = Fz - Z
    hist = [np.linalg.norm(G) / np.linalg.norm(Fz)]
    k = 0
    while hist[-1] > tol and k < max_iter:
        Zn = Z - np.einsum("nij,nj->ni", H, G)
        Fn = F(Zn)
        Gn = Fn - Zn
        k += 1
        hist.append(np.linalg.norm(Gn) / np.linalg.norm(Fn))
        if kept == history:
            H = np.array([-np.eye(m) for _ in range(n)])
            kept = 0
        for i in range(n):
            dz, dg = Zn[i] - Z[i], Gn[i] - G[i]
            v = H[i].T @ dz
            den = v @ dg
            if np.isfinite(den) and abs(den) > skip * np.linalg.norm(v) * np.linalg.norm(dg):
                H[i] = H[i] + np.outer(dz - H[i] @ dg, v) / den
        kept += 1
        Z, G = Zn, Gn
    return Z, k, np.array(hist)


# --- scalar equilibria y = sigma(s0 + b y): the paper's single-index DEQ ---------


def dact_exact(name, x, slope=0.01):
    """sigma' written out for the smooth links the scalar tests drive (no finite
    differences: the GD references below need it to rounding)."""
    name, slope = _split(name, slope)
    x = np.asarray(x, dtype=float)
    if name == "identity":
        return np.ones_like(x)
    if name == "tanh":
        return 1.0 / np.cosh(x) ** 2
    if name == "sigmoid":
        e = np.exp(-np.abs(x))
        return e / (1.0 + e) ** 2
    if name == "skip_tanh":
        return 1.0 + slope / np.cosh(x) ** 2
    if name == "softplus":
        return np.exp(-np.logaddexp(0.0, -x))
    if name == "smooth_leaky":
        return slope + (1.0 - slope) * np.exp(-np.logaddexp(0.0, -x))
    return dact(name, x, slope)


def scalar_roots(name, s0, b, slope=0.01):
    """The root of ``g(y) = y - sigma(s0 + b y)`` per sample by bisection alone:
    a bracket ``[-2^k, 2^k]`` doubled until ``g`` changes sign, then halved until
    it cannot shrink further (full float64 resolution). Assumes one root."""
    s0 = np.asarray(s0, dtype=float)

    def g(y):
        return y - act(name, s0 + b * y, slope)

    lo, hi = -np.ones_like(s0), np.ones_like(s0)
    for _ in range(1100):
        same = np.sign(g(lo)) == np.sign(g(hi))
        if not same.any():
            break
        lo, hi = np.where(same, 2 * lo, lo), np.where(same, 2 * hi, hi)
    glo = np.sign(g(lo))
    for _ in range(2200):
        mid = 0.5 * (lo + hi)
        moved = (mid != lo) & (mid != hi)
        if not moved.any():
            break
        left = np.sign(g(mid)) == glo  # the sign change is in [mid, hi]
        lo, hi = np.where(moved & left, mid, lo), np.where(moved & ~left, mid, hi)
    glo_abs, ghi_abs = np.abs(g(lo)), np.abs(g(hi))
    return np.where(glo_abs <= ghi_abs, lo, hi)


def scalar_loss_grad(name, X, Y, w, b, slope=0.01, backward=None):
    """``(L, grad_w, grad_b)`` of ``L = sum (y - Y)^2 / (2 n)``, ``y`` by
    :func:`scalar_roots`, the implicit gradient written out per sample with
    ``a = b sigma'(s)``: ``dy/dw = sigma' x / (1 - a)``, ``dy/db = sigma' y /
    (1 - a)``; ``backward(a)`` replaces ``1 / (1 - a)`` when given."""
    n = X.shape[0]
    y = scalar_roots(name, X @ w, b, slope)
    d = dact_exact(name, X @ w + b * y, slope)
    a = b * d
    f = 1.0 / (1.0 - a) if backward is None else backward(a)
    e = y - Y
    gi = e * d * f / n
    return float(e @ e) / (2 * n), X.T @ gi, float(y @ gi)


def scalar_gd(name, X, Y, w, b, lr, steps, slope=0.01, backward=None):
    """Plain gradient descent with :func:`scalar_loss_grad`; returns ``(ws, bs,
    losses)`` at steps ``0..steps``."""
    w = np.array(w, dtype=float)
    ws, bs, losses = [], [], []
    for k in range(steps + 1):
        L, gw, gb = scalar_loss_grad(name, X, Y, w, b, slope, backward)
        ws.append(w.copy())
        bs.append(b)
        losses.append(L)
        if k < steps:
            w = w - lr * gw
            b = b - lr * gb
    return np.array(ws), np.array(bs), np.array(losses)
