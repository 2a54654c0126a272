"""Prototypical Networks (Snell, Swersky, Zemel 2017).

References:
  Snell, Swersky, Zemel. Prototypical Networks for Few-shot Learning. NeurIPS 2017.
  https://arxiv.org/abs/1703.05175
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxmeta.algorithms.base import (
    AlgorithmSpec,
    MetaLearner,
    apply_support_query,
    identity_init,
    query_loss,
)
from jaxmeta.algorithms.metric import (  # noqa: F401 -- ABSENT_LOGIT: its documented home was here
    ABSENT_LOGIT,
    class_slots,
    one_hot_support,
)
from jaxmeta.execution import mean_task_grad
from jaxmeta.losses import cross_entropy_loss
from jaxmeta.types import ApplyFn, Array, Episode, LossFn, Params, PRNGKey
from jaxmeta.validation import check_apply_fn, check_episode, check_int, check_task


def prototypes(embeddings: Array, support_y: Array, n_slots: int) -> tuple[Array, Array]:
    """Class means without a per-class loop.

    Args:
      embeddings: ``[n_support, d]`` support embeddings.
      support_y: ``[n_support]`` int labels in ``[0, n_slots)``.
      n_slots: number of class slots.

    Returns:
      ``(prototypes [n_slots, d], present [n_slots] bool)``; absent classes get a
      zero prototype and ``present=False``.
    """
    onehot = one_hot_support(support_y, n_slots, embeddings.dtype)  # [n_s, C]
    counts = jnp.sum(onehot, axis=0)  # [C]
    sums = onehot.T @ embeddings  # [C, d]
    protos = sums / jnp.maximum(counts, 1.0)[:, None]
    return protos, counts > 0


def squared_euclidean(a: Array, b: Array) -> Array:
    """``[n, d], [m, d] -> [n, m]`` squared distances via ``|a|^2 - 2ab + |b|^2`` (one GEMM)."""
    aa = jnp.sum(a * a, axis=-1)[:, None]
    bb = jnp.sum(b * b, axis=-1)[None, :]
    return jnp.maximum(aa - 2.0 * (a @ b.T) + bb, 0.0)


def protonets(
    apply_fn: ApplyFn,
    *,
    ways: int | None = None,
    distance: str = "sqeuclidean",
    loss_fn: LossFn = cross_entropy_loss,
    joint_batch: bool = False,
) -> MetaLearner:
    """Prototypical Networks: logits are negative squared distances to class means.

    Args:
      apply_fn: embedding network ``(params, x[n, ...]) -> [n, d]`` (e.g. ``Conv4``
        with ``num_classes=None``). BatchNorm inside it sees the support batch and
        the query batch separately (the query batch statistics make evaluation
        transductive, as for MAML).
      ways: number of logit columns. ``None`` (default) derives everything from the
        episode shapes: logits have ``n_support`` columns, the columns of labels
        absent from the support set are :data:`ABSENT_LOGIT`, which leaves
        argmax/accuracy/cross-entropy identical to ``[n_query, n_way]`` logits; so one
        learner meta-trains 60-way and evaluates 5-way (the paper's protocol). An
        integer gives exactly ``[n_query, ways]``.
      distance: ``"sqeuclidean"`` (the paper's choice) or ``"cosine"``.
      loss_fn: ``(logits, labels) -> scalar``.
      joint_batch: in training, embed support and query in one pass over
        ``concat([support, query])``, so BatchNorm normalises with their joint statistics
        (jakesnell/prototypical-networks ``protonets/models/few_shot.py``, ``torch.cat([xs,
        xq])``). Default ``False``: support and query batches each with their own statistics.
        Evaluation (``predict``) is unchanged; the reference evaluates with running
        statistics (``model.eval()``), which jaxmeta's batch-statistics BatchNorm does not keep.

    Returns:
      A :class:`MetaLearner`; ``init`` returns the embedding params unchanged and
      ``predict(params, support_x [n_s, ...], support_y [n_s], query_x [n_q, ...],
      key, *, bn_mode="transductive") -> logits [n_q, n_slots]`` (``bn_mode``: see
      :func:`jaxmeta.algorithms.base.apply_support_query`).

    References:
      Snell et al., NeurIPS 2017, Eq. (1)-(2) and Algorithm 1.
    """
    check_apply_fn(apply_fn)
    if distance not in ("sqeuclidean", "cosine"):
        raise ValueError(f"distance must be 'sqeuclidean' or 'cosine', got {distance!r}")
    if ways is not None:
        ways = check_int("ways", ways, minimum=2)

    if not isinstance(joint_batch, bool):
        raise TypeError(f"joint_batch must be a bool, got {joint_batch!r}")

    def logits_of(params, support_x, support_y, query_x, *, bn_mode, joint=False):
        n_slots = class_slots(support_y, ways)
        check_task(support_x, support_y, query_x, num_classes=lambda: n_slots)
        if joint:
            z = apply_fn(params, jnp.concatenate([support_x, query_x], axis=0))
            zs, zq = z[: support_x.shape[0]], z[support_x.shape[0] :]
        else:
            zs, zq = apply_support_query(apply_fn, params, support_x, query_x, bn_mode=bn_mode)
        protos, present = prototypes(zs, support_y, n_slots)
        if distance == "sqeuclidean":
            logits = -squared_euclidean(zq, protos)
        else:
            unit = lambda z: z / jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-12)
            logits = unit(zq) @ unit(protos).T
        return jnp.where(present[None, :], logits, ABSENT_LOGIT)

    def predict(params, support_x, support_y, query_x, key=None, *, bn_mode="transductive"):
        del key
        return logits_of(params, support_x, support_y, query_x, bn_mode=bn_mode)

    def task_loss(params, episode: Episode, key):
        n_slots = lambda: class_slots(episode.support_y, ways)
        check_episode(episode, batched=False, num_classes=n_slots)
        del key
        logits = logits_of(
            params,
            episode.support_x,
            episode.support_y,
            episode.query_x,
            bn_mode="transductive",
            joint=joint_batch,
        )
        return query_loss(loss_fn, logits, episode)

    def meta_grad(params: Params, episodes: Episode, key: PRNGKey, *, task_chunk="auto"):
        n_slots = lambda: class_slots(episodes.support_y[0], ways)
        check_episode(episodes, batched=True, num_classes=n_slots)
        return mean_task_grad(task_loss, params, episodes, key, task_chunk=task_chunk)

    return MetaLearner(
        init=identity_init,
        meta_grad=meta_grad,
        predict=predict,
        name="protonets",
        outer_loss=task_loss,
    )


SPEC = AlgorithmSpec(protonets, model="embedding")
