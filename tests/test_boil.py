"""BOIL (jaxmeta.algorithms.boil): the inner loop adapts the body only, checked against a
hand-written loop in float64, and the paper config against the reference code's flags."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jit_run_once
from jax import enable_x64

import jaxmeta
from jaxmeta.algorithms.boil import body_mask
from jaxmeta.losses import cross_entropy_loss
from jaxmeta.models.conv4 import Conv4
from jaxmeta.types import Episode

REPO = Path(__file__).resolve().parents[1]
HEAD = "Dense_2"  # the MLP's last Dense layer: what head="auto" resolves to
LR, STEPS, TASKS, WAYS = 0.5, 2, 3, 3


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree)])


def _setup():
    """A float64 MLP with random non-zero biases and 3 tasks of 3-way 2-shot episodes (made
    by one program: op by op, each float64 op compiles on its own)."""
    model = jaxmeta.MLP(hidden=(6, 5), out=WAYS, dtype=jnp.float64)

    def make():
        params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.float64))
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        noisy = [
            w + 0.1 * jax.random.normal(k, w.shape, w.dtype)
            for w, k in zip(leaves, keys, strict=True)
        ]
        kx, kq = jax.random.split(jax.random.key(2))
        labels = jnp.tile(jnp.arange(WAYS, dtype=jnp.int32), (TASKS, 2))
        eps = Episode(
            support_x=jax.random.normal(kx, (TASKS, 2 * WAYS, 4), jnp.float64),
            support_y=labels,
            query_x=jax.random.normal(kq, (TASKS, 2 * WAYS, 4), jnp.float64),
            query_y=labels[:, ::-1],
        )
        return jax.tree_util.tree_unflatten(treedef, noisy), eps

    return (model, *jit_run_once(make)())


def _reference_task_loss(model, params, ep, *, first_order):
    """The reference's loop (jhoon-oh/BOIL main.py): SGD on every parameter but the
    classifier's (step size 0), F.cross_entropy (a mean), then the query loss."""
    head = params["params"][HEAD]
    body = {k: v for k, v in params["params"].items() if k != HEAD}

    def loss(b, x, y):
        return cross_entropy_loss(model.apply({"params": {**b, HEAD: head}}, x), y)

    for _ in range(STEPS):
        g = jax.grad(loss)(body, ep.support_x, ep.support_y)
        if first_order:
            g = jax.lax.stop_gradient(g)
        body = jax.tree_util.tree_map(lambda w, gi: w - LR * gi, body, g)
    return loss(body, ep.query_x, ep.query_y)


@pytest.mark.parametrize("first_order", [False, True])
def test_boil_adapts_only_the_body_and_equals_the_reference_loop(first_order):
    with enable_x64():
        model, params, eps = _setup()
        learner = jaxmeta.boil(model.apply, inner_lr=LR, inner_steps=STEPS, first_order=first_order)
        adapted = jit_run_once(learner.adapt)(params, eps.support_x[0], eps.support_y[0])
        for name in params["params"]:
            same = np.array_equal(_flat(adapted["params"][name]), _flat(params["params"][name]))
            assert same == (name == HEAD), name

        @jax.jit
        def reference(p, shift=0.0):  # shift: every parameter moved by it (finite differences)
            p = jax.tree_util.tree_map(lambda w: w + shift, p)
            tasks = [jax.tree_util.tree_map(lambda a, t=t: a[t], eps) for t in range(TASKS)]
            losses = [_reference_task_loss(model, p, ep, first_order=first_order) for ep in tasks]
            return jnp.mean(jnp.stack(losses))

        want = jit_run_once(jax.grad(reference))(params)
        got, metrics = jit_run_once(learner.meta_grad)(params, eps, jax.random.key(0))
        np.testing.assert_allclose(_flat(got), _flat(want), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(float(metrics["loss"]), float(reference(params)), rtol=1e-10)
        # The frozen head is still meta-learned: it gets an outer gradient.
        assert np.linalg.norm(_flat(got["params"][HEAD])) > 1e-4
        if not first_order:  # and the second-order gradient is the derivative of the loss
            h = 1e-5  # along the all-ones direction
            fd = (float(reference(params, h)) - float(reference(params, -h))) / (2 * h)
            np.testing.assert_allclose(_flat(got).sum(), fd, rtol=1e-6)
        else:  # and BOIL is neither MAML nor ANIL (first order: cheaper to compile)
            _differs_from_maml_and_anil(model, params, eps, got)


def _differs_from_maml_and_anil(model, params, eps, boil_grad):
    for other in (jaxmeta.maml, jaxmeta.anil):
        meta_grad = other(model.apply, inner_lr=LR, inner_steps=STEPS, first_order=True).meta_grad
        g, _ = jit_run_once(meta_grad)(params, eps, jax.random.key(0))
        assert not np.allclose(_flat(g), _flat(boil_grad))


def test_the_paper_config_follows_the_reference_code():
    """configs/miniimagenet/boil_5w1s.yaml against jhoon-oh/BOIL's main.py flags with
    run_4conv.sh's --classifier-step-size 0."""
    cfg = jaxmeta.train.load_config(REPO / "configs" / "miniimagenet" / "boil_5w1s.yaml")
    assert cfg.algorithm.name == "boil"
    assert cfg.algorithm.kwargs == {"inner_lr": 0.5, "inner_steps": 1, "eval_inner_steps": 1}
    assert (cfg.model.name, cfg.model.kwargs["filters"], cfg.model.kwargs["head"]) == (
        "conv4",
        64,
        "flatten",
    )
    assert (cfg.data.ways, cfg.data.shots, cfg.data.queries, cfg.data.image_size) == (5, 1, 15, 84)
    assert (cfg.train.steps, cfg.train.meta_batch_size, cfg.train.eval_every) == (30000, 4, 100)
    assert (cfg.optimizer.name, cfg.optimizer.kwargs["learning_rate"]) == ("adam", 0.001)
    assert (cfg.eval.episodes, cfg.eval.val_episodes, cfg.eval.queries) == (10000, 100, 15)
    five = jaxmeta.train.load_config(REPO / "configs" / "miniimagenet" / "boil_5w5s.yaml")
    assert five.data.shots == 5 and five.algorithm.kwargs == cfg.algorithm.kwargs
    # What the inner loop adapts on that Conv-4: every convolution and BatchNorm parameter
    # (the reference's extractor step size applies to all of them), never the head.
    model = Conv4(num_classes=5, filters=4, pool=True, head="flatten")
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 84, 84, 3)))
    mask = body_mask(params)
    for name, leaves in mask["params"].items():
        assert set(jax.tree_util.tree_leaves(leaves)) == {name != "head"}, name
