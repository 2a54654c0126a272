"""BatchNorm modes: transductive (batch statistics, how everything trains) and inductive
(queries normalised with the support set's statistics).

The learners' ``predict(bn_mode=...)`` (one query alone = the same query in a batch, for every
algorithm; single-image collapse in the transductive mode) is tested through ``jaxmeta.load``
in tests/test_inference.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta.models.layers import batch_stat_norm


def test_batch_stat_norm_stats_rows():
    x = jax.random.normal(jax.random.key(0), (7, 3, 3, 4)) * 3.0 + 1.0
    scale, bias = jnp.full((4,), 2.0), jnp.full((4,), 0.5)
    full = batch_stat_norm(x, scale, bias)
    np.testing.assert_array_equal(batch_stat_norm(x, scale, bias, stats_rows=7), full)
    part = batch_stat_norm(x, scale, bias, stats_rows=3)
    np.testing.assert_allclose(part[:3], batch_stat_norm(x[:3], scale, bias), rtol=1e-5, atol=1e-5)
    mean = x[:3].mean(axis=(0, 1, 2), keepdims=True)
    var = x[:3].var(axis=(0, 1, 2), keepdims=True)
    np.testing.assert_allclose(
        part[3:], (x[3:] - mean) / jnp.sqrt(var + 1e-5) * 2.0 + 0.5, rtol=1e-4, atol=1e-4
    )
    # A query's output does not depend on the other queries: one alone gives the same.
    one = batch_stat_norm(jnp.concatenate([x[:3], x[5:6]]), scale, bias, stats_rows=3)
    np.testing.assert_allclose(one[3], part[5], rtol=1e-6, atol=1e-6)
