"""BatchNorm modes: transductive (batch statistics, how everything trains) and inductive
(queries normalised with the support set's statistics)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmeta.algorithms.base import apply_support_query
from jaxmeta.models.conv4 import Conv4
from jaxmeta.models.layers import batch_stat_norm


def _task(n_s=5, n_q=6):
    sx = jax.random.uniform(jax.random.key(1), (n_s, 28, 28, 1))
    qx = jax.random.uniform(jax.random.key(2), (n_q, 28, 28, 1))
    return sx, jnp.arange(n_s, dtype=jnp.int32) % 5, qx


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


def _jitted(fn, **kwargs):
    return jax.jit(lambda *a: fn(*a, **kwargs))


def test_inductive_queries_are_independent_and_support_is_unchanged():
    # Every learner's predict(bn_mode=...) goes through this function (tests/test_inference.py
    # checks them all through jaxmeta.load).
    model = Conv4(num_classes=5, filters=8)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
    sx, _, qx = _task()
    trans = _jitted(functools.partial(apply_support_query, model.apply), bn_mode="transductive")
    ind = _jitted(functools.partial(apply_support_query, model.apply), bn_mode="inductive")
    s_t, q_t = trans(params, sx, qx)
    s_i, q_i = ind(params, sx, qx)
    np.testing.assert_allclose(s_i, s_t, rtol=1e-5, atol=1e-5)
    one = [ind(params, sx, qx[i : i + 1])[1][0] for i in range(3)]
    np.testing.assert_allclose(jnp.stack(one), q_i[:3], rtol=1e-5, atol=1e-5)
    # Transductively, one query alone is normalised with its own statistics: other outputs.
    alone = trans(params, sx, qx[:1])[1][0]
    assert not np.allclose(alone, q_t[0], atol=1e-3)
    with pytest.raises(ValueError, match="bn_mode must be one of"):
        apply_support_query(model.apply, params, sx, qx, bn_mode="running")
