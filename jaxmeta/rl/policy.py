"""Gaussian MLP policy of MAML-RL and the diagonal-Gaussian helpers the estimators use.

Algorithms see a policy only as ``apply_fn(params, obs) -> (mean, log_std)`` with
``obs: [..., obs_size]`` and ``mean, log_std: [..., action_size]`` (Flax's ``apply`` has
this form), like every model of jaxmeta.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmeta.types import Array, PRNGKey

LOG_2PI = math.log(2.0 * math.pi)


class GaussianMLPPolicy(nn.Module):
    """MLP mean with ReLU hidden layers and a learned, state-independent log-std.

    ``obs: [..., obs_size] -> (mean, log_std)``, both ``[..., action_size]`` (the log-std
    parameter broadcast to the mean's shape, clamped below at ``min_log_std``).

    Attributes:
      action_size: action dimension.
      hidden: hidden widths; MAML-RL uses two layers of 100 ReLU units.
      init_log_std: initial log standard deviation (0: std 1, as the references).
      min_log_std: lower clamp of the log-std (log 1e-6, as pytorch-maml-rl).
      dtype: parameter and compute dtype.

    References:
      Finn et al., ICML 2017, Section 5.3 ("a neural network policy with two hidden
      layers of size 100, with ReLU nonlinearities"); weights Glorot-uniform and biases
      zero as in tristandeleu/pytorch-maml-rl.
    """

    action_size: int
    hidden: Sequence[int] = (100, 100)
    init_log_std: float = 0.0
    min_log_std: float = math.log(1e-6)
    dtype: jax.typing.DTypeLike = "float32"

    @nn.compact
    def __call__(self, obs: Array) -> tuple[Array, Array]:
        dense = lambda width: nn.Dense(
            width,
            dtype=self.dtype,
            param_dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
        )
        x = obs.astype(self.dtype)
        for width in self.hidden:
            x = nn.relu(dense(width)(x))
        mean = dense(self.action_size)(x)
        log_std = self.param(
            "log_std",
            nn.initializers.constant(self.init_log_std),
            (self.action_size,),
            self.dtype,
        )
        log_std = jnp.maximum(log_std, self.min_log_std)
        return mean, jnp.broadcast_to(log_std, mean.shape)


def gaussian_sample(key: PRNGKey, mean: Array, log_std: Array) -> Array:
    """One action per row: ``mean + exp(log_std) * N(0, 1)``, same shape as ``mean``."""
    return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)


def gaussian_log_prob(mean: Array, log_std: Array, action: Array) -> Array:
    """Log-density of a diagonal Gaussian, summed over the last (action) axis: ``[...]``."""
    z = (action - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z * z - log_std - 0.5 * LOG_2PI, axis=-1)


def gaussian_kl(mean0: Array, log_std0: Array, mean1: Array, log_std1: Array) -> Array:
    """``KL(N(mean0, std0) || N(mean1, std1))`` summed over the last axis: ``[...]``."""
    var0, var1 = jnp.exp(2.0 * log_std0), jnp.exp(2.0 * log_std1)
    diff = mean0 - mean1
    kl = log_std1 - log_std0 + (var0 + diff * diff) / (2.0 * var1) - 0.5
    return jnp.sum(kl, axis=-1)


def gaussian_entropy(log_std: Array) -> Array:
    """Entropy of a diagonal Gaussian, summed over the last axis: ``[...]``."""
    return jnp.sum(log_std + 0.5 * (LOG_2PI + 1.0), axis=-1)
