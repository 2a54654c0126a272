"""The protocol every meta-RL environment follows (:class:`Environment`), apart from the
registry in :mod:`jaxmeta.rl.envs` so that the environment modules the registry imports
lazily do not import the registry back."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from jaxmeta.types import Array, PRNGKey, PyTree

Task = PyTree
EnvState = PyTree


class Environment(NamedTuple):
    """A meta-RL environment as pure functions (one task, one trajectory; vmap for more).

    Attributes:
      name: registry name.
      obs_size: length of an observation vector.
      action_size: length of an action vector.
      horizon: default episode length (the number of ``step`` calls of a rollout).
      sample_tasks: ``(key, n) -> tasks`` with a leading ``[n]`` axis on every leaf.
      reset: ``(key, task) -> (state, obs[obs_size])`` for ONE task.
      step: ``(state, action[action_size]) -> (state, obs, reward[], done[])``; ``action``
        is the raw policy output (the environment clips it); ``done`` ends the episode
        (the rollout masks what follows).
    """

    name: str
    obs_size: int
    action_size: int
    horizon: int
    sample_tasks: Callable[[PRNGKey, int], Task]
    reset: Callable[[PRNGKey, Task], tuple[EnvState, Array]]
    step: Callable[[EnvState, Array], tuple[EnvState, Array, Array, Array]]


__all__ = ["EnvState", "Environment", "Task"]
