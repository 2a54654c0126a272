"""ANIL (Raghu et al. 2020): MAML whose inner loop adapts only the head.

References:
  Raghu, Raghu, Bengio, Vinyals. Rapid Learning or Feature Reuse? Towards Understanding
  the Effectiveness of MAML. ICLR 2020. https://arxiv.org/abs/1909.09157
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax

from jaxmeta.algorithms.base import AlgorithmSpec, MetaLearner, gradient_learner
from jaxmeta.inner import inner_loss, sgd_adapt
from jaxmeta.losses import cross_entropy_loss
from jaxmeta.types import ApplyFn, LossFn, Params, PRNGKey
from jaxmeta.validation import check_int, check_positive_float


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _top_level(params: Params) -> dict:
    if isinstance(params, dict) and set(params) == {"params"}:
        return params["params"]
    if not isinstance(params, dict):
        raise ValueError("ANIL needs a params dict (Flax style) to locate the head")
    return params


def resolve_head(params: Params, head: str) -> str:
    """The name of the head submodule: ``head`` itself, or for ``"auto"`` the module named
    ``head``, else the ``Dense_<i>`` with the largest ``i`` (the last linear layer Flax
    creates), in the top level of ``params`` (or ``params["params"]``)."""
    names = list(_top_level(params))
    if head != "auto":
        if head not in names:
            raise ValueError(f"head {head!r} not among the top-level modules {names}")
        return head
    if "head" in names:
        return "head"
    dense = [(int(m.group(1)), n) for n in names if (m := re.fullmatch(r"Dense_(\d+)", n))]
    if not dense:
        raise ValueError(
            f"cannot find the head among the top-level modules {names}: pass head=<name>"
        )
    return max(dense)[1]


def head_mask(params: Params, head: str = "auto") -> Params:
    """Pytree of Python bools like ``params``: ``True`` on the head's leaves only."""
    name = resolve_head(params, head)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(_key_name(p) == name for p in path), params
    )


def masked_inner_loop_learner(
    apply_fn: ApplyFn,
    *,
    name: str,
    adapted: Callable[[Params, str], Params],
    inner_lr: float,
    inner_steps: int,
    first_order: bool,
    head: str,
    loss_fn: LossFn,
    eval_inner_steps: int | None,
    inner_loss_reduction: str,
) -> MetaLearner:
    """MAML whose inner SGD updates only the leaves ``adapted(params, head)`` marks ``True``
    (ANIL: :func:`head_mask`; BOIL: its complement); the options are :func:`anil`'s. The
    head's module is checked at ``init``, before any step."""
    inner_steps = check_int("inner_steps", inner_steps, minimum=0)
    inner_lr = check_positive_float("inner_lr", inner_lr)
    eval_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
    eval_steps = check_int("eval_inner_steps", eval_steps, minimum=0)
    support_loss_fn = inner_loss(loss_fn, inner_loss_reduction)

    def init(key: PRNGKey, params: Params) -> Params:
        del key
        head_mask(params, head)  # fail early when the head cannot be found
        return params

    def _adapt(params, support_x, support_y, steps):
        support_loss = lambda p: support_loss_fn(apply_fn(p, support_x), support_y)
        return sgd_adapt(
            support_loss,
            params,
            lr=inner_lr,
            steps=steps,
            first_order=first_order,
            mask=adapted(params, head),
        )

    return gradient_learner(
        name=name,
        apply_fn=apply_fn,
        loss_fn=loss_fn,
        adapt_fn=_adapt,
        init=init,
        inner_steps=inner_steps,
        eval_steps=eval_steps,
    )


def anil(
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
    """Almost No Inner Loop: MAML with the inner SGD restricted to the head's parameters.

    The body is updated only in the outer loop; its outer gradient still flows through
    the adapted head (second order) unless ``first_order``. Implemented as
    :func:`jaxmeta.inner.sgd_adapt` with a mask: the masked body gradients are never
    used, so XLA eliminates their computation; only the body's forward pass is repeated
    per inner step.

    Args:
      apply_fn: ``(params, x[n, ...]) -> logits[n, n_way]``.
      inner_lr: inner SGD learning rate on the head.
      inner_steps: static number of inner steps during meta-training.
      first_order: treat the inner gradients as constants.
      head: top-level module name of the head in ``params`` (``params["params"]`` for
        Flax); ``"auto"`` picks a module named ``head``, else the ``Dense_<i>`` with the
        largest index.
      loss_fn: ``(predictions, targets) -> scalar``.
      eval_inner_steps: inner steps used by ``predict`` (default ``inner_steps``).
      inner_loss_reduction: ``"mean"`` (default) or ``"sum_over_k"`` (N x mean, the MAML
        reference's loss whose protocol ANIL reuses; :func:`jaxmeta.algorithms.maml.maml`).

    Returns:
      A :class:`MetaLearner` (``init`` is the identity); ``predict(params, support_x
      [n_s, ...], support_y [n_s], query_x [n_q, ...], key, *, steps=None) -> [n_q, n_way]``.

    References:
      Raghu et al., ICLR 2020, Section 4.
    """
    return masked_inner_loop_learner(
        apply_fn,
        name="anil",
        adapted=head_mask,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        first_order=first_order,
        head=head,
        loss_fn=loss_fn,
        eval_inner_steps=eval_inner_steps,
        inner_loss_reduction=inner_loss_reduction,
    )


SPEC = AlgorithmSpec(anil, model="classifier", example={"inner_lr": 0.4, "inner_steps": 1})
