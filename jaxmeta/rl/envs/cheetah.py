"""Half-cheetah forward/backward and velocity tasks (Finn et al. 2017, Section 5.3) on brax.

The physics is brax's ``halfcheetah`` (MuJoCo's model, 17-D observation, 6-D action in
``[-1, 1]``, ``dt = 0.05``) from the optional extra ``jaxmeta[rl]``; the reward is
replaced by the paper's task reward, as in rllab's ``HalfCheetahEnvRandDirec`` /
``HalfCheetahEnvRand`` (cbfinn/maml_rl):

* direction: ``goal_direction * forward_velocity - 0.05 * |a|^2``, goal direction ``+-1``
  with probability 1/2;
* velocity: ``-|forward_velocity - goal_velocity| - 0.05 * |a|^2``, goal velocity
  uniform in ``[0, 2]``.

The horizon is 200 steps (cbfinn/maml_rl's ``max_path_length`` for the cheetah).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxmeta.rl.envs.base import Environment
from jaxmeta.types import Array, PRNGKey


def _brax_env(backend: str):
    try:
        from brax import envs as brax_envs
    except ImportError as err:  # the optional extra is missing
        raise ImportError("the half-cheetah tasks need brax: pip install 'jaxmeta[rl]'") from err
    return brax_envs.get_environment("halfcheetah", backend=backend)


class CheetahState(NamedTuple):
    """brax's state and the task's goal (direction ``+-1`` or velocity), ``[]``."""

    brax: Any
    goal: Array


def _cheetah(name: str, kind: str, *, backend: str, horizon: int, ctrl_cost: float):
    env = _brax_env(backend)

    def sample_tasks(key: PRNGKey, n: int) -> Array:
        if kind == "direction":
            return jnp.where(jax.random.bernoulli(key, 0.5, (n,)), 1.0, -1.0)
        return jax.random.uniform(key, (n,), jnp.float32, minval=0.0, maxval=2.0)

    # brax broadcasts implicitly; allow it inside its calls even where the caller (e.g.
    # jaxmeta's tests) raises on rank promotion.
    def reset(key: PRNGKey, task: Array) -> tuple[CheetahState, Array]:
        with jax.numpy_rank_promotion("allow"):
            state = env.reset(key)
        return CheetahState(state, jnp.asarray(task, jnp.float32)), state.obs

    def step(state: CheetahState, action: Array):
        action = jnp.clip(action, -1.0, 1.0)
        with jax.numpy_rank_promotion("allow"):
            nxt = env.step(state.brax, action)
        velocity = nxt.metrics["x_velocity"]
        cost = ctrl_cost * jnp.sum(action * action)
        if kind == "direction":
            reward = state.goal * velocity - cost
        else:
            reward = -jnp.abs(velocity - state.goal) - cost
        return CheetahState(nxt, state.goal), nxt.obs, reward, nxt.done > 0.5

    return Environment(
        name, env.observation_size, env.action_size, horizon, sample_tasks, reset, step
    )


def halfcheetah_dir(
    *, backend: str = "positional", horizon: int = 200, ctrl_cost: float = 0.05
) -> Environment:
    """Half-cheetah forward/backward: the task is the goal direction ``+-1``.

    Args:
      backend: brax pipeline (``"positional"``, ``"spring"``, ``"generalized"`` or
        ``"mjx"``; all four compile and run on the CPU with brax 0.14.2).
      horizon: steps per episode (200).
      ctrl_cost: weight of ``|a|^2`` (0.05 = rllab's ``0.5 * 1e-1``).

    References:
      Finn et al., ICML 2017, Section 5.3; Freeman et al., "Brax", NeurIPS 2021 Datasets
      and Benchmarks.
    """
    return _cheetah(
        "halfcheetah_dir", "direction", backend=backend, horizon=horizon, ctrl_cost=ctrl_cost
    )


def halfcheetah_vel(
    *, backend: str = "positional", horizon: int = 200, ctrl_cost: float = 0.05
) -> Environment:
    """Half-cheetah velocity: the task is a goal velocity uniform in ``[0, 2]``.

    Args and References: as :func:`halfcheetah_dir`.
    """
    return _cheetah(
        "halfcheetah_vel", "velocity", backend=backend, horizon=horizon, ctrl_cost=ctrl_cost
    )
