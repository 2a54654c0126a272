"""Correctness of the functional MAML core: meta-gradients, equivalences, errors, no retrace."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import jit_run_once
from jax import enable_x64

import jaxmeta
from jaxmeta import Episode, fomaml, maml
from jaxmeta.data.sinusoid import sample_sinusoid_tasks
from jaxmeta.losses import cross_entropy_loss, mse_loss
from jaxmeta.models.mlp import MLP


def _flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def _classification_tasks(key, *, tasks=3, ways=3, shots=2, queries=2, dim=4, dtype=jnp.float32):
    kx, kq, ky = jax.random.split(key, 3)
    sy = jnp.tile(jnp.arange(ways, dtype=jnp.int32), (tasks, shots))
    qy = jnp.tile(jnp.arange(ways, dtype=jnp.int32), (tasks, queries))
    sx = jax.random.normal(kx, (tasks, ways * shots, dim), dtype)
    qx = jax.random.normal(kq, (tasks, ways * queries, dim), dtype)
    return Episode(sx, sy, qx, qy)


def _mlp(out, dtype=jnp.float32, hidden=(6, 5), in_dim=4):
    """A small MLP with random (non-zero) biases.

    Flax initialises biases to exactly 0, which puts every dead-input unit exactly on a
    ReLU kink; there the inner gradient (hence the adapted weights and the outer loss)
    jumps, and finite differences measure the jump. Random biases avoid the kinks.
    """
    model = MLP(hidden=hidden, out=out, dtype=dtype)
    params = model.init(jax.random.key(0), jnp.zeros((1, in_dim), dtype))
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(99), len(leaves))
    leaves = [
        w + 0.1 * jax.random.normal(k, w.shape, w.dtype) for w, k in zip(leaves, keys, strict=True)
    ]
    return model, jax.tree_util.tree_unflatten(treedef, leaves)


def _fd_meta_grad(loss, params, eps):
    """Central finite differences of ``loss`` at ``params`` (every coordinate)."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    loss_flat = jit_run_once(lambda f: loss(unravel(f)))
    g = np.zeros(flat.shape, np.float64)
    for i in range(flat.shape[0]):
        e = jnp.zeros_like(flat).at[i].set(eps)
        g[i] = (float(loss_flat(flat + e)) - float(loss_flat(flat - e))) / (2 * eps)
    return g


@pytest.mark.parametrize("inner_steps", [1, 3])
def test_second_order_meta_grad_matches_finite_differences_float64(inner_steps):
    import jax.flatten_util  # noqa: F401

    with enable_x64():
        model, params = _mlp(out=3, dtype=jnp.float64)
        eps_ = _classification_tasks(jax.random.key(1), dtype=jnp.float64)
        learner = maml(model.apply, inner_lr=0.5, inner_steps=inner_steps)
        grads, _ = jit_run_once(learner.meta_grad)(params, eps_, jax.random.key(0))

        def mean_outer(p):
            losses = [
                learner.outer_loss(p, jax.tree_util.tree_map(lambda x, t=t: x[t], eps_))[0]
                for t in range(eps_.support_x.shape[0])
            ]
            return sum(losses) / len(losses)

        fd = _fd_meta_grad(mean_outer, params, eps=1e-6)
        g = np.asarray(_flat(grads))
        rel = np.linalg.norm(g - fd) / np.linalg.norm(fd)
        assert rel < 1e-6, rel
        # The check has teeth: the first-order gradient is measurably different.
        fo, _ = jit_run_once(fomaml(model.apply, inner_lr=0.5, inner_steps=inner_steps).meta_grad)(
            params, eps_, jax.random.key(0)
        )
        assert np.linalg.norm(np.asarray(_flat(fo)) - fd) / np.linalg.norm(fd) > 1e-3


def test_first_order_equals_second_order_with_stopped_inner_gradients():
    model, params = _mlp(out=3)
    eps_ = _classification_tasks(jax.random.key(2))
    lr, steps = 0.3, 2

    def reference_task_loss(p, ep):
        q = p
        for _ in range(steps):
            g = jax.lax.stop_gradient(
                jax.grad(lambda w: cross_entropy_loss(model.apply(w, ep.support_x), ep.support_y))(
                    q
                )
            )
            q = jax.tree_util.tree_map(lambda w, gi: w - lr * gi, q, g)
        return cross_entropy_loss(model.apply(q, ep.query_x), ep.query_y)

    ref = jit_run_once(
        jax.grad(lambda p: jnp.mean(jax.vmap(lambda ep: reference_task_loss(p, ep))(eps_)))
    )(params)
    fo, _ = jit_run_once(fomaml(model.apply, inner_lr=lr, inner_steps=steps).meta_grad)(
        params, eps_, jax.random.key(0)
    )
    so, _ = jit_run_once(maml(model.apply, inner_lr=lr, inner_steps=steps).meta_grad)(
        params, eps_, jax.random.key(0)
    )
    np.testing.assert_allclose(_flat(fo), _flat(ref), rtol=1e-5, atol=1e-6)
    assert float(jnp.linalg.norm(_flat(so) - _flat(fo))) > 1e-4 * float(jnp.linalg.norm(_flat(so)))


def test_zero_inner_steps_is_plain_query_gradient():
    model, params = _mlp(out=3)
    eps_ = _classification_tasks(jax.random.key(3))
    plain = jit_run_once(  # one program (eager, each op would compile on its own)
        jax.grad(
            lambda p: jnp.mean(
                jax.vmap(lambda x, y: cross_entropy_loss(model.apply(p, x), y))(
                    eps_.query_x, eps_.query_y
                )
            )
        )
    )(params)
    for first_order in (False, True):
        learner = maml(model.apply, inner_lr=0.4, inner_steps=0, first_order=first_order)
        g, _ = jit_run_once(learner.meta_grad)(params, eps_, jax.random.key(0))
        np.testing.assert_allclose(_flat(g), _flat(plain), rtol=1e-5, atol=1e-7)


def test_inner_loop_scan_equals_python_loop():
    model, params = _mlp(out=1, in_dim=1)
    ep = jax.tree_util.tree_map(
        lambda x: x[0], sample_sinusoid_tasks(jax.random.key(4), tasks=1, shots=10, queries=10)
    )
    learner = maml(model.apply, inner_lr=0.01, inner_steps=4, loss_fn=mse_loss)
    # eval_inner_steps and the steps override change how far predict adapts.
    p10 = maml(model.apply, inner_lr=0.01, inner_steps=1, loss_fn=mse_loss, eval_inner_steps=4)

    @jit_run_once  # one program (eager, each op would compile on its own)
    def outputs(params, ep):
        ref = params
        for _ in range(4):
            g = jax.grad(lambda w: mse_loss(model.apply(w, ep.support_x), ep.support_y))(ref)
            ref = jax.tree_util.tree_map(lambda w, gi: w - 0.01 * gi, ref, g)
        return (
            learner.adapt(params, ep.support_x, ep.support_y),
            ref,
            p10.predict(params, ep.support_x, ep.support_y, ep.query_x),
            model.apply(ref, ep.query_x),
            p10.predict(params, ep.support_x, ep.support_y, ep.query_x, steps=0),
            model.apply(params, ep.query_x),
        )

    adapted, ref, predicted, want, unadapted, at_init = outputs(params, ep)
    np.testing.assert_allclose(_flat(adapted), _flat(ref), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predicted, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(unadapted, at_init, rtol=1e-6)


@pytest.mark.parametrize("task_chunk", [None, 1, 2])
def test_vmap_over_tasks_equals_python_loop(task_chunk):
    model, params = _mlp(out=3)
    eps_ = _classification_tasks(jax.random.key(5), tasks=5)
    learner = maml(model.apply, inner_lr=0.4, inner_steps=2)
    meta_grad = functools.partial(learner.meta_grad, task_chunk=task_chunk)
    grads, metrics = jit_run_once(meta_grad)(params, eps_, jax.random.key(0))
    task_grad = jit_run_once(jax.grad(learner.outer_loss, has_aux=True))
    per_task = [
        task_grad(params, jax.tree_util.tree_map(lambda x, t=t: x[t], eps_)) for t in range(5)
    ]
    ref = jax.tree_util.tree_map(lambda *g: sum(g) / 5, *[g for g, _ in per_task])
    np.testing.assert_allclose(_flat(grads), _flat(ref), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        metrics["loss"], np.mean([m["loss"] for _, m in per_task]), rtol=1e-6
    )
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_meta_step_compiles_once_and_learns():
    traces = []
    model = MLP(hidden=(40, 40), out=1)

    def apply_fn(p, x):
        traces.append(1)  # runs only while tracing
        return model.apply(p, x)

    learner = maml(apply_fn, inner_lr=0.01, inner_steps=1, loss_fn=mse_loss)
    opt = optax.adam(1e-2)
    state = jaxmeta.init_meta_train_state(
        learner, opt, model.init(jax.random.key(0), jnp.zeros((1, 1)))
    )
    step = jaxmeta.make_meta_step(learner, opt)
    keys = jax.random.split(jax.random.key(1), 60)
    losses = []
    for i, k in enumerate(keys):
        state, m = step(state, sample_sinusoid_tasks(k, tasks=8, shots=10, queries=10), k)
        losses.append(float(m["loss"]))
        if i == 0:
            n_after_first = len(traces)
    assert len(traces) == n_after_first > 0  # no retrace after the first call
    assert step._cache_size() == 1
    assert int(state.step) == 60 and state.step.dtype == jnp.int32
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_bad_input_errors():
    model, params = _mlp(out=3)
    eps_ = _classification_tasks(jax.random.key(6))
    learner = maml(model.apply, inner_lr=0.4, inner_steps=1)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="same input space"):
        learner.meta_grad(params, eps_._replace(query_x=eps_.query_x[..., :3]), key)
    with pytest.raises(ValueError, match="exactly one target"):
        learner.meta_grad(params, eps_._replace(support_y=eps_.support_y[:, :-1]), key)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        learner.meta_grad(params, eps_._replace(query_y=eps_.query_y.at[0, 0].set(3)), key)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        learner.meta_grad(params, eps_._replace(support_y=eps_.support_y.at[1, 0].set(-1)), key)
    with pytest.raises(ValueError, match="leading axes"):
        learner.meta_grad(params, jax.tree_util.tree_map(lambda x: x[0, 0], eps_), key)
    # Under jit the label values are unknown at trace time: the loss turns NaN, never wrong.
    grads, m = jit_run_once(learner.meta_grad)(
        params, eps_._replace(query_y=eps_.query_y.at[0, 0].set(7)), key
    )
    assert np.isnan(float(m["loss"]))
    for bad in (-1, -5):
        with pytest.raises(ValueError, match="inner_steps must be >= 0"):
            maml(model.apply, inner_lr=0.4, inner_steps=bad)
    with pytest.raises(TypeError, match="inner_steps must be an integer"):
        maml(model.apply, inner_lr=0.4, inner_steps=1.5)
    with pytest.raises(ValueError, match="inner_lr must be a positive"):
        maml(model.apply, inner_lr=0.0, inner_steps=1)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        learner.adapt(params, eps_.support_x[0], eps_.support_y[0], -1)


def test_sinusoid_tasks_follow_the_paper_ranges_and_are_deterministic():
    ep = sample_sinusoid_tasks(jax.random.key(0), tasks=200, shots=5, queries=7)
    assert ep.support_x.shape == (200, 5, 1) and ep.query_y.shape == (200, 7, 1)
    x = jnp.concatenate([ep.support_x, ep.query_x], axis=1)
    y = jnp.concatenate([ep.support_y, ep.query_y], axis=1)
    assert float(x.min()) >= -5.0 and float(x.max()) <= 5.0
    assert float(jnp.abs(y).max()) <= 5.0
    assert float(jnp.abs(y).max()) > 4.0  # amplitudes reach close to 5
    again = sample_sinusoid_tasks(jax.random.key(0), tasks=200, shots=5, queries=7)
    np.testing.assert_array_equal(ep.support_x, again.support_x)
    other = sample_sinusoid_tasks(jax.random.key(1), tasks=200, shots=5, queries=7)
    assert not np.allclose(ep.support_x, other.support_x)


@pytest.mark.slow
def test_sinusoid_maml_beats_pretrained_baseline():
    """MAML paper, Section 5.1: one step from the MAML init fits far better than before
    adaptation and than a jointly pretrained network fine-tuned with the same step."""
    from jaxmeta.experiments import sinusoid_maml_vs_pretrained

    rows = {
        (r["model"], r["adapt_steps"]): r["mse"]
        for r in sinusoid_maml_vs_pretrained(shots=10, steps=2000, eval_steps=(0, 1))
    }
    assert rows[("maml", 1)] < 0.6 * rows[("maml", 0)]
    assert rows[("maml", 1)] < 0.6 * rows[("pretrained", 1)]


def test_auto_task_chunk_per_backend():
    from jaxmeta.execution import check_task_chunk, resolve_task_chunk

    # One CPU device: one task at a time (measured faster); GPU: all tasks vmapped.
    assert resolve_task_chunk("auto", backend="gpu") is None
    expected_cpu = 1 if jax.device_count() == 1 else None  # several devices: keep it shardable
    assert resolve_task_chunk("auto", backend="cpu") == expected_cpu
    assert resolve_task_chunk(None, backend="cpu") is None
    assert resolve_task_chunk(4, backend="gpu") == 4
    assert check_task_chunk("auto") == "auto"
    with pytest.raises(ValueError, match="'auto', null or an integer"):
        jaxmeta.make_meta_step(
            maml(lambda p, x: x, inner_lr=0.1, inner_steps=1), None, task_chunk="vmap"
        )
    with pytest.raises(ValueError, match=">= 1"):
        check_task_chunk(0)


def test_auto_task_chunk_equals_explicit_choices():
    """The default ("auto") computes the same meta-gradient as vmapping all tasks."""
    model = MLP(hidden=(8,), out=1)
    eps = sample_sinusoid_tasks(jax.random.key(0), tasks=4, shots=5, queries=5)
    params = model.init(jax.random.key(1), eps.support_x[0])
    learner = maml(model.apply, inner_lr=0.01, inner_steps=2, loss_fn=mse_loss)
    grads = {}
    for tbs in ("auto", None, 1):
        meta_grad = functools.partial(learner.meta_grad, task_chunk=tbs)
        grads[tbs] = jit_run_once(meta_grad)(params, eps, jax.random.key(2))[0]
    for tbs in (None, 1):
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
            grads["auto"],
            grads[tbs],
        )


@pytest.mark.parametrize(
    "factory",
    [
        functools.partial(maml, inner_lr=0.1, inner_steps=1),
        functools.partial(jaxmeta.reptile, inner_lr=0.1, inner_steps=1),
        jaxmeta.protonets,
    ],
)
def test_a_flax_module_instead_of_apply_gets_a_hint(factory):
    with pytest.raises(TypeError, match=r"is a Flax module \(MLP\); pass its apply method"):
        factory(MLP(hidden=(4,), out=3))


def test_predict_given_a_batch_of_tasks_says_so():
    model = MLP(hidden=(4,), out=3)
    learner = maml(model.apply, inner_lr=0.1, inner_steps=1)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)))
    sx, sy = jnp.zeros((4, 3, 2)), jnp.zeros((4, 3), jnp.int32)
    for qx in (jnp.zeros((4, 6, 2)), jnp.zeros((4, 3, 2))):  # more queries, or as many
        with pytest.raises(ValueError, match="look like a batch of 4 tasks: predict takes one"):
            learner.predict(params, sx, sy, qx)
    # One task passes the check (the check alone: no compilation).
    from jaxmeta.validation import check_task

    check_task(sx[0], sy[0], qx[0])
