"""ResNet-12: shapes and size at 84x84, conv lowerings agree, both BatchNorm modes, the
second-order MAML meta-gradient against finite differences (float64), every algorithm on it,
and DropBlock (deterministic given a key, off without one). Full-width nets are only traced
(``jax.eval_shape``); everything computed uses tiny widths."""

from __future__ import annotations

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import algorithm_spec, jit_run_once, shipped_algorithms

from jaxmeta.algorithms.maml import maml
from jaxmeta.models import MODELS, Conv4, ResNet12
from jaxmeta.models.layers import block_mask, conv1x1, drop_block
from jaxmeta.types import Episode

TINY = (4, 8, 8, 8)
SIZE = 16  # 16 -> 8 -> 4 -> 2 -> 1
# The tests below are dominated by XLA:CPU compile time (the programs run in milliseconds),
# so each compiles as few programs as it can.
jit = jit_run_once


def _params_count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _init(model, x, *, seed=0):
    """Parameters of ``model`` for input ``x``, drawn with NumPy: He-normal convolution and
    dense kernels, BatchNorm scales 1 + N(0, 0.3^2) and biases N(0, 0.3^2) (so every parameter
    matters). ``model.init`` would give the same shapes but compiles a threefry program per
    parameter, which costs XLA:CPU far more than every test below."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)

    def draw(path, leaf):
        name = str(path[-1].key)
        if leaf.ndim >= 2:  # conv [kh, kw, in, out] or dense [in, out]
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)
        else:
            value = rng.normal(size=leaf.shape) * 0.3 + (1.0 if name.endswith("_scale") else 0.0)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _episodes(seed, *, tasks, ways, shots, queries, dtype=np.float32, size=SIZE):
    """Random episodes, made with NumPy (eager JAX ops would each compile)."""
    rng = np.random.default_rng(seed)
    sx = rng.normal(size=(tasks, ways * shots, size, size, 3)).astype(dtype)
    qx = rng.normal(size=(tasks, ways * queries, size, size, 3)).astype(dtype)
    sy = np.tile(np.repeat(np.arange(ways, dtype=np.int32), shots), (tasks, 1))
    qy = np.tile(np.repeat(np.arange(ways, dtype=np.int32), queries), (tasks, 1))
    return Episode(*(jnp.asarray(a) for a in (sx, sy, qx, qy)))


def test_registered_and_the_miniimagenet_shapes():
    assert MODELS["resnet12"] is ResNet12
    x = jax.ShapeDtypeStruct((2, 84, 84, 3), jnp.float32)
    emb = ResNet12(num_classes=None)
    variables = jax.eval_shape(emb.init, jax.random.key(0), x)
    assert set(variables) == {"params"}  # no batch_stats: apply_fn(params, x) is pure
    assert _params_count(variables) == 12_424_320  # MetaOptNet's ResNet-12 without a head
    assert jax.eval_shape(emb.apply, variables, x).shape == (2, 640)
    flat = ResNet12(num_classes=None, head="flatten")
    assert jax.eval_shape(flat.apply, variables, x).shape == (2, 5 * 5 * 640)
    clf = ResNet12(num_classes=5)
    v = jax.eval_shape(clf.init, jax.random.key(0), x)
    assert v["params"]["head"]["kernel"].shape == (640, 5)
    assert jax.eval_shape(clf.apply, v, x).shape == (2, 5)
    cifar = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)  # 32 -> 16 -> 8 -> 4 -> 2
    assert jax.eval_shape(flat.apply, variables, cifar).shape == (2, 2 * 2 * 640)
    with pytest.raises(ValueError, match="head must be one of"):
        jax.eval_shape(ResNet12(head="max").init, jax.random.key(0), x)


def test_conv1x1_lowerings_match_einsum():
    rng = np.random.default_rng(0)
    x, k = rng.normal(size=(2, 5, 4, 3)), rng.normal(size=(1, 1, 3, 6))
    with jax.enable_x64(True):
        for impl in ("xla", "gemm"):
            out = conv1x1(jnp.asarray(x), jnp.asarray(k), impl=impl)
            np.testing.assert_allclose(out, np.einsum("nhwc,cf->nhwf", x, k[0, 0]), rtol=1e-12)


def test_conv_impls_agree_and_the_second_order_meta_gradient_matches_finite_differences():
    """Second-order MAML (float64, 2 tasks, 1 inner step, all tasks vmapped: per-task
    kernels, grouped convolutions for xla) through two ResNet-12 blocks, which hold every
    kind of layer of the net (3x3 convolutions from 3 and from c channels, the 1x1
    shortcut, BatchNorm, LeakyReLU, max-pool, the mean head):

    * the xla and gemm lowerings give the same meta-gradient. This caught a 3% error in the
      gemm one when max_pool2x2 was a jnp.max (see its docstring);
    * gemm's meta-gradient matches a 4th-order central difference of the meta-loss (from
      the same program) along a random direction, as tests/test_conv4.py does for Conv-4.
      MAML's meta-loss is only piecewise smooth: the inner gradient jumps where a LeakyReLU
      or a max-pool switches on the support set, and so does the loss. The differences are
      taken at two step sizes, which agree only when no switch lies within the stencil."""
    with jax.enable_x64(True):
        eps = _episodes(2, tasks=2, ways=3, shots=1, queries=2, dtype=np.float64, size=8)
        grads, programs = {}, {}
        for impl in ("xla", "gemm"):
            model = ResNet12(num_classes=3, channels=(4, 8), conv_impl=impl, dtype=jnp.float64)
            params = _init(model, eps.support_x[0])
            learner = maml(model.apply, inner_lr=0.1, inner_steps=1)
            meta_grad = functools.partial(learner.meta_grad, task_chunk=None)  # all vmapped
            programs[impl] = jit(meta_grad)
            grads[impl], metrics = programs[impl](params, eps, jax.random.key(0))
            assert np.isfinite(float(metrics["loss"]))
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12), *grads.values()
        )

        flat, unravel = jax.flatten_util.ravel_pytree(params)
        g = jax.flatten_util.ravel_pytree(grads["gemm"])[0]
        d = np.random.default_rng(10).normal(size=flat.shape)
        d = jnp.asarray(d / np.linalg.norm(d))
        at = lambda t: float(
            programs["gemm"](unravel(flat + t * d), eps, jax.random.key(0))[1]["loss"]
        )

        def fd(h):
            return (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)

        coarse, fine, analytic = fd(1e-5), fd(1e-6), float(jnp.dot(g, d))
        assert abs(coarse - fine) < 1e-6 * abs(fine), (coarse, fine)  # smooth along d here
        assert abs(coarse - analytic) < 1e-7 * abs(coarse), (coarse, analytic)


def test_inductive_mode_support_unchanged_and_queries_independent():
    model = ResNet12(num_classes=None, channels=TINY)
    rng = np.random.default_rng(0)
    support = jnp.asarray(rng.normal(size=(5, SIZE, SIZE, 3)), jnp.float32)
    queries = jnp.asarray(rng.normal(size=(5, SIZE, SIZE, 3)) * 2.0 + 1.0, jnp.float32)
    params = _init(model, support)
    apply = jit(model.apply, static_argnames="stats_rows")
    both = apply(params, jnp.concatenate([support, queries]), stats_rows=5)
    np.testing.assert_allclose(both[:5], apply(params, support), rtol=1e-5, atol=1e-5)
    # Each query alone (with the support) gets exactly what it gets in the batch.
    alone = jit(
        jax.vmap(lambda q: model.apply(params, jnp.concatenate([support, q[None]]), stats_rows=5))
    )(queries)
    np.testing.assert_allclose(alone[:, 5], both[5:], rtol=1e-5, atol=1e-5)
    # Transductive: a query's output depends on the other queries.
    trans = apply(params, queries)
    changed = apply(params, queries.at[1:].multiply(3.0))
    assert float(jnp.max(jnp.abs(trans[0] - changed[0]))) > 1e-3


WAYS, SHOTS, QUERIES = 3, 1, 2


def _num_classes(name):
    """The model's output width: one logit per class, or an embedding (``None``)."""
    return None if algorithm_spec(name).model == "embedding" else WAYS


def _smoke_learner(name, model):
    """The algorithm's registered example for ``model``, on 3-way 1-shot RGB episodes."""
    return algorithm_spec(name).example_learner(
        model.apply, ways=WAYS, shots=SHOTS, input_shape=(SIZE, SIZE, 3)
    )


@functools.cache
def _smoke_params(arch, num_classes, conv_impl="auto"):
    # ResNet-12 with one block (every kind of layer: 3x3 convolutions from 3 and from c
    # channels, the 1x1 shortcut, BatchNorm, LeakyReLU, max-pool): what is checked here is
    # how each learner uses the model (heads, embeddings, stats_rows, input_shape), not
    # depth; two blocks are differentiated above (to second order, against finite
    # differences). Each block more costs every one of the 11 compiles below. Conv-4 as on
    # miniImageNet (max-pool, flatten) on RGB, 4 filters.
    if arch == "resnet12":
        model = ResNet12(num_classes=num_classes, channels=(4,), conv_impl="xla")
    else:
        model = Conv4(
            num_classes=num_classes, filters=4, pool=True, head="flatten", conv_impl=conv_impl
        )
    return model, _init(model, jnp.zeros((2, SIZE, SIZE, 3)))


def _bn_mode_check(learner, meta, eps, name):
    """Both BatchNorm modes through the learner's predict. Inductive: a query's logits do not
    depend on the other queries (support statistics only); transductive: they do (the query
    batch's statistics)."""
    sx, sy, qx = eps.support_x[0], eps.support_y[0], eps.query_x[0]
    other = qx.at[1:].set(qx[1:] * 3.0 + 1.0)  # the first query, the others replaced

    @jit  # one program: both modes, both query sets
    def predictions(m, sx, sy, qx, other):
        return {
            mode: [
                learner.predict(m, sx, sy, q, jax.random.key(2), bn_mode=mode) for q in (qx, other)
            ]
            for mode in ("inductive", "transductive")
        }

    outputs = predictions(meta, sx, sy, qx, other)
    for mode in ("inductive", "transductive"):
        out, alone = outputs[mode]
        assert out.shape[0] == WAYS * QUERIES and out.shape[1] >= WAYS
        assert bool(jnp.all(jnp.isfinite(out)))
        same = np.allclose(np.asarray(out[0]), np.asarray(alone[0]), rtol=1e-4, atol=1e-5)
        assert same == (mode == "inductive"), (name, mode)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(shipped_algorithms()))
def test_every_algorithm_builds_and_differentiates_through_resnet12(name):
    model, params = _smoke_params("resnet12", _num_classes(name))
    learner = _smoke_learner(name, model)
    eps = _episodes(5, tasks=2, ways=WAYS, shots=SHOTS, queries=QUERIES)
    meta = jit(learner.init)(jax.random.key(0), params)  # eager: op by op (SNAIL, LEO, FCE)
    grad, metrics = jit(learner.meta_grad)(meta, eps, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"]))
    leaves = jax.tree_util.tree_leaves(grad)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)
    if name in ("maml", "protonets"):  # numerically, one per family
        _bn_mode_check(learner, meta, eps, name)
    _trace_predict(learner, meta, eps, name)


def _trace_predict(learner, meta, eps, name):
    """Both predict modes traced abstractly (``jax.eval_shape``: shapes and plumbing)."""
    for mode in ("inductive", "transductive"):
        out = jax.eval_shape(
            functools.partial(learner.predict, bn_mode=mode),
            meta,
            eps.support_x[0],
            eps.support_y[0],
            eps.query_x[0],
            jax.random.key(2),
        )
        assert out.shape[0] == WAYS * QUERIES and out.shape[1] >= WAYS, (name, mode)


@pytest.mark.slow
def test_every_algorithm_traces_on_conv4_rgb_with_both_bn_modes():
    """Every learner's meta-gradient and both predict modes on Conv-4-RGB (miniImageNet's
    net, 4 filters), traced abstractly (``jax.eval_shape``: the shapes and the plumbing, no
    compile); Conv-4's numbers are checked with every learner in test_algorithm_contract.py
    (Omniglot) and on RGB below. Traced with the xla lowering (one op per convolution):
    tracing the gemm one's shifted slices through second-order AD costs ~3x the CPU, and
    the lowerings are shown to agree to second order in tests/test_conv4.py."""
    eps = _episodes(5, tasks=2, ways=WAYS, shots=SHOTS, queries=QUERIES)
    for name in sorted(shipped_algorithms()):
        model, params = _smoke_params("conv4_rgb", _num_classes(name), "xla")
        learner = _smoke_learner(name, model)
        meta = jax.eval_shape(learner.init, jax.random.key(0), params)
        grad, _ = jax.eval_shape(learner.meta_grad, meta, eps, jax.random.key(1))
        assert jax.tree.structure(grad) == jax.tree.structure(meta), name
        _trace_predict(learner, meta, eps, name)


def test_conv4_rgb_bn_modes_numerically():
    """Conv-4 on RGB (miniImageNet's net, 4 filters) through second-order MAML: a real
    meta-gradient and both BatchNorm modes (every learner's modes on Conv-4 are checked in
    test_inference.py). The xla lowering compiles in 2/3 of the gemm one's CPU; gemm is
    computed on RGB at 84x84 and agrees with xla to second order (tests/test_conv4.py)."""
    eps = _episodes(5, tasks=2, ways=WAYS, shots=SHOTS, queries=QUERIES)
    for name in ("maml",):
        model, params = _smoke_params("conv4_rgb", _num_classes(name), "xla")
        learner = _smoke_learner(name, model)
        meta = jit(learner.init)(jax.random.key(0), params)
        grad, metrics = jit(learner.meta_grad)(meta, eps, jax.random.key(1))
        assert np.isfinite(float(metrics["loss"]))
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grad))
        _bn_mode_check(learner, meta, eps, name)


def test_block_mask_drops_whole_squares():
    seeds = jnp.zeros((1, 4, 4, 1), bool).at[0, 1, 2, 0].set(True)  # a 6x6 map, b = 3
    mask = np.asarray(block_mask(seeds, 3))[0, :, :, 0]
    want = np.zeros((6, 6), bool)
    want[1:4, 2:5] = True
    np.testing.assert_array_equal(mask, want)


def test_drop_block_is_deterministic_given_a_key_and_off_without_one():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, SIZE, SIZE, 3)), jnp.float32)
    kw = dict(num_classes=None, channels=(4, 4, 4))  # block 0: dropout, blocks 1-2: DropBlock
    plain = ResNet12(**kw)
    model = ResNet12(**kw, drop_block=True, drop_rate=0.3, drop_block_size=2)
    params = _init(plain, x)
    # Same parameters (DropBlock has none).
    structure = jax.tree_util.tree_structure
    assert structure(jax.eval_shape(model.init, jax.random.key(0), x)) == structure(params)
    outputs = jit(
        lambda k: (
            plain.apply(params, x),
            model.apply(params, x),  # no key = evaluation = no DropBlock
            model.apply(params, x, rngs={"dropblock": k}),
        )
    )
    plain_out, no_key, a = outputs(jax.random.key(7))
    np.testing.assert_array_equal(no_key, plain_out)
    b, c = outputs(jax.random.key(7))[2], outputs(jax.random.key(8))[2]
    np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(a - c))) > 1e-4
    assert float(jnp.max(jnp.abs(a - plain_out))) > 1e-4
    # About `rate` of a map dropped, the rest rescaled so the mean is kept.
    y = jnp.ones((64, 10, 10, 8))
    out = np.asarray(jit(lambda k: drop_block(k, y, rate=0.1, block_size=5))(jax.random.key(3)))
    dropped = float(np.mean(out == 0))
    assert 0.03 < dropped < 0.2, dropped
    np.testing.assert_allclose(float(np.mean(out, dtype=np.float64)), 1.0, rtol=1e-5)
