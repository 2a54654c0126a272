"""Measurements of meta-learners, for analysis rather than training.

:func:`meta_gradient_gap` compares two learners' meta-gradients at the same parameters and
the same episodes, typically first-order MAML against MAML: how well the first-order
approximation points in the direction of the true meta-gradient (cosine) and how far it is
from it (relative norm of the difference), for all parameters together and per leaf.

References:
  Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep
  Networks. ICML 2017 (first-order approximation, Section 5.2).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.types import Array, Episode, Params, PRNGKey

__all__ = ["GradientGap", "gap_by_name", "meta_gradient_gap"]


class GradientGap(NamedTuple):
    """How an approximate meta-gradient ``a`` differs from a reference ``b``.

    Attributes:
      cosine: ``<a, b> / (|a| |b|)`` over all parameters (scalar; 1 = same direction).
      rel_diff: ``|a - b| / |b|`` over all parameters (scalar; 0 = identical).
      norm_approx, norm_reference: ``|a|`` and ``|b|`` (scalars).
      leaf_cosine, leaf_rel_diff: the same per leaf (pytrees like the parameters, scalars).
    """

    cosine: Array
    rel_diff: Array
    norm_approx: Array
    norm_reference: Array
    leaf_cosine: Params
    leaf_rel_diff: Params


def _dot(a: Params, b: Params) -> Array:
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: jnp.vdot(x, y), a, b))
    return sum(leaves, jnp.zeros((), leaves[0].dtype))


def _ratio(num: Array, den: Array) -> Array:
    # A zero reference (e.g. a leaf the loss ignores) gives 0 rather than NaN.
    safe = jnp.where(den > 0, den, 1)
    return jnp.where(den > 0, num / safe, 0)


def gradient_gap(approx: Params, reference: Params) -> GradientGap:
    """:class:`GradientGap` of two gradient pytrees of the same structure (jittable)."""
    diff = jax.tree_util.tree_map(jnp.subtract, approx, reference)
    na, nb, nd = (jnp.sqrt(_dot(t, t)) for t in (approx, reference, diff))

    def leaf_cos(a, b):
        return _ratio(jnp.vdot(a, b), jnp.linalg.norm(a.ravel()) * jnp.linalg.norm(b.ravel()))

    def leaf_rel(a, b):
        return _ratio(jnp.linalg.norm((a - b).ravel()), jnp.linalg.norm(b.ravel()))

    return GradientGap(
        cosine=_ratio(_dot(approx, reference), na * nb),
        rel_diff=_ratio(nd, nb),
        norm_approx=na,
        norm_reference=nb,
        leaf_cosine=jax.tree_util.tree_map(leaf_cos, approx, reference),
        leaf_rel_diff=jax.tree_util.tree_map(leaf_rel, approx, reference),
    )


def meta_gradient_gap(
    approx: MetaLearner,
    reference: MetaLearner,
    params: Params,
    episodes: Episode,
    key: PRNGKey,
    *,
    task_chunk: Any = "auto",
) -> GradientGap:
    """Compare two learners' meta-gradients at the same parameters, episodes and key.

    Typical use: ``approx = fomaml(apply_fn, inner_lr=a, inner_steps=k)`` and
    ``reference = maml(apply_fn, inner_lr=a, inner_steps=k)``; both meta-gradients are
    means over the same tasks. Jittable (``jax.jit(functools.partial(meta_gradient_gap,
    fo, so))``); when the inner learning rate is 0 the two are identical (cosine 1,
    ``rel_diff`` 0).

    Args:
      approx, reference: learners whose ``meta_grad`` returns gradients of the same
        structure (the MAML family; Reptile's pseudo-gradient also fits).
      params: meta-parameters (a pytree).
      episodes: a batch of tasks, ``support_x: [tasks, n_support, ...]`` etc.
      key: the key both ``meta_grad`` calls get.
      task_chunk: how tasks are mapped (:mod:`jaxmeta.execution`).

    Returns:
      A :class:`GradientGap` of ``approx``'s meta-gradient against ``reference``'s.

    References:
      Finn et al., ICML 2017, Section 5.2 (first-order approximation).
    """
    ga, _ = approx.meta_grad(params, episodes, key, task_chunk=task_chunk)
    gb, _ = reference.meta_grad(params, episodes, key, task_chunk=task_chunk)
    return gradient_gap(ga, gb)


def gap_by_name(gap: GradientGap) -> dict[str, dict[str, float]]:
    """Per-leaf ``{"cosine", "rel_diff"}`` by parameter path (e.g. ``"params/Dense_0/kernel"``),
    as Python floats (for JSON); call on a computed (not traced) gap."""
    out: dict[str, dict[str, float]] = {}
    cos = jax.tree_util.tree_leaves_with_path(gap.leaf_cosine)
    rel = jax.tree_util.tree_leaves(gap.leaf_rel_diff)
    for (path, c), r in zip(cos, rel, strict=True):
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        out[name] = {"cosine": float(c), "rel_diff": float(r)}
    return out
