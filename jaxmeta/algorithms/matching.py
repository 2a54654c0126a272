"""Matching Networks (Vinyals et al. 2016): cosine attention over the support set.

References:
  Vinyals, Blundell, Lillicrap, Kavukcuoglu, Wierstra. Matching Networks for One Shot
  Learning. NeurIPS 2016. https://arxiv.org/abs/1606.04080
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxmeta.algorithms.base import AlgorithmSpec, MetaLearner, apply_support_query, query_loss
from jaxmeta.algorithms.metric import ABSENT_LOGIT, class_slots, one_hot_support
from jaxmeta.execution import mean_task_grad
from jaxmeta.losses import cross_entropy_loss
from jaxmeta.models.fce import FullContextEmbedding
from jaxmeta.types import ApplyFn, Array, Episode, LossFn, Params, PRNGKey
from jaxmeta.validation import (
    check_apply_fn,
    check_episode,
    check_int,
    check_positive_float,
    check_task,
)


def cosine_similarity(a: Array, b: Array, eps: float = 1e-8) -> Array:
    """``[n, d], [m, d] -> [n, m]`` cosine similarities."""
    unit = lambda z: z / jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True) + eps)
    return unit(a) @ unit(b).T


def attention_log_probs(scores: Array, support_y: Array, n_slots: int) -> Array:
    """Log of ``P(y=c|x) = sum_{i: y_i=c} softmax_i(scores)`` without a per-class loop.

    Args:
      scores: ``[n_q, n_s]`` attention logits (cosine similarities / temperature).
      support_y: ``[n_s]`` int labels.
      n_slots: number of class columns.

    Returns:
      ``[n_q, n_slots]`` log-probabilities; absent classes get ``ABSENT_LOGIT``.
    """
    onehot = one_hot_support(support_y, n_slots, scores.dtype)  # [n_s, C]
    probs = jax.nn.softmax(scores, axis=-1) @ onehot  # [n_q, C]
    present = jnp.sum(onehot, axis=0) > 0
    # Present classes have probability >= exp(-2/T)/n_s > 0, so the log is safe there.
    safe = jnp.where(present[None, :], probs, 1.0)
    return jnp.where(present[None, :], jnp.log(safe), ABSENT_LOGIT)


def matching(
    apply_fn: ApplyFn,
    *,
    fce: bool = False,
    fce_steps: int = 5,
    input_shape: Sequence[int] = (28, 28, 1),
    temperature: float = 1.0,
    ways: int | None = None,
    loss_fn: LossFn = cross_entropy_loss,
) -> MetaLearner:
    """Matching Networks: attention over support labels with cosine similarity.

    ``P(y|x, S) = sum_i a(x, x_i) y_i`` with ``a = softmax_i(cos(f(x), g(x_i)) / T)``.
    The returned logits are ``log P(y|x, S)`` so the usual cross-entropy is the
    paper's negative log-likelihood.

    Args:
      apply_fn: embedding network ``(params, x[n, ...]) -> [n, d]``. Without FCE,
        ``f = g = apply_fn``. BatchNorm sees the support batch and the query batch
        separately (query batch statistics: transductive evaluation, as for MAML).
      fce: full context embeddings: a bidirectional LSTM over the support embeddings
        and an attention LSTM over each query (:class:`FullContextEmbedding`). The
        paper's Omniglot numbers use no FCE.
      fce_steps: processing steps ``K`` of the attention LSTM.
      input_shape: one example's shape, used only by ``init`` (with ``fce=True``) to
        infer the embedding width through ``jax.eval_shape`` (no computation); the
        engine supplies the task source's ``input_shape``.
      temperature: cosine similarities are divided by it (``1.0`` = the paper).
      ways: logit columns; ``None`` derives them from shapes as in
        :func:`jaxmeta.algorithms.protonets.protonets` (train 60-way, test 5-way).
      loss_fn: ``(logits, labels) -> scalar``.

    Returns:
      A :class:`MetaLearner`. With ``fce=False`` meta-params are the embedding params;
      with ``fce=True`` ``init(key, model_params)`` returns ``{"embedding":
      model_params, "fce": lstm_params}`` with the LSTMs initialised from ``key``.
      ``predict(meta_params, support_x [n_s, ...], support_y [n_s], query_x [n_q, ...], key,
      *, bn_mode) -> [n_q, n_slots]`` (``bn_mode``: see
      :func:`jaxmeta.algorithms.base.apply_support_query`).

    References:
      Vinyals et al., NeurIPS 2016, Section 2.1 (Eq. 1-2) and Appendix A.2 (FCE).
    """
    check_apply_fn(apply_fn)
    fce_steps = check_int("fce_steps", fce_steps, minimum=1)
    temperature = check_positive_float("temperature", temperature)
    if ways is not None:
        ways = check_int("ways", ways, minimum=2)
    input_shape = tuple(int(s) for s in input_shape)

    def fce_module(d: int) -> FullContextEmbedding:
        return FullContextEmbedding(features=d, steps=fce_steps)

    def init(key: PRNGKey, model_params: Params) -> Params:
        if not fce:
            return model_params
        emb = jax.eval_shape(apply_fn, model_params, jnp.zeros((2, *input_shape), jnp.float32))
        d = emb.shape[-1]
        z = jnp.zeros((2, d), emb.dtype)
        return {"embedding": model_params, "fce": fce_module(d).init(key, z, z)}

    def predict(meta_params, support_x, support_y, query_x, key=None, *, bn_mode="transductive"):
        del key
        n_slots = class_slots(support_y, ways)
        check_task(support_x, support_y, query_x, num_classes=lambda: n_slots)
        emb_params = meta_params["embedding"] if fce else meta_params
        g, f = apply_support_query(apply_fn, emb_params, support_x, query_x, bn_mode=bn_mode)
        if fce:
            g, f = fce_module(g.shape[-1]).apply(meta_params["fce"], g, f)
        scores = cosine_similarity(f, g) / temperature
        return attention_log_probs(scores, support_y, n_slots)

    def task_loss(meta_params, episode: Episode, key):
        n_slots = lambda: class_slots(episode.support_y, ways)
        check_episode(episode, batched=False, num_classes=n_slots)
        logits = predict(meta_params, episode.support_x, episode.support_y, episode.query_x, key)
        return query_loss(loss_fn, logits, episode)

    def meta_grad(meta_params: Params, episodes: Episode, key: PRNGKey, *, task_chunk="auto"):
        n_slots = lambda: class_slots(episodes.support_y[0], ways)
        check_episode(episodes, batched=True, num_classes=n_slots)
        return mean_task_grad(task_loss, meta_params, episodes, key, task_chunk=task_chunk)

    return MetaLearner(
        init=init, meta_grad=meta_grad, predict=predict, name="matching", outer_loss=task_loss
    )


SPEC = AlgorithmSpec(
    matching,
    model="embedding",
    episode_args=("input_shape",),
    example={"fce": True, "fce_steps": 1},
)
