"""Multi-layer perceptron (MAML sinusoid regression: 1 -> 40 -> 40 -> 1, ReLU)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from jaxmeta.types import Array


class MLP(nn.Module):
    """Fully connected net ``[n, in] -> [n, out]``.

    Attributes:
      hidden: widths of the hidden layers (MAML sinusoid: ``(40, 40)``).
      out: output width.
      dtype: parameter/compute dtype (``float64`` for finite-difference tests).

    References:
      Finn et al., ICML 2017, Section 5.1.
    """

    hidden: Sequence[int] = (40, 40)
    out: int = 1
    dtype: jax.typing.DTypeLike = "float32"

    @nn.compact
    def __call__(self, x: Array, *, stats_rows: int | None = None) -> Array:
        del stats_rows  # no batch statistics: the inductive and transductive modes agree
        for width in self.hidden:
            x = nn.relu(nn.Dense(width, dtype=self.dtype, param_dtype=self.dtype)(x))
        return nn.Dense(self.out, dtype=self.dtype, param_dtype=self.dtype)(x)
