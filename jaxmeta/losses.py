"""Loss and metric functions for few-shot classification and regression.

Every loss maps ``(predictions, targets) -> scalar`` for one task and is safe under
``jit``/``vmap``/second-order ``grad``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmeta.types import Array


def label_guard(labels: Array, n: int, dtype=jnp.float32) -> Array:
    """``1`` when every label lies in ``[0, n)``, else ``NaN`` (a scalar of ``dtype``).

    Multiply a loss by it: under ``jit`` label values are unknown at trace time, so an
    out-of-range label cannot raise; instead it turns the loss and every gradient
    through it into NaN, which the training loop's NaN guard stops. (A ``where`` would
    poison the value but give finite, silently wrong gradients.) Costs one reduction
    over the labels, on the device.
    """
    ok = jnp.all((labels >= 0) & (labels < n))
    return jnp.where(ok, jnp.ones((), dtype), jnp.full((), jnp.nan, dtype))


def cross_entropy_loss(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy with integer labels.

    Args:
      logits: ``[n, n_way]`` float.
      labels: ``[n]`` integer in ``[0, n_way)``.

    Returns:
      Scalar mean loss. A label outside ``[0, n_way)`` makes the loss and its gradient
      NaN (:func:`label_guard`) instead of silently contributing zero (as ``one_hot``
      would), so a bad episode can never yield a plausible-looking wrong answer; eager
      calls raise earlier (see :func:`jaxmeta.validation.check_episode`).
    """
    n_way = logits.shape[-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, jnp.clip(labels, 0, n_way - 1)[..., None], axis=-1)[..., 0]
    return -jnp.mean(picked) * label_guard(labels, n_way, logp.dtype)


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of ``argmax(logits) == labels``; ``logits: [n, n_way]``, ``labels: [n]``."""
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def mse_loss(predictions: Array, targets: Array) -> Array:
    """Mean squared error over all elements (MAML sinusoid protocol)."""
    return jnp.mean(jnp.square(predictions - targets))


def is_classification(labels: Array) -> bool:
    """Integer targets mean classification (cross-entropy + accuracy); float means regression."""
    return jnp.issubdtype(labels.dtype, jnp.integer)
