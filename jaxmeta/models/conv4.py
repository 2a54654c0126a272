"""Conv-4: the four-block convolutional net of MAML / Matching / Prototypical Networks.

Each block is 3x3 conv (64 filters) -> BatchNorm (current-batch statistics) -> ReLU, with
either stride 2 (the strided variant, 28 -> 14 -> 7 -> 4 -> 2, cbfinn/maml
``--max_pool False``) or stride 1 + 2x2 max-pool (28 -> 14 -> 7 -> 3 -> 1). A linear
head follows (``flatten`` or spatial ``mean``); ``num_classes=None`` returns the
embedding instead. Any ``[n, H, W, C]`` input works: MAML's miniImageNet net is
``Conv4(filters=32, pool=True, head="flatten")`` on 84x84 RGB (84 -> 42 -> 21 -> 10 -> 5,
5 x 5 x 32 = 800 features; cbfinn/maml ``maml.py``).

**BatchNorm modes.** Normalisation uses the mean and (biased) variance of a batch, over
``(n, h, w)``; it has a learned scale and bias and keeps no running averages and no mutable
collection, so ``apply_fn(params, x)`` is pure.

* Transductive (``apply_fn(params, x)``, the default and how every algorithm trains): the
  statistics of the whole batch. In MAML the support set and the query set of a task are each
  normalised with their own statistics, as in the MAML paper's code (which also uses batch
  statistics at test time). The output for one example depends on the other examples of the
  batch: one query alone is normalised with its own statistics and the predictions collapse.
* Inductive (``apply_fn(params, concat([support, query]), stats_rows=n_support)``): every
  BatchNorm takes its statistics from the first ``stats_rows`` examples (the support set) and
  normalises the whole batch with them, in one forward pass. Each query is then classified
  independently of the others (:func:`jaxmeta.algorithms.base.apply_support_query`; the
  ``bn_mode="inductive"`` of every learner's ``predict``).

The convolutions have no bias: a per-channel constant added before a batch-statistics
BatchNorm is removed exactly by the mean subtraction, so it would be a parameter with a
zero gradient (113,221 - 256 = 112,965 parameters for the 5-way strided flatten net).

References:
  Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep
  Networks. ICML 2017 (Section 5.2; code github.com/cbfinn/maml).
  Vinyals et al. Matching Networks for One Shot Learning. NeurIPS 2016.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmeta.models.layers import (
    batch_moments,
    batch_stat_norm,
    conv3x3,
    max_pool2x2,
    resolve_conv_impl,
)
from jaxmeta.types import Array

HEADS = ("flatten", "mean")
# Activations after each BatchNorm: ReLU (MAML, ProtoNets) or leaky ReLU with PyTorch's default
# slope 0.01 (HowToTrainYourMAMLPytorch, meta_neural_network_architectures.py).
ACTIVATIONS = {"relu": nn.relu, "leaky_relu": lambda x: nn.leaky_relu(x, negative_slope=0.01)}


class Conv4(nn.Module):
    """MAML-paper Conv-4: ``x [n, H, W, C] -> logits [n, num_classes]`` (Omniglot
    ``[n, 28, 28, 1]``, miniImageNet ``[n, 84, 84, 3]``).

    Attributes:
      num_classes: width of the linear head; ``None`` returns the embedding
        ``[n, features]`` (Prototypical / Matching Networks).
      filters: channels of every conv block (64 in the paper).
      pool: ``False``: stride-2 convs (28->14->7->4->2); ``True``: stride-1 convs and
        2x2 max-pool (28->14->7->3->1), the MAML max-pool variant.
      conv_impl: ``"xla"`` (``lax.conv_general_dilated``), ``"gemm"`` (im2col + matmul)
        or ``"auto"`` (the fastest measured on the backend, chosen at trace time: ``gemm``
        on CPU and GPU; see ``layers.FASTEST_CONV_IMPL``). All give the same function up
        to float rounding.
      head: ``"flatten"`` (features = h*w*filters, 256 for the strided net) or
        ``"mean"`` (spatial mean, features = filters, as in cbfinn/maml).
      dtype: parameter and compute dtype (``float64`` for finite-difference tests).
      bn_scale: BatchNorm has a learned scale (default). ``False``: offset only, as
        cbfinn/maml (``tf.contrib.layers.batch_norm``'s default ``scale=False``); with
        ``maml(adapt_norm=False)`` this is the reference's BatchNorm.
      activation: ``"relu"`` (default) or ``"leaky_relu"`` (slope 0.01, MAML++'s reference).

    Call: ``(x [n, H, W, C], *, stats_rows=None, norm_stats=None) -> [n, num_classes]``;
    ``stats_rows=k`` normalises with the statistics of ``x[:k]`` (inductive; see the module
    docstring); ``norm_stats={"bn{i}": (mean [C], var [C])}`` with those (running statistics).
    With ``mutable=["batch_stats"]`` the ``(mean [C], biased var [C], count)`` each BatchNorm
    computed from its batch are returned too, under ``batch_stats/bn{i}`` (MAML++ and
    ProtoNets' running statistics track them).
    """

    # Read by the engine: the output depends on the batch (so an inductive mode exists).
    uses_batch_statistics: ClassVar[bool] = True

    num_classes: int | None = 5
    filters: int = 64
    pool: bool = False
    conv_impl: str = "auto"
    head: str = "flatten"
    dtype: jax.typing.DTypeLike = jnp.float32
    bn_scale: bool = True
    activation: str = "relu"

    @nn.compact
    def __call__(
        self,
        x: Array,
        *,
        stats_rows: int | None = None,
        norm_stats: Mapping[str, tuple[Array, Array]] | None = None,
    ) -> Array:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}"
            )
        act = ACTIVATIONS[self.activation]
        impl = resolve_conv_impl(self.conv_impl)
        if x.ndim != 4:
            raise ValueError(f"Conv4 expects x of shape [n, h, w, c], got {x.shape}")
        x = x.astype(self.dtype)
        stride = 1 if self.pool else 2
        for i in range(4):
            kernel = self.param(
                f"conv{i}",
                nn.initializers.xavier_uniform(),
                (3, 3, x.shape[-1], self.filters),
                self.dtype,
            )
            if self.bn_scale:
                scale = self.param(
                    f"bn{i}_scale", nn.initializers.ones, (self.filters,), self.dtype
                )
            else:
                scale = jnp.ones((self.filters,), self.dtype)
            bias = self.param(f"bn{i}_bias", nn.initializers.zeros, (self.filters,), self.dtype)
            x = conv3x3(x, kernel, stride=stride, impl=impl)
            reporting = self.is_mutable_collection("batch_stats") and norm_stats is None
            if reporting and not self.is_initializing():
                # Only when asked (MAML++'s per-step running statistics); a no-op otherwise.
                self.sow("batch_stats", f"bn{i}", batch_moments(x, stats_rows=stats_rows))
            stats = None if norm_stats is None else norm_stats[f"bn{i}"]
            x = act(batch_stat_norm(x, scale, bias, stats_rows=stats_rows, stats=stats))
            if self.pool:
                x = max_pool2x2(x)
        if self.head == "mean":
            x = jnp.mean(x, axis=(1, 2))
        else:
            x = x.reshape(x.shape[0], -1)
        if self.num_classes is None:
            return x
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype, name="head")(x)
