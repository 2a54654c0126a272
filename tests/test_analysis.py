"""jaxmeta.analysis.meta_gradient_gap against hand-computed closed forms (float64)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import enable_x64

from jaxmeta import Episode, fomaml, maml
from jaxmeta.algorithms.base import gradient_learner, identity_init
from jaxmeta.analysis import gap_by_name, gradient_gap, meta_gradient_gap
from jaxmeta.inner import sgd_adapt
from jaxmeta.losses import mse_loss


def _linear(p, x):
    return x @ p["w"] + p["b"][None, :]


def _tasks(key, *, tasks=3, n=6, dim=4):
    ks = jax.random.split(key, 5)
    sx = jax.random.normal(ks[0], (tasks, n, dim), jnp.float64)
    qx = jax.random.normal(ks[1], (tasks, n, dim), jnp.float64)
    sy = jax.random.normal(ks[2], (tasks, n, 1), jnp.float64)
    qy = jax.random.normal(ks[3], (tasks, n, 1), jnp.float64)
    params = {
        "w": jax.random.normal(ks[4], (dim, 1), jnp.float64),
        "b": jnp.full((1,), 0.3, jnp.float64),
    }
    return Episode(sx, sy, qx, qy), params


def _closed_form(episodes, params, lr, steps):
    """FO and SO meta-gradients of MSE on a linear model, by hand (numpy float64).

    With z = [x, 1], theta = [w; b], the support loss is quadratic with Hessian
    H = 2 Z^T Z / n; one SGD step is theta' = (I - lr H) theta + lr 2 Z^T y / n, so the
    Jacobian of the adapted parameters is (I - lr H)^steps and
    g_SO = (I - lr H)^steps g_FO, with g_FO = the query gradient at theta'.
    """
    theta0 = np.concatenate([np.asarray(params["w"])[:, 0], np.asarray(params["b"])])
    g_fo, g_so = [], []
    for t in range(episodes.support_x.shape[0]):
        zs = np.c_[np.asarray(episodes.support_x[t]), np.ones(episodes.support_x.shape[1])]
        zq = np.c_[np.asarray(episodes.query_x[t]), np.ones(episodes.query_x.shape[1])]
        ys, yq = np.asarray(episodes.support_y[t])[:, 0], np.asarray(episodes.query_y[t])[:, 0]
        h = 2 * zs.T @ zs / len(ys)
        theta = theta0.copy()
        for _ in range(steps):
            theta = theta - lr * 2 * zs.T @ (zs @ theta - ys) / len(ys)
        fo = 2 * zq.T @ (zq @ theta - yq) / len(yq)
        g_fo.append(fo)
        g_so.append(np.linalg.matrix_power(np.eye(len(theta0)) - lr * h, steps) @ fo)
    return np.mean(g_fo, 0), np.mean(g_so, 0)


@pytest.mark.parametrize("steps", [1, 3])
def test_gap_matches_closed_form_and_grows_with_inner_lr(steps):
    with enable_x64():
        episodes, params = _tasks(jax.random.key(0))
        rel = []
        for lr in (0.01, 0.03, 0.1):
            kw = dict(inner_lr=lr, inner_steps=steps, loss_fn=mse_loss)
            gap_fn = jax.jit(
                functools.partial(meta_gradient_gap, fomaml(_linear, **kw), maml(_linear, **kw)),
                static_argnames="task_chunk",
            )
            gap = gap_fn(params, episodes, jax.random.key(1), task_chunk=None)
            fo, so = _closed_form(episodes, params, lr, steps)
            cos = fo @ so / (np.linalg.norm(fo) * np.linalg.norm(so))
            np.testing.assert_allclose(gap.cosine, cos, rtol=1e-10)
            np.testing.assert_allclose(
                gap.rel_diff, np.linalg.norm(fo - so) / np.linalg.norm(so), rtol=1e-10
            )
            np.testing.assert_allclose(gap.norm_approx, np.linalg.norm(fo), rtol=1e-10)
            np.testing.assert_allclose(gap.norm_reference, np.linalg.norm(so), rtol=1e-10)
            # Per leaf: the w part and the b part of the same vectors.
            named = gap_by_name(gap)
            assert set(named) == {"w", "b"}
            np.testing.assert_allclose(
                named["w"]["rel_diff"],
                np.linalg.norm(fo[:-1] - so[:-1]) / np.linalg.norm(so[:-1]),
                rtol=1e-10,
            )
            np.testing.assert_allclose(named["b"]["cosine"], np.sign(fo[-1] * so[-1]), rtol=1e-10)
            rel.append(float(gap.rel_diff))
            assert gap.cosine < 1 - 1e-8
        assert rel[0] < rel[1] < rel[2], rel


def test_zero_inner_lr_gives_identical_gradients():
    """maml() refuses lr 0, so build both orders from the shared pieces with lr = 0."""
    with enable_x64():
        episodes, params = _tasks(jax.random.key(2))

        def learner(first_order):
            def adapt_fn(p, sx, sy, steps):
                loss = lambda q: mse_loss(_linear(q, sx), sy)
                return sgd_adapt(loss, p, lr=0.0, steps=steps, first_order=first_order)

            return gradient_learner(
                name="x", apply_fn=_linear, loss_fn=mse_loss, adapt_fn=adapt_fn,
                init=identity_init, inner_steps=2, eval_steps=2,
            )  # fmt: skip

        gap = meta_gradient_gap(learner(True), learner(False), params, episodes, jax.random.key(0))
        assert float(gap.cosine) == pytest.approx(1.0, abs=1e-12)
        assert float(gap.rel_diff) == pytest.approx(0.0, abs=1e-12)
        for v in gap_by_name(gap).values():
            assert v["cosine"] == pytest.approx(1.0, abs=1e-12) and v["rel_diff"] < 1e-12


def test_gradient_gap_zero_reference_and_orthogonal():
    a = {"x": jnp.array([1.0, 0.0]), "y": jnp.zeros(3)}
    b = {"x": jnp.array([0.0, 2.0]), "y": jnp.zeros(3)}
    gap = gradient_gap(a, b)
    assert float(gap.cosine) == 0.0
    assert float(gap.rel_diff) == pytest.approx(np.sqrt(5) / 2)
    named = gap_by_name(gap)
    assert named["y"] == {"cosine": 0.0, "rel_diff": 0.0}  # no NaN from a zero leaf
