"""Convolution, pooling, batch-statistics normalisation and DropBlock for the few-shot nets.

``conv3x3`` (stride 1 or 2) and ``conv1x1`` (the ResNet-12 shortcut) in two lowerings (below),
``batch_stat_norm`` (transductive or inductive), ``max_pool2x2`` (exact to any order of
differentiation), ``dropout`` and ``drop_block`` (ResNet-12's regularisation; they need a key).

Everything here is written in plain ``jax.numpy``/``lax`` ops, so it is exactly
differentiable to any order (second-order MAML differentiates through the gradient of
these functions) and behaves identically under ``vmap``.

Two convolution lowerings are provided because their speed differs by an order of
magnitude depending on the backend:

* ``"xla"``: :func:`jax.lax.conv_general_dilated`. A convolution whose kernel is batched
  (``vmap`` over tasks, each with its own adapted weights) becomes a grouped
  convolution, which XLA:CPU runs 10-30x and cuDNN on an H200 19x slower than the GEMM
  below (:data:`FASTEST_CONV_IMPL`).
* ``"gemm"``: im2col by nine shifted (strided) slices concatenated along the channel
  axis, then one matrix multiplication ``[n*ho*wo, 9*c] @ [9*c, features]``. Under
  ``vmap`` this is a batched ``dot_general``, which XLA:CPU and cuBLAS run at GEMM speed. The
  slices and the concatenation fuse into one loop writing the patch matrix; their
  transpose (col2im) is one fused sum of padded slices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxmeta.types import Array

CONV_IMPLS = ("auto", "xla", "gemm")


# The fastest lowering measured on each backend (benchmarks/lowering.py; numbers in
# benchmarks/README.md, "Convolution lowering"). Under ``vmap`` over tasks each task has its
# own adapted kernel, so ``lax.conv`` becomes a grouped convolution: 10-30x slower than the
# GEMM on XLA:CPU (2-core EPYC, jax 0.10.2) and 19x slower on one H200 (cuDNN, jax 0.11.2,
# MAML training step). Backends not listed here are unmeasured (TPU) and keep ``lax.conv``.
FASTEST_CONV_IMPL = {"cpu": "gemm", "gpu": "gemm"}
UNMEASURED_BACKEND_CONV_IMPL = "xla"


def resolve_conv_impl(conv_impl: str, backend: str | None = None) -> str:
    """``"auto"`` -> the fastest measured lowering of ``backend`` (default: JAX's default
    backend, read at trace time); ``"xla"``/``"gemm"`` are returned unchanged."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
    if conv_impl == "auto":
        backend = backend or jax.default_backend()
        return FASTEST_CONV_IMPL.get(backend, UNMEASURED_BACKEND_CONV_IMPL)
    return conv_impl


def conv_output_size(size: int, stride: int) -> int:
    """Output size of a 3x3 conv with padding 1 (PyTorch ``Conv2d(3, stride, padding=1)``)."""
    return (size + 2 - 3) // stride + 1


def im2col3x3(x: Array, stride: int) -> Array:
    """Patches of a 3x3, padding-1 convolution: ``[n, h, w, c] -> [n, ho, wo, 9*c]``.

    The last axis is ordered ``(dy, dx, c)``, matching ``kernel.reshape(9*c, features)``
    of an HWIO kernel.
    """
    n, h, w, c = x.shape
    ho, wo = conv_output_size(h, stride), conv_output_size(w, stride)
    # Pad only as far as the last window reaches (PyTorch pads 1 on each side, but with
    # stride 2 and an even size the trailing pad row is never read).
    pad_h = max(stride * (ho - 1) + 3 - (h + 1), 0)
    pad_w = max(stride * (wo - 1) + 3 - (w + 1), 0)
    xp = jnp.pad(x, ((0, 0), (1, pad_h), (1, pad_w), (0, 0)))
    cols = [
        lax.slice(
            xp,
            (0, dy, dx, 0),
            (n, dy + stride * (ho - 1) + 1, dx + stride * (wo - 1) + 1, c),
            (1, stride, stride, 1),
        )
        for dy in range(3)
        for dx in range(3)
    ]
    return jnp.concatenate(cols, axis=-1)


def conv3x3(x: Array, kernel: Array, *, stride: int, impl: str) -> Array:
    """3x3 convolution, padding 1, no bias: ``[n, h, w, c] x [3, 3, c, f] -> [n, ho, wo, f]``.

    Matches ``torch.nn.Conv2d(c, f, 3, stride=stride, padding=1, bias=False)`` (up to the
    NHWC/HWIO layout), so the strided Conv-4 maps 28 -> 14 -> 7 -> 4 -> 2.
    """
    impl = resolve_conv_impl(impl)
    if impl == "xla":
        return lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(stride, stride),
            padding=((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    patches = im2col3x3(x, stride)
    n, ho, wo, k = patches.shape
    out = jnp.dot(patches.reshape(n * ho * wo, k), kernel.reshape(k, kernel.shape[-1]))
    return out.reshape(n, ho, wo, kernel.shape[-1])


def conv1x1(x: Array, kernel: Array, *, impl: str) -> Array:
    """1x1 convolution, stride 1, no bias: ``[n, h, w, c] x [1, 1, c, f] -> [n, h, w, f]``.

    The ``"gemm"`` lowering is one matrix multiplication ``[n*h*w, c] @ [c, f]`` (a batched
    ``dot_general`` under ``vmap`` over tasks); ``"xla"`` is ``lax.conv_general_dilated``.
    Used by the ResNet-12 shortcut (``torch.nn.Conv2d(c, f, 1, bias=False)``).
    """
    impl = resolve_conv_impl(impl)
    if impl == "xla":
        return lax.conv_general_dilated(
            x, kernel, window_strides=(1, 1), padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip
    n, h, w, c = x.shape
    out = jnp.dot(x.reshape(n * h * w, c), kernel.reshape(c, kernel.shape[-1]))
    return out.reshape(n, h, w, kernel.shape[-1])


def batch_moments(x: Array, *, stats_rows: int | None = None) -> tuple[Array, Array, Array]:
    """The ``(mean [C], biased var [C])`` :func:`batch_stat_norm` normalises ``x`` with, and
    the number of values per channel they were computed from (a scalar; for the unbiased
    variance that PyTorch's running statistics keep)."""
    ref = x if stats_rows is None else x[:stats_rows]
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(ref, axis=axes, keepdims=True)
    count = jnp.asarray(ref.size // ref.shape[-1], x.dtype)
    return mean.reshape(-1), jnp.mean(jnp.square(ref - mean), axis=axes), count


def batch_stat_norm(
    x: Array,
    scale: Array,
    bias: Array,
    *,
    eps: float = 1e-5,
    stats_rows: int | None = None,
    stats: tuple[Array, Array] | None = None,
) -> Array:
    """BatchNorm with batch statistics (mean/biased var over all axes but C), no running averages.

    The output is a pure function of ``x`` and the parameters. ``eps`` = 1e-5 as in
    ``torch.nn.BatchNorm2d``.

    Args:
      x: ``[n, ..., C]``.
      scale, bias: ``[C]``.
      eps: added to the variance.
      stats_rows: ``None``: statistics of the whole batch (transductive: the MAML setting,
        where train and test batches are each normalised with their own statistics). ``k``:
        statistics of the first ``k`` examples only, applied to all ``n`` (inductive: with
        ``x = concat([support, query])`` and ``k = n_support`` the support set is normalised
        exactly as alone and every query with the support's statistics, independently of the
        other queries).
      stats: ``(mean [C], var [C])`` to normalise with instead of the batch's (running
        statistics: every example independently of the others); ``stats_rows`` is then unused.
    """
    shape = (1,) * (x.ndim - 1) + (-1,)
    if stats is not None:
        mean, var = (jnp.asarray(v, x.dtype).reshape(shape) for v in stats)
        return (x - mean) * (lax.rsqrt(var + eps) * scale.reshape(shape)) + bias.reshape(shape)
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x if stats_rows is None else x[:stats_rows], axis=axes, keepdims=True)
    centred = x - mean
    ref = centred if stats_rows is None else centred[:stats_rows]
    var = jnp.mean(jnp.square(ref), axis=axes, keepdims=True)
    return centred * (lax.rsqrt(var + eps) * scale.reshape(shape)) + bias.reshape(shape)


def max_pool2x2(x: Array) -> Array:
    """2x2 max-pool, stride 2, VALID (cbfinn/maml): ``[n, h, w, c] -> [n, h//2, w//2, c]``.

    Each window's largest element is picked by ``argmax`` (on a ``stop_gradient`` copy) and
    taken as ``sum(x * one_hot)``, so every derivative is multiplication by a constant mask:
    exact to any order. Two other forms are wrong for second-order MAML:

    * ``lax.reduce_window``: its gradient (select-and-scatter) cannot be linearised again.
    * ``jnp.max`` over the window: its JVP locates the maximum by comparing the operand with
      the reduced result for equality, and in the compiled program that went wrong: the
      second-order meta-gradient of a ResNet-12 block with ``conv_impl="gemm"`` was 3% off in
      float32 and float64 (XLA:CPU, jax 0.10.2; right op by op and with XLA's ``algsimp`` or
      ``fusion`` pass disabled), and Conv-4's max-pool variant disagreed between lowerings.

    The forward value is the window maximum exactly. Ties go to the first element (row-major
    in the window); after ReLU an all-zero window has zero gradient either way.
    """
    n, h, w, c = x.shape
    ho, wo = h // 2, w // 2
    x = x[:, : 2 * ho, : 2 * wo, :].reshape(n, ho, 2, wo, 2, c)
    x = x.transpose(0, 1, 3, 5, 2, 4).reshape(n, ho, wo, c, 4)
    pick = jax.nn.one_hot(jnp.argmax(lax.stop_gradient(x), axis=-1), 4, dtype=x.dtype)
    return jnp.sum(x * pick, axis=-1)


def dropout(key: Array, x: Array, *, rate: float) -> Array:
    """Inverted dropout: zero each element with probability ``rate``, scale the rest by
    ``1 / (1 - rate)`` (``torch.nn.functional.dropout`` in training mode)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))


def block_mask(seeds: Array, block_size: int) -> Array:
    """Dropped region of DropBlock: every ``True`` seed at ``(i, j)`` drops the square
    ``[i, i + b) x [j, j + b)``.

    Args:
      seeds: bool ``[n, h - b + 1, w - b + 1, c]`` (block corners, all blocks inside the map).
      block_size: ``b``.

    Returns:
      bool ``[n, h, w, c]``, True = dropped. Written as an OR of ``b * b`` shifted slices of
      the zero-padded seeds (no ``reduce_window``, whose gradient rules second-order MAML
      cannot use; the mask has no gradient anyway).
    """
    b = block_size
    n, hs, ws, c = seeds.shape
    h, w = hs + b - 1, ws + b - 1
    padded = jnp.pad(seeds, ((0, 0), (b - 1, b - 1), (b - 1, b - 1), (0, 0)))
    out = jnp.zeros((n, h, w, c), bool)
    for dy in range(b):
        for dx in range(b):
            out = out | lax.slice(padded, (0, dy, dx, 0), (n, dy + h, dx + w, c))
    return out


def drop_block(key: Array, x: Array, *, rate: float, block_size: int) -> Array:
    """DropBlock (Ghiasi et al. 2018) as in MetaOptNet's ResNet-12: ``[n, h, w, c]`` -> same.

    Block corners are drawn per example and channel with probability
    ``gamma = rate / b^2 * h w / ((h - b + 1)(w - b + 1))`` (MetaOptNet's formula, so that
    about ``rate`` of the map is dropped), the ``b x b`` blocks are zeroed and the output is
    scaled by ``elements / kept elements``. ``b`` is clipped to the map's size. MetaOptNet
    ramps ``rate`` from 0 over its first 40,000 batches; here it is fixed.

    References:
      Ghiasi, Lin & Le, "DropBlock: A regularization method for convolutional networks",
      NeurIPS 2018. Lee, Maji, Ravichandran & Soatto, "Meta-Learning with Differentiable
      Convex Optimization", CVPR 2019 (github.com/kjunelee/MetaOptNet models/dropblock.py).
    """
    n, h, w, c = x.shape
    b = max(1, min(block_size, h, w))
    gamma = rate / b**2 * (h * w) / ((h - b + 1) * (w - b + 1))
    seeds = jax.random.bernoulli(key, min(gamma, 1.0), (n, h - b + 1, w - b + 1, c))
    keep = ~block_mask(seeds, b)
    scale = x.size / jnp.maximum(jnp.sum(keep), 1).astype(x.dtype)
    return jnp.where(keep, x * scale, jnp.zeros((), x.dtype))
