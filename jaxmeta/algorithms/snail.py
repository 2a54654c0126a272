"""SNAIL (Mishra et al. 2018): a causal temporal-convolution + attention meta-learner.

References:
  Mishra, Rohaninejad, Chen, Abbeel. A Simple Neural Attentive Meta-Learner. ICLR 2018.
  https://arxiv.org/abs/1707.03141
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxmeta.algorithms.base import AlgorithmSpec, MetaLearner, apply_support_query, query_loss
from jaxmeta.execution import mean_task_grad
from jaxmeta.losses import cross_entropy_loss
from jaxmeta.models.snail import SNAIL
from jaxmeta.types import ApplyFn, Array, Episode, LossFn, Params, PRNGKey
from jaxmeta.validation import check_apply_fn, check_episode, check_int, check_task


def episode_sequences(emb_s: Array, support_y: Array, emb_q: Array, ways: int) -> Array:
    """One sequence per query: the support pairs, then the query with a zero label.

    Args:
      emb_s: ``[n_s, d]`` support embeddings.
      support_y: ``[n_s]`` int labels in ``[0, ways)``.
      emb_q: ``[n_q, d]`` query embeddings.
      ways: one-hot width.

    Returns:
      ``[n_q, n_s + 1, d + ways]``.
    """
    support = jnp.concatenate([emb_s, jax.nn.one_hot(support_y, ways, dtype=emb_s.dtype)], -1)
    query = jnp.concatenate([emb_q, jnp.zeros((emb_q.shape[0], ways), emb_q.dtype)], -1)
    n_q = emb_q.shape[0]
    tiled = jnp.broadcast_to(support[None], (n_q, *support.shape))
    return jnp.concatenate([tiled, query[:, None, :]], axis=1)


def snail(
    apply_fn: ApplyFn,
    *,
    ways: int,
    shots: int,
    input_shape: Sequence[int] = (28, 28, 1),
    tc_filters: int = 128,
    key_size: int = 64,
    shuffle_support: bool = True,
    loss_fn: LossFn = cross_entropy_loss,
) -> MetaLearner:
    """SNAIL few-shot classification: the episode is a sequence of (embedding, label) pairs.

    Each query is its own sequence ``[(e(x_1), y_1), ..., (e(x_{NK}), y_{NK}), (e(x), 0)]``
    as in the paper, built by broadcasting the support pairs and run with ``vmap`` over
    queries; the logits are the network's output at the last (query) position. (The
    SNAIL part thus costs ``n_query * (N*K + 1)`` positions; since the net is causal the
    support positions are the same in every sequence and could be computed once, an
    optimisation not done here.) The embedding is computed once per image (support batch
    and query batch separately, so BatchNorm statistics of the query batch are shared:
    transductive, as for MAML).

    Args:
      apply_fn: embedding network ``(params, x[n, ...]) -> [n, d]`` (the paper: Conv-4
        with max-pooling giving 64 features, ``Conv4(num_classes=None, pool=True)``).
      ways: ``N``: one-hot label width and number of output logits.
      shots: ``K``; the TC blocks get ``ceil(log2(N*K+1))`` dense blocks. Episodes
        whose support size differs run (receptive field fixed at construction).
      input_shape: one example's shape, used only by ``init`` to infer the embedding
        width through ``jax.eval_shape``; the engine supplies the task source's
        ``input_shape``.
      tc_filters: filters per dense block (paper 128).
      key_size: attention key size of the first block (paper 64; see :class:`SNAIL`).
      shuffle_support: during meta-training, present the support pairs in a random order
        drawn from the step key (the order carries no information about the query).
      loss_fn: ``(logits, labels) -> scalar``.

    Returns:
      A :class:`MetaLearner`. ``init(key, model_params) -> {"embedding":
      model_params, "snail": snail_params}``, SNAIL initialised from ``key``.
      ``predict(meta_params, support_x [n_s, ...], support_y [n_s], query_x [n_q, ...], key,
      *, bn_mode) -> logits [n_q, ways]``
      (``bn_mode``: see :func:`jaxmeta.algorithms.base.apply_support_query`).

    References:
      Mishra et al., ICLR 2018, Section 4.1 and Appendix B.
    """
    check_apply_fn(apply_fn)
    ways = check_int("ways", ways, minimum=2)
    shots = check_int("shots", shots, minimum=1)
    tc_filters = check_int("tc_filters", tc_filters, minimum=1)
    key_size = check_int("key_size", key_size, minimum=2)
    input_shape = tuple(int(s) for s in input_shape)
    net = SNAIL(ways=ways, seq_len=ways * shots + 1, tc_filters=tc_filters, key_size=key_size)

    def init(key: PRNGKey, model_params: Params) -> Params:
        emb = jax.eval_shape(apply_fn, model_params, jnp.zeros((2, *input_shape), jnp.float32))
        x = jnp.zeros((ways * shots + 1, emb.shape[-1] + ways), emb.dtype)
        return {"embedding": model_params, "snail": net.init(key, x)}

    def _logits(meta_params, support_x, support_y, query_x, bn_mode="transductive"):
        emb_s, emb_q = apply_support_query(
            apply_fn, meta_params["embedding"], support_x, query_x, bn_mode=bn_mode
        )
        seqs = episode_sequences(emb_s, support_y, emb_q, ways)  # [n_q, n_s + 1, d + ways]
        return jax.vmap(lambda s: net.apply(meta_params["snail"], s)[-1])(seqs)

    def predict(meta_params, support_x, support_y, query_x, key=None, *, bn_mode="transductive"):
        del key
        check_task(support_x, support_y, query_x, num_classes=ways)
        return _logits(meta_params, support_x, support_y, query_x, bn_mode)

    def task_loss(meta_params, episode: Episode, key):
        check_episode(episode, batched=False, num_classes=ways)
        sx, sy = episode.support_x, episode.support_y
        if shuffle_support:
            perm = jax.random.permutation(key, sx.shape[0])
            sx, sy = sx[perm], sy[perm]
        return query_loss(loss_fn, _logits(meta_params, sx, sy, episode.query_x), episode)

    def meta_grad(meta_params: Params, episodes: Episode, key: PRNGKey, *, task_chunk="auto"):
        check_episode(episodes, batched=True, num_classes=ways)
        return mean_task_grad(task_loss, meta_params, episodes, key, task_chunk=task_chunk)

    return MetaLearner(
        init=init, meta_grad=meta_grad, predict=predict, name="snail", outer_loss=task_loss
    )


SPEC = AlgorithmSpec(
    snail,
    model="embedding",
    episode_args=("ways", "shots", "input_shape"),
    example={"tc_filters": 4, "key_size": 4},
)
