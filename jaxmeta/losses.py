"""Loss and metric functions for few-shot classification and regression.

Every loss maps ``(predictions, targets) -> scalar`` for one task and is safe under
``jit``/``vmap``/second-order ``grad``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmeta.types import Array


def cross_entropy_loss(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy with integer labels.

    Args:
      logits: ``[n, n_way]`` float.
      labels: ``[n]`` integer in ``[0, n_way)``.

    Returns:
      Scalar mean loss. A label outside ``[0, n_way)`` makes the loss NaN instead of
      silently contributing zero (as ``one_hot`` would), so a bad episode can never
      yield a plausible-looking wrong answer; eager calls raise earlier (see
      :func:`jaxmeta.validation.check_episode`).
    """
    n_way = logits.shape[-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    valid = (labels >= 0) & (labels < n_way)
    picked = jnp.take_along_axis(logp, jnp.clip(labels, 0, n_way - 1)[..., None], axis=-1)[..., 0]
    nll = jnp.where(valid, -picked, jnp.nan)
    return jnp.mean(nll)


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of ``argmax(logits) == labels``; ``logits: [n, n_way]``, ``labels: [n]``."""
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def mse_loss(predictions: Array, targets: Array) -> Array:
    """Mean squared error over all elements (MAML sinusoid protocol)."""
    return jnp.mean(jnp.square(predictions - targets))


def is_classification(labels: Array) -> bool:
    """Integer targets mean classification (cross-entropy + accuracy); float means regression."""
    return jnp.issubdtype(labels.dtype, jnp.integer)
