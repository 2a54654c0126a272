"""TRPO's pieces as pure functions: conjugate gradient, Fisher (KL-Hessian)-vector products
without matrices, the natural-gradient step and the backtracking line search.

Parameters are flat vectors here (``jax.flatten_util.ravel_pytree``); the meta-learner
flattens once per step. Loops are ``lax.while_loop``: the program is compiled once and
stops as early as the references' Python loops do.

References:
  Schulman, Levine, Moritz, Jordan, Abbeel, "Trust Region Policy Optimization",
  ICML 2015 (Appendix C: conjugate gradient on Fisher-vector products, line search).
  rllab ``ConjugateGradientOptimizer`` (cg_iters 10, reg_coeff 1e-5, backtrack_ratio 0.8,
  max_backtracks 15), the optimizer of cbfinn/maml_rl.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxmeta.types import Array

MatVec = Callable[[Array], Array]


def conjugate_gradient(matvec: MatVec, b: Array, *, iters: int = 10, tol: float = 1e-10) -> Array:
    """Approximate ``A^-1 b`` for a symmetric positive-definite ``A`` given as ``matvec``.

    At most ``iters`` iterations; stops early once the squared residual is below ``tol``
    (as rllab's ``cg``). ``b: [n] -> [n]``.
    """

    def cond(carry):
        i, _, _, _, rdotr = carry
        return (i < iters) & (rdotr >= tol)

    def body(carry):
        i, x, r, p, rdotr = carry
        ap = matvec(p)
        alpha = rdotr / jnp.vdot(p, ap)
        x = x + alpha * p
        r = r - alpha * ap
        new_rdotr = jnp.vdot(r, r)
        p = r + (new_rdotr / rdotr) * p
        return i + 1, x, r, p, new_rdotr

    init = (jnp.zeros((), jnp.int32), jnp.zeros_like(b), b, b, jnp.vdot(b, b))
    return jax.lax.while_loop(cond, body, init)[1]


def hessian_vector_product(fn: Callable[[Array], Array], x: Array) -> MatVec:
    """``v -> (d^2 fn / dx^2)(x) v`` as forward-over-reverse (``jvp`` of ``grad``)."""
    grad = jax.grad(fn)
    return lambda v: jax.jvp(grad, (x,), (v,))[1]


def gauss_newton_fvp(
    dist_fn: Callable[[Array], object],
    x: Array,
    kl_of_dist: Callable[[object, object], Array],
) -> tuple[object, MatVec, Callable[[object], Array]]:
    """Fisher-vector products of ``KL(dist(x) || dist(x'))`` at ``x' = x``, linearised once.

    At ``x' = x`` the KL is minimal, so its Hessian is exactly ``J^T H_d J`` with ``J`` the
    Jacobian of the distribution parameters ``dist_fn(x)`` and ``H_d`` the (elementwise,
    cheap) Hessian of the KL in those parameters. ``jax.linearize`` records ``J`` once;
    each product then costs one linear pass and its transpose, not a new forward pass.

    Returns:
      ``(dist_at_x, fvp, vjp)``: the distribution parameters, ``v [n] -> F v [n]``, and
      ``u -> J^T u`` (the gradient of any function of the distribution parameters).
    """
    dist0, jvp = jax.linearize(dist_fn, x)
    transpose = jax.linear_transpose(jvp, x)
    kl_grad = jax.grad(lambda d: kl_of_dist(dist0, d))

    def fvp(v: Array) -> Array:
        hv = jax.jvp(kl_grad, (dist0,), (jvp(v),))[1]
        return transpose(hv)[0]

    return dist0, fvp, lambda u: transpose(u)[0]


def natural_step(grad: Array, fvp: MatVec, *, max_kl: float, damping: float, cg_iters: int):
    """The largest step along ``F^-1 grad`` whose quadratic KL model equals ``max_kl``.

    ``x = CG(F + damping I, grad)``, step ``= sqrt(2 max_kl / x^T (F + damping I) x) x``.
    Returns ``(step, x^T F_damped x)``.
    """
    damped = lambda v: fvp(v) + damping * v
    x = conjugate_gradient(damped, grad, iters=cg_iters)
    xhx = jnp.vdot(x, damped(x))
    scale = jnp.sqrt(2.0 * max_kl / jnp.maximum(xhx, 1e-12))
    return scale * x, xhx


class LineSearch(NamedTuple):
    """Result of :func:`line_search`: ``x`` (new point, or the old one if nothing was
    accepted), ``accepted``, ``steps`` (objective evaluations), ``objective`` and ``kl``
    at ``x``, and ``fraction`` (of the full step taken; 0 if rejected)."""

    x: Array
    accepted: Array
    steps: Array
    objective: Array
    kl: Array
    fraction: Array


def line_search(
    objective_and_kl: Callable[[Array], tuple[Array, Array]],
    x: Array,
    full_step: Array,
    objective0: Array,
    *,
    max_kl: float,
    ratio: float = 0.5,
    max_steps: int = 15,
) -> LineSearch:
    """Backtracking along ``full_step``: try ``x + ratio^i full_step`` for ``i < max_steps``
    and accept the first point whose objective (maximised) improves on ``objective0`` and
    whose KL is at most ``max_kl``; otherwise stay at ``x``.
    """

    def cond(c):
        return (c[0] < max_steps) & ~c[1]

    def body(c):
        i, _, _, _, _ = c
        frac = jnp.asarray(ratio, x.dtype) ** i.astype(x.dtype)
        obj, kl = objective_and_kl(x + frac * full_step)
        ok = (obj > objective0) & (kl <= max_kl) & jnp.isfinite(obj) & jnp.isfinite(kl)
        return i + 1, ok, frac, obj, kl

    zero = jnp.zeros((), x.dtype)
    i, ok, frac, obj, kl = jax.lax.while_loop(
        cond, body, (jnp.zeros((), jnp.int32), jnp.zeros((), bool), zero, objective0, zero)
    )
    frac = jnp.where(ok, frac, zero)
    return LineSearch(
        x=x + frac * full_step,
        accepted=ok,
        steps=i,
        objective=jnp.where(ok, obj, objective0),
        kl=jnp.where(ok, kl, zero),
        fraction=frac,
    )
