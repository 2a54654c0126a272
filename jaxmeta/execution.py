"""How the tasks of a meta-batch are mapped: an execution setting, not an algorithm's.

Every learner computes one task's result (a loss and its gradient, Reptile's pseudo-gradient,
...) and needs it for all ``meta_batch_size`` tasks of a meta-step. How those tasks run is
the *task chunk* (config ``execution.task_chunk``, keyword ``task_chunk=`` of every
``meta_grad``, :func:`jaxmeta.meta_update` and the engine's step):

* ``None``: all tasks in one ``vmap`` (one batched program);
* an integer ``b``: ``lax.map`` over chunks of ``b`` vmapped tasks, one chunk after the other
  (bounded memory; ``b = 1``: one task at a time);
* ``"auto"`` (default): the fastest measured choice for the backend
  (:func:`resolve_task_chunk`): one task at a time on a single CPU device, all tasks vmapped
  on a GPU or when there are several devices (the task axis must stay vmapped to be sharded).

All choices compute the same function up to float rounding (summation order). Measurements:
benchmarks/README.md ("Task chunks" and the CPU speed sections).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxmeta.types import Array, Episode, Metrics, Params, PRNGKey
from jaxmeta.validation import check_int

__all__ = [
    "TaskChunk",
    "check_task_chunk",
    "map_tasks",
    "mean_map_tasks",
    "mean_task_grad",
    "resolve_task_chunk",
    "sum_over_tasks",
]

TaskChunk = int | str | None  # None: vmap all tasks; b: chunks of b; "auto": per backend
TaskFn = Callable[[Episode, PRNGKey], Any]  # one task's computation: (episode, key) -> pytree


def check_task_chunk(value: TaskChunk) -> TaskChunk:
    """Validate a ``task_chunk``: ``None``, ``"auto"`` or an int >= 1 (returned unchanged)."""
    if value is None or value == "auto":
        return value
    if isinstance(value, str):
        raise ValueError(f"task_chunk must be 'auto', null or an integer >= 1, got {value!r}")
    return check_int("task_chunk", value, minimum=1)


def resolve_task_chunk(value: TaskChunk, backend: str | None = None) -> int | None:
    """``"auto"`` -> how tasks are mapped fastest on ``backend`` (default: JAX's default
    backend, read at trace time): ``1`` (one task at a time) on a single CPU device, ``None``
    (all tasks vmapped) elsewhere; any other value is returned unchanged.

    Why: XLA:CPU runs a batched GEMM no faster than the small ones it batches and the vmapped
    working set spills the caches, so ``lax.map`` over single tasks is the faster MAML step on
    a CPU; on a GPU the vmapped program is (one kernel per layer for all tasks); with several
    devices the task axis must stay vmapped so that it can be sharded.
    """
    check_task_chunk(value)
    if value != "auto":
        return value
    backend = backend or jax.default_backend()
    return 1 if backend == "cpu" and jax.device_count() == 1 else None


def _chunk_and_keys(episodes: Episode, key: PRNGKey, task_chunk: TaskChunk):
    """``(chunk, keys)``: the resolved chunk (``None``: all tasks in one vmap) and the key of
    each task, ``jax.random.split(key, tasks)`` whatever the chunk."""
    chunk = resolve_task_chunk(task_chunk)
    tasks = episodes.support_x.shape[0]
    keys = jax.random.split(key, tasks)
    return (None if chunk is None or chunk >= tasks else chunk), keys


def map_tasks(fn: TaskFn, episodes: Episode, key: PRNGKey, *, task_chunk: TaskChunk = "auto"):
    """``fn(episode, key)`` for every task of ``episodes``, stacked on a leading task axis.

    Task ``t`` gets ``jax.random.split(key, tasks)[t]``, whatever ``task_chunk`` is.

    Args:
      fn: one task's computation, ``(episode, key) -> pytree``.
      episodes: a batch of tasks (leading ``[tasks]`` axis on every field).
      key: PRNG key of the batch.
      task_chunk: see the module docstring.

    Returns:
      ``fn``'s pytree with a leading ``[tasks]`` axis.
    """
    chunk, keys = _chunk_and_keys(episodes, key, task_chunk)
    if chunk is None:
        return jax.vmap(fn)(episodes, keys)
    return jax.lax.map(lambda a: fn(*a), (episodes, keys), batch_size=chunk)


def sum_over_tasks(x: Array) -> Array:
    """Sum over the leading (task) axis by pairwise halving: ``x[:h] + x[h:2h]``, repeated.

    Same value as ``jnp.sum(x, axis=0)`` up to summation order (pairwise summation, if
    anything more accurate). Why not ``jnp.sum``: on XLA:CPU (jaxlib 0.10.2) a reduction over
    the leading axis of arrays shaped like per-task Conv-4 gradients is emitted as a library
    fusion that ran far slower than these element-wise adds (benchmarks/README.md).
    """
    n = x.shape[0]
    if n == 0:
        return jnp.zeros(x.shape[1:], x.dtype)
    rest = None
    while n > 1:
        h = n // 2
        if n % 2:
            rest = x[n - 1] if rest is None else rest + x[n - 1]
        x = x[:h] + x[h : 2 * h]
        n = h
    return x[0] if rest is None else x[0] + rest


def mean_map_tasks(fn: TaskFn, episodes: Episode, key: PRNGKey, *, task_chunk: TaskChunk = "auto"):
    """Mean over the task axis of ``fn(episode, key)`` (any pytree of arrays).

    The mean of :func:`map_tasks` (same per-task keys), but with ``task_chunk=b`` the
    per-task results are summed into a running total inside the ``lax.scan`` over chunks
    instead of being stacked ``[tasks, ...]`` and reduced after the loop: no per-task copy of
    every gradient is kept and no separate reduction runs (the faster step on XLA:CPU;
    benchmarks/README.md). Sums within a chunk use :func:`sum_over_tasks`.
    """
    b, keys = _chunk_and_keys(episodes, key, task_chunk)
    tasks = keys.shape[0]
    total = lambda out: jax.tree_util.tree_map(sum_over_tasks, out)
    if b is None:
        # All tasks in one vmap: XLA fuses this mean into the producers of the per-task
        # results (a pairwise sum was measured slower here).
        out = jax.vmap(fn)(episodes, keys)
        return jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), out)
    full = tasks // b * b
    chunked = jax.tree_util.tree_map(
        lambda x: x[:full].reshape(full // b, b, *x.shape[1:]), (episodes, keys)
    )
    zeros = jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype),
        jax.eval_shape(fn, *jax.tree_util.tree_map(lambda x: x[0], (episodes, keys))),
    )

    def body(acc, chunk):
        part = total(jax.vmap(fn)(*chunk))
        return jax.tree_util.tree_map(jnp.add, acc, part), None

    acc, _ = jax.lax.scan(body, zeros, chunked)
    if full < tasks:
        rest = jax.tree_util.tree_map(lambda x: x[full:], (episodes, keys))
        acc = jax.tree_util.tree_map(jnp.add, acc, total(jax.vmap(fn)(*rest)))
    return jax.tree_util.tree_map(lambda x: x / tasks, acc)


def mean_task_grad(
    task_loss: Callable[[Params, Episode, PRNGKey], tuple[Array, Metrics]],
    params: Params,
    episodes: Episode,
    key: PRNGKey,
    *,
    task_chunk: TaskChunk = "auto",
) -> tuple[Params, Metrics]:
    """Mean over the task axis of ``grad(task_loss)(params, episode, key)`` and its metrics.

    ``task_loss(params, episode, key) -> (loss, metrics)`` is one task's loss; this is the
    meta-gradient of every learner whose meta-objective is a mean of per-task losses.
    """
    grad = jax.grad(task_loss, has_aux=True)
    return mean_map_tasks(lambda ep, k: grad(params, ep, k), episodes, key, task_chunk=task_chunk)
