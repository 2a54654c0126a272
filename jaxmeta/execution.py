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

*Tasks in flight* (``tasks_in_flight=`` of :func:`mean_map_tasks` / :func:`mean_task_grad`,
passed ``"auto"`` by the MAML-family learners): with ``task_chunk="auto"`` resolved to one task
at a time on a single CPU device, small tasks (at most :data:`CPU_IN_FLIGHT_MAX_ELEMENTS` input
numbers) run :data:`CPU_TASKS_IN_FLIGHT` per ``lax.scan`` iteration as independent single-task
programs (no ``vmap``), which XLA:CPU's executor overlaps on the two cores; every other
backend, chunk and task size keeps the plain one-task-per-iteration loop.
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
    "resolve_tasks_in_flight",
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


# Tasks per lax.scan iteration when "auto" runs one task at a time on one CPU device, and the
# largest task (input numbers of support + query sets) that gets them. Measured on the project's
# 2-core CPU (benchmarks/README.md, "Two small tasks in flight"): the MAML training step
# (5-way 1-shot, 1 query per class: 10 x 28 x 28 = 7,840 numbers per task) 0.80-0.85x the time,
# 5 inner steps 0.86x; with 15 queries per class (62,720) 9-18% slower in probes (two tasks'
# activations no longer fit the caches), so larger tasks keep one task per step.
CPU_TASKS_IN_FLIGHT = 2
CPU_IN_FLIGHT_MAX_ELEMENTS = 2**14


def resolve_tasks_in_flight(
    tasks_in_flight: int | str,
    task_chunk: TaskChunk,
    episodes: Episode,
    backend: str | None = None,
) -> int:
    """How many tasks one ``lax.scan`` iteration of :func:`mean_map_tasks` runs.

    ``"auto"``: :data:`CPU_TASKS_IN_FLIGHT` when ``task_chunk="auto"`` resolves to one task at a
    time on a single CPU device (``backend``, default JAX's default backend, read at trace time)
    and one task's support + query inputs hold at most :data:`CPU_IN_FLIGHT_MAX_ELEMENTS`
    numbers; ``1`` otherwise (every GPU/TPU program, explicit chunks, large tasks). An int >= 1
    is returned unchanged (it only applies to chunks of one task).
    """
    if tasks_in_flight != "auto":
        return check_int("tasks_in_flight", tasks_in_flight, minimum=1)
    if task_chunk != "auto" or resolve_task_chunk("auto", backend) != 1:
        return 1
    if (backend or jax.default_backend()) != "cpu":
        return 1
    per_task = sum(
        x[0].size
        for x in (episodes.support_x, episodes.query_x)
        if hasattr(x, "shape") and x.ndim >= 1 and x.shape[0] > 0
    )
    return CPU_TASKS_IN_FLIGHT if per_task <= CPU_IN_FLIGHT_MAX_ELEMENTS else 1


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


def mean_map_tasks(
    fn: TaskFn,
    episodes: Episode,
    key: PRNGKey,
    *,
    task_chunk: TaskChunk = "auto",
    tasks_in_flight: int | str = 1,
):
    """Mean over the task axis of ``fn(episode, key)`` (any pytree of arrays).

    The mean of :func:`map_tasks` (same per-task keys), but with ``task_chunk=b`` the
    per-task results are summed into a running total inside the ``lax.scan`` over chunks
    instead of being stacked ``[tasks, ...]`` and reduced after the loop: no per-task copy of
    every gradient is kept and no separate reduction runs (the faster step on XLA:CPU;
    benchmarks/README.md). Sums within a chunk use :func:`sum_over_tasks`.

    ``tasks_in_flight``: with chunks of one task, how many tasks each scan iteration runs as
    separate un-vmapped programs (:func:`resolve_tasks_in_flight`; ``1``: one, the default).
    """
    b, keys = _chunk_and_keys(episodes, key, task_chunk)
    tasks = keys.shape[0]
    u = resolve_tasks_in_flight(tasks_in_flight, task_chunk, episodes) if b == 1 else 1
    if u > 1:
        return _mean_in_flight(fn, episodes, keys, u)
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


def _mean_in_flight(fn: TaskFn, episodes: Episode, keys: Array, u: int):
    """Mean of ``fn`` over tasks, ``u`` independent single-task calls per ``lax.scan`` step.

    The ``u`` calls are traced one after the other but share no data, so XLA:CPU's thunk
    executor can run their (small) operations at the same time; no ``vmap``, so no batched
    dots. Tasks ``t`` and ``t + 1`` are summed into the running total in task order."""
    tasks = keys.shape[0]
    full = tasks // u * u
    one = lambda tree, i: jax.tree_util.tree_map(lambda x: x[i], tree)
    groups = jax.tree_util.tree_map(
        lambda x: x[:full].reshape(full // u, u, *x.shape[1:]), (episodes, keys)
    )
    zeros = jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, *one((episodes, keys), 0))
    )

    def body(acc, group):
        for i in range(u):  # static unroll: u independent programs, not a runtime loop
            acc = jax.tree_util.tree_map(jnp.add, acc, fn(*one(group, i)))
        return acc, None

    acc, _ = jax.lax.scan(body, zeros, groups)
    for t in range(full, tasks):  # at most u - 1 leftover tasks, unrolled
        acc = jax.tree_util.tree_map(jnp.add, acc, fn(*one((episodes, keys), t)))
    return jax.tree_util.tree_map(lambda x: x / tasks, acc)


def mean_task_grad(
    task_loss: Callable[[Params, Episode, PRNGKey], tuple[Array, Metrics]],
    params: Params,
    episodes: Episode,
    key: PRNGKey,
    *,
    task_chunk: TaskChunk = "auto",
    tasks_in_flight: int | str = 1,
) -> tuple[Params, Metrics]:
    """Mean over the task axis of ``grad(task_loss)(params, episode, key)`` and its metrics.

    ``task_loss(params, episode, key) -> (loss, metrics)`` is one task's loss; this is the
    meta-gradient of every learner whose meta-objective is a mean of per-task losses.
    ``tasks_in_flight``: see :func:`mean_map_tasks`.
    """
    grad = jax.grad(task_loss, has_aux=True)
    return mean_map_tasks(
        lambda ep, k: grad(params, ep, k),
        episodes,
        key,
        task_chunk=task_chunk,
        tasks_in_flight=tasks_in_flight,
    )
