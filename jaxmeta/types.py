"""Core data types shared by every algorithm, sampler and the training engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a pytree of arrays
PyTree = Any
Metrics = dict[str, Array]  # scalar (or per-step, per-episode) metrics by name
# A model as every algorithm sees it: ``(params, x[n, ...]) -> outputs[n, ...]`` (e.g. a Flax
# module's ``apply``); models with batch statistics also take ``stats_rows=`` (BatchNorm modes).
ApplyFn = Callable[..., Array]
# One task's loss: ``(predictions, targets) -> scalar``.
LossFn = Callable[[Array, Array], Array]


class Episode(NamedTuple):
    """One few-shot task (or a batch of tasks when every field has a leading task axis).

    Shapes for one N-way K-shot task with Q queries per class of images ``[H, W, C]``
    (Omniglot: 28x28x1):
      support_x: [ways*shots, H, W, C] float32
      support_y: [ways*shots] int32 in [0, ways)
      query_x:   [ways*queries, H, W, C] float32
      query_y:   [ways*queries] int32 in [0, ways)
    For regression, ``*_x``/``*_y`` are float arrays ``[n, in_dim]``/``[n, out_dim]``. A batch
    of tasks adds a leading ``[tasks]`` axis to every field.
    """

    support_x: Array
    support_y: Array
    query_x: Array
    query_y: Array
