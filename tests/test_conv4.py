"""Conv-4: shapes, conv lowerings agree (to second order), batch-statistics BatchNorm,
and the second-order MAML meta-gradient against central finite differences (float64)."""

from __future__ import annotations

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jit_run_once

from jaxmeta.algorithms.maml import maml
from jaxmeta.models import MODELS, Conv4
from jaxmeta.models.layers import (
    batch_stat_norm,
    conv3x3,
    conv_output_size,
    im2col3x3,
    max_pool2x2,
    resolve_conv_impl,
)
from jaxmeta.types import Episode


def _init(model, x, seed=0):
    return model.init(jax.random.key(seed), x)


def _episodes(key, *, tasks, n_way, shots, queries, size, dtype):
    k1, k2 = jax.random.split(key)
    sx = jax.random.normal(k1, (tasks, n_way * shots, size, size, 1), dtype)
    qx = jax.random.normal(k2, (tasks, n_way * queries, size, size, 1), dtype)
    sy = jnp.tile(jnp.repeat(jnp.arange(n_way, dtype=jnp.int32), shots), (tasks, 1))
    qy = jnp.tile(jnp.repeat(jnp.arange(n_way, dtype=jnp.int32), queries), (tasks, 1))
    return Episode(sx, sy, qx, qy)


def _randomise(params, key, dtype):
    """Non-trivial BN scale/bias (init is 1/0) so every parameter matters."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [
        (p + 0.3 * jax.random.normal(k, p.shape, dtype)).astype(dtype)
        for p, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree_util.tree_unflatten(tree, leaves)


def test_registered():
    assert MODELS["conv4"] is Conv4


@pytest.mark.parametrize(
    "pool, head, num_classes, features",
    [
        (False, "flatten", 5, 2 * 2 * 64),
        (False, "mean", 5, 64),
        (True, "flatten", 20, 64),
        (True, "mean", 5, 64),
        (False, "flatten", None, 2 * 2 * 64),
        (True, "mean", None, 64),
    ],
)
@pytest.mark.parametrize("conv_impl", ["xla", "gemm", "auto"])
def test_output_shapes(pool, head, num_classes, features, conv_impl):
    # Traced abstractly (shapes and dtypes, no compile); Conv-4 is computed at 28x28 with
    # both lowerings in test_model_output_depends_on_other_examples.
    model = Conv4(num_classes=num_classes, pool=pool, head=head, conv_impl=conv_impl)
    x = jax.ShapeDtypeStruct((3, 28, 28, 1), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert set(variables) == {"params"}  # no batch_stats / mutable collections
    out = jax.eval_shape(model.apply, variables, x)
    assert out.shape == (3, num_classes if num_classes is not None else features)
    assert out.dtype == jnp.float32
    if num_classes is not None:
        assert variables["params"]["head"]["kernel"].shape == (features, num_classes)


def test_strided_sizes_match_pytorch_padding_1():
    # PyTorch Conv2d(3, stride=2, padding=1): out = floor((in + 2 - 3) / 2) + 1
    sizes = [28]
    for _ in range(4):
        sizes.append(conv_output_size(sizes[-1], 2))
    assert sizes == [28, 14, 7, 4, 2]
    x = jnp.zeros((1, 28, 28, 1))
    for impl in ("xla", "gemm"):
        h = x
        for size in sizes[1:]:
            h = conv3x3(h, jnp.zeros((3, 3, h.shape[-1], 8)), stride=2, impl=impl)
            assert h.shape == (1, size, size, 8)


@pytest.mark.parametrize("stride, size", [(2, 7), (2, 8), (1, 5)])
def test_conv_matches_explicit_loop_with_padding_1(stride, size):
    """Zero padding of 1 on every side, windows starting at -1 (PyTorch semantics)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, size, size, 3))
    w = rng.normal(size=(3, 3, 3, 4))
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ho = conv_output_size(size, stride)
    ref = np.zeros((2, ho, ho, 4))
    for i in range(ho):
        for j in range(ho):
            win = xp[:, i * stride : i * stride + 3, j * stride : j * stride + 3, :]
            ref[:, i, j, :] = np.einsum("nhwc,hwcf->nf", win, w)
    with jax.enable_x64(True):
        for impl in ("xla", "gemm"):
            out = conv3x3(jnp.asarray(x), jnp.asarray(w), stride=stride, impl=impl)
            np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-12, atol=1e-12)
        assert im2col3x3(jnp.asarray(x), stride).shape == (2, ho, ho, 27)


def _meta_setup(conv_impl, *, pool=False, first_order=False, size=28, filters=4):
    model = Conv4(num_classes=3, filters=filters, pool=pool, conv_impl=conv_impl, dtype=jnp.float64)
    eps = _episodes(
        jax.random.key(3), tasks=2, n_way=3, shots=1, queries=2, size=size, dtype=jnp.float64
    )
    # One program (eager init would compile op by op).
    params = jit_run_once(lambda x: _randomise(_init(model, x), jax.random.key(4), jnp.float64))(
        eps.support_x[0]
    )
    # task_chunk=None: all tasks vmapped (per-task kernels -> grouped convolutions for xla).
    learner = maml(model.apply, inner_lr=0.4, inner_steps=2, first_order=first_order)
    learner = learner._replace(meta_grad=functools.partial(learner.meta_grad, task_chunk=None))
    return model, learner, params, eps


@pytest.mark.slow
@pytest.mark.parametrize("pool", [False, True])
def test_conv_impls_agree_to_second_order_and_match_finite_differences(pool):
    """Per pooling variant, one float64 program per lowering (xla, gemm) computes the
    forward pass and the plain gradient on a batch of 9 images, and the second-order MAML
    meta-gradient (2 tasks, 2 inner steps, all tasks vmapped) with its meta-loss:

    * the lowerings agree on all three (forward 1e-10, gradient 1e-9, meta-gradient 1e-8);
      pool=True was an xfail once, blamed on XLA:CPU's grouped convolution; the cause was
      the jnp.max JVP of the old max_pool2x2 (see its docstring);
    * gemm's meta-gradient matches a fourth-order central difference of the meta-loss
      (from the same program) along 3 random directions, h = 1e-5: truncation and
      rounding ~1e-10 here, far below the 1e-6 bound, while a first-order (FOMAML)
      gradient is off by O(1e-2). The meta-loss is only piecewise smooth (the inner
      gradient jumps where a ReLU or a max-pool switches on the support set): on the
      strided net a switch lies 1e-4 to 2e-4 along the first direction, where h = 1e-4
      measured the jump (rel. error 1e-2) and h = 1e-5 agrees to 1e-10.

    Sizes reach 1x1 in both variants (strided 14 -> 7 -> 4 -> 2 -> 1, pool 16 -> 8 -> 4 ->
    2 -> 1); small: float64 lax.conv is slow."""
    size = 16 if pool else 14
    with jax.enable_x64(True):
        outs = {}
        for impl in ("xla", "gemm"):
            model, learner, params, eps = _meta_setup(impl, pool=pool, size=size)
            x = jnp.concatenate([eps.support_x[0], eps.query_x[0]])
            y = jnp.concatenate([eps.support_y[0], eps.query_y[0]])

            def everything(p, model=model, learner=learner, eps=eps, x=x, y=y):
                def loss(p):
                    logits = model.apply(p, x)
                    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1)
                    return jnp.mean(nll), logits

                (_, logits), grad = jax.value_and_grad(loss, has_aux=True)(p)
                meta_grad, metrics = learner.meta_grad(p, eps, jax.random.key(0))
                return logits, grad, meta_grad, metrics["loss"]

            program = jit_run_once(everything)
            outs[impl] = (program, params, program(params))
        (_, _, xla), (gemm_program, params, gemm) = outs["xla"], outs["gemm"]
        assert np.all(np.isfinite(xla[3])) and np.all(np.isfinite(gemm[3]))
        np.testing.assert_allclose(xla[0], gemm[0], rtol=1e-10, atol=1e-12)  # forward
        for i, rtol, atol in ((1, 1e-9, 1e-12), (2, 1e-8, 1e-11)):  # gradient, meta-gradient
            jax.tree_util.tree_map(
                lambda a, b, rtol=rtol, atol=atol: np.testing.assert_allclose(
                    a, b, rtol=rtol, atol=atol
                ),
                xla[i],
                gemm[i],
            )

        flat, unravel = jax.flatten_util.ravel_pytree(params)
        g = jax.flatten_util.ravel_pytree(gemm[2])[0]
        at = lambda t, d: gemm_program(unravel(flat + t * d))[3]
        h = 1e-5
        for i in range(3):
            d = jax.random.normal(jax.random.key(10 + i), flat.shape, jnp.float64)
            d = d / jnp.linalg.norm(d)
            fd = (8 * (at(h, d) - at(-h, d)) - (at(2 * h, d) - at(-2 * h, d))) / (12 * h)
            analytic = jnp.dot(g, d)
            rel = abs(float(fd - analytic)) / max(abs(float(fd)), 1e-12)
            assert rel < 1e-6, (i, float(fd), float(analytic), rel)


def test_batch_norm_uses_batch_statistics():
    x = jax.random.normal(jax.random.key(0), (6, 5, 5, 8)) * 3.0 + 2.0
    y = batch_stat_norm(x, jnp.ones(8), jnp.zeros(8))
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.var(y, axis=(0, 1, 2)), 1.0, rtol=1e-3)
    y2 = batch_stat_norm(x, 2.0 * jnp.ones(8), 0.5 * jnp.ones(8))
    np.testing.assert_allclose(jnp.mean(y2, axis=(0, 1, 2)), 0.5, atol=1e-5)


@pytest.mark.parametrize("conv_impl", ["xla", "gemm"])
def test_model_output_depends_on_other_examples(conv_impl):
    model = Conv4(conv_impl=conv_impl)
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))

    @jit_run_once  # one program: eager, init and apply would compile op by op
    def outputs(x):
        params = _init(model, x)
        return (
            model.apply(params, x),
            model.apply(params, x.at[1:].multiply(3.0).at[1:].add(1.0)),
            # Scaling/shifting the whole batch is undone by the first BatchNorm (no conv bias).
            model.apply(params, 2.0 * x + 0.0),
        )

    out, out_changed, out_affine = outputs(x)
    assert float(jnp.max(jnp.abs(out[0] - out_changed[0]))) > 1e-3
    np.testing.assert_allclose(out, out_affine, rtol=1e-3, atol=1e-4)


def test_auto_conv_impl_is_the_fastest_measured_per_backend():
    # GEMM measured fastest on the 2-core CPU (10-30x) and on one H200 (19x, training
    # step); TPU is unmeasured and keeps lax.conv.
    assert resolve_conv_impl("auto", backend="cpu") == "gemm"
    assert resolve_conv_impl("auto", backend="gpu") == "gemm"
    assert resolve_conv_impl("auto", backend="tpu") == "xla"
    assert resolve_conv_impl("auto") == resolve_conv_impl("auto", jax.default_backend())
    for impl in ("xla", "gemm"):
        assert resolve_conv_impl(impl, backend="tpu") == impl
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        resolve_conv_impl("cudnn")


def test_maml_miniimagenet_net_on_84x84_rgb():
    """cbfinn/maml's miniImageNet Conv-4: 32 filters, max-pool, flatten head:
    84 -> 42 -> 21 -> 10 -> 5, so 5 x 5 x 32 = 800 features."""
    x = jax.ShapeDtypeStruct((2, 84, 84, 3), jnp.float32)
    model = Conv4(num_classes=5, filters=32, pool=True, head="flatten")
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert variables["params"]["head"]["kernel"].shape == (800, 5)
    assert variables["params"]["conv0"].shape == (3, 3, 3, 32)
    # cbfinn/maml's net has 32,901: the same plus a bias per conv (4 x 32), which a
    # batch-statistics BatchNorm cancels.
    assert sum(v.size for v in jax.tree_util.tree_leaves(variables)) == 32_773
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 5)
    embedding = Conv4(num_classes=None, filters=32, pool=True, head="flatten")
    assert jax.eval_shape(embedding.apply, variables, x).shape == (2, 800)
    small = Conv4(num_classes=5, filters=4, pool=True, head="flatten")  # computed, few filters
    images = jnp.linspace(0.0, 1.0, 2 * 84 * 84 * 3).reshape(2, 84, 84, 3)
    out = jit_run_once(lambda x: small.apply(small.init(jax.random.key(0), x), x))(images)
    assert out.shape == (2, 5) and bool(jnp.all(jnp.isfinite(out)))


def test_max_pool_value_and_derivatives_are_exact():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)  # odd height: the last row is cut
    w = rng.normal(size=(2, 2, 2, 3)).astype(np.float32)  # the output's shape

    @jit_run_once  # one program (eager, each op would compile on its own)
    def derivatives(x, w):
        weighted = lambda x: jnp.sum(max_pool2x2(x) * w)
        # Exactly linear around the point: the second derivative is zero.
        hvp = jax.jvp(jax.grad(weighted), (x,), (x,))[1]
        # Ties (e.g. an all-zero window after ReLU) send the gradient to the first element.
        tied = jax.grad(lambda x: jnp.sum(max_pool2x2(x)))(jnp.zeros((1, 2, 2, 1)))
        return max_pool2x2(x), jax.grad(weighted)(x), hvp, tied

    out, grad, hvp, tied = (np.asarray(a) for a in derivatives(x, w))
    np.testing.assert_array_equal(out, x[:, :4].reshape(2, 2, 2, 2, 2, 3).max(axis=(2, 4)))
    assert int(np.sum(grad != 0)) == out.size  # one element per window, weighted by w
    np.testing.assert_allclose(np.sum(grad), np.sum(w), rtol=1e-6)
    np.testing.assert_array_equal(hvp, np.zeros_like(x))
    np.testing.assert_array_equal(tied[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])
