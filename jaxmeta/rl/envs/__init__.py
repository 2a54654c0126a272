"""Environments written in JAX: the protocol every meta-RL environment follows, and the registry.

An environment is an :class:`Environment` of pure functions over arrays (no Python state),
so that ``reset`` and ``step`` can be ``vmap``-ped over trajectories and tasks and scanned
over the horizon inside one compiled program. A *task* is a pytree of arrays (the 2D
navigation goal, a cheetah's goal direction or velocity); ``sample_tasks(key, n)`` returns
``n`` of them stacked on a leading axis.

Adding an environment = one module with a lowercase factory returning an
:class:`Environment`, plus one entry in :data:`ENVIRONMENTS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxmeta.rl.envs.base import Environment, EnvState, Task
from jaxmeta.rl.envs.navigation import navigation2d


def _navigation_sparse(**kwargs: Any) -> Environment:
    return navigation2d(sparse=True, **kwargs)


def _cheetah_dir(**kwargs: Any) -> Environment:
    from jaxmeta.rl.envs.cheetah import halfcheetah_dir

    return halfcheetah_dir(**kwargs)


def _cheetah_vel(**kwargs: Any) -> Environment:
    from jaxmeta.rl.envs.cheetah import halfcheetah_vel

    return halfcheetah_vel(**kwargs)


# The cheetah's factories are imported lazily: they need the optional extra ``jaxmeta[rl]`` (brax).
ENVIRONMENTS: dict[str, Callable[..., Environment]] = {
    "navigation2d": navigation2d,
    "navigation2d_sparse": _navigation_sparse,
    "halfcheetah_dir": _cheetah_dir,
    "halfcheetah_vel": _cheetah_vel,
}


def make_env(name: str, **kwargs: Any) -> Environment:
    """The environment registered as ``name``, built with the factory's keyword arguments."""
    try:
        factory = ENVIRONMENTS[name]
    except KeyError:
        raise ValueError(
            f"unknown environment {name!r}; registered: {', '.join(sorted(ENVIRONMENTS))}"
        ) from None
    return factory(**kwargs)


__all__ = ["ENVIRONMENTS", "EnvState", "Environment", "Task", "make_env"]
