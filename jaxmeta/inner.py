"""The differentiable inner loop shared by the gradient-based meta-learners.

The loop is a ``lax.scan`` over a static number of SGD steps, so it is compiled once
and reverse-mode differentiation through it (second-order MAML) stores one set of
residuals per step. ``first_order=True`` stops the gradient through the inner
gradients (FOMAML): the adapted parameters still depend on the initial ones through
the identity path ``theta - lr * stop_gradient(g)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxmeta.types import Array, Params


def sgd_adapt(
    loss_fn: Callable[[Params], Array],
    params: Params,
    *,
    lr: float | Array | Params,
    steps: int,
    first_order: bool = False,
    remat: bool = False,
    mask: Params | None = None,
) -> tuple[Params, Array]:
    """Run ``steps`` SGD steps on ``loss_fn`` starting at ``params``.

    Args:
      loss_fn: ``params -> scalar`` support loss of one task.
      params: initial (meta-)parameters, any pytree.
      lr: a scalar, or a pytree like ``params`` of per-parameter rates (Meta-SGD).
      steps: static number of inner steps (``0`` returns ``params`` unchanged).
      first_order: treat the inner gradients as constants (FOMAML).
      remat: rematerialise each inner step in the backward pass (memory for time).
      mask: optional pytree of Python bools like ``params``; ``False`` leaves are not
        adapted (ANIL adapts only the head).

    Returns:
      ``(adapted_params, losses)`` where ``losses: [steps]`` are the support losses
      before each step.
    """
    if steps == 0:
        return params, jnp.zeros((0,), jnp.float32)

    per_leaf_lr = jax.tree_util.tree_structure(lr) == jax.tree_util.tree_structure(params)
    if mask is None:
        mask = jax.tree_util.tree_map(lambda _: True, params)

    def step(p, _):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        if per_leaf_lr:
            new = jax.tree_util.tree_map(
                lambda w, g, a, m: w - a * g if m else w, p, grads, lr, mask
            )
        else:
            new = jax.tree_util.tree_map(lambda w, g, m: w - lr * g if m else w, p, grads, mask)
        return new, loss

    if remat:
        step = jax.checkpoint(step)
    adapted, losses = jax.lax.scan(step, params, None, length=steps)
    return adapted, losses
