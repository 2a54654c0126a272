"""From a dataset name to its tasks in one call: ``tasksets("omniglot", ways=5, shots=1)``.

Built on the dataset registry (:data:`jaxmeta.data.registry.TASK_SOURCES`): any registered
dataset (plug-ins too) works, with the options of its ``data:`` config section. The shape
users know from learn2learn's ``get_tasksets``, with explicit keys and on-device sampling::

    sets = jaxmeta.data.tasksets("omniglot", ways=5, shots=1, queries=15)
    episodes = sets.train.sample(key, tasks=32)        # Episode, leading [32] axis; jittable
    test = sets.test.fixed(episodes=600)               # the seeded evaluation episodes
    print(jaxmeta.evaluate(learner, params, test))     # accuracy ± 95% CI
"""

from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import jax

from jaxmeta.data.registry import get_task_source
from jaxmeta.data.source import TaskSource, TaskSourceError
from jaxmeta.types import Episode, PRNGKey
from jaxmeta.yaml_io import did_you_mean


class TaskSampler:
    """The tasks of one split.

    Attributes:
      split: ``"train"``, ``"val"`` or ``"test"``.
      source: the dataset's :class:`~jaxmeta.data.source.TaskSource`.
      data: the split's data on the device (a pytree; ``None`` when the dataset draws
        random tasks from its training split only, e.g. fixed feature vectors).
    """

    def __init__(self, source: TaskSource, split: str, data: Any):
        self.source, self.split, self.data = source, split, data

    def sample(self, key: PRNGKey, *, tasks: int, data: Any = None) -> Episode:
        """A batch of random tasks drawn on the device; jittable (sizes are static).

        Args:
          key: PRNG key.
          tasks: the batch size (meta-batch).
          data: the split's data; default :attr:`data`. Under ``jit``, pass it as an
            argument (``data=sampler.data``) so the images are not baked into the program.

        Returns:
          An :class:`~jaxmeta.types.Episode` with a leading ``[tasks]`` axis, e.g.
          ``support_x: [tasks, ways*shots, 28, 28, 1]`` for Omniglot.
        """
        data = self.data if data is None else data
        if data is None:
            raise ValueError(
                f"{self.source.name} draws random tasks from its training split only; use "
                f".fixed(episodes=...) for the {self.split} split"
            )
        return self.source.sample(key, data, tasks=tasks)

    def fixed(
        self,
        *,
        episodes: int = 600,
        seed: int = 0,
        queries: int | None = None,
        ways: int | None = None,
        shots: int | None = None,
    ) -> Episode:
        """The fixed, seeded episodes of this split (host arrays, ``[episodes, ...]``):
        the same for every run and algorithm, as ``jaxmeta evaluate`` uses them.
        ``queries``/``ways``/``shots`` default to the task set's."""
        return self.source.eval_episodes(
            self.split, episodes=episodes, seed=seed, queries=queries, ways=ways, shots=shots
        )

    def __repr__(self) -> str:
        return f"TaskSampler({self.source.name}, {self.split})"


class TaskSets(NamedTuple):
    """Train, validation and test tasks of one dataset (``None``: the split does not exist)."""

    train: TaskSampler
    validation: TaskSampler | None
    test: TaskSampler | None
    source: TaskSource


def _split_data(source: TaskSource, split: str, train: Any) -> Any:
    """One split's data on the device, as ``train`` (:meth:`TaskSource.train_data`) is
    training's: the split's own array for image datasets; the same (empty) data where tasks
    come from no stored data (sinusoid); else ``None`` (fixed episodes only)."""
    if split == "train":
        return train
    split_images = getattr(source, "split_images", None)
    if split_images is not None:  # image datasets (ImageTasks): one uint8 array per split
        return jax.device_put(split_images(split))
    if not jax.tree_util.tree_leaves(train):  # nothing stored: every split draws alike
        return train
    return None


def tasksets(name: str, *, ways: int | None = None, shots: int = 1, **options: Any) -> TaskSets:
    """The train, validation and test tasks of the registered dataset ``name``.

    Args:
      name: a registered dataset (``jaxmeta.data.TASK_SOURCES``): ``"omniglot"``,
        ``"miniimagenet"``, ``"sinusoid"``, ...
      ways: N (classification); ``None`` for regression.
      shots: K, support examples per class (points per task for regression).
      **options: the dataset's other options, as in a config's ``data:`` section, e.g.
        ``queries=15``, ``manual_dir="../shared/data/omniglot"``, ``data_dir``,
        ``scheme``, ``rotations``.

    Returns:
      :class:`TaskSets` ``(train, validation, test, source)``; each split's data is loaded
      onto the device once, here.

    Raises:
      ValueError: an unknown dataset or option, or a bad value (the message names it).
    """
    cls = get_task_source(name)
    kwargs = dict(options, shots=shots)
    if ways is not None:
        kwargs["ways"] = ways
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        for key in kwargs:
            if key not in params:
                raise ValueError(
                    f"tasksets({name!r}): unknown option {key!r}{did_you_mean(key, params)}; "
                    f"options: {', '.join(params)}"
                )
    try:
        source = cls(**kwargs)
        train = source.train_data()
        sets = {s: TaskSampler(source, s, _split_data(source, s, train)) for s in source.splits}
    except TaskSourceError as err:
        raise ValueError(f"tasksets({name!r}): {err.option}: {err}") from None
    return TaskSets(sets["train"], sets.get("val"), sets.get("test"), source)
