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
from typing import Any, ClassVar, Protocol

import numpy as np

from jaxmeta.types import Episode, PRNGKey, PyTree

__all__ = ["TaskSource", "TaskSourceError", "check_option"]


class TaskSourceError(ValueError):
    """A bad option of a task source; ``option`` names the constructor argument (the config
    key ``data.<option>``, or ``eval.<option>`` for evaluation episodes) it is about."""

    def __init__(self, option: str, message: str):
        self.option = option
        super().__init__(message)


class TaskSource(Protocol):
    """What the engine needs from a dataset (the one place this contract is written down).

    Construction: ``cls(**options)``, the config's ``data:`` keys but ``name``, checked
    against the constructor's signature and annotations like an algorithm's keywords. It must
    be cheap and read no data (configs are validated by building one). Every source takes
    ``shots`` and ``queries`` (support and query examples per class, or points per task);
    classification sources also take ``ways``. A bad value raises :class:`TaskSourceError`
    naming the option, e.g. ``TaskSourceError("ways", "101-way is larger than ...")``.

    Class attributes:
      name: the registry name.
      classification: integer labels (cross-entropy, accuracy) or regression (MSE).
      resumable_options: options that may change when a run is resumed because they do not
        change the tasks (where the files are, whether to download them).

    Attributes:
      input_shape: one example's shape: ``(H, W, C)`` for images, ``(features,)`` otherwise.
      splits: split names (a subset of ``train``, ``val``, ``test``); ``val`` is needed for
        validation and best-checkpoint selection, ``test`` for the final evaluation.

    Methods:
      split_classes: classes per split (after augmentation such as rotations), without
        reading the data; ``{}`` for regression.
      check_episodes: ``(split, *, ways, shots, queries)`` raises :class:`TaskSourceError` if
        such episodes cannot be drawn from ``split`` (N-way larger than its classes, shots +
        queries above the examples per class, ...); the engine calls it for the evaluation
        splits before anything is compiled (the constructor checks training's).
      train_data: the training split as a pytree of arrays (put on the device once).
      sample: ``(key, data, *, tasks) -> Episode`` with a leading ``[tasks]`` axis; jittable.
      eval_episodes: a fixed, seeded set of episodes of a split, as host arrays; ``ways``,
        ``shots``, ``queries`` default to training's.
      example_input: a zero support set ``[ways*shots, *input_shape]`` for ``model.init``.
      describe: what an evaluation result should record about the data besides its name and
        the episode shape (e.g. Omniglot's ``scheme`` and ``rotations``).
      prepare: a classmethod: acquire, verify and cache the data, and return lines to print
        (e.g. the classes of every split). ``jaxmeta data NAME`` runs it; its keyword
        arguments become that command's flags (``manual_dir`` -> ``--manual-dir``, a ``bool``
        defaulting to true -> ``--no-<name>``), documented by its docstring's ``Args:``.
    """

    name: ClassVar[str]
    classification: ClassVar[bool]
    resumable_options: ClassVar[tuple[str, ...]]
    input_shape: tuple[int, ...]
    splits: tuple[str, ...]

    def split_classes(self) -> dict[str, int]: ...

    def check_episodes(self, split: str, *, ways: int | None, shots: int, queries: int) -> None: ...

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

    def describe(self) -> dict[str, Any]: ...

    @classmethod
    def prepare(cls, **options: Any) -> list[str]: ...


def check_option(option: str, value: Any, *, minimum: int) -> int:
    """``value`` must be an int ``>= minimum``; else :class:`TaskSourceError` naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TaskSourceError(option, f"expected an integer, got {value!r}")
    if value < minimum:
        word = "positive" if minimum == 1 else f">= {minimum}"
        raise TaskSourceError(option, f"must be {word}, got {value}")
    return int(value)
