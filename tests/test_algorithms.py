"""Algorithm family: each algorithm against a naive reference written independently here.

The shared contract test over every registered algorithm (no retrace, stable state,
learns Omniglot 5-way 1-shot) lives in ``tests/test_algorithm_contract.py``.
"""

from __future__ import annotations

import inspect

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import jit_run_once
from jax import enable_x64

from jaxmeta import Episode, anil, maml, matching, metasgd, protonets, reptile, snail
from jaxmeta.algorithms import ALGORITHMS
from jaxmeta.algorithms.protonets import ABSENT_LOGIT
from jaxmeta.algorithms.reptile import minibatch_indices
from jaxmeta.losses import cross_entropy_loss
from jaxmeta.models.mlp import MLP
from jaxmeta.models.snail import SNAIL, AttentionBlock, TCBlock


def _flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def _mlp(out, *, dtype=jnp.float32, hidden=(6,), in_dim=4, seed=0):
    """Small MLP with random non-zero biases (no ReLU kinks at exactly 0)."""
    model = MLP(hidden=hidden, out=out, dtype=dtype)
    params = model.init(jax.random.key(seed), jnp.zeros((1, in_dim), dtype))
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed + 99), len(leaves))
    leaves = [
        w + 0.1 * jax.random.normal(k, w.shape, w.dtype) for w, k in zip(leaves, keys, strict=True)
    ]
    return model, jax.tree_util.tree_unflatten(treedef, leaves)


def _tasks(key, *, tasks=2, ways=3, shots=2, queries=2, dim=4, dtype=jnp.float32, shuffle=True):
    """Random episodes; labels shuffled (not class-major) so no code can rely on the order."""
    kx, kq, kp = jax.random.split(key, 3)
    sy = jnp.tile(jnp.arange(ways, dtype=jnp.int32), (tasks, shots))
    qy = jnp.tile(jnp.arange(ways, dtype=jnp.int32), (tasks, queries))
    if shuffle:
        perm = jax.random.permutation(kp, ways * shots)
        sy = sy[:, perm]
    sx = jax.random.normal(kx, (tasks, ways * shots, dim), dtype)
    qx = jax.random.normal(kq, (tasks, ways * queries, dim), dtype)
    return Episode(sx, sy, qx, qy)


def _task(eps, t=0):
    return jax.tree_util.tree_map(lambda x: x[t], eps)


# ----------------------------------------------------------------------------------------
# Prototypical Networks


def _naive_proto_logits(emb_s, sy, emb_q, ways):
    emb_s, sy, emb_q = np.asarray(emb_s, np.float64), np.asarray(sy), np.asarray(emb_q, np.float64)
    out = np.zeros((emb_q.shape[0], ways))
    for c in range(ways):
        proto = emb_s[sy == c].mean(axis=0)
        for i, q in enumerate(emb_q):
            out[i, c] = -np.sum((q - proto) ** 2)
    return out


def test_protonets_logits_match_per_class_loop():
    model, params = _mlp(out=5)
    ep = _task(_tasks(jax.random.key(0), ways=4, shots=3, queries=2))
    ref = _naive_proto_logits(
        model.apply(params, ep.support_x), ep.support_y, model.apply(params, ep.query_x), 4
    )
    exact = jit_run_once(protonets(model.apply, ways=4).predict)(params, *ep[:3], None)
    np.testing.assert_allclose(exact, ref, rtol=1e-4, atol=1e-4)
    # Shape-derived slots: n_support columns, the absent ones at ABSENT_LOGIT.
    derived = jit_run_once(protonets(model.apply).predict)(params, *ep[:3], None)
    assert derived.shape == (8, 12)
    np.testing.assert_allclose(derived[:, :4], ref, rtol=1e-4, atol=1e-4)
    assert np.all(np.asarray(derived[:, 4:]) == ABSENT_LOGIT)
    ce_ref = cross_entropy_loss(jnp.asarray(ref, jnp.float32), ep.query_y)
    np.testing.assert_allclose(cross_entropy_loss(derived, ep.query_y), ce_ref, rtol=1e-5)


def test_protonets_trains_many_way_and_tests_few_way():
    """One learner: 6-way meta-gradient, then 3-way 1-shot and 2-shot predictions."""
    model, params = _mlp(out=5)
    learner = protonets(model.apply)
    grads, metrics = jit_run_once(learner.meta_grad)(
        params, _tasks(jax.random.key(1), ways=6, shots=2), jax.random.key(0)
    )
    assert np.isfinite(float(metrics["loss"])) and np.all(np.isfinite(_flat(grads)))
    for shots in (1, 2):
        ep = _task(_tasks(jax.random.key(2), ways=3, shots=shots, queries=2))
        logits = jit_run_once(learner.predict)(params, *ep[:3], None)
        ref = _naive_proto_logits(
            model.apply(params, ep.support_x), ep.support_y, model.apply(params, ep.query_x), 3
        )
        np.testing.assert_array_equal(np.argmax(logits, -1), np.argmax(ref, -1))


# ----------------------------------------------------------------------------------------
# Matching Networks


def test_matching_cosine_attention_matches_explicit_loops():
    model, params = _mlp(out=5)
    ep = _task(_tasks(jax.random.key(3), ways=3, shots=2, queries=2))
    zs = np.asarray(model.apply(params, ep.support_x), np.float64)
    zq = np.asarray(model.apply(params, ep.query_x), np.float64)
    sy = np.asarray(ep.support_y)
    ref = np.zeros((zq.shape[0], 3))
    for i, q in enumerate(zq):
        sims = np.array([q @ s / (np.linalg.norm(q) * np.linalg.norm(s)) for s in zs])
        att = np.exp(sims) / np.exp(sims).sum()
        for c in range(3):
            ref[i, c] = np.log(sum(att[j] for j in range(len(zs)) if sy[j] == c))
    logits = jit_run_once(matching(model.apply, ways=3).predict)(params, *ep[:3], None)
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.exp(ref).sum(-1), 1.0, rtol=1e-6)  # a distribution
    derived = jit_run_once(matching(model.apply).predict)(params, *ep[:3], None)
    np.testing.assert_allclose(derived[:, :3], ref, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(derived[:, 3:]) == ABSENT_LOGIT)


def test_matching_fce_uses_context_and_trains_its_lstms():
    model, params = _mlp(out=5)
    learner = matching(model.apply, fce=True, fce_steps=2, input_shape=(4,))
    init = jit_run_once(learner.init)
    meta = init(jax.random.key(0), params)
    assert set(meta) == {"embedding", "fce"}
    # Deterministic given the key; another key gives other LSTM weights.
    np.testing.assert_array_equal(_flat(init(jax.random.key(0), params)), _flat(meta))
    assert not np.allclose(_flat(init(jax.random.key(5), params)), _flat(meta))
    ep = _task(_tasks(jax.random.key(4), ways=3, shots=2, queries=2))
    logits = jit_run_once(learner.predict)(meta, *ep[:3], None)
    assert logits.shape == (6, 6) and np.all(np.isfinite(logits))
    plain = jit_run_once(matching(model.apply).predict)(params, *ep[:3], None)
    assert not np.allclose(logits, plain)
    # g is a *bidirectional* context embedding: changing the last support example changes
    # the prediction through every support embedding, including the first one.
    from jaxmeta.models.fce import FullContextEmbedding

    zs = model.apply(params, ep.support_x)
    zq = model.apply(params, ep.query_x)
    fce = FullContextEmbedding(features=5, steps=2)
    fce_apply = jit_run_once(fce.apply)
    g, _ = fce_apply(meta["fce"], zs, zq)
    g2, _ = fce_apply(meta["fce"], zs.at[-1].add(1.0), zq)
    assert not np.allclose(g[0], g2[0]) and not np.allclose(g[-1], g2[-1])
    grads, _ = jit_run_once(learner.meta_grad)(meta, _tasks(jax.random.key(6)), jax.random.key(0))
    assert float(jnp.linalg.norm(_flat(grads["fce"]))) > 0


# ----------------------------------------------------------------------------------------
# Reptile


def test_reptile_minibatches_cycle_through_epochs_without_replacement():
    idx = np.asarray(minibatch_indices(jax.random.key(0), 7, 3, 7))  # 21 = 3 epochs of 7
    assert idx.shape == (7, 3) and idx.dtype == np.int32
    for epoch in idx.reshape(3, 7):
        assert sorted(epoch.tolist()) == list(range(7))


def test_reptile_sgd_update_matches_python_loop():
    """Full-batch inner SGD (batch size = support size, so the order of a batch is irrelevant)."""
    model, params = _mlp(out=3)
    eps = _tasks(jax.random.key(7), tasks=3, ways=3, shots=2)
    lr, steps, eps_outer = 0.1, 4, 0.5
    learner = reptile(
        model.apply, inner_lr=lr, inner_steps=steps, inner_batch_size=6, inner_optimizer="sgd"
    )
    grads, metrics = jit_run_once(learner.meta_grad)(params, eps, jax.random.key(0))

    flat0, unravel = jax.flatten_util.ravel_pytree(params)
    support_grad = jit_run_once(
        jax.grad(lambda f, x, y: cross_entropy_loss(model.apply(unravel(f), x), y))
    )
    adapted = []
    for t in range(3):
        ep = _task(eps, t)
        w = np.asarray(flat0, np.float64)
        for _ in range(steps):
            g = support_grad(jnp.asarray(w, jnp.float32), ep.support_x, ep.support_y)
            w = w - lr * np.asarray(g, np.float64)
        adapted.append(w)
    ref_grad = np.asarray(flat0, np.float64) - np.mean(adapted, axis=0)
    np.testing.assert_allclose(_flat(grads), ref_grad, rtol=1e-4, atol=1e-6)
    assert set(metrics) >= {"loss", "accuracy"}
    # With optax.sgd(eps) the engine's update is theta + eps * (mean adapted - theta).
    opt = optax.sgd(eps_outer)
    updates, _ = opt.update(grads, opt.init(params), params)
    new = np.asarray(_flat(optax.apply_updates(params, updates)), np.float64)
    ref_new = np.asarray(flat0) + eps_outer * (np.mean(adapted, axis=0) - np.asarray(flat0))
    np.testing.assert_allclose(new, ref_new, rtol=1e-4, atol=1e-6)


def test_reptile_adam_inner_loop_matches_manual_adam_with_beta1_zero():
    model, params = _mlp(out=3)
    ep = _task(_tasks(jax.random.key(8), ways=3, shots=2))
    lr, steps, b2, eps = 0.01, 3, 0.999, 1e-8
    learner = reptile(
        model.apply,
        inner_lr=lr,
        inner_steps=steps,
        inner_batch_size=6,
        inner_optimizer="adam",
        inner_beta1=0.0,
        inner_beta2=b2,
    )
    adapted = jit_run_once(learner.adapt)(params, ep.support_x, ep.support_y)
    flat0, unravel = jax.flatten_util.ravel_pytree(params)
    support_grad = jit_run_once(
        jax.grad(lambda f: cross_entropy_loss(model.apply(unravel(f), ep.support_x), ep.support_y))
    )
    w = np.asarray(flat0, np.float64)
    v = np.zeros_like(w)
    for t in range(1, steps + 1):
        g = np.asarray(support_grad(jnp.asarray(w, jnp.float32)), np.float64)
        v = b2 * v + (1 - b2) * g**2
        w = w - lr * g / (np.sqrt(v / (1 - b2**t)) + eps)  # beta1 = 0: m_hat = g
    np.testing.assert_allclose(_flat(adapted), w, rtol=1e-4, atol=1e-6)


def test_reptile_transductive_and_non_transductive_evaluation():
    """A model whose output depends on the batch (like batch-statistics BatchNorm)."""
    model, params = _mlp(out=3)

    def apply_fn(p, x):
        return model.apply(p, x - jnp.mean(x, axis=0, keepdims=True))

    ep = _task(_tasks(jax.random.key(9), ways=3, shots=2, queries=2))
    kw = dict(
        inner_lr=0.1, inner_steps=2, inner_batch_size=6, inner_optimizer="sgd", eval_inner_steps=3
    )
    trans = reptile(apply_fn, transductive=True, **kw)
    alone = reptile(apply_fn, transductive=False, **kw)
    key = jax.random.key(3)
    adapted = jit_run_once(trans.adapt, static_argnums=3)(
        params, ep.support_x, ep.support_y, 3, key=key
    )
    p_trans = jit_run_once(trans.predict)(params, *ep[:3], key)
    np.testing.assert_allclose(p_trans, apply_fn(adapted, ep.query_x), rtol=1e-5, atol=1e-6)
    p_alone = jit_run_once(alone.predict)(params, *ep[:3], key)
    for j in range(ep.query_x.shape[0]):
        batch = jnp.concatenate([ep.support_x, ep.query_x[j : j + 1]])
        np.testing.assert_allclose(p_alone[j], apply_fn(adapted, batch)[-1], rtol=1e-5, atol=1e-6)
    # Non-transductive: a query's prediction ignores the other queries; transductive does not.
    other = ep.query_x.at[1:].add(3.0)
    np.testing.assert_allclose(
        jit_run_once(alone.predict)(params, ep.support_x, ep.support_y, other, key)[0],
        p_alone[0],
        rtol=1e-6,
    )
    assert not np.allclose(
        jit_run_once(trans.predict)(params, ep.support_x, ep.support_y, other, key)[0], p_trans[0]
    )


# ----------------------------------------------------------------------------------------
# Meta-SGD


def test_metasgd_per_parameter_rates_manual_update():
    model, params = _mlp(out=3)
    learner = metasgd(model.apply, inner_lr_init=0.4, inner_steps=1)
    meta = learner.init(jax.random.key(0), params)
    assert jax.tree_util.tree_structure(meta["lr"]) == jax.tree_util.tree_structure(params)
    assert np.all(np.asarray(_flat(meta["lr"])) == np.float32(0.4))
    # Random elementwise rates (incl. negative ones) to check they are applied per weight.
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(11), len(leaves))
    lr = jax.tree_util.tree_unflatten(
        treedef,
        [
            jax.random.uniform(k, w.shape, minval=-0.2, maxval=0.8)
            for w, k in zip(leaves, keys, strict=True)
        ],
    )
    meta = {"params": params, "lr": lr}
    ep = _task(_tasks(jax.random.key(10)))
    adapted = jit_run_once(learner.adapt)(meta, ep.support_x, ep.support_y)
    g = jax.grad(lambda p: cross_entropy_loss(model.apply(p, ep.support_x), ep.support_y))(params)
    ref = np.asarray(_flat(params)) - np.asarray(_flat(lr)) * np.asarray(_flat(g))
    np.testing.assert_allclose(_flat(adapted), ref, rtol=1e-5, atol=1e-7)


def test_metasgd_learning_rate_gradient_matches_finite_differences_float64():
    with enable_x64():
        model, params = _mlp(out=3, dtype=jnp.float64)
        eps = _tasks(jax.random.key(12), dtype=jnp.float64)
        learner = metasgd(model.apply, inner_lr_init=0.3, inner_steps=2)
        meta = learner.init(jax.random.key(0), params)
        grads, _ = jit_run_once(learner.meta_grad)(meta, eps, jax.random.key(0))
        flat_lr, unravel = jax.flatten_util.ravel_pytree(meta["lr"])

        @jit_run_once
        def loss_of_lr(f):
            m = {"params": params, "lr": unravel(f)}
            return jnp.mean(jnp.stack([learner.outer_loss(m, _task(eps, t))[0] for t in range(2)]))

        h = 1e-6
        fd = np.array(
            [
                (float(loss_of_lr(flat_lr.at[i].add(h))) - float(loss_of_lr(flat_lr.at[i].add(-h))))
                / (2 * h)
                for i in range(flat_lr.shape[0])
            ]
        )
        g = np.asarray(_flat(grads["lr"]))
        assert np.linalg.norm(fd) > 1e-4
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-9)


# ----------------------------------------------------------------------------------------
# ANIL


@pytest.mark.parametrize("first_order", [False, True])
def test_anil_adapts_only_the_head_and_equals_masked_maml(first_order):
    model, params = _mlp(out=3, hidden=(6, 5))
    head = "Dense_2"  # the last Dense: MLP has no module named "head"
    eps = _tasks(jax.random.key(13), tasks=3)
    lr, steps = 0.5, 2
    learner = anil(model.apply, inner_lr=lr, inner_steps=steps, first_order=first_order)
    ep = _task(eps)
    adapted = jit_run_once(learner.adapt)(params, ep.support_x, ep.support_y)
    for name in params["params"]:
        changed = not np.allclose(_flat(adapted["params"][name]), _flat(params["params"][name]))
        assert changed == (name == head), name

    def reference_task_loss(p, ep):
        body = {k: v for k, v in p["params"].items() if k != head}
        h = p["params"][head]
        for _ in range(steps):
            g = jax.grad(
                lambda hh: cross_entropy_loss(
                    model.apply({"params": {**body, head: hh}}, ep.support_x), ep.support_y
                )
            )(h)
            if first_order:
                g = jax.lax.stop_gradient(g)
            h = jax.tree_util.tree_map(lambda w, gi: w - lr * gi, h, g)
        return cross_entropy_loss(
            model.apply({"params": {**body, head: h}}, ep.query_x), ep.query_y
        )

    ref = jit_run_once(
        jax.grad(
            lambda p: jnp.mean(jnp.stack([reference_task_loss(p, _task(eps, t)) for t in range(3)]))
        )
    )(params)
    grads, _ = jit_run_once(learner.meta_grad)(params, eps, jax.random.key(0))
    np.testing.assert_allclose(_flat(grads), _flat(ref), rtol=1e-5, atol=1e-7)
    # The body does get an outer gradient, and ANIL differs from full MAML.
    assert float(jnp.linalg.norm(_flat(grads["params"]["Dense_0"]))) > 0
    full, _ = jit_run_once(
        maml(model.apply, inner_lr=lr, inner_steps=steps, first_order=first_order).meta_grad
    )(params, eps, jax.random.key(0))
    assert not np.allclose(_flat(full), _flat(grads))


def test_anil_head_resolution():
    _, params = _mlp(out=3, hidden=(6, 5))
    with pytest.raises(ValueError, match="not among"):
        anil(lambda p, x: x, inner_lr=0.1, inner_steps=1, head="nope").init(
            jax.random.key(0), params
        )
    named = {"params": {"conv0": jnp.ones(2), "head": {"kernel": jnp.ones(2)}}}
    from jaxmeta.algorithms.anil import head_mask

    assert head_mask(named) == {"params": {"conv0": False, "head": {"kernel": True}}}


# ----------------------------------------------------------------------------------------
# SNAIL


def test_snail_blocks_are_causal():
    t, c = 9, 6
    x = jax.random.normal(jax.random.key(14), (t, c))
    for module in (
        TCBlock(seq_len=t, features=4),
        AttentionBlock(5, 3),
        SNAIL(ways=3, seq_len=t, tc_filters=4, key_size=4),
    ):
        p = jit_run_once(module.init)(jax.random.key(0), x)
        apply = jit_run_once(module.apply)
        y = apply(p, x)
        for pos in (0, 3, t - 2):
            x2 = x.at[pos + 1 :].add(jax.random.normal(jax.random.key(pos), (t - pos - 1, c)))
            y2 = apply(p, x2)
            np.testing.assert_allclose(y2[: pos + 1], y[: pos + 1], rtol=1e-5, atol=1e-6)
            assert not np.allclose(y2[pos + 1 :], y[pos + 1 :])  # the test can fail


def test_snail_each_query_is_its_own_sequence():
    model, params = _mlp(out=5)  # no batch coupling in the embedding
    ways, shots = 3, 2
    learner = snail(model.apply, ways=ways, shots=shots, input_shape=(4,), tc_filters=4, key_size=4)
    meta = jit_run_once(learner.init)(jax.random.key(0), params)
    assert set(meta) == {"embedding", "snail"}
    ep = _task(_tasks(jax.random.key(15), ways=ways, shots=shots, queries=2))
    logits = jit_run_once(learner.predict)(meta, *ep[:3], None)
    assert logits.shape == (6, ways)
    # Reference: the paper's per-query sequence, built by hand for query 0.
    zs = model.apply(params, ep.support_x)
    zq = model.apply(params, ep.query_x[:1])
    seq = jnp.concatenate(
        [
            jnp.concatenate([zs, jax.nn.one_hot(ep.support_y, ways)], -1),
            jnp.concatenate([zq, jnp.zeros((1, ways))], -1),
        ]
    )
    net = SNAIL(ways=ways, seq_len=ways * shots + 1, tc_filters=4, key_size=4)
    np.testing.assert_allclose(
        logits[0], jit_run_once(net.apply)(meta["snail"], seq)[-1], rtol=1e-5, atol=1e-6
    )
    # Other queries do not influence query 0.
    other = ep.query_x.at[1:].add(2.0)
    np.testing.assert_allclose(
        jit_run_once(learner.predict)(meta, ep.support_x, ep.support_y, other, None)[0],
        logits[0],
        rtol=1e-5,
        atol=1e-6,
    )
    grads, metrics = jit_run_once(learner.meta_grad)(
        meta, _tasks(jax.random.key(16), ways=ways, shots=shots), jax.random.key(0)
    )
    assert float(jnp.linalg.norm(_flat(grads["snail"]))) > 0
    assert float(jnp.linalg.norm(_flat(grads["embedding"]))) > 0


# ----------------------------------------------------------------------------------------
# Registry: every factory is buildable from plain config values.


def test_registry_factories_take_plain_keyword_values():
    for name, spec in ALGORITHMS.items():
        sig = inspect.signature(spec.make)
        params = list(sig.parameters.values())
        assert params[0].name == "apply_fn", name
        for p in params[1:]:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY, (name, p.name)
    for name in ("reptile", "anil", "metasgd", "protonets", "matching", "snail"):
        assert name in ALGORITHMS


def test_each_spec_names_what_its_factory_takes():
    """A spec's episode_args are exactly the episode facts its factory requires (plus those it
    takes with a default and needs to build its networks), its example uses the factory's own
    keywords, and a bare factory registered by a plug-in gets a spec."""
    from jaxmeta.algorithms import register_algorithm
    from jaxmeta.algorithms.base import EPISODE_ARGS, AlgorithmSpec

    for name, spec in ALGORITHMS.items():
        params = inspect.signature(spec.make).parameters
        required = {
            k for k in EPISODE_ARGS if k in params and params[k].default is inspect.Parameter.empty
        }
        assert required <= set(spec.episode_args) <= set(params), name
        assert set(spec.example) <= set(params) - set(spec.episode_args), name
    with pytest.raises(ValueError, match="model must be one of"):
        AlgorithmSpec(maml, model="regressor")
    with pytest.raises(TypeError, match="needs the episode's ways, shots"):
        ALGORITHMS["snail"].example_learner(lambda p, x: x)
    try:
        register_algorithm("test_bare_factory", maml, example={"inner_lr": 0.1, "inner_steps": 1})
        spec = ALGORITHMS["test_bare_factory"]
        assert spec.make is maml and spec.model == "classifier"
        register_algorithm("test_bare_factory", maml)  # the same factory again: idempotent
        with pytest.raises(ValueError, match="already registered"):
            register_algorithm("test_bare_factory", anil)
    finally:
        ALGORITHMS.pop("test_bare_factory", None)


# ----------------------------------------------------------------------------------------
# Configs: one per algorithm and Omniglot setting, loadable and buildable.

ALGOS = ("anil", "metasgd", "reptile", "protonets", "matching", "snail")
SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")


@pytest.mark.parametrize("algo", ALGOS)
def test_omniglot_configs_load_and_build(algo):
    from pathlib import Path

    from jaxmeta.models import MODELS
    from jaxmeta.train import load_config
    from jaxmeta.train.build import build_learner, model_kwargs

    root = Path(__file__).resolve().parents[1] / "configs" / "omniglot"
    for setting in SETTINGS:
        cfg = load_config(root / f"{algo}_{setting}.yaml")
        ways, shots = (int(s) for s in setting[:-1].split("w"))
        # The setting is the test-time N-way K-shot (ProtoNets meta-trains 60-way).
        assert (cfg.eval_ways, cfg.eval_shots) == (ways, shots)
        assert cfg.data.ways == (60 if algo == "protonets" else ways)
        assert cfg.algorithm.name == algo
        model = MODELS[cfg.model.name](**model_kwargs(cfg))
        learner = build_learner(cfg, apply_fn=model.apply)
        assert learner.name == algo
        params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
        meta = jax.eval_shape(
            learner.init, jax.random.key(1), params
        )  # builds extra modules (SNAIL) abstractly
        assert jax.tree_util.tree_leaves(meta)
