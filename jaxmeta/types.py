"""Core data types shared by every algorithm, sampler and the training engine."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any  # a pytree of arrays
PyTree = Any


class Episode(NamedTuple):
    """One few-shot task (or a batch of tasks when every field has a leading task axis).

    Shapes for one N-way K-shot task with Q queries per class on Omniglot:
      support_x: [n_way*k_shot, 28, 28, 1] float32
      support_y: [n_way*k_shot] int32 in [0, n_way)
      query_x:   [n_way*q_query, 28, 28, 1] float32
      query_y:   [n_way*q_query] int32 in [0, n_way)
    For regression, ``*_y`` are float arrays ``[n, out_dim]``. A batch of tasks adds a
    leading ``[tasks]`` axis to every field.
    """

    support_x: Array
    support_y: Array
    query_x: Array
    query_y: Array
