"""The result types of the public solves, below every module that builds them
(the public calls and the row-block driver alike)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

__all__ = ["BlockStats", "FixedPointResult", "GradResult", "LossAndGrad"]


@dataclass(frozen=True)
class BlockStats:
    """Iterations of a solve done in row blocks (``chunk=``): every block met
    ``||F(Z_b) - Z_b|| <= tol ||F(Z_b)||`` on its own rows."""

    chunk: int
    n_blocks: int
    iters_max: int
    iters_mean: float


@dataclass(frozen=True)
class FixedPointResult:
    """Outcome of an iterative solve.

    Attributes
    ----------
    z : ndarray, shape (n, m)
        The returned iterate (the last finite one on failure).
    n_iter : int
        Updates applied to the initial guess to reach ``z`` (map evaluations - 1;
        Picard: of the row block that needed the most; Newton: the residual
        evaluations of the sample that needed the most).
    residual : float
        ``||F(z) - z||_F / ||F(z)||_F`` of the returned ``z`` (Newton:
        ``max_i |F(z)_i - z_i|``, the absolute residual its rule stops on).
    converged : bool
        ``residual <= tol`` was reached.
    status : str
        ``"converged"``, ``"max_iter"``, ``"diverged"`` (non-finite values or
        residual growth), ``"underflow"`` (the rule holds, but on squared norms too
        small for float64 to tell: values of about ``1e-150`` and below, where
        ``z`` is approximate; scale the data by a power of two and ``z`` back,
        exact for the linear map, relu and leaky ReLU; docs/theory.md §3,
        underflow), ``"inaccurate"`` (a direct solve whose residual exceeds
        ``tol``: ill-conditioned ``I - A``), ``"not_unique"`` (Newton outside its
        uniqueness guard: no solve made, docs/theory.md §12) or ``"truncated"``
        (inexact gradients).
    history : ndarray
        Relative residual of every iterate, ``history[-1] == residual``.
    method : str
    blocks : BlockStats or None
        Per-block iteration statistics of a solve in row blocks (``chunk=``);
        then ``n_iter`` is the largest block count, ``residual`` the largest
        block residual (an upper bound on the residual of the whole ``z``),
        ``status`` the worst block status and ``history`` that of the block
        with the largest residual.
    """

    z: np.ndarray
    n_iter: int
    residual: float
    converged: bool
    status: str
    history: np.ndarray = field(repr=False)
    method: str = "picard"
    blocks: BlockStats | None = None

    def error_bound(self, c: float) -> float:
        """A-posteriori bound ``residual / (1 - c)`` on ``||z - z*||_F / ||F(z)||_F``.

        Parameters
        ----------
        c : float in [0, 1)
            A contraction factor of the map IN THE FROBENIUS NORM:
            ``||A||_2`` for the linear map, ``L_phi ||A||_2`` for
            ``phi(Z A^T + U)`` with an ``L_phi``-Lipschitz ``phi``, and
            ``||(1 - beta) I + beta A||_2`` for Picard damped by ``beta``.

        Notes
        -----
        docs/theory.md §3. The spectral radius is NOT such a factor unless ``A``
        is normal: for ``A = [[0.9, 50], [0, -0.9]]`` (``rho(A) = 0.9``) the
        true error was 19 to 26 times ``residual / (1 - rho(A))`` on the instances tried.
        """
        if not 0.0 <= c < 1.0:
            raise ValueError(f"c (a norm contraction factor) must be in [0, 1), got {c!r}")
        return self.residual / (1.0 - c)


@dataclass(frozen=True)
class GradResult:
    """Implicit gradient of a loss through the fixed point.

    Attributes
    ----------
    grad_A : (m, m), grad_B : (m, d)
    adjoint : (n, m)
        ``Mu = D * Lam`` (docs/theory.md §4); equals ``Lam`` for linear maps.
        Pass it back as ``adj0`` to warm-start the next adjoint solve.
    n_iter, residual, converged, status, history, method
        As in :class:`~deqbench.FixedPointResult`, for the adjoint equation.
        For ``"jfb"``/``"neumann"`` the status is ``"truncated"`` and the
        residual says how far the inexact adjoint is from the exact one.
    blocks : BlockStats or None
        Per-block statistics of a solve in row blocks (``chunk=``), with the
        conventions of :class:`~deqbench.FixedPointResult`.
    """

    grad_A: np.ndarray
    grad_B: np.ndarray
    adjoint: np.ndarray = field(repr=False)
    n_iter: int
    residual: float
    converged: bool
    status: str
    history: np.ndarray = field(repr=False)
    method: str
    blocks: BlockStats | None = None


@dataclass(frozen=True)
class LossAndGrad:
    """Loss and implicit gradient of a model at given parameters.

    Unpacks as ``loss, grad_A, grad_B, info = loss_and_grad(...)``, where
    ``info`` is :attr:`info`, a dict of the remaining fields.

    Attributes
    ----------
    loss : float
        ``L = (1/2n) sum_i loss_i``.
    grad_A : (m, m), grad_B : (m, d)
    fp_iters, adj_iters : int
        Iterations of the forward and adjoint solves.
    fp_residual, adj_residual : float
    fp_status, adj_status : str
        As in :class:`~deqbench.FixedPointResult` and :class:`GradResult`.
    converged : bool
        Both solves converged (an inexact gradient counts as converged).
    z, adjoint : (n, m) or None
        Fixed point and adjoint, to warm-start the next call (``z0``, ``adj0``);
        None when evaluated in row blocks (``chunk=``: memory independent of n).
    fp_blocks, adj_blocks : BlockStats or None
        Per-block iteration statistics of the forward and adjoint solves in row
        blocks; then ``fp_iters``/``adj_iters`` are the largest block counts and
        the residuals the largest block residuals.
    """

    loss: float
    grad_A: np.ndarray = field(repr=False)
    grad_B: np.ndarray = field(repr=False)
    fp_iters: int
    adj_iters: int
    fp_residual: float
    adj_residual: float
    fp_status: str
    adj_status: str
    converged: bool
    z: np.ndarray | None = field(repr=False)
    adjoint: np.ndarray | None = field(repr=False)
    fp_blocks: BlockStats | None = None
    adj_blocks: BlockStats | None = None

    @property
    def info(self) -> dict:
        """Every field but ``loss``, ``grad_A`` and ``grad_B``, as a dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)[3:]}

    def __iter__(self):
        return iter((self.loss, self.grad_A, self.grad_B, self.info))
