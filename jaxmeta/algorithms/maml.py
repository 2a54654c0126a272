"""MAML (Finn et al. 2017), second order through the inner loop, and first-order MAML.

References:
  Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep
  Networks. ICML 2017. https://arxiv.org/abs/1703.03400
"""

from __future__ import annotations

import functools

from jaxmeta.algorithms.base import AlgorithmSpec, MetaLearner, gradient_learner, identity_init
from jaxmeta.inner import inner_loss, norm_free_mask, sgd_adapt
from jaxmeta.losses import cross_entropy_loss
from jaxmeta.types import ApplyFn, Array, LossFn, Params
from jaxmeta.validation import check_int, check_positive_float


def maml(
    apply_fn: ApplyFn,
    *,
    inner_lr: float,
    inner_steps: int,
    first_order: bool = False,
    loss_fn: LossFn = cross_entropy_loss,
    eval_inner_steps: int | None = None,
    remat: bool = False,
    inner_loss_reduction: str = "mean",
    adapt_norm: bool = True,
) -> MetaLearner:
    """Model-Agnostic Meta-Learning as pure functions over a params pytree.

    Args:
      apply_fn: ``(params, x[n, ...]) -> predictions[n, ...]`` (e.g. a Flax module's
        ``apply``). BatchNorm inside it uses the statistics of the batch it is given,
        so support and query are normalised with their own statistics (the
        transductive setting of the MAML paper).
      inner_lr: inner SGD learning rate (0.4 for Omniglot 5-way, 0.01 for sinusoid).
      inner_steps: static number of inner SGD steps during meta-training; ``0`` means
        no adaptation (the outer loss is then the plain query loss).
      first_order: FOMAML: the inner gradients are treated as constants.
      loss_fn: ``(predictions, targets) -> scalar`` used for inner and outer loss.
      eval_inner_steps: inner steps used by ``predict`` (MAML evaluates Omniglot with
        10); defaults to ``inner_steps``.
      remat: recompute inner-step activations in the backward pass to save memory.
      inner_loss_reduction: how the support loss is reduced (:data:`jaxmeta.inner.
        INNER_LOSS_REDUCTIONS`): ``"mean"`` (default, as the PyTorch ports) or
        ``"sum_over_k"`` (sum over the support examples / K = N x mean, cbfinn/maml
        ``utils.xent``: the inner step on the mean loss is N times ``inner_lr``). The outer
        (query) loss stays a mean: the reference's is N x mean too, which Adam does not see.
      adapt_norm: adapt the normalisation layers' parameters in the inner loop (default).
        ``False`` keeps them out of the inner loop but meta-learns them, as cbfinn/maml,
        whose BatchNorm offset is not among the adapted ``weights`` (its BatchNorm has no
        scale: ``Conv4(bn_scale=False)``).

    Returns:
      A :class:`MetaLearner` with ``init`` (the identity), ``adapt``, ``outer_loss``,
      ``meta_grad`` (whose ``task_chunk=`` maps the tasks, :mod:`jaxmeta.execution`) and
      ``predict``.

    References:
      Finn et al., ICML 2017, Algorithm 2; first-order approximation in Section 5.2.
    """
    inner_steps = check_int("inner_steps", inner_steps, minimum=0)
    inner_lr = check_positive_float("inner_lr", inner_lr)
    eval_steps = inner_steps if eval_inner_steps is None else eval_inner_steps
    eval_steps = check_int("eval_inner_steps", eval_steps, minimum=0)
    support_loss_fn = inner_loss(loss_fn, inner_loss_reduction)
    if not isinstance(adapt_norm, bool):
        raise TypeError(f"adapt_norm must be a bool, got {adapt_norm!r}")

    def adapt_fn(params: Params, support_x: Array, support_y: Array, steps: int):
        support_loss = lambda p: support_loss_fn(apply_fn(p, support_x), support_y)
        return sgd_adapt(
            support_loss,
            params,
            lr=inner_lr,
            steps=steps,
            first_order=first_order,
            remat=remat,
            mask=None if adapt_norm else norm_free_mask(params),
        )

    return gradient_learner(
        name="fomaml" if first_order else "maml",
        apply_fn=apply_fn,
        loss_fn=loss_fn,
        adapt_fn=adapt_fn,
        init=identity_init,
        inner_steps=inner_steps,
        eval_steps=eval_steps,
    )


fomaml = functools.partial(maml, first_order=True)
fomaml.__doc__ = "First-order MAML: :func:`maml` with ``first_order=True``."


SPEC = AlgorithmSpec(maml, model="classifier", example={"inner_lr": 0.4, "inner_steps": 1})


FOMAML_SPEC = AlgorithmSpec(fomaml, model="classifier", example={"inner_lr": 0.4, "inner_steps": 1})
