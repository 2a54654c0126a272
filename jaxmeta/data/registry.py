"""Task sources for the training engine: one small object per dataset.

A task source knows how to turn its device-resident data into batches of episodes
inside a jitted step, and how to build the fixed evaluation episodes of a split::

    source = get_task_source("omniglot")(ways=5, shots=1, queries=15)
    data = source.train_data()                      # pytree of arrays, put on device once
    episodes = source.sample(key, data, tasks=32)   # jittable: data is an argument
    test = source.eval_episodes("test", episodes=600, seed=0)

``data`` is an explicit argument of :meth:`sample` (never closed over) so the jitted
training step does not embed the dataset as a constant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np

from jaxmeta.types import Episode, PRNGKey, PyTree


class TaskSource(Protocol):
    """What the engine needs from a dataset.

    Attributes:
      name: dataset name.
      classification: integer labels (cross-entropy, accuracy) or regression (MSE).
      splits: split names available for evaluation.
    """

    name: str
    classification: bool
    splits: tuple[str, ...]

    def train_data(self) -> PyTree: ...

    def sample(self, key: PRNGKey, data: PyTree, *, tasks: int) -> Episode: ...

    def eval_episodes(
        self,
        split: str,
        *,
        episodes: int,
        seed: int,
        queries: int | None = None,
        ways: int | None = None,
        shots: int | None = None,
    ) -> Episode: ...

    def example_input(self) -> np.ndarray: ...


class OmniglotTasks:
    """N-way K-shot Omniglot episodes (Lake et al. 2015) from a prepared dataset.

    Args:
      ways: N classes per task.
      shots: K support drawings per class.
      queries: query drawings per class (training).
      scheme: class split, ``"maml"`` (1100/100/423), ``"vinyals"`` (1028/172/423) or
        ``"lake"`` (background/evaluation, no validation split).
      rotations: rotated copies (90/180/270) are new classes.
      image_size: side of the square images (28 in the literature).
      data_dir, manual_dir, download: passed to
        :func:`jaxmeta.data.omniglot.load_omniglot`.

    The dataset is loaded lazily on first use, once per object.
    """

    name = "omniglot"
    classification = True

    def __init__(
        self,
        *,
        ways: int,
        shots: int,
        queries: int,
        scheme: str = "maml",
        rotations: bool = True,
        image_size: int = 28,
        data_dir: str | None = None,
        manual_dir: str | None = None,
        download: bool = True,
    ):
        self.ways, self.shots, self.queries = ways, shots, queries
        self.scheme, self.rotations, self.image_size = scheme, rotations, image_size
        self._load_kwargs = dict(
            data_dir=data_dir, manual_dir=manual_dir, image_size=image_size, download=download
        )
        self._omniglot = None
        self._split_cache: dict[str, np.ndarray] = {}
        self.splits = ("train", "test") if scheme == "lake" else ("train", "val", "test")

    def _dataset(self):
        if self._omniglot is None:
            from jaxmeta.data.omniglot import load_omniglot

            self._omniglot = load_omniglot(**self._load_kwargs)
        return self._omniglot

    def split_images(self, split: str, *, ways: int | None = None) -> np.ndarray:
        """uint8 ``[classes, 20, S, S]`` of one split (checked against ``ways``).

        ``ways`` defaults to the training ways; evaluation may use other ways.
        """
        ways = self.ways if ways is None else ways
        if split not in self.splits:
            raise ValueError(
                f"split {split!r} does not exist in the {self.scheme!r} scheme "
                f"(available: {', '.join(self.splits)})"
            )
        if split not in self._split_cache:
            from jaxmeta.data.omniglot import split_images

            self._split_cache[split] = split_images(self._dataset(), self.scheme, split)
        images = self._split_cache[split]
        n = images.shape[0] * (4 if self.rotations else 1)
        if ways > n:
            raise ValueError(
                f"{ways}-way tasks need {ways} classes but the {self.scheme!r} "
                f"{split} split has {n} (rotations={self.rotations})"
            )
        return images

    def train_data(self) -> jax.Array:
        return jax.device_put(self.split_images("train"))

    def sample(self, key: PRNGKey, data: jax.Array, *, tasks: int) -> Episode:
        from jaxmeta.data.episodes import sample_episodes

        return sample_episodes(
            key,
            data,
            tasks=tasks,
            ways=self.ways,
            shots=self.shots,
            queries=self.queries,
            rotations=self.rotations,
        )

    def eval_episodes(
        self,
        split: str,
        *,
        episodes: int,
        seed: int,
        queries: int | None = None,
        ways: int | None = None,
        shots: int | None = None,
    ) -> Episode:
        """Fixed episodes of ``split``; ``queries``/``ways``/``shots`` default to training's."""
        from jaxmeta.data.episodes import eval_episodes

        ways = self.ways if ways is None else ways
        return eval_episodes(
            self.split_images(split, ways=ways),
            episodes=episodes,
            ways=ways,
            shots=self.shots if shots is None else shots,
            queries=self.queries if queries is None else queries,
            rotations=self.rotations,
            seed=seed,
        )

    def example_input(self) -> np.ndarray:
        """A zero support set ``[ways*shots, S, S, 1]`` for model initialisation."""
        s = self.image_size
        return np.zeros((self.ways * self.shots, s, s, 1), np.float32)


class SinusoidTasks:
    """Sinusoid regression (MAML paper, Section 5.1): K support points, Q query points.

    Args:
      shots: K support points per task.
      queries: query points per task.
    """

    name = "sinusoid"
    classification = False
    splits = ("train", "val", "test")
    # Distinct fixed seeds per split so validation and test tasks differ.
    _SPLIT_SEED = {"train": 0, "val": 1_000_003, "test": 2_000_003}

    def __init__(self, *, shots: int, queries: int, **_unused: Any):
        self.shots, self.queries = shots, queries

    def train_data(self) -> tuple:
        return ()

    def sample(self, key: PRNGKey, data: Any, *, tasks: int) -> Episode:
        from jaxmeta.data.sinusoid import sample_sinusoid_tasks

        del data
        return sample_sinusoid_tasks(key, tasks=tasks, shots=self.shots, queries=self.queries)

    def eval_episodes(
        self,
        split: str,
        *,
        episodes: int,
        seed: int,
        queries: int | None = None,
        ways: int | None = None,
        shots: int | None = None,
    ) -> Episode:
        from jaxmeta.data.sinusoid import eval_sinusoid_tasks

        if split not in self.splits:
            raise ValueError(f"unknown split {split!r} (available: {', '.join(self.splits)})")
        if ways is not None:
            raise ValueError("sinusoid regression has no classes: ways must be None")
        return eval_sinusoid_tasks(
            episodes=episodes,
            shots=self.shots if shots is None else shots,
            queries=self.queries if queries is None else queries,
            seed=seed + self._SPLIT_SEED[split],
        )

    def example_input(self) -> np.ndarray:
        return np.zeros((self.shots, 1), np.float32)


TASK_SOURCES: dict[str, Callable[..., TaskSource]] = {
    "omniglot": OmniglotTasks,
    "sinusoid": SinusoidTasks,
}


def get_task_source(name: str) -> Callable[..., TaskSource]:
    """The task-source class registered under ``name``."""
    try:
        return TASK_SOURCES[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; available: {', '.join(sorted(TASK_SOURCES))}"
        ) from None
