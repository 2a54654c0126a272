"""2D navigation (Finn et al. 2017, Section 5.3), in pure JAX.

A point agent starts at the origin; its action is a velocity, clipped to
``[-max_action, max_action]`` per coordinate (0.1), added to its position. The dense task
rewards minus the L2 distance to the goal after the move; the episode ends when both
coordinates are within 0.01 of the goal (the convention of cbfinn/maml_rl
``point_env_randgoal.py`` and pytorch-maml-rl ``navigation.py``). Goals are uniform in
``[-0.5, 0.5]^2``; the horizon is 100 steps.

The sparse variant (``sparse=True``) has the same dynamics and goals, rewards 1 inside a
disc of radius ``goal_radius`` around the goal and 0 elsewhere (the sparse point robot
of Dorfman et al. 2021 and gymnax's ``PointRobot-misc``, on the MAML goal distribution),
and never terminates early.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxmeta.rl.envs.base import Environment
from jaxmeta.types import Array, PRNGKey


class NavTask(NamedTuple):
    """goal: ``[2]`` (``[n, 2]`` for a batch of tasks)."""

    goal: Array


class NavState(NamedTuple):
    """pos: ``[2]`` agent position; goal: ``[2]`` the task's goal."""

    pos: Array
    goal: Array


def navigation2d(
    *,
    low: float = -0.5,
    high: float = 0.5,
    max_action: float = 0.1,
    horizon: int = 100,
    sparse: bool = False,
    goal_radius: float = 0.2,
    dtype: jax.typing.DTypeLike = jnp.float32,
) -> Environment:
    """The 2D navigation environment.

    Args:
      low, high: goals are uniform in ``[low, high]^2``.
      max_action: actions are clipped to ``[-max_action, max_action]`` per coordinate.
      horizon: steps per episode (100 in the paper).
      sparse: reward 1 within ``goal_radius`` of the goal, else 0 (no early termination).
      goal_radius: radius of the rewarded disc of the sparse variant.
      dtype: dtype of positions, observations and rewards.

    Returns:
      An :class:`~jaxmeta.rl.envs.Environment` (observation = position ``[2]``,
      action ``[2]``, task = :class:`NavTask`).

    References:
      Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
      Networks", ICML 2017, Section 5.3.
    """
    dtype = jnp.dtype(dtype)

    def sample_tasks(key: PRNGKey, n: int) -> NavTask:
        return NavTask(jax.random.uniform(key, (n, 2), dtype, minval=low, maxval=high))

    def reset(key: PRNGKey, task: NavTask) -> tuple[NavState, Array]:
        del key  # deterministic start at the origin
        pos = jnp.zeros((2,), dtype)
        return NavState(pos, jnp.asarray(task.goal, dtype)), pos

    def step(state: NavState, action: Array) -> tuple[NavState, Array, Array, Array]:
        action = jnp.clip(jnp.asarray(action, dtype), -max_action, max_action)
        pos = state.pos + action
        delta = pos - state.goal
        distance = jnp.sqrt(jnp.sum(delta * delta))
        if sparse:
            reward = (distance <= goal_radius).astype(dtype)
            done = jnp.zeros((), bool)
        else:
            reward = -distance
            done = jnp.all(jnp.abs(delta) < 0.01)
        return NavState(pos, state.goal), pos, reward, done

    name = "navigation2d_sparse" if sparse else "navigation2d"
    return Environment(name, 2, 2, horizon, sample_tasks, reset, step)
