"""SNAIL building blocks (Mishra et al. 2018): temporal-convolution and causal attention blocks.

All modules take one sequence ``[T, C]`` (no batch axis; ``vmap`` for batches) and are
causal: the output at position ``t`` depends only on inputs at positions ``<= t``.

References:
  Mishra, Rohaninejad, Chen, Abbeel. A Simple Neural Attentive Meta-Learner. ICLR 2018.
  https://arxiv.org/abs/1707.03141
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmeta.types import Array


class CausalConv1D(nn.Module):
    """Dilated causal convolution with kernel size 2: ``y_t = W0 x_{t-d} + W1 x_t + b``.

    Written as one matmul on ``[x_{t-d}, x_t]`` (positions before the start read zeros),
    which XLA:CPU runs faster than a generic dilated convolution.
    """

    features: int
    dilation: int
    dtype: jax.typing.DTypeLike = "float32"

    @nn.compact
    def __call__(self, x: Array) -> Array:  # [T, C] -> [T, features]
        d = self.dilation
        past = jnp.concatenate([jnp.zeros((d, x.shape[-1]), x.dtype), x], axis=0)[: x.shape[0]]
        return nn.Dense(self.features, dtype=self.dtype, param_dtype=self.dtype)(
            jnp.concatenate([past, x], axis=-1)
        )


class DenseBlock(nn.Module):
    """Gated dilated causal conv whose ``features`` outputs are concatenated to the input."""

    dilation: int
    features: int
    dtype: jax.typing.DTypeLike = "float32"

    @nn.compact
    def __call__(self, x: Array) -> Array:  # [T, C] -> [T, C + features]
        xf = CausalConv1D(self.features, self.dilation, self.dtype, name="filter")(x)
        xg = CausalConv1D(self.features, self.dilation, self.dtype, name="gate")(x)
        return jnp.concatenate([x, jnp.tanh(xf) * jax.nn.sigmoid(xg)], axis=-1)


class TCBlock(nn.Module):
    """``ceil(log2 T)`` dense blocks with dilations ``2, 4, ..., 2^ceil(log2 T)`` (paper Sec. 3.2).

    Output width: ``C + ceil(log2 seq_len) * features``.
    """

    seq_len: int
    features: int
    dtype: jax.typing.DTypeLike = "float32"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i in range(1, num_dense_blocks(self.seq_len) + 1):
            x = DenseBlock(2**i, self.features, self.dtype)(x)
        return x


def num_dense_blocks(seq_len: int) -> int:
    return max(1, math.ceil(math.log2(seq_len)))


class AttentionBlock(nn.Module):
    """Single-head causal soft attention; the read-out is concatenated to the input.

    ``softmax(mask(Q K^T) / sqrt(key_size)) V`` with position ``t`` attending to ``<= t``.
    """

    key_size: int
    value_size: int
    dtype: jax.typing.DTypeLike = "float32"

    @nn.compact
    def __call__(self, x: Array) -> Array:  # [T, C] -> [T, C + value_size]
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=self.dtype, name=name)
        q = dense(self.key_size, "query")(x)
        k = dense(self.key_size, "key")(x)
        v = dense(self.value_size, "value")(x)
        t = x.shape[0]
        logits = (q @ k.T) / jnp.sqrt(jnp.asarray(self.key_size, x.dtype))
        causal = jnp.tril(jnp.ones((t, t), bool))
        logits = jnp.where(causal, logits, jnp.finfo(logits.dtype).min)
        return jnp.concatenate([x, jax.nn.softmax(logits, axis=-1) @ v], axis=-1)


class SNAIL(nn.Module):
    """SNAIL's Omniglot few-shot classifier on top of an embedding sequence.

    ``Attention(k, k/2) -> TC(T, F) -> Attention(4k, 2k) -> TC(T, F) -> Attention(8k, 4k)
    -> 1x1 conv to ways``; the paper uses ``k = 64`` (key sizes 64/256/512, value sizes
    32/128/256) and ``F = 128``.

    Attributes:
      ways: number of output classes.
      seq_len: sequence length ``T = ways * shots + 1`` (fixes the TC depth; other
        lengths run with the same receptive field).
      tc_filters: filters ``F`` of each dense block.
      key_size: ``k`` above.

    Call: ``x [T, C] -> logits [T, ways]``.

    References:
      Mishra et al., ICLR 2018, Sections 3-4 and Appendix B (Omniglot architecture).
    """

    ways: int
    seq_len: int
    tc_filters: int = 128
    key_size: int = 64
    dtype: jax.typing.DTypeLike = "float32"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, f, dt = self.key_size, self.tc_filters, self.dtype
        x = AttentionBlock(k, max(1, k // 2), dt)(x)
        x = TCBlock(self.seq_len, f, dt)(x)
        x = AttentionBlock(4 * k, 2 * k, dt)(x)
        x = TCBlock(self.seq_len, f, dt)(x)
        x = AttentionBlock(8 * k, 4 * k, dt)(x)
        return nn.Dense(self.ways, dtype=dt, param_dtype=dt)(x)
