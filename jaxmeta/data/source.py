"""What a dataset is to the engine: the :class:`TaskSource` contract.

A dataset is one module with a :class:`TaskSource` class plus one entry in
:mod:`jaxmeta.data.registry` (or one call of :func:`~jaxmeta.data.registry.register_task_source`
in a plug-in module, named by the config's ``plugins:``)::

    source = get_task_source("omniglot")(ways=5, shots=1, queries=15)   # no data read yet
    data = source.train_data()                      # pytree of arrays, put on device once
    episodes = source.sample(key, data, tasks=32)   # jittable: data is an argument
    test = source.eval_episodes("test", episodes=600, seed=0)

``data`` is an explicit argument of :meth:`TaskSource.sample` (never closed over) so the
jitted training step does not embed the dataset as a constant. The engine never names a
dataset: everything it needs to know is asked through this contract. Image classification
datasets stored as one uint8 array per split get most of it from
:class:`jaxmeta.data.image_tasks.ImageTasks`.
"""

from __future__ import annotations

import numbers
from typing import Any, ClassVar

import numpy as np

from jaxmeta.types import Episode, PRNGKey, PyTree

__all__ = ["TaskSource", "TaskSourceError", "check_option"]


class TaskSourceError(ValueError):
    """A bad option of a task source; ``option`` names the constructor argument (the config
    key ``data.<option>``, or ``eval.<option>`` for evaluation episodes) it is about;
    ``related`` names the other options the check combines (``shots`` for ``shots +
    queries``), so the error can blame the one the user set."""

    def __init__(self, option: str, message: str, *, related: tuple[str, ...] = ()):
        self.option = option
        self.related = tuple(related)
        super().__init__(message)


class TaskSource:
    """What the engine needs from a dataset (the one place this contract is written down).

    Subclass it (image classification from one uint8 array per split: subclass
    :class:`~jaxmeta.data.image_tasks.ImageTasks`, which does most of it).

    Construction: ``cls(**options)``, the config's ``data:`` keys but ``name``, checked
    against the constructor's signature and annotations like an algorithm's keywords. It must
    be cheap and read no data (configs are validated by building one). Every source of
    episodes takes ``shots`` and ``queries`` (support and query examples per class, or points
    per task); classification sources also take ``ways``. A source whose tasks are not
    episodes (a meta-RL environment: ``sample`` draws task parameters such as goals) takes
    neither and leaves them ``None``; its algorithm then supplies the evaluation
    (``MetaLearner.evaluate``). A bad value raises :class:`TaskSourceError`
    naming the option, e.g. ``TaskSourceError("ways", "101-way is larger than ...")``.

    Class attributes:
      name: the registry name.
      classification: integer labels (cross-entropy, accuracy) or regression (MSE).
      resumable_options: options that may change when a run is resumed because they do not
        change the tasks (where the files are, whether to download them).

    Attributes (set by the constructor):
      input_shape: one example's shape: ``(H, W, C)`` for images, ``(features,)`` otherwise.
      splits: split names (a subset of ``train``, ``val``, ``test``); ``val`` is needed for
        validation and best-checkpoint selection, ``test`` for the final evaluation.
      ways (classification), shots, queries: the training episodes' shape.

    A subclass implements :meth:`train_data`, :meth:`sample` and :meth:`fixed_episodes`; the
    other methods have defaults.
    """

    name: ClassVar[str]
    classification: ClassVar[bool]
    resumable_options: ClassVar[tuple[str, ...]] = ()
    input_shape: tuple[int, ...]
    splits: tuple[str, ...] = ("train", "val", "test")
    ways: int | None = None
    shots: int
    queries: int

    def split_classes(self) -> dict[str, int]:
        """Classes per split (after augmentation such as rotations), without reading the data;
        ``{}`` for regression."""
        return {}

    def check_episodes(self, split: str, *, ways: int | None, shots: int, queries: int) -> None:
        """Raise :class:`TaskSourceError` if such episodes cannot be drawn from ``split`` (N-way
        larger than its classes, shots + queries above the examples per class, ...). The engine
        calls it for the evaluation splits before anything is compiled; the constructor checks
        training's."""

    def train_data(self) -> PyTree:
        """The training split as a pytree of arrays (put on the device once)."""
        raise NotImplementedError

    def sample(self, key: PRNGKey, data: PyTree, *, tasks: int) -> Episode:
        """A batch of ``tasks`` episodes (leading ``[tasks]`` axis) from ``data``; jittable."""
        raise NotImplementedError

    def fixed_episodes(
        self, split: str, *, episodes: int, seed: int, ways: int | None, shots: int, queries: int
    ) -> Episode:
        """The fixed, seeded evaluation episodes of ``split`` (host arrays), of this shape."""
        raise NotImplementedError

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
        """:meth:`fixed_episodes` of ``split``; ``queries``/``ways``/``shots`` default to
        training's.

        Raises:
          ValueError: ``split`` does not exist.
        """
        if split not in self.splits:
            raise ValueError(
                f"split {split!r} does not exist for {self.name} "
                f"(available: {', '.join(self.splits)})"
            )
        return self.fixed_episodes(
            split,
            episodes=episodes,
            seed=seed,
            ways=self.ways if ways is None else ways,
            shots=self.shots if shots is None else shots,
            queries=self.queries if queries is None else queries,
        )

    def example_input(self) -> np.ndarray:
        """A zero support set ``[ways*shots, *input_shape]`` (``[shots, ...]`` for regression)
        for ``model.init``."""
        n = self.shots * (self.ways or 1)
        return np.zeros((n, *self.input_shape), np.float32)

    def supplies(self) -> dict[str, Any]:
        """Keyword arguments this source gives the model and the algorithm factory when they
        take them and the config does not set them (e.g. a meta-RL environment:
        ``{"env": ..., "action_size": ...}``); ``{}`` by default."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What an evaluation result records about the data besides its name and the episode
        shape (e.g. Omniglot's ``scheme`` and ``rotations``)."""
        return {}

    @classmethod
    def prepare(cls, **options: Any) -> list[str]:
        """Acquire, verify and cache the data; lines to print (e.g. the classes of every split).

        ``jaxmeta data NAME`` runs it; its keyword arguments become that command's flags
        (``manual_dir`` -> ``--manual-dir``, a ``bool`` defaulting to true -> ``--no-<name>``),
        documented by its docstring's ``Args:``; a ``prepare(**options)`` takes the
        constructor's options instead.
        """
        return [f"{cls.name}: nothing to prepare"]


def check_option(option: str, value: Any, *, minimum: int) -> int:
    """``value`` must be an int ``>= minimum``; else :class:`TaskSourceError` naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TaskSourceError(option, f"expected an integer, got {value!r}")
    if value < minimum:
        word = "positive" if minimum == 1 else f">= {minimum}"
        raise TaskSourceError(option, f"must be {word}, got {value}")
    return int(value)
