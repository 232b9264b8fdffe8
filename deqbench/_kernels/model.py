"""What the gradient-descent loop and the gradient flow share: the loss and
gradient of a model at given parameters, and the recording of a step.

Two ways to get ``(L, grad_A, grad_B)`` at given parameters:

* :func:`sample_eval` - per sample: forward fixed point, loss, adjoint fixed
  point, ``grad_A = Mu^T Z``, ``grad_B = Mu^T X`` (docs/theory.md, adjoints);
* :func:`suffstats_eval` - linear model, squared loss: only ``Sigma_xx`` and
  the least-squares solution ``W*`` enter (docs/theory.md, cost model), so
  the cost of a step does not depend on ``n``.

Arguments travel in named tuples built once per run: :data:`Model` (data
and model), :data:`Solve` (solver options), :data:`SuffStats` (the
sufficient statistics), :data:`SampleWork` / :data:`SuffWork` (work buffers),
:data:`Recorder` (the history matrix and what a recorded row needs).

Spectral quantities use LAPACK through numba's own bindings (values only:
``dgesdd`` with ``jobz='N'``, ``dgeev`` without vectors), which stay cacheable.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import types
from numba.np.linalg import _LAPACK, ensure_lapack

from .._jit import jit
from . import gradients as _g
from .activations import IDENTITY, MASK, has_output_derivative
from .blocks import gemm_rows, gemm_tn
from .solvers import (
    EXACT_LINEAR,
    KEEPS_EVALUATION,
    RATE_CERTIFIED,
    TRUNCATED,
    has,
    iterate,
)
from .status import CONVERGED, DIVERGED, FP_FAILED, NONFINITE, OK

ensure_lapack()
_gesdd = _LAPACK().numba_ez_gesdd(types.float64)
_zgesdd = _LAPACK().numba_ez_gesdd(types.complex128)
_rgeev = _LAPACK().numba_ez_rgeev(types.float64)
_KIND = ord("d")
_ZKIND = ord("z")
_JOB_N = ord("N")

# models
LINEAR = 0
READOUT = 1
NONLINEAR = 2

# certificate of the sufficient-statistics path (:func:`certify`)
CERT_SWEEPS = 2
"""Collatz-Wielandt sweeps (products ``|M| s``) per certificate before the later tiers."""
CERT_MAX_SQUARINGS = 6
"""Repeated squarings per certificate: ``||M^p||^(1/p)`` up to ``p = 2^6``."""
CERT_SQUARING_BUDGET = 754
"""Squarings (gemms, ``2 m^3`` each) allowed since the last eigendecomposition
before the next inconclusive step refreshes the reference instead of squaring
again: the price of a refresh in gemms by the flop model of docs/theory.md §8
at ``m <= 256`` (``deqbench._training.certificate_flops``; a test checks it).
Ski rental: at most about twice the cheaper of the two policies in hindsight."""
# SuffWork.counts: certificates decided by each tier; products |M| s; squarings (gemms)
CERT_BY_NORM = 0
CERT_BY_PERRON = 1
CERT_BY_EIG = 2
CERT_MATVECS = 3
CERT_BY_REFERENCE = 4
CERT_BY_SQUARING = 5
CERT_SQUARINGS = 6
CERT_COUNTS = 7
# SuffWork.ref: the reference norms of the last eigendecomposition (:func:`_refresh`)
_REF_GAMMA_V = 0  # bound on ||V^-1 M_r V||_2
_REF_KAPPA_V = 1  # bound on kappa_2(V)
_REF_NORM2 = 2  # bound on ||M_r||_2
_REF_SQUARINGS = 3  # squarings since the refresh
_REF_LEN = 4

# history columns
H_STEP = 0
H_LOSS = 1
H_EXCESS = 2
H_GRAD = 3
H_DRIFT = 4
H_TRACE = 5
H_SMIN = 6
H_SMAX = 7
H_RHO = 8
H_FP = 9
H_ADJ = 10
H_T = 11  # flow only
NCOL = 11
NCOL_FLOW = 12

#: The model and its data: ``kind`` (LINEAR, READOUT, NONLINEAR), ``X``
#: ``(n, d)``, targets ``Y`` ``(n, m)`` (linear, nonlinear; a dummy otherwise)
#: or ``y`` ``(n,)`` (readout), read-out ``u``, activation ``code`` and
#: ``param`` (the link of readout, ``phi`` of nonlinear).
Model = namedtuple("Model", ["kind", "X", "Y", "y", "u", "code", "param"])

#: Solver options (built once, by ``deqbench._training.kernel_solve``):
#: ``forward`` and ``adjoint`` solver codes (:mod:`.solvers`), per-solve ``tol``,
#: ``max_iter``, ``damping``, ``anderson_ridge``, ``anderson_history`` (history
#: slots of the work buffers, 0 when neither solver keeps a history),
#: ``neumann_terms`` (the highest power of a truncated adjoint series, 0 for JFB),
#: ``cert_limit``, the largest spectral radius of the iteration matrix that
#: :func:`certify` accepts (:func:`deqbench.theory.certified_rate`), ``threads``,
#: ``tune``, the settings vector of the row-block kernels (:mod:`.blocks`;
#: None, the default: the built-in settings) and ``neumann_damping``, the
#: damping of a truncated adjoint series (1, the default: the plain series).
Solve = namedtuple("Solve", ["forward", "adjoint", "tol", "max_iter", "damping",
                             "anderson_ridge", "anderson_history", "neumann_terms",
                             "cert_limit", "threads", "tune", "neumann_damping"],
                   defaults=(None, 1.0))

#: The n-independent path: ``use`` it or not, ``Sxx = X^T X / n``, the
#: least-squares ``W_star`` and the global minimum ``L_star``.
SuffStats = namedtuple("SuffStats", ["use", "Sxx", "W_star", "L_star"])

#: Buffers of :func:`sample_eval`; ``Z`` and ``Mu`` carry the warm starts.
SampleWork = namedtuple("SampleWork", ["AT", "BT", "Ci", "U", "Z", "Mu", "G", "D", "T", "Fh",
                                       "Gh", "GG", "work", "hist"])

#: Buffers of :func:`suffstats_eval`; ``s``, ``t``, ``Mc``, ``counts``, ``A_ref``,
#: ``ref`` and ``Sq`` are those of :func:`certify` (``s`` is the Perron vector
#: and ``A_ref``, ``ref`` the reference of the last eigendecomposition, kept
#: between steps).
SuffWork = namedtuple("SuffWork", ["Ci", "W", "DW", "P", "s", "t", "Mc", "counts", "A_ref",
                                   "ref", "Sq"])

#: Buffers of :func:`record_heavy`.
SpectralWork = namedtuple("SpectralWork", ["Pm", "Rt", "S", "acpy", "wr", "wi", "dummy"])

#: The history matrix ``H`` (one row per recorded step), the row being built,
#: the last good row (``good``, written on failure), the initial parameters
#: and ``||Q_0||_F`` for the drift, the spectral buffers, and the cadences.
Recorder = namedtuple("Recorder", ["H", "row", "good", "A0", "B0", "q0_norm", "spectral",
                                   "record_every", "spectral_every"])


# --- work space -------------------------------------------------------------


@jit
def sample_workspace(proto, n, m, d, nonlinear, anderson_slots, hist_len):
    """:data:`SampleWork` for ``n`` samples, allocated once per run; arrays of
    samples and parameters in the dtype of the array ``proto`` (the data),
    Anderson's Gram matrix, its solve and the residual history in float64."""
    dt = proto.dtype
    k = max(anderson_slots, 1)
    if anderson_slots > 0:
        Fh = np.empty((k, n, m), dt)
        Gh = np.empty((k, n, m), dt)
    else:
        Fh = np.empty((1, 1, 1), dt)
        Gh = np.empty((1, 1, 1), dt)
    return SampleWork(np.empty((m, m), dt), np.empty((d, m), dt), np.empty((m, m), dt),
                      np.empty((n, m), dt), np.zeros((n, m), dt), np.zeros((n, m), dt),
                      np.empty((n, m), dt),
                      np.empty((n, m), dt) if nonlinear else np.empty((1, 1), dt),
                      np.empty((n, m), dt), Fh, Gh, np.zeros((k, k)), np.zeros((2 * k + 2, k)),
                      np.empty(hist_len))


@jit
def workspaces(model, m, solve, stats):
    """The per-sample and sufficient-statistics buffers of a run, in the data's dtype."""
    n, d = model.X.shape
    dt = model.X.dtype
    if stats.use:
        ws = sample_workspace(model.X, np.int64(1), m, d, np.bool_(False), np.int64(0),
                              np.int64(1))
    else:
        hist_len = max(solve.max_iter, solve.neumann_terms + 1) + 2
        ws = sample_workspace(model.X, n, m, d, model.kind == NONLINEAR, solve.anderson_history,
                              hist_len)
    ref = np.full(_REF_LEN, np.nan)
    ref[_REF_SQUARINGS] = 0.0
    sw = SuffWork(np.empty((m, m), dt), np.empty((m, d), dt), np.empty((m, d), dt),
                  np.empty((m, d), dt), np.ones(m, dt), np.empty(m, dt),
                  np.empty((m, m), np.complex128), np.zeros(CERT_COUNTS, np.int64),
                  np.zeros((m, m), dt), ref, np.empty((2, m, m)))
    return ws, sw


@jit
def recorder(H, A0, B0, record_every, spectral_every):
    """:data:`Recorder` for a run starting at ``(A0, B0)`` (copied). The spectral
    buffers are float64 whatever the parameters' dtype: the drift, the SVD and
    the eigenvalues are diagnostics, computed in float64 on purpose (and
    numba's LAPACK bindings here are float64 ones)."""
    m, d = B0.shape
    sp = SpectralWork(np.empty((m, m + d)), np.empty((m + d, m)), np.empty((m, m)),
                      np.empty((m, m)), np.empty(m), np.empty(m), np.empty(1))
    ncol = H.shape[1]
    return Recorder(H, np.empty(ncol), np.empty(ncol), A0.copy(), B0.copy(),
                    frobenius_q0(A0, B0), sp, record_every, spectral_every)


# --- small helpers ------------------------------------------------------------


@jit
def sumsq(P):
    s = 0.0  # float64 accumulator for float32 arrays too
    for x in P.ravel():
        s += np.float64(x) * np.float64(x)  # squared in float64 (no float32 overflow)
    return s


@jit
def axpy(Y, alpha, X):
    """``Y <- Y + alpha X`` in place (no temporary)."""
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] += alpha * X[i, j]


@jit
def all_finite(P):
    for x in P.ravel():
        if not np.isfinite(x):
            return False
    return True


@jit
def _norm1(P):
    """``||P||_1`` (largest column sum of absolute values)."""
    best = 0.0
    for j in range(P.shape[1]):
        c = 0.0
        for i in range(P.shape[0]):
            c += abs(P[i, j])
        best = max(best, c)
    return best


@jit
def _invert_c(A, Ci):
    """``Ci <- (I - A)^{-1}``, formed in float64 and rounded to ``Ci``'s dtype;
    False if ``I - A`` is singular to working precision (LAPACK's pivot test,
    or ``||C||_1 ||C^{-1}||_1 >= 1/eps`` with the eps of ``A``'s dtype) or
    ``Ci`` is not finite. Both gradient paths invert through here
    (docs/theory.md §3)."""
    m = A.shape[0]
    C = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            C[i, j] = -A[i, j]
        C[i, i] += 1.0
    try:
        Ci[:, :] = np.linalg.inv(C)
    except Exception:  # singular to machine precision
        return False
    if not all_finite(Ci):
        return False
    return _norm1(C) * _norm1(Ci) * np.finfo(A.dtype).eps < 1.0


@jit
def frobenius_q0(A0, B0):
    """``||Q_0||_F`` with ``Q_0 = (I - A0)(I - A0)^T + B0 B0^T`` (docs/theory.md §5)."""
    m = A0.shape[0]
    C = -A0
    for i in range(m):
        C[i, i] += 1.0
    Q = np.dot(C, C.T) + np.dot(B0, B0.T)
    return np.sqrt(sumsq(Q))


@jit
def drift_trace(A, B, A0, B0):
    """``tr(Q - Q_0) = sum (C - C0) o (C + C0) + sum (B - B0) o (B + B0)``, O(m(m + d)).

    Written in differences so that a small drift is not lost to cancellation.
    """
    m, d = B.shape
    s = 0.0
    for i in range(m):
        for j in range(m):
            dc = A0[i, j] - A[i, j]
            sc = -(A0[i, j] + A[i, j])
            if i == j:
                sc += 2.0
            s += dc * sc
        for j in range(d):
            s += (B[i, j] - B0[i, j]) * (B[i, j] + B0[i, j])
    return s


@jit
def record_heavy(rec, A, B, row):
    """Matrix quantities of a recorded step into ``row`` (every ``spectral_every`` steps).

    ``invariant_drift = ||Q - Q_0||_F / ||Q_0||_F`` with ``Q - Q_0 = S + S^T``,
    ``S = [dC, dB] [mid C, mid B]^T`` (one gemm, accurate for small drift);
    the extreme singular values of ``I - A`` and the spectral radius of ``A``.
    """
    sp = rec.spectral
    Pm, Rt, S, acpy, wr, wi, dummy = sp.Pm, sp.Rt, sp.S, sp.acpy, sp.wr, sp.wi, sp.dummy
    A0, B0, q0_norm = rec.A0, rec.B0, rec.q0_norm
    m, d = B.shape
    for i in range(m):
        for j in range(m):
            Pm[i, j] = A0[i, j] - A[i, j]
            Rt[j, i] = -0.5 * (A0[i, j] + A[i, j])
        Rt[i, i] += 1.0
        for j in range(d):
            Pm[i, m + j] = B[i, j] - B0[i, j]
            Rt[m + j, i] = 0.5 * (B[i, j] + B0[i, j])
    np.dot(Pm, Rt, S)  # Rt stored transposed: a plain gemm, no transposed operand
    f = 0.0
    for i in range(m):
        for j in range(m):
            q = S[i, j] + S[j, i]
            f += q * q
    row[H_DRIFT] = np.sqrt(f) / q0_norm if q0_norm > 0.0 else np.nan
    # singular values of C = I - A (column-major copy: C^T has the same ones)
    for i in range(m):
        for j in range(m):
            acpy[i, j] = -A[i, j]
        acpy[i, i] += 1.0
    r = _gesdd(_KIND, _JOB_N, m, m, acpy.ctypes, m, wr.ctypes, dummy.ctypes, 1, dummy.ctypes, 1)
    if r == 0:
        row[H_SMAX] = wr[0]
        row[H_SMIN] = wr[m - 1]
    # eigenvalues of A: dgeev on the column-major copy (A^T in C order)
    for i in range(m):
        for j in range(m):
            acpy[j, i] = A[i, j]
    r = _rgeev(_KIND, _JOB_N, _JOB_N, m, acpy.ctypes, m, wr.ctypes, wi.ctypes,
               dummy.ctypes, 1, dummy.ctypes, 1)
    if r == 0:
        rho = 0.0
        for i in range(m):
            rho = max(rho, np.hypot(wr[i], wi[i]))
        row[H_RHO] = rho


# --- loss and gradient at given parameters ------------------------------------


@jit
def _iterate(solver, Z, M, U, code, param, ws, solve):
    """:func:`.solvers.iterate` on ``Z -> h(Z M + U)`` in place with the run's
    buffers and options (a truncated series damped by ``neumann_damping``);
    returns ``(n_iter, status)``."""
    damping = solve.neumann_damping if has(solver, TRUNCATED) else solve.damping
    k, res, st = iterate(solver, Z, M, U, code, param, ws.D, ws.T, ws.Fh, ws.Gh, ws.GG,
                         ws.work, ws.hist, solve.tol, solve.max_iter, damping,
                         solve.anderson_ridge, solve.neumann_terms, solve.threads,
                         solve.tune)
    return k, st


@jit
def sample_eval(model, A, B, solve, warm, ws, gA, gB):
    """Loss and exact (or truncated) implicit gradient, sample by sample.

    ``ws.Z``/``ws.Mu`` are the initial guesses when ``warm`` (and are reset
    to zero otherwise). Returns ``(loss, fp_iters, adj_iters, outcome)``.
    """
    AT, BT, Ci, U, Z, Mu, G, D = ws.AT, ws.BT, ws.Ci, ws.U, ws.Z, ws.Mu, ws.G, ws.D
    X = model.X
    m = A.shape[0]
    for i in range(m):
        for j in range(m):
            AT[j, i] = A[i, j]
    for i in range(m):
        for j in range(B.shape[1]):
            BT[j, i] = B[i, j]
    gemm_rows(X, BT, U, solve.tune)
    if not all_finite(U):  # X B^T beyond the dtype (a saturating phi would hide it)
        return np.nan, 0, 0, NONFINITE
    fcode = model.code if model.kind == NONLINEAR else IDENTITY
    have_inv = False
    # forward
    kf = 0
    if has(solve.forward, EXACT_LINEAR):
        if not _invert_c(A, Ci):
            return np.nan, 0, 0, FP_FAILED
        have_inv = True
        gemm_rows(U, Ci.T, Z, solve.tune)
        if not all_finite(Z):
            return np.nan, 0, 0, FP_FAILED
    else:
        if not warm:
            Z[:, :] = 0.0
        kf, st = _iterate(solve.forward, Z, AT, U, fcode, model.param, ws, solve)
        if st != CONVERGED:
            return np.nan, kf, 0, FP_FAILED
    # loss and dL/dZ
    if model.kind == READOUT:
        loss = _g.readout_loss(Z, model.y, model.u, model.code, model.param, G, solve.tune)
    else:
        loss = _g.residual_loss(Z, model.Y, G, solve.tune)
    if not np.isfinite(loss):
        return loss, kf, 0, NONFINITE
    # adjoint
    acode = IDENTITY
    if model.kind == NONLINEAR:
        if has(solve.forward, KEEPS_EVALUATION) and has_output_derivative(fcode):
            _g.output_derivative(Z, ws.T, fcode, solve.damping, D, solve.tune)  # no gemm
        else:
            _g.preactivation_derivative(Z, AT, U, model.code, model.param, D, solve.tune)
        acode = MASK
    kb = 0
    if has(solve.adjoint, EXACT_LINEAR):
        if not have_inv and not _invert_c(A, Ci):
            return np.nan, kf, 0, FP_FAILED
        gemm_rows(G, Ci, Mu, solve.tune)
    else:
        truncated = has(solve.adjoint, TRUNCATED)
        if truncated or not warm:  # a truncated series always starts from zero
            Mu[:, :] = 0.0
        kb, st = _iterate(solve.adjoint, Mu, A, G, acode, model.param, ws, solve)
        if st == DIVERGED or (st != CONVERGED and not truncated):
            return np.nan, kf, kb, FP_FAILED
    gemm_tn(Mu, Z, gA, solve.threads)
    gemm_tn(Mu, X, gB, solve.threads)
    return loss, kf, kb, OK


@jit
def _iteration_entry(A, beta, i, j):
    """Entry ``(i, j)`` of the damped iteration matrix ``(1 - beta) I + beta A``."""
    v = beta * A[i, j]
    if i == j:
        v += 1.0 - beta
    return v


@jit
def _norm_bound(A, beta):
    """``min(||M||_1, ||M||_inf, ||M||_F)`` of ``M = (1 - beta) I + beta A``, each
    an upper bound on ``rho(M)``: one O(m^2) pass."""
    m = A.shape[0]
    row_max = 0.0
    col_max = 0.0
    fro = 0.0
    for i in range(m):
        r = 0.0
        c = 0.0
        for j in range(m):
            v = _iteration_entry(A, beta, i, j)
            r += abs(v)
            fro += v * v
            c += abs(_iteration_entry(A, beta, j, i))
        row_max = max(row_max, r)
        col_max = max(col_max, c)
    return min(row_max, col_max, np.sqrt(fro))


@jit
def _perron_bound(A, beta, s, t, sweeps, limit, counts):
    """Collatz-Wielandt upper bound on ``rho(|M|) >= rho(M)``, O(m^2) per sweep.

    For the non-negative ``|M|`` and any positive ``s``,
    ``rho(|M|) <= max_i (|M| s)_i / s_i``; each sweep evaluates that bound and
    moves ``s`` one power-iteration step towards the Perron vector of ``|M|``.
    ``s`` is kept by the caller between calls (warm start along a trajectory)
    and stays positive. Returns the smallest bound of the sweeps (the first
    one ``<= limit``, without further sweeps).
    """
    m = A.shape[0]
    best = np.inf
    for _ in range(sweeps):
        counts[CERT_MATVECS] += 1
        ratio = 0.0
        top = 0.0
        for i in range(m):
            acc = 0.0
            for j in range(m):
                acc += abs(_iteration_entry(A, beta, i, j)) * s[j]
            t[i] = acc
            ratio = max(ratio, acc / s[i])
            top = max(top, acc)
        best = min(best, ratio)
        if best <= limit or not (top > 0.0 and np.isfinite(top)):
            break
        for i in range(m):  # normalise; the floor keeps s positive (a valid bound)
            s[i] = max(t[i] / top, 1e-30)
    return best


@jit
def sumsq_c(P):
    s = 0.0
    for x in P.ravel():
        s += x.real * x.real + x.imag * x.imag
    return s


@jit
def _singular_values(Mc, sv):
    """``sv <-`` the singular values of the real part of ``Mc``, descending
    (values-only LAPACK dgesdd on a copy); False if it fails."""
    m = Mc.shape[0]
    Mr = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            Mr[i, j] = Mc[i, j].real
    dummy = np.empty(1)
    return _gesdd(_KIND, _JOB_N, m, m, Mr.ctypes, m, sv.ctypes, dummy.ctypes, 1, dummy.ctypes,
                  1) == 0


@jit
def _singular_values_c(V, sv):
    """``sv <-`` the singular values of the complex ``V``, descending (zgesdd on
    a copy, read as ``V^T``: the same values). A function of its own: numba
    declares the real and complex gesdd under one C name, which one compiled
    function cannot call with both signatures."""
    m = V.shape[0]
    Vc = V.copy()
    zdummy = np.empty(1, np.complex128)
    return _zgesdd(_ZKIND, _JOB_N, m, m, Vc.ctypes, m, sv.ctypes, zdummy.ctypes, 1,
                   zdummy.ctypes, 1) == 0


@jit
def _refresh(A, beta, Mc, A_ref, ref):
    """``rho(M)`` of ``M = (1 - beta) I + beta A`` by an eigendecomposition
    ``M V = V diag(w) + R`` (LAPACK xgeev on a complex copy: numba's real
    ``eig`` refuses complex eigenvalues; ``R`` is its computed residual), and
    the two reference norms of :func:`_reference_bound` at ``A_ref <- A``
    (docs/theory.md §3, certificate): ``ref[_REF_GAMMA_V] >= ||V^-1 M V||_2``
    with ``ref[_REF_KAPPA_V] >= kappa_2(V)``, and ``ref[_REF_NORM2] >= ||M||_2``,
    each with the rounding of its computation added. NaN if the
    decomposition fails (no reference then)."""
    m = A.shape[0]
    eps = np.finfo(np.float64).eps
    for i in range(m):
        for j in range(m):
            Mc[i, j] = _iteration_entry(A, beta, i, j)
    for c in range(_REF_LEN - 1):
        ref[c] = np.nan
    ref[_REF_SQUARINGS] = 0.0
    A_ref[:, :] = A
    # S = I: ||M||_2 (values-only SVD; computed singular values are within
    # ~ m eps ||M||_2 of the exact ones, 4 m eps is the allowance)
    sv = np.empty(m)
    if _singular_values(Mc, sv):
        ref[_REF_NORM2] = sv[0] * (1.0 + 4.0 * m * eps)
    try:
        w, V = np.linalg.eig(Mc)
    except Exception:
        return np.nan
    rho = 0.0
    for z in w:
        rho = max(rho, abs(z))
    # S = V: ||V^-1 M V||_2 <= rho + ||V^-1||_2 ||R||_F, and kappa_2(V) from an
    # SVD of V with the same allowance on its smallest singular value
    R = np.dot(Mc, V)
    for i in range(m):
        for j in range(m):
            R[i, j] -= V[i, j] * w[j]
    vf = np.sqrt(sumsq_c(V))
    r_norm = np.sqrt(sumsq_c(R)) + 2.0 * (m + 2) * eps * (np.sqrt(sumsq_c(Mc)) + rho) * vf
    if _singular_values_c(V, sv):
        smax = sv[0] * (1.0 + 4.0 * m * eps)
        smin = sv[m - 1] - 4.0 * m * eps * sv[0]
        if smin > 0.0 and np.isfinite(r_norm):
            ref[_REF_GAMMA_V] = rho + r_norm / smin
            ref[_REF_KAPPA_V] = smax / smin
    return rho


@jit
def _drift(A, A_ref):
    """``||A - A_ref||_F``, O(m^2)."""
    d = 0.0
    for i in range(A.shape[0]):
        for j in range(A.shape[1]):
            e = A[i, j] - A_ref[i, j]
            d += e * e
    return np.sqrt(d)


@jit
def _reference_bound(A, beta, A_ref, ref):
    """Upper bound on ``rho(M)`` from the norms kept at the last eigendecomposition
    (docs/theory.md §3, certificate): for an invertible ``S``,
    ``rho(M) <= ||S^-1 M S||_2 <= ||S^-1 M_r S||_2 + kappa_2(S) ||beta (A - A_r)||_F``,
    with ``S = V`` (the eigenvectors of ``M_r``; Bauer-Fike is this bound) and
    ``S = I``; one O(m^2) pass for the drift. ``inf`` without a reference."""
    best = np.inf
    if not (np.isfinite(ref[_REF_GAMMA_V]) or np.isfinite(ref[_REF_NORM2])):
        return best  # no eigendecomposition yet: A_ref holds nothing to compare
    d = abs(beta) * _drift(A, A_ref)
    if np.isfinite(ref[_REF_GAMMA_V]):
        best = ref[_REF_GAMMA_V] + ref[_REF_KAPPA_V] * d
    if np.isfinite(ref[_REF_NORM2]):
        best = min(best, ref[_REF_NORM2] + d)
    return best


_SQUARING_FLOOR = 1e-140
"""Repeated squaring stops once ``||X_j||_F`` falls below this (the squares of
the entries, and the Frobenius norm with them, would underflow); that last
bound uses the 1- and inf-norms only."""


@jit
def _squaring_bound(A, beta, Sq, limit, counts, max_squarings):
    """Upper bound ``(||M^p|| + e_p)^(1/p)``, ``p = 2^j``, on ``rho(M)`` by repeated
    squaring in float64 (docs/theory.md §3, certificate), stopping at the first
    ``j <= max_squarings`` that certifies ``limit``. ``||.||`` is the smallest of
    the 1-, inf- and Frobenius norms, each an upper bound for the exact power
    once the rounding bound ``e_j`` on ``||M^(2^j) - X_j||_F`` of the computed
    ``X_j`` is added (``sqrt(m) e_j`` for the 1- and inf-norms). ``Sq`` is
    ``(2, m, m)`` work space; ``counts[CERT_SQUARINGS]`` counts the gemms."""
    m = A.shape[0]
    gm = m * np.finfo(np.float64).eps
    gm = gm / (1.0 - gm)  # gamma_m: |fl(XY) - XY| <= gamma_m |X| |Y| entrywise
    X = Sq[0]
    Y = Sq[1]
    for i in range(m):
        for j in range(m):
            X[i, j] = _iteration_entry(A, beta, i, j)
    e = 0.0
    p = 1.0
    best = np.inf
    for j in range(max_squarings + 1):
        if j > 0:
            counts[CERT_SQUARINGS] += 1
            np.dot(X, X, Y)
            X, Y = Y, X
        fro = np.sqrt(sumsq(X))
        n1 = _norm1(X)
        ninf = _norm1(X.T)
        tiny = fro < _SQUARING_FLOOR  # squares underflow: the 1- and inf-norms only
        nrm = min(n1 + np.sqrt(m) * e, ninf + np.sqrt(m) * e)
        if not tiny:
            nrm = min(nrm, fro + e)
        if not np.isfinite(nrm):
            break
        best = min(best, nrm ** (1.0 / p))
        if best <= limit or tiny:
            break
        # X_{j+1} = fl(X_j X_j): ||M^2p - X_j+1|| <= e (2 ||X_j|| + e) + gamma_m ||X_j||_F^2
        # (+ m^2 tiny: products that underflow, each entry off by at most m tiny)
        e = e * (2.0 * fro + e) + gm * fro * fro + m * m * np.finfo(np.float64).tiny
        p *= 2.0
    return best


@jit
def certify(A, solver, solve, sw):
    """Whether ``solver`` is certified to solve the fixed point at ``A``
    (docs/theory.md §3, certificate); ``I - A`` is known to be invertible
    (:func:`_invert_c`) or is implied so by the test.

    Direct: invertible ``I - A`` suffices; the truncated adjoints (JFB,
    Neumann) iterate to no tolerance, so there is nothing to certify. Picard
    with damping ``beta`` and Anderson (any history, the same damping): the
    spectral radius of ``M = (1 - beta) I + beta A`` must be at most
    ``solve.cert_limit`` (the
    rate at which a cold-started solve needs ``max_iter`` iterations, at most
    ``1 - 1e-6``: :func:`deqbench.theory.certified_rate`). Anderson
    can converge beyond that domain, but there its outcome is decided by
    rounding, not by ``A`` (its Gram least squares squares the condition of a
    Krylov basis whose residuals grow like ``rho(A)^k``, docs/theory.md §3), so
    no test on ``A`` predicts it and the two gradient paths could not agree.
    Upper bounds on ``rho(M)``, tried in order of cost until one certifies
    (they can only certify): the norm bound ``min(||M||_1, ||M||_inf,
    ||M||_F)``, the reference norms of the last eigendecomposition plus the
    drift since (:func:`_reference_bound`), the Collatz-Wielandt bound on
    ``|M|`` (all O(m^2)), then repeated squaring (a few gemms, while fewer than
    ``CERT_SQUARING_BUDGET`` were spent since the last eigendecomposition);
    last an eigendecomposition, which decides either way and becomes the next
    reference. ``sw.counts`` tallies which test decided.
    """
    if not has(solver, RATE_CERTIFIED):
        return True
    limit = solve.cert_limit
    beta = solve.damping
    counts = sw.counts
    if _norm_bound(A, beta) <= limit:
        counts[CERT_BY_NORM] += 1
        return True
    if _reference_bound(A, beta, sw.A_ref, sw.ref) <= limit:
        counts[CERT_BY_REFERENCE] += 1
        return True
    if _perron_bound(A, beta, sw.s, sw.t, CERT_SWEEPS, limit, counts) <= limit:
        counts[CERT_BY_PERRON] += 1
        return True
    budget = CERT_SQUARING_BUDGET - int(sw.ref[_REF_SQUARINGS])
    if budget > 0:
        before = counts[CERT_SQUARINGS]
        bound = _squaring_bound(A, beta, sw.Sq, limit, counts,
                                min(CERT_MAX_SQUARINGS, budget))
        sw.ref[_REF_SQUARINGS] += counts[CERT_SQUARINGS] - before
        if bound <= limit:
            counts[CERT_BY_SQUARING] += 1
            return True
    counts[CERT_BY_EIG] += 1
    return _refresh(A, beta, sw.Mc, sw.A_ref, sw.ref) <= limit


@jit
def certified(A, solve, sw):
    """:func:`certify` for the forward and the adjoint solver of ``solve``; the
    one rule of both gradient paths of a linear fixed point."""
    if not certify(A, solve.forward, solve, sw):
        return False
    return solve.adjoint == solve.forward or certify(A, solve.adjoint, solve, sw)


@jit
def suffstats_eval(A, B, stats, solve, sw, gA, gB):
    """Linear model, squared loss, cost independent of ``n`` (docs/theory.md, cost model).

    ``W = C^{-1} B``, ``G_W = (W - W*) Sigma_xx`` (= ``W Sigma_xx - Sigma_yx``
    because ``W* Sigma_xx = Sigma_yx``), ``grad_B = C^{-T} G_W``,
    ``grad_A = grad_B W^T``; ``L - L* = <G_W, W - W*> / 2`` is computed without
    cancellation. Returns ``(loss, excess, outcome)``.

    ``FP_FAILED`` where the per-sample path could not solve: ``I - A``
    singular, or the requested forward or adjoint solver not certified by
    :func:`certify` (so both paths end with the same status).
    """
    Ci, W, DW, P = sw.Ci, sw.W, sw.DW, sw.P
    if not _invert_c(A, Ci):
        return np.nan, np.nan, FP_FAILED
    if not certified(A, solve, sw):
        return np.nan, np.nan, FP_FAILED
    np.dot(Ci, B, W)
    m, d = W.shape
    for i in range(m):
        for j in range(d):
            DW[i, j] = W[i, j] - stats.W_star[i, j]
    np.dot(DW, stats.Sxx, P)
    ex = 0.0
    for i in range(m):
        for j in range(d):
            ex += P[i, j] * DW[i, j]
    ex *= 0.5
    np.dot(Ci.T, P, gB)
    np.dot(gB, W.T, gA)
    if not np.isfinite(ex):
        return np.nan, np.nan, NONFINITE
    return stats.L_star + ex, ex, OK


@jit
def loss_and_grad(model, A, B, solve, stats, warm, ws, sw, gA, gB):
    """``(loss, excess, fp_iters, adj_iters, outcome)`` at ``(A, B)`` by the path
    ``stats.use`` selects; a non-finite loss or gradient is ``NONFINITE``.

    A linear fixed point (the linear and readout models) is solved only
    where :func:`certified`, on either path, so the status of a run is decided
    by one rule on ``A`` whichever path ``"auto"`` picked; per sample, the
    requested solver must then also converge."""
    kf = 0
    kb = 0
    if stats.use:
        loss, excess, outcome = suffstats_eval(A, B, stats, solve, sw, gA, gB)
    elif model.kind != NONLINEAR and not certified(A, solve, sw):
        return np.nan, np.nan, 0, 0, FP_FAILED
    else:
        loss, kf, kb, outcome = sample_eval(model, A, B, solve, warm, ws, gA, gB)
        excess = loss - stats.L_star
    if outcome == OK and not (np.isfinite(loss) and np.isfinite(sumsq(gA) + sumsq(gB))):
        outcome = NONFINITE
    return loss, excess, kf, kb, outcome


# --- recording ------------------------------------------------------------------


@jit
def _write_row(H, r, row):
    for c in range(row.shape[0]):
        H[r, c] = row[c]


@jit
def record_step(rec, nrec, final, k, A, B):
    """Write step ``k``'s ``rec.row`` when it is due (the matrix quantities of
    :func:`record_heavy` on the ``spectral_every`` cadence and at the final
    step); otherwise keep it in ``rec.good``. Returns ``(nrec, recorded)``."""
    if final or k % rec.record_every == 0:
        if final or k % rec.spectral_every == 0:
            record_heavy(rec, A, B, rec.row)
        _write_row(rec.H, nrec, rec.row)
        return nrec + 1, True
    rec.good[:] = rec.row
    return nrec, False


@jit
def record_last_good(rec, nrec, recorded, A, B):
    """On failure, record the last good step (at ``A``, ``B``) unless it already
    was; returns ``nrec``."""
    if recorded:
        return nrec
    record_heavy(rec, A, B, rec.good)
    _write_row(rec.H, nrec, rec.good)
    return nrec + 1
