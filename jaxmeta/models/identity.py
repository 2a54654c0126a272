"""The identity model: examples that already are feature vectors (LEO's precomputed embeddings)."""

from __future__ import annotations

import flax.linen as nn

from jaxmeta.types import Array


class Identity(nn.Module):
    """``x [n, ...] -> x [n, features]`` (flattened), no parameters.

    The model of learners that consume fixed embeddings (LEO on the paper's WRN-28-10
    features, or on features exported from a trained run, ``jaxmeta export-features``).
    """

    @nn.compact
    def __call__(self, x: Array, *, stats_rows: int | None = None) -> Array:
        del stats_rows  # no batch statistics
        return x.reshape(x.shape[0], -1)
