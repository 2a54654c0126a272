"""The one train state and the one meta-training step, shared by the library API, the
engine (``jaxmeta train``), the experiments and the benchmarks.

::

    state = init_train_state(learner, optimizer, model_params, key=key)
    state, metrics = meta_update(learner, optimizer, state, episodes, step_key(state))
    chunk = make_train_chunk(learner, optimizer, sample, length=10)   # 10 fused steps
    state, metrics = chunk(state, data, n)                           # jitted, lax.scan

Everything here is a pure function of arrays: a state can be ``vmap``-ed over a leading
axis (e.g. several runs), and nothing retraces between steps.

Exact resume: the key of step ``s`` is ``fold_in(state.key, s)`` (:func:`step_key`), a pure
function of the run's base key and the step counter, both in the checkpoint. The random
stream therefore does not depend on how many steps each call fused, where a run was
interrupted, or how many times it was resumed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxmeta.algorithms.base import MetaLearner, apply_gradients
from jaxmeta.execution import TaskChunk, check_task_chunk
from jaxmeta.types import Array, Episode, Metrics, Params, PRNGKey, PyTree

__all__ = [
    "MetaTrainState",
    "TrainState",
    "apply_gradients",
    "init_meta_train_state",
    "init_train_state",
    "learner_init_key",
    "make_meta_step",
    "make_population_chunk",
    "make_train_chunk",
    "meta_update",
    "scan_train_steps",
    "step_key",
    "train_step",
]

_FIELDS = ("params", "opt_state", "step", "key")
# learner.init's key: fold_in(run key, this). Steps are int32, so no step key
# (fold_in(run key, step)) is ever this one.
_LEARNER_INIT_FOLD = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a training run carries from step to step; a pytree of arrays only.

    Attributes:
      params: meta-parameters (what the algorithm's ``init`` returned).
      opt_state: optax state of the outer optimizer.
      step: ``int32[]`` meta-steps done.
      key: ``uint32[2]`` raw data of the run's base PRNG key (constant during a run;
        raw data so that any checkpoint format can hold it).
      learner_state: the learner's own state (``MetaLearner.init_state``), or ``None``.
        ``None`` is no entry at all in the pytree, so the checkpoints of learners without
        state have exactly the four entries above (those written before this slot existed
        restore unchanged).
    """

    params: Params
    opt_state: optax.OptState
    step: Array
    key: Array
    learner_state: PyTree = None

    def replace(self, **changes: Any) -> TrainState:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)

    _replace = replace  # the NamedTuple spelling, for code written against the old states


def _flatten(state: TrainState):
    names = _FIELDS + (() if state.learner_state is None else ("learner_state",))
    children = [(jax.tree_util.GetAttrKey(n), getattr(state, n)) for n in names]
    return children, len(names) > len(_FIELDS)


def _unflatten(has_learner_state: bool, children) -> TrainState:
    return TrainState(*children) if has_learner_state else TrainState(*children, None)


jax.tree_util.register_pytree_with_keys(TrainState, _flatten, _unflatten)

MetaTrainState = TrainState  # the library API's former name for the same state


def learner_init_key(key: PRNGKey) -> PRNGKey:
    """The key ``learner.init`` gets from a run key: one no training step uses."""
    return jax.random.fold_in(_typed(key), _LEARNER_INIT_FOLD)


def _typed(key: Array) -> PRNGKey:
    return key if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(key)


def init_train_state(
    learner: MetaLearner,
    optimizer: optax.GradientTransformation,
    model_params: Params,
    *,
    key: PRNGKey,
) -> TrainState:
    """Fresh state at step 0.

    Args:
      learner: the algorithm; ``learner.init(learner_init_key(key), model_params)`` gives
        the meta-parameters (and ``learner.init_state`` the learner state, if any).
      optimizer: the outer optimizer.
      model_params: the model's parameters (e.g. ``model.init(...)``).
      key: the run's base key (typed or raw ``uint32[2]``): step ``s`` uses
        ``fold_in(key, s)``, ``learner.init`` a key no step uses.
    """
    key = _typed(key)
    init_key = learner_init_key(key)
    meta_params = learner.init(init_key, model_params)
    learner_state = None
    if learner.init_state is not None:
        learner_state = learner.init_state(init_key, meta_params)
    return TrainState(
        params=meta_params,
        opt_state=optimizer.init(meta_params),
        step=jnp.zeros((), jnp.int32),
        key=jax.random.key_data(key).astype(jnp.uint32),
        learner_state=learner_state,
    )


def init_meta_train_state(
    learner: MetaLearner,
    optimizer: optax.GradientTransformation,
    model_params: Params,
    *,
    key: PRNGKey | None = None,
) -> TrainState:
    """:func:`init_train_state` with a default run key, ``jax.random.key(0)`` (the library
    API's former entry point; pass ``key=`` to vary the run)."""
    key = jax.random.key(0) if key is None else key
    return init_train_state(learner, optimizer, model_params, key=key)


def step_key(state: TrainState) -> PRNGKey:
    """The key of the step about to run: ``fold_in(base key, step)``."""
    return jax.random.fold_in(_typed(state.key), state.step)


def meta_update(
    learner: MetaLearner,
    optimizer: optax.GradientTransformation,
    state: TrainState,
    episodes: Episode,
    key: PRNGKey,
    *,
    task_chunk: TaskChunk = "auto",
) -> tuple[TrainState, Metrics]:
    """One meta-step on given episodes (not jitted: compose it, or :func:`make_meta_step`).

    ``learner.meta_grad`` then ``optimizer`` (:func:`apply_gradients`), or the learner's own
    outer update when it has one (``MetaLearner.update``, the outer-update hook). The step
    counter advances by one and the run key is kept, whatever the update returns.

    Args:
      learner, optimizer: the algorithm and the outer optimizer.
      state: the train state.
      episodes: a batch of tasks (leading ``[tasks]`` axis).
      key: this step's key for the algorithm (e.g. Reptile's mini-batches).
      task_chunk: how the tasks are mapped (:mod:`jaxmeta.execution`).
    """
    check_task_chunk(task_chunk)
    if learner.update is not None:
        new, metrics = learner.update(
            state, episodes, key, optimizer=optimizer, task_chunk=task_chunk
        )
    else:
        grads, metrics = learner.meta_grad(state.params, episodes, key, task_chunk=task_chunk)
        new, metrics = apply_gradients(optimizer, state, grads, metrics)
    return new.replace(step=state.step + 1, key=state.key), dict(metrics)


def make_meta_step(
    learner: MetaLearner,
    optimizer: optax.GradientTransformation,
    *,
    task_chunk: TaskChunk = "auto",
    donate: bool = False,
) -> Callable[[TrainState, Episode, PRNGKey], tuple[TrainState, Metrics]]:
    """The jit-compiled :func:`meta_update`: ``(state, episodes, key) -> (state, metrics)``.

    Compiled once per episode shape; the learner, optimizer and task chunk are static.
    """
    check_task_chunk(task_chunk)

    def step(state, episodes, key):
        return meta_update(learner, optimizer, state, episodes, key, task_chunk=task_chunk)

    return jax.jit(step, donate_argnums=(0,) if donate else ())


def train_step(
    learner: MetaLearner,
    optimizer: optax.GradientTransformation,
    sample: Callable[[PRNGKey, PyTree], Episode],
    state: TrainState,
    data: PyTree,
    *,
    task_chunk: TaskChunk = "auto",
) -> tuple[TrainState, Metrics]:
    """One engine meta-step: episodes sampled on the device from ``data``, then
    :func:`meta_update`; the keys come from :func:`step_key` (exact resume)."""
    k_data, k_alg = jax.random.split(step_key(state))
    episodes = sample(k_data, data)
    return meta_update(learner, optimizer, state, episodes, k_alg, task_chunk=task_chunk)


def make_train_chunk(
    learner: MetaLearner,
    optimizer: optax.GradientTransformation,
    sample: Callable[[PRNGKey, PyTree], Episode],
    *,
    length: int,
    task_chunk: TaskChunk = "auto",
    donate: bool = True,
) -> Callable[[TrainState, PyTree, Array], tuple[TrainState, Metrics]]:
    """``length`` meta-steps (:func:`train_step`) fused in one jitted ``lax.scan``.

    Args:
      learner, optimizer: the algorithm and outer optimizer (captured statically).
      sample: ``(key, data) -> Episode`` batch of tasks, jittable.
      length: static scan length (``train.steps_per_call``).
      task_chunk: how the tasks are mapped (:mod:`jaxmeta.execution`).
      donate: donate the input state's buffers (it is replaced by the output).

    Returns:
      A jitted ``chunk(state, data, n) -> (state, metrics)`` that runs the first
      ``n <= length`` steps (``n`` is a traced int32, so shorter chunks at log,
      checkpoint or run boundaries reuse the same compiled program) and leaves the
      state unchanged for the rest; ``metrics`` are stacked ``[length]`` per step and
      only the first ``n`` rows are meaningful.
    """
    check_task_chunk(task_chunk)

    def chunk(state: TrainState, data: PyTree, n: Array):
        return scan_train_steps(
            learner, optimizer, sample, state, data, n, length=length, task_chunk=task_chunk
        )

    return jax.jit(chunk, donate_argnums=(0,) if donate else ())


def scan_train_steps(
    learner: MetaLearner,
    optimizer: optax.GradientTransformation,
    sample: Callable[[PRNGKey, PyTree], Episode],
    state: TrainState,
    data: PyTree,
    n: Array,
    *,
    length: int,
    task_chunk: TaskChunk = "auto",
) -> tuple[TrainState, Metrics]:
    """The body of :func:`make_train_chunk`, not jitted (so it composes, e.g. under the
    ``vmap`` over runs of :func:`make_population_chunk`): the first ``n`` of ``length``
    :func:`train_step` calls in a ``lax.scan``; the remaining ones keep the state and give
    NaN metrics."""

    def one(state: TrainState, data: PyTree):
        return train_step(learner, optimizer, sample, state, data, task_chunk=task_chunk)

    _, metrics_shape = jax.eval_shape(one, state, data)
    skipped = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype), metrics_shape)

    def body(state, i):
        return jax.lax.cond(i < n, one, lambda s, d: (s, skipped), state, data)

    return jax.lax.scan(body, state, jnp.arange(length, dtype=jnp.int32))


def make_population_chunk(
    build: Callable[[PyTree], tuple[MetaLearner, optax.GradientTransformation]],
    sample: Callable[[PRNGKey, PyTree], Episode],
    *,
    length: int,
    task_chunk: TaskChunk = "auto",
    donate: bool = True,
    spmd_axis_name: str | None = None,
) -> Callable[[TrainState, PyTree, PyTree, Array], tuple[TrainState, Metrics]]:
    """:func:`make_train_chunk` for a population of independent runs, ``vmap``-ed over a
    leading run axis of the state.

    Args:
      build: ``hparams -> (learner, optimizer)`` for one run; ``hparams`` is that run's slice
        of the per-run hyperparameters (traced scalars, e.g. ``{"inner_lr": f32[]}``), so
        one program serves every value. It is called while tracing, once.
      sample, length, task_chunk, donate: as in :func:`make_train_chunk`.
      spmd_axis_name: the mesh axis the run axis is split over (a 2-D runs x tasks mesh,
        :func:`jaxmeta.sharding.make_population_mesh`), so that sharding constraints inside
        a run (the task axis) keep the run axis split; ``None`` on one device.

    Returns:
      A jitted ``chunk(states, hparams, data, n) -> (states, metrics)``: ``states`` and
      ``hparams`` carry a leading ``[runs]`` axis, ``data`` and ``n`` are shared; the
      metrics are ``[runs, length]``. Run ``i`` computes what a single run with its state
      and hyperparameters computes.
    """
    check_task_chunk(task_chunk)

    def one_run(state: TrainState, hparams: PyTree, data: PyTree, n: Array):
        learner, optimizer = build(hparams)
        return scan_train_steps(
            learner, optimizer, sample, state, data, n, length=length, task_chunk=task_chunk
        )

    def chunk(states: TrainState, hparams: PyTree, data: PyTree, n: Array):
        return jax.vmap(one_run, in_axes=(0, 0, None, None), spmd_axis_name=spmd_axis_name)(
            states, hparams, data, n
        )

    return jax.jit(chunk, donate_argnums=(0,) if donate else ())
