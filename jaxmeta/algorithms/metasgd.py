"""Meta-SGD (Li et al. 2017): MAML with meta-learned per-parameter inner learning rates.

References:
  Li, Zhou, Chen, Li. Meta-SGD: Learning to Learn Quickly for Few-Shot Learning. 2017.
  https://arxiv.org/abs/1707.09835
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmeta.algorithms.base import AlgorithmSpec, MetaLearner, gradient_learner
from jaxmeta.inner import inner_loss, sgd_adapt
from jaxmeta.losses import cross_entropy_loss
from jaxmeta.types import ApplyFn, LossFn, Params, PRNGKey
from jaxmeta.validation import check_int, check_positive_float


def metasgd(
    apply_fn: ApplyFn,
    *,
    inner_lr_init: float = 0.4,
    inner_steps: int = 1,
    first_order: bool = False,
    loss_fn: LossFn = cross_entropy_loss,
    eval_inner_steps: int | None = None,
    inner_loss_reduction: str = "mean",
) -> MetaLearner:
    """Meta-SGD: ``theta' = theta - alpha * grad`` with ``alpha`` learned elementwise.

    Meta-parameters are ``{"params": theta, "lr": alpha}``, ``alpha`` a pytree like
    ``theta`` (one rate per weight, sign included: the paper lets ``alpha`` learn the
    update direction too). The outer optimizer updates both.

    Args:
      apply_fn: ``(params, x[n, ...]) -> predictions[n, ...]``.
      inner_lr_init: initial value of every entry of ``alpha`` (the paper samples it
        uniformly from [0.005, 0.1]; a constant gives a MAML-like start).
      inner_steps: inner steps (the paper uses 1).
      first_order: stop the gradient through the inner gradients (``alpha`` still gets a
        gradient through ``alpha * stop_gradient(g)``).
      loss_fn: ``(predictions, targets) -> scalar``.
      eval_inner_steps: inner steps used by ``predict`` (default ``inner_steps``).
      inner_loss_reduction: ``"mean"`` (default) or ``"sum_over_k"`` (N x mean, the MAML
        reference's loss, :func:`jaxmeta.algorithms.maml.maml`; Meta-SGD has no public code
        and states it follows MAML's setup).

    Returns:
      A :class:`MetaLearner`; ``predict(meta_params, support_x [n_s, ...], support_y
      [n_s], query_x [n_q, ...], key, *, steps=None) -> [n_q, n_way]``.

    References:
      Li et al. 2017, Eq. (1)-(3) and Algorithm 1.
    """
    inner_steps = check_int("inner_steps", inner_steps, minimum=0)
    inner_lr_init = check_positive_float("inner_lr_init", inner_lr_init)
    eval_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
    eval_steps = check_int("eval_inner_steps", eval_steps, minimum=0)
    support_loss_fn = inner_loss(loss_fn, inner_loss_reduction)

    def init(key: PRNGKey, params: Params) -> Params:
        del key
        lr = jax.tree_util.tree_map(lambda w: jnp.full_like(w, inner_lr_init), params)
        return {"params": params, "lr": lr}

    def _adapt(meta_params, support_x, support_y, steps):
        support_loss = lambda p: support_loss_fn(apply_fn(p, support_x), support_y)
        return sgd_adapt(
            support_loss,
            meta_params["params"],
            lr=meta_params["lr"],
            steps=steps,
            first_order=first_order,
        )

    return gradient_learner(
        name="metasgd",
        apply_fn=apply_fn,
        loss_fn=loss_fn,
        adapt_fn=_adapt,
        init=init,
        inner_steps=inner_steps,
        eval_steps=eval_steps,
    )


SPEC = AlgorithmSpec(metasgd, model="classifier", example={"inner_steps": 1})
