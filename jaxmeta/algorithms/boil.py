"""BOIL (Oh et al. 2021): MAML whose inner loop adapts only the body; the head stays frozen.

The mirror image of ANIL: the inner SGD updates every parameter but the head's (the
convolutions and their BatchNorm scale and offset included), so a new task is learned by
moving the features towards head vectors fixed at the meta-learned values. The outer loop
updates everything, as in MAML.

References:
  Oh, Yoo, Kim, Yun. BOIL: Towards Representation Change for Few-shot Learning. ICLR 2021.
  https://arxiv.org/abs/2008.08882. Reference code: jhoon-oh/BOIL (``main.py``: the
  ``classifier`` parameters get inner step size ``--classifier-step-size 0``, the others
  ``--extractor-step-size``; ``F.cross_entropy``, a mean, as the inner loss).
"""

from __future__ import annotations

import jax

from jaxmeta.algorithms.anil import head_mask, masked_inner_loop_learner
from jaxmeta.algorithms.base import AlgorithmSpec, MetaLearner
from jaxmeta.losses import cross_entropy_loss
from jaxmeta.types import ApplyFn, LossFn, Params


def body_mask(params: Params, head: str = "auto") -> Params:
    """Pytree of Python bools like ``params``: ``True`` everywhere but on the head's leaves
    (:func:`jaxmeta.algorithms.anil.head_mask` says which module the head is)."""
    return jax.tree_util.tree_map(lambda in_head: not in_head, head_mask(params, head))


def boil(
    apply_fn: ApplyFn,
    *,
    inner_lr: float,
    inner_steps: int,
    first_order: bool = False,
    head: str = "auto",
    loss_fn: LossFn = cross_entropy_loss,
    eval_inner_steps: int | None = None,
    inner_loss_reduction: str = "mean",
) -> MetaLearner:
    """Body Only update in Inner Loop: MAML with the head frozen during adaptation.

    Implemented as ANIL's learner (:func:`jaxmeta.algorithms.anil.masked_inner_loop_learner`)
    with the complementary mask: :func:`jaxmeta.inner.sgd_adapt` leaves the head out; the head
    still gets its outer gradient through the adapted body (second order, unless
    ``first_order``).

    Args:
      apply_fn: ``(params, x[n, ...]) -> logits[n, n_way]``.
      inner_lr: inner SGD learning rate of the body (the reference's
        ``--extractor-step-size``, 0.5 in its 4conv runs).
      inner_steps: static number of inner steps during meta-training.
      first_order: treat the inner gradients as constants.
      head: top-level module name of the head in ``params`` (``params["params"]`` for Flax);
        ``"auto"`` picks a module named ``head``, else the ``Dense_<i>`` with the largest
        index (as :func:`jaxmeta.algorithms.anil.anil`).
      loss_fn: ``(predictions, targets) -> scalar``.
      eval_inner_steps: inner steps used by ``predict`` (default ``inner_steps``).
      inner_loss_reduction: ``"mean"`` (default, the reference's ``F.cross_entropy``) or
        ``"sum_over_k"`` (:func:`jaxmeta.inner.inner_loss`).

    Returns:
      A :class:`MetaLearner` (``init`` is the identity); ``predict(params, support_x
      [n_s, ...], support_y [n_s], query_x [n_q, ...], key, *, steps=None) -> [n_q, n_way]``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxmeta
      >>> model = jaxmeta.MLP(hidden=(8,), out=3)
      >>> params = model.init(jax.random.key(0), jnp.zeros((1, 4)))
      >>> learner = jaxmeta.boil(model.apply, inner_lr=0.5, inner_steps=1)
      >>> adapted = learner.adapt(params, jnp.ones((3, 4)), jnp.arange(3))
      >>> head = jaxmeta.algorithms.anil.resolve_head(params, "auto")
      >>> bool(jnp.all(adapted["params"][head]["kernel"] == params["params"][head]["kernel"]))
      True
    """
    return masked_inner_loop_learner(
        apply_fn,
        name="boil",
        adapted=body_mask,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        first_order=first_order,
        head=head,
        loss_fn=loss_fn,
        eval_inner_steps=eval_inner_steps,
        inner_loss_reduction=inner_loss_reduction,
    )


SPEC = AlgorithmSpec(boil, model="classifier", example={"inner_lr": 0.4, "inner_steps": 1})
