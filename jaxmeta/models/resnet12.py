"""ResNet-12: the backbone of MetaOptNet and most few-shot work since (TADAM, RFS, FEAT).

Four residual blocks with 64-160-320-640 channels. Each block: three 3x3 convolutions
(stride 1, padding 1, no bias), each followed by BatchNorm, LeakyReLU(0.1) after the first
two; a shortcut of a 1x1 convolution and BatchNorm; the sum, LeakyReLU(0.1), then a 2x2
max-pool (84 -> 42 -> 21 -> 10 -> 5; 32 -> 16 -> 8 -> 4 -> 2). Then the head: the global
spatial mean (``head="mean"``, a 640-d embedding) or the flattened map (``head="flatten"``,
MetaOptNet's miniImageNet embedding, 5 x 5 x 640 = 16,000-d), optionally a linear layer
(``num_classes``). 12,424,320 parameters without the head. Convolutions are initialised as
MetaOptNet (``kaiming_normal_(mode="fan_out")``: normal with variance 2 / fan-out).

**BatchNorm** as :class:`~jaxmeta.models.conv4.Conv4`: statistics of the current batch, no
running averages (transductive, how MAML trains); ``stats_rows=k`` normalises with the
statistics of the first ``k`` examples (inductive: support then queries in one pass), in
every BatchNorm of the net, the shortcuts' included. MetaOptNet itself uses PyTorch's
BatchNorm with running averages at test time; that mode is not offered here.

**DropBlock** (``drop_block=True``), MetaOptNet's regularisation: dropout with ``drop_rate``
after blocks 1-2 and DropBlock (``drop_block_size``: 5 on miniImageNet, 2 on CIFAR-FS/FC100
in MetaOptNet) after blocks 3-4, at a fixed rate (MetaOptNet ramps it up over 40,000
batches). It needs a random key and is **off unless one is given**:
``model.apply(params, x, rngs={"dropblock": key})`` applies it (deterministic given the key);
``model.apply(params, x)`` (evaluation, and every algorithm today, which calls
``apply_fn(params, x)``) does not. So with the current engine ``drop_block=True`` changes
nothing; training with it needs an ``apply_fn`` that binds a fresh key per step.

References:
  Lee, Maji, Ravichandran & Soatto, "Meta-Learning with Differentiable Convex
  Optimization", CVPR 2019 (github.com/kjunelee/MetaOptNet ``models/ResNet12_embedding.py``).
  Oreshkin, Rodriguez & Lacoste, "TADAM", NeurIPS 2018 (the ResNet-12 design).
  Ghiasi, Lin & Le, "DropBlock", NeurIPS 2018.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmeta.models.layers import (
    batch_stat_norm,
    conv1x1,
    conv3x3,
    drop_block,
    dropout,
    max_pool2x2,
    resolve_conv_impl,
)
from jaxmeta.types import Array

HEADS = ("mean", "flatten")
DROPBLOCK_RNG = "dropblock"

# MetaOptNet: kaiming_normal_(mode="fan_out", nonlinearity="leaky_relu") with the default
# negative slope 0, i.e. gain^2 = 2: N(0, 2 / (kh * kw * out_channels)).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ResBlock(nn.Module):
    """One ResNet-12 block: ``[n, h, w, c] -> [n, h // 2, w // 2, features]``."""

    features: int
    leaky_slope: float = 0.1
    conv_impl: str = "auto"
    dtype: jax.typing.DTypeLike = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, stats_rows: int | None = None) -> Array:
        impl = resolve_conv_impl(self.conv_impl)
        f = self.features

        def norm(h: Array, name: str) -> Array:
            scale = self.param(f"{name}_scale", nn.initializers.ones, (f,), self.dtype)
            bias = self.param(f"{name}_bias", nn.initializers.zeros, (f,), self.dtype)
            return batch_stat_norm(h, scale, bias, stats_rows=stats_rows)

        out = x
        for j in range(3):
            kernel = self.param(f"conv{j}", _conv_init, (3, 3, out.shape[-1], f), self.dtype)
            out = norm(conv3x3(out, kernel, stride=1, impl=impl), f"bn{j}")
            if j < 2:
                out = nn.leaky_relu(out, self.leaky_slope)
        kernel = self.param("shortcut", _conv_init, (1, 1, x.shape[-1], f), self.dtype)
        out = out + norm(conv1x1(x, kernel, impl=impl), "shortcut_bn")
        return max_pool2x2(nn.leaky_relu(out, self.leaky_slope))


class ResNet12(nn.Module):
    """ResNet-12 (MetaOptNet): ``x [n, H, W, C] -> logits [n, num_classes]`` or embeddings.

    Attributes:
      num_classes: width of the linear head; ``None`` returns the embedding (ProtoNets,
        Matching Nets, MetaOptNet).
      channels: widths of the four blocks (64, 160, 320, 640 in the papers).
      head: ``"mean"`` (global average pool: ``channels[-1]`` features) or ``"flatten"``
        (``h * w * channels[-1]`` features; MetaOptNet's miniImageNet net).
      leaky_slope: negative slope of the LeakyReLUs (0.1).
      drop_block: MetaOptNet's dropout / DropBlock, active only when the call gets a
        ``"dropblock"`` rng (see the module docstring).
      drop_rate: their rate (MetaOptNet: 0.1).
      drop_block_size: DropBlock's block size in blocks 3-4 (MetaOptNet: 5 on miniImageNet,
        2 on CIFAR-FS and FC100).
      conv_impl: ``"xla"``, ``"gemm"`` or ``"auto"``, as for
        :class:`~jaxmeta.models.conv4.Conv4` (the same function up to float rounding).
      dtype: parameter and compute dtype.

    Call: ``(x [n, H, W, C], *, stats_rows=None) -> [n, num_classes]`` (or ``[n, features]``);
    ``stats_rows=k`` normalises with the statistics of ``x[:k]`` (inductive).

    References:
      Lee et al., CVPR 2019; Oreshkin et al., NeurIPS 2018.
    """

    # Read by the engine: the output depends on the batch (so an inductive mode exists).
    uses_batch_statistics: ClassVar[bool] = True

    num_classes: int | None = 5
    channels: Sequence[int] = (64, 160, 320, 640)
    head: str = "mean"
    leaky_slope: float = 0.1
    drop_block: bool = False
    drop_rate: float = 0.1
    drop_block_size: int = 5
    conv_impl: str = "auto"
    dtype: jax.typing.DTypeLike = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, stats_rows: int | None = None) -> Array:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if x.ndim != 4:
            raise ValueError(f"ResNet12 expects x of shape [n, h, w, c], got {x.shape}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        regularise = self.drop_block and self.drop_rate > 0 and self.has_rng(DROPBLOCK_RNG)
        x = x.astype(self.dtype)
        n_blocks = len(self.channels)
        for i, width in enumerate(self.channels):
            x = ResBlock(
                width,
                leaky_slope=self.leaky_slope,
                conv_impl=self.conv_impl,
                dtype=self.dtype,
                name=f"block{i}",
            )(x, stats_rows=stats_rows)
            if regularise:
                key = self.make_rng(DROPBLOCK_RNG)
                if i >= n_blocks - 2:
                    x = drop_block(key, x, rate=self.drop_rate, block_size=self.drop_block_size)
                else:
                    x = dropout(key, x, rate=self.drop_rate)
        x = jnp.mean(x, axis=(1, 2)) if self.head == "mean" else x.reshape(x.shape[0], -1)
        if self.num_classes is None:
            return x
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype, name="head")(x)
