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

import jax
import jax.numpy as jnp

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
