"""JAX + jaxopt peers (CPU, float64, ``jax.jit``-compiled; compilation is not timed).

``jaxopt.FixedPointIteration`` (or ``AndersonAcceleration``) with
``implicit_diff=True``; gradients by ``jax.value_and_grad`` of the loss.

Stopping rule: jaxopt stops on the ABSOLUTE distance ``||T(x) - x|| <= tol``.
It is given ``tol = 1e-10 * ||Z*||_F`` (``||Z*||`` from a dense solve in the
set-up), which is deqbench's relative rule at the solution. The implicit
backward solve ``(I - J^T) u = g`` uses a Richardson (adjoint Picard) loop
passed as ``implicit_diff_solve`` with the same relative rule, i.e. the same
algorithm as deqbench's adjoint; ``solve_gmres`` (tol 1e-10) is the
alternative named in the table where used.
"""

from __future__ import annotations

import warnings
from functools import partial

import numpy as np

from .problems import Outcome, PeerMissing, Problem

try:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
except ImportError:  # pragma: no cover - depends on the environment
    jax = None

try:
    with warnings.catch_warnings():
        # jaxopt >= 0.8.5 announces at import that it is no longer maintained
        warnings.simplefilter("ignore", DeprecationWarning)
        import jaxopt
except ImportError:  # pragma: no cover
    jaxopt = None


def _need():
    if jax is None:
        raise PeerMissing("jax is not installed")
    if jaxopt is None:
        raise PeerMissing("jaxopt is not installed")


def richardson(matvec, b, *, tol, maxiter, init=None, **kwargs):
    """Solve ``matvec(u) = b`` for jaxopt's ``matvec(u) = (J^T - I) u``.

    Iterates ``u <- J^T u - b = matvec(u) + u - b`` (the adjoint Picard loop)
    until ``||u_new - u|| <= tol ||u_new||``.
    """
    u0 = jnp.zeros_like(b) if init is None else init

    def cond(c):
        _, k, res = c
        return (res > tol) & (k < maxiter)

    def body(c):
        u, k, _ = c
        un = matvec(u) + u - b
        res = jnp.linalg.norm(un - u) / jnp.linalg.norm(un)
        return un, k + 1, res

    u, _, _ = jax.lax.while_loop(cond, body, (u0, 0, jnp.inf))
    return u


def _solver(p: Problem, method: str, backward: str = "richardson", **options):
    if p.activation == "tanh":

        def T(z, A, U):
            return jnp.tanh(z @ A.T + U)
    else:

        def T(z, A, U):
            return z @ A.T + U

    if backward == "richardson":
        solve = partial(richardson, tol=p.tol, maxiter=p.max_iter)
    else:
        solve = partial(jaxopt.linear_solve.solve_gmres, tol=p.tol)
    cls = jaxopt.FixedPointIteration if method == "picard" else jaxopt.AndersonAcceleration
    return cls(
        fixed_point_fun=T,
        maxiter=p.max_iter,
        tol=p.tol * p.z_norm,
        implicit_diff=True,
        implicit_diff_solve=solve,
        jit=True,
        **options,
    )


def forward(p: Problem, method: str = "picard", **options):
    _need()
    fpi = _solver(p, method, **options)
    X, B, A = jnp.asarray(p.X), jnp.asarray(p.B), jnp.asarray(p.A)

    @jax.jit
    def f(A, B, X):
        U = X @ B.T
        sol = fpi.run(jnp.zeros((p.n, p.m)), A, U)
        return sol.params, sol.state.iter_num, sol.state.error

    def run():
        z, k, err = f(A, B, X)
        z = np.asarray(jax.block_until_ready(z))
        return Outcome(int(k), 0, float(err) / p.z_norm, z=z)

    return run


def step(p: Problem, method: str = "picard", **options):
    _need()
    fpi = _solver(p, method, **options)
    X, Y = jnp.asarray(p.X), jnp.asarray(p.Y)
    A, B = jnp.asarray(p.A), jnp.asarray(p.B)

    def loss_fn(A, B):
        U = X @ B.T
        sol = fpi.run(jnp.zeros((p.n, p.m)), A, U)
        z = sol.params
        r = z - Y
        return 0.5 * jnp.vdot(r, r) / p.n, (z, sol.state.iter_num)

    vg = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))

    def run():
        (loss, (z, k)), (gA, gB) = vg(A, B)
        gA, gB = jax.block_until_ready((gA, gB))
        return Outcome(
            int(k),
            -1,
            float("nan"),
            z=np.asarray(z),
            grad_A=np.asarray(gA),
            grad_B=np.asarray(gB),
            loss=float(loss),
        )

    return run
