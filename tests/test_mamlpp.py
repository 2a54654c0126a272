"""MAML++ (jaxmeta.mamlpp): each switch against a reference, the running statistics through a
checkpoint, derivative-order annealing inside one compiled step."""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import enable_x64

import jaxmeta
from jaxmeta.algorithms import mamlpp as mamlpp_module
from jaxmeta.algorithms.maml import maml
from jaxmeta.algorithms.mamlpp import mamlpp, msl_weights
from jaxmeta.models.conv4 import Conv4
from jaxmeta.models.layers import batch_moments, conv3x3
from jaxmeta.models.mlp import MLP
from jaxmeta.train.checkpoint import Checkpoints
from jaxmeta.types import Episode

OFF = dict(multi_step_loss=False, per_step_bn=False, per_step_bn_stats=False, lslr=False)
WAYS, TASKS = 5, 2


def _conv4(dtype=jnp.float32):
    model = Conv4(num_classes=WAYS, filters=4, conv_impl="xla", head="mean", dtype=dtype)
    return model, model.init(jax.random.key(0), jnp.zeros((2, 12, 12, 1), dtype))


def _mlp(dtype=jnp.float32):
    # Conv-4 compiles slowly on a loaded CPU; the switches that need BatchNorm use it,
    # the others use this MLP (the code path without BatchNorm leaves is the same).
    model = MLP(hidden=(6,), out=WAYS, dtype=dtype)
    return model, model.init(jax.random.key(0), jnp.zeros((1, 3), dtype))


def _episodes(key, *, dtype=jnp.float32, x_shape=(3,), tasks=TASKS, queries=2):
    k1, k2 = jax.random.split(key)
    y = jnp.tile(jnp.arange(WAYS, dtype=jnp.int32), (tasks, 1))
    return Episode(
        support_x=jax.random.uniform(k1, (tasks, WAYS, *x_shape), dtype),
        support_y=y,
        query_x=jax.random.uniform(k2, (tasks, WAYS * queries, *x_shape), dtype),
        query_y=jnp.repeat(y, queries, axis=1),
    )


def test_every_switch_off_is_maml_exactly():
    model, params = _mlp()
    eps = _episodes(jax.random.key(1))
    pp = mamlpp(model.apply, inner_lr=0.4, inner_steps=2, **OFF)
    ref = maml(model.apply, inner_lr=0.4, inner_steps=2)
    meta = pp.init(jax.random.key(0), params)
    assert set(meta) == {"params"} and pp.init_state is None
    g_pp, m_pp = jax.jit(pp.meta_grad)(meta, eps, jax.random.key(2))
    g_ref, m_ref = jax.jit(ref.meta_grad)(params, eps, jax.random.key(2))
    jax.tree_util.tree_map(np.testing.assert_array_equal, g_pp["params"], g_ref)
    for k, v in m_ref.items():
        np.testing.assert_array_equal(m_pp[k], v)

    opt = optax.adam(1e-2)
    s_pp = jaxmeta.init_meta_train_state(pp, opt, params)
    s_ref = jaxmeta.init_meta_train_state(ref, opt, params)
    step_pp, step_ref = jaxmeta.make_meta_step(pp, opt), jaxmeta.make_meta_step(ref, opt)
    for i in range(3):
        ep = _episodes(jax.random.key(10 + i))
        s_pp, _ = step_pp(s_pp, ep, jax.random.key(i))
        s_ref, _ = step_ref(s_ref, ep, jax.random.key(i))
    jax.tree_util.tree_map(np.testing.assert_array_equal, s_pp.params["params"], s_ref.params)


def test_multi_step_loss_weights_by_hand():
    # 5 steps, annealed over 10 epochs of 500 meta-steps (the reference's Omniglot settings):
    # non-final weights 1/5 - e/50 (floor 0.006), final 1/5 + 4e/50 (cap 0.976).
    kw = dict(steps=5, msl_epochs=10, steps_per_epoch=500)
    np.testing.assert_allclose(msl_weights(0, **kw), [0.2] * 5, rtol=1e-6)
    np.testing.assert_allclose(msl_weights(1499, **kw), [0.16] * 4 + [0.36], rtol=1e-6)
    np.testing.assert_allclose(msl_weights(4999, **kw), [0.02] * 4 + [0.92], rtol=1e-5)
    np.testing.assert_allclose(msl_weights(5000, **kw), [0, 0, 0, 0, 1])
    np.testing.assert_allclose(msl_weights(7, steps=1, msl_epochs=1, steps_per_epoch=1), [1.0])


def test_lslr_meta_gradient_matches_finite_differences_float64():
    with enable_x64():
        model, params = _mlp(jnp.float64)
        eps = _episodes(jax.random.key(1), dtype=jnp.float64)
        learner = mamlpp(
            model.apply,
            inner_lr=0.3,
            inner_steps=2,
            multi_step_loss=True,
            msl_epochs=3,
            steps_per_epoch=1,
            per_step_bn=False,
            per_step_bn_stats=False,
            lslr=True,
        )
        meta = learner.init(jax.random.key(0), params)
        # Distinct rates per step and layer, so a mixed-up index would show.
        meta["lr"] = jax.tree_util.tree_map(
            lambda a: a * jnp.array([1.0, 0.6], jnp.float64), meta["lr"]
        )
        step = jnp.int32(1)
        grads, _ = jax.jit(lambda m: learner.meta_grad(m, eps, jax.random.key(0), step=step))(meta)

        def objective(lr):
            m = {**meta, "lr": lr}
            one = lambda ep: learner.outer_loss(m, ep, step=step)[0]
            return jnp.mean(jax.vmap(one)(eps))

        flat, unravel = jax.flatten_util.ravel_pytree(meta["lr"])
        f = jax.jit(lambda v: objective(unravel(v)))
        h = 1e-6
        fd = np.array(
            [
                (float(f(flat.at[i].add(h))) - float(f(flat.at[i].add(-h)))) / (2 * h)
                for i in range(flat.shape[0])
            ]
        )
        got = np.asarray(jax.flatten_util.ravel_pytree(grads["lr"])[0])
        assert np.abs(got).max() > 1e-3
        np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_per_step_bn_statistics_threaded_and_restored_from_a_checkpoint(tmp_path):
    model, params = _conv4()
    learner = mamlpp(model.apply, inner_lr=0.4, inner_steps=2, bn_momentum=0.1)
    opt = optax.adam(1e-3)
    state = jaxmeta.init_meta_train_state(learner, opt, params)
    shapes = jax.tree_util.tree_map(jnp.shape, state.learner_state)
    assert shapes["mean"]["bn0"] == (2, 4) and shapes["var"]["bn3"] == (2, 4)
    # per-step BatchNorm copies: [inner_steps, C]
    assert state.params["params"]["params"]["bn0_scale"].shape == (2, 4)
    step = jaxmeta.make_meta_step(learner, opt)
    eps = _episodes(jax.random.key(3), x_shape=(12, 12, 1))
    new, _ = step(state, eps, jax.random.key(4))

    # By hand: inner step 0 normalises the first conv output of theta on each support set;
    # the running mean of step 0 becomes 0.9 * 0 + 0.1 * (mean over tasks of those means).
    kernel = params["params"]["conv0"]
    moments = [
        batch_moments(conv3x3(eps.support_x[t], kernel, stride=2, impl="xla")) for t in range(TASKS)
    ]
    want_mean = 0.1 * np.mean([m[0] for m in moments], axis=0)
    want_var = 0.9 + 0.1 * np.mean([m[1] for m in moments], axis=0)
    got = new.learner_state["mean"]["bn0"][0]
    np.testing.assert_allclose(got, want_mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(new.learner_state["var"]["bn0"][0], want_var, rtol=1e-5)
    # step 1 ran on adapted parameters: different statistics, also updated
    assert not np.allclose(new.learner_state["mean"]["bn1"][1], 0.0)

    ckpt = Checkpoints(tmp_path)
    ckpt.save(1, new, meta={"step": 1})
    restored, _ = ckpt.restore(jax.tree_util.tree_map(jnp.zeros_like, new))
    # the whole state, learner state included, comes back bit for bit
    assert restored.learner_state is not None
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, new)
    # and keeps being threaded: a second step moves it again
    newer, _ = step(new, eps, jax.random.key(5))
    assert not np.allclose(newer.learner_state["mean"]["bn0"], new.learner_state["mean"]["bn0"])
    assert step._cache_size() == 1


def test_derivative_order_annealing_switches_at_its_step_without_recompiling():
    model, params = _mlp()
    eps = _episodes(jax.random.key(6))
    kw = dict(inner_lr=0.4, inner_steps=2, steps_per_epoch=2, per_step_bn=False)
    kw.update(per_step_bn_stats=False)
    annealed = mamlpp(model.apply, first_order_epochs=3, **kw)  # first order for steps 0..5
    first = mamlpp(model.apply, first_order=True, **kw)
    second = mamlpp(model.apply, **kw)
    meta = annealed.init(jax.random.key(0), params)
    traces = []

    def grad_at(m, step):
        traces.append(1)
        return annealed.meta_grad(m, eps, jax.random.key(0), step=step)

    fn = jax.jit(grad_at)
    ref = {
        name: jax.jit(lambda m, step, r=r: r.meta_grad(m, eps, jax.random.key(0), step=step)[0])
        for name, r in (("first", first), ("second", second))
    }
    for step, name in ((5, "first"), (6, "second")):
        got, metrics = fn(meta, jnp.int32(step))
        want = ref[name](meta, jnp.int32(step))
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want
        )
        assert float(metrics["second_order"]) == (step >= 6)
    # the two orders really differ here, so the comparison above can fail
    g1, g2 = ref["first"](meta, jnp.int32(6)), ref["second"](meta, jnp.int32(6))
    diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), g1, g2)
    assert max(jax.tree_util.tree_leaves(diff)) > 1e-4
    assert len(traces) == 1 and fn._cache_size() == 1


def test_bad_options_are_one_line_errors():
    mlp = MLP(hidden=(4,), out=WAYS)
    params = mlp.init(jax.random.key(0), jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match="per_step_bn: no parameter matches"):
        mamlpp(mlp.apply, per_step_bn_stats=False).init(jax.random.key(0), params)
    with pytest.raises(ValueError, match="inner_steps must be >= 1"):
        mamlpp(mlp.apply, inner_steps=0)
    with pytest.raises(ValueError, match="bn_momentum"):
        mamlpp(mlp.apply, bn_momentum=2.0)


def test_the_parts_per_step_copies_and_running_statistics():
    """The module-level parts on plain arrays: ``init_meta`` gives the BatchNorm leaves one copy
    per inner step and LSLR one rate per step, ``model_at`` picks copy ``s`` (the last one past
    the training steps), ``update_running_stats`` is the momentum update, per step."""
    m = mamlpp_module
    opts = m._options(
        inner_lr=0.3, inner_steps=2, eval_inner_steps=None, loss_fn=None, multi_step_loss=True,
        msl_epochs=1, steps_per_epoch=1, first_order=False, first_order_epochs=0,
        per_step_bn=True, per_step_bn_stats=True, bn_momentum=0.25,
        bn_params=m.DEFAULT_BN_PARAMS, lslr=True, remat=False,
    )  # fmt: skip
    params = {
        "params": {
            "conv0_kernel": np.ones((2, 3), np.float32),
            "bn0_scale": np.arange(3.0, dtype=np.float32),
        }
    }
    meta = m.init_meta(opts, None, params)
    theta = meta["params"]["params"]
    assert theta["conv0_kernel"].shape == (2, 3) and theta["bn0_scale"].shape == (2, 3)
    np.testing.assert_allclose(meta["lr"]["params"]["bn0_scale"], [0.3, 0.3], rtol=1e-6)
    mask = m.bn_mask(opts, meta["params"])
    assert mask == {"params": {"conv0_kernel": False, "bn0_scale": True}}
    copies = {"params": {**theta, "bn0_scale": jnp.stack([theta["bn0_scale"][0], -np.ones(3)])}}
    for s, want in ((0, np.arange(3.0)), (1, -np.ones(3)), (5, -np.ones(3))):
        got = m.model_at(opts, copies, mask, s)["params"]
        np.testing.assert_array_equal(got["bn0_scale"], want)
        np.testing.assert_array_equal(got["conv0_kernel"], np.ones((2, 3)))
    running = m.init_running_stats(opts, None, meta)
    assert {k: v["bn0"].shape for k, v in running.items()} == {"mean": (2, 3), "var": (2, 3)}
    moments = {"bn0": (np.full((2, 3), 4.0), np.full((2, 3), 8.0))}
    new = m.update_running_stats(opts, running, moments)
    np.testing.assert_allclose(new["mean"]["bn0"], 0.75 * 0.0 + 0.25 * 4.0)
    np.testing.assert_allclose(new["var"]["bn0"], 0.75 * 1.0 + 0.25 * 8.0)
    with pytest.raises(ValueError, match="reported batch statistics for"):
        m.update_running_stats(opts, running, {"bn7": moments["bn0"]})
