"""Prototypical Networks (Snell, Swersky, Zemel 2017).

References:
  Snell, Swersky, Zemel. Prototypical Networks for Few-shot Learning. NeurIPS 2017.
  https://arxiv.org/abs/1703.05175
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp

from jaxmeta.algorithms.base import (
    AlgorithmSpec,
    MetaLearner,
    apply_gradients,
    apply_support_query,
    identity_init,
    momentum_update,
    query_loss,
    running_moments,
)
from jaxmeta.algorithms.metric import (  # noqa: F401 -- ABSENT_LOGIT: its documented home was here
    ABSENT_LOGIT,
    class_slots,
    one_hot_support,
)
from jaxmeta.execution import mean_map_tasks, mean_task_grad
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


def prototype_logits(zs: Array, support_y: Array, zq: Array, n_slots: int, distance: str):
    """Logits ``[n_q, n_slots]`` of query embeddings against the class means of the support
    embeddings: negative squared distances (``"sqeuclidean"``) or cosine similarities;
    :data:`ABSENT_LOGIT` for the classes absent from the support set."""
    protos, present = prototypes(zs, support_y, n_slots)
    if distance == "sqeuclidean":
        logits = -squared_euclidean(zq, protos)
    else:
        unit = lambda z: z / jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True) + 1e-12)
        logits = unit(zq) @ unit(protos).T
    return jnp.where(present[None, :], logits, ABSENT_LOGIT)


_BN_BIAS = re.compile(r"^(bn\d*)_bias$")


def bn_layers(params: Params) -> dict[str, int]:
    """The BatchNorm layers of a Conv-4-style model and their channels: ``{"bn0": C, ...}``
    from its ``bn{i}_bias`` leaves."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        last = path[-1]
        match = _BN_BIAS.match(str(getattr(last, "key", getattr(last, "name", last))))
        if match:
            out[match.group(1)] = leaf.shape[-1]
    return out


def init_running_stats(key: PRNGKey, params: Params) -> dict:
    """Running ``mean`` (zeros) and ``var`` (ones) of every BatchNorm layer, as PyTorch starts."""
    del key
    layers = bn_layers(params)
    if not layers:
        raise ValueError(
            "running_stats needs a model with BatchNorm layers named bn{i} (Conv-4); "
            "this model has none: set running_stats: false"
        )
    return running_moments(layers, jax.tree_util.tree_leaves(params)[0].dtype)


def _check_options(apply_fn, ways, distance, joint_batch, running_stats, bn_momentum):
    check_apply_fn(apply_fn)
    if distance not in ("sqeuclidean", "cosine"):
        raise ValueError(f"distance must be 'sqeuclidean' or 'cosine', got {distance!r}")
    for name, value in (("joint_batch", joint_batch), ("running_stats", running_stats)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")
    if running_stats and not joint_batch:
        raise ValueError(
            "running_stats tracks the statistics of the joint support + query batch (the "
            "reference's training pass): set joint_batch: true with it"
        )
    if not 0.0 <= float(bn_momentum) <= 1.0:
        raise ValueError(f"bn_momentum must be in [0, 1], got {bn_momentum!r}")
    return None if ways is None else check_int("ways", ways, minimum=2)


def protonets(
    apply_fn: ApplyFn,
    *,
    ways: int | None = None,
    distance: str = "sqeuclidean",
    loss_fn: LossFn = cross_entropy_loss,
    joint_batch: bool = False,
    running_stats: bool = False,
    bn_momentum: float = 0.1,
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
      running_stats: keep BatchNorm running statistics of those joint training batches in the
        learner state (momentum ``bn_momentum``, unbiased variance: PyTorch's
        ``BatchNorm2d``) and predict with them by default (``bn_mode="running"``): the
        reference's ``model.eval()`` at test. Needs ``joint_batch`` and a Conv-4-style model
        (BatchNorm layers ``bn{i}``, ``apply_fn(..., norm_stats=...)``). Training still
        normalises with batch statistics.
      bn_momentum: momentum of the running statistics (PyTorch's default 0.1).

    Returns:
      A :class:`MetaLearner`; ``init`` returns the embedding params unchanged and
      ``predict(params, support_x [n_s, ...], support_y [n_s], query_x [n_q, ...],
      key, *, bn_mode=None, learner_state=None) -> logits [n_q, n_slots]`` (``bn_mode``: see
      :func:`jaxmeta.algorithms.base.apply_support_query`; default ``"running"`` with
      ``running_stats``, else ``"transductive"``; ``learner_state``: the running statistics).

    References:
      Snell et al., NeurIPS 2017, Eq. (1)-(2) and Algorithm 1.
    """
    ways = _check_options(apply_fn, ways, distance, joint_batch, running_stats, bn_momentum)
    default_mode = "running" if running_stats else "transductive"

    def logits_of(params, support_x, support_y, query_x, *, bn_mode, norm_stats=None):
        n_slots = class_slots(support_y, ways)
        check_task(support_x, support_y, query_x, num_classes=lambda: n_slots)
        zs, zq = apply_support_query(
            apply_fn, params, support_x, query_x, bn_mode=bn_mode, norm_stats=norm_stats
        )
        return prototype_logits(zs, support_y, zq, n_slots, distance)

    def predict(params, support_x, support_y, query_x, key=None, *, bn_mode=None,
                learner_state=None):  # fmt: skip
        del key
        norm_stats = None
        if learner_state is not None:
            norm_stats = {k: (learner_state["mean"][k], learner_state["var"][k])
                          for k in learner_state["mean"]}  # fmt: skip
        mode = bn_mode or default_mode
        return logits_of(params, support_x, support_y, query_x, bn_mode=mode, norm_stats=norm_stats)

    def task_loss_and_moments(params, episode: Episode, key, *, stats: bool = False):
        """One task's loss in training, with ``(metrics, BatchNorm moments)`` as aux."""
        del key
        n_slots = class_slots(episode.support_y, ways)
        check_episode(episode, batched=False, num_classes=lambda: n_slots)
        sx, qx, moments = episode.support_x, episode.query_x, None
        if not joint_batch:
            zs, zq = apply_fn(params, sx), apply_fn(params, qx)
        else:
            both = jnp.concatenate([sx, qx], axis=0)
            if stats:
                z, col = apply_fn(params, both, mutable=["batch_stats"])
                moments = {k: v[0] for k, v in col["batch_stats"].items()}
            else:
                z = apply_fn(params, both)
            zs, zq = z[: sx.shape[0]], z[sx.shape[0] :]
        logits = prototype_logits(zs, episode.support_y, zq, n_slots, distance)
        loss, metrics = query_loss(loss_fn, logits, episode)
        return loss, (metrics, moments)

    def task_loss(params, episode: Episode, key):
        loss, (metrics, _) = task_loss_and_moments(params, episode, key)
        return loss, metrics

    def meta_grad(params: Params, episodes: Episode, key: PRNGKey, *, task_chunk="auto"):
        n_slots = lambda: class_slots(episodes.support_y[0], ways)
        check_episode(episodes, batched=True, num_classes=n_slots)
        return mean_task_grad(task_loss, params, episodes, key, task_chunk=task_chunk)

    def update(state, episodes: Episode, key: PRNGKey, *, optimizer, task_chunk="auto"):
        """The outer update, then the running statistics from the same forward passes."""
        check_episode(
            episodes, batched=True, num_classes=lambda: class_slots(episodes.support_y[0], ways)
        )
        grad = jax.grad(functools.partial(task_loss_and_moments, stats=True), has_aux=True)
        grads, (metrics, moments) = mean_map_tasks(
            lambda ep, k: grad(state.params, ep, k), episodes, key, task_chunk=task_chunk
        )
        new, metrics = apply_gradients(optimizer, state, grads, metrics)
        # PyTorch's BatchNorm2d: momentum, unbiased running variance.
        running = momentum_update(
            state.learner_state, moments, float(bn_momentum), unbiased=True, option="running_stats"
        )
        return new.replace(learner_state=running), metrics

    return MetaLearner(
        init=identity_init,
        meta_grad=meta_grad,
        predict=predict,
        name="protonets",
        outer_loss=task_loss,
        init_state=init_running_stats if running_stats else None,
        update=update if running_stats else None,
        bn_mode=default_mode,
    )


SPEC = AlgorithmSpec(protonets, model="embedding")
