"""Sinusoid regression tasks (MAML paper, Section 5.1), sampled on the device.

Each task is ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5]``, phase
``phi ~ U[0, pi]`` and inputs ``x ~ U[-5, 5]``; K support points (K = 5, 10, 20 in the
paper) and a query set from the same function.

References:
  Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep
  Networks. ICML 2017, Section 5.1.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxmeta.data.source import TaskSource, TaskSourceError, check_option
from jaxmeta.types import Array, Episode, PRNGKey
from jaxmeta.validation import check_int

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)


def sinusoid_params(key: PRNGKey, tasks: int) -> tuple[Array, Array]:
    """Amplitudes and phases ``[tasks]`` drawn from the paper's ranges."""
    ka, kp = jax.random.split(key)
    amp = jax.random.uniform(ka, (tasks,), minval=AMPLITUDE[0], maxval=AMPLITUDE[1])
    phase = jax.random.uniform(kp, (tasks,), minval=PHASE[0], maxval=PHASE[1])
    return amp, phase


def sample_sinusoid_tasks(key: PRNGKey, *, tasks: int, shots: int, queries: int) -> Episode:
    """A batch of sinusoid tasks, jittable (all sizes static).

    Args:
      key: PRNG key.
      tasks: meta-batch size (25 in the paper).
      shots: K support points per task.
      queries: query points per task (the paper uses K for meta-training).

    Returns:
      ``Episode`` with ``support_x, support_y: [tasks, shots, 1]`` and
      ``query_x, query_y: [tasks, queries, 1]``, float32.
    """
    tasks = check_int("tasks", tasks, minimum=1)
    shots = check_int("shots", shots, minimum=1)
    queries = check_int("queries", queries, minimum=1)
    kp, kx = jax.random.split(key)
    amp, phase = sinusoid_params(kp, tasks)
    x = jax.random.uniform(kx, (tasks, shots + queries, 1), minval=X_RANGE[0], maxval=X_RANGE[1])
    y = amp[:, None, None] * jnp.sin(x - phase[:, None, None])
    return Episode(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


def eval_sinusoid_tasks(*, episodes: int, shots: int, queries: int, seed: int = 0) -> Episode:
    """A fixed, seeded set of evaluation tasks (identical across runs and algorithms)."""
    return sample_sinusoid_tasks(jax.random.key(seed), tasks=episodes, shots=shots, queries=queries)


class SinusoidTasks(TaskSource):
    """Sinusoid regression (MAML paper, Section 5.1) as a task source: K support points, Q
    query points per task, drawn on the device (no data).

    Args:
      shots: K support points per task.
      queries: query points per task.

    Raises:
      TaskSourceError: a non-positive count, naming it.
    """

    name: ClassVar[str] = "sinusoid"
    classification: ClassVar[bool] = False
    input_shape = (1,)
    # Distinct fixed seeds per split so validation and test tasks differ.
    _SPLIT_SEED = {"train": 0, "val": 1_000_003, "test": 2_000_003}

    def __init__(self, *, shots: int = 1, queries: int = 15):
        self.shots = check_option("shots", shots, minimum=1)
        self.queries = check_option("queries", queries, minimum=1)

    def check_episodes(self, split: str, *, ways: int | None, shots: int, queries: int) -> None:
        if ways is not None:
            raise TaskSourceError("ways", "sinusoid is regression: it has no ways; leave it null")

    def train_data(self) -> tuple:
        return ()

    def sample(self, key: PRNGKey, data: Any, *, tasks: int) -> Episode:
        del data
        return sample_sinusoid_tasks(key, tasks=tasks, shots=self.shots, queries=self.queries)

    def fixed_episodes(
        self, split: str, *, episodes: int, seed: int, ways: int | None, shots: int, queries: int
    ) -> Episode:
        if ways is not None:
            raise ValueError("sinusoid regression has no classes: ways must be None")
        return eval_sinusoid_tasks(
            episodes=episodes, shots=shots, queries=queries, seed=seed + self._SPLIT_SEED[split]
        )

    @classmethod
    def prepare(cls) -> list[str]:
        """Nothing to prepare: sinusoid tasks are drawn on the device."""
        return ["sinusoid: tasks are drawn on the device inside the training step; no data"]
