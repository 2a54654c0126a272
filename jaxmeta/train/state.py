"""The training state pytree and the fused, jit-compiled training step.

Exact resume: the key of step ``s`` is ``fold_in(state.key, s)``, a pure function of
the run's base key and the step counter, both of which are in the checkpoint. The
random stream therefore does not depend on how many steps each host call fused, where
a run was interrupted, or how many times it was resumed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmeta.algorithms.base import MetaLearner, MetaTrainState, meta_update
from jaxmeta.types import Array, Episode, Params, PRNGKey, PyTree

Metrics = dict[str, Array]


class TrainState(NamedTuple):
    """Everything a training run carries from step to step; arrays only.

    Attributes:
      params: meta-parameters (what the algorithm's ``init`` returned).
      opt_state: optax state of the outer optimizer.
      step: ``int32[]`` meta-steps done.
      key: ``uint32[2]`` raw data of the run's base PRNG key (constant during a run;
        stored as raw data so any checkpoint format can hold it).
    """

    params: Params
    opt_state: optax.OptState
    step: Array
    key: Array


def init_train_state(
    learner: MetaLearner,
    optimizer: optax.GradientTransformation,
    model_params: Params,
    *,
    key: PRNGKey,
) -> TrainState:
    """Fresh state at step 0; ``key`` is the run's base key (typed or raw)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    meta_params = learner.init(model_params)
    return TrainState(
        params=meta_params,
        opt_state=optimizer.init(meta_params),
        step=jnp.zeros((), jnp.int32),
        key=jnp.asarray(key, jnp.uint32),
    )


def step_key(state: TrainState) -> PRNGKey:
    """The key of the step about to run: ``fold_in(base key, step)``."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)


def train_step(
    learner: MetaLearner,
    optimizer: optax.GradientTransformation,
    sample: Callable[[PRNGKey, PyTree], Episode],
    state: TrainState,
    data: PyTree,
) -> tuple[TrainState, Metrics]:
    """One meta-step: sample episodes on the device from ``data``, meta-update."""
    k_data, k_alg = jax.random.split(step_key(state))
    episodes = sample(k_data, data)
    inner = MetaTrainState(state.params, state.opt_state, state.step)
    new, metrics = meta_update(learner, optimizer, inner, episodes, k_alg)
    return TrainState(new.params, new.opt_state, new.step, state.key), metrics


def make_train_chunk(
    learner: MetaLearner,
    optimizer: optax.GradientTransformation,
    sample: Callable[[PRNGKey, PyTree], Episode],
    *,
    length: int,
    donate: bool = True,
) -> Callable[[TrainState, PyTree, Array], tuple[TrainState, Metrics]]:
    """``length`` meta-steps fused in one jitted ``lax.scan``: ``(state, data, n)``.

    Args:
      learner, optimizer: the algorithm and outer optimizer (captured statically).
      sample: ``(key, data) -> Episode`` batch of tasks, jittable.
      length: static scan length (``train.steps_per_call``).
      donate: donate the input state's buffers (it is replaced by the output).

    Returns:
      A jitted ``chunk(state, data, n) -> (state, metrics)`` that runs the first
      ``n <= length`` steps (``n`` is a traced int32, so shorter chunks at log,
      checkpoint or run boundaries reuse the same compiled program) and leaves the
      state unchanged for the rest; ``metrics`` are stacked ``[length]`` per step and
      only the first ``n`` rows are meaningful.
    """

    def one(state: TrainState, data: PyTree):
        return train_step(learner, optimizer, sample, state, data)

    def chunk(state: TrainState, data: PyTree, n: Array):
        _, metrics_shape = jax.eval_shape(one, state, data)
        skipped = jax.tree_util.tree_map(
            lambda s: jnp.full(s.shape, jnp.nan, s.dtype), metrics_shape
        )

        def body(state, i):
            return jax.lax.cond(i < n, one, lambda s, d: (s, skipped), state, data)

        return jax.lax.scan(body, state, jnp.arange(length, dtype=jnp.int32))

    return jax.jit(chunk, donate_argnums=(0,) if donate else ())


def abstract_state(state: TrainState) -> Any:
    """``jax.ShapeDtypeStruct`` tree of a state (the restore target)."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        state,
    )
