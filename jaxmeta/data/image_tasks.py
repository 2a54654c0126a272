"""N-way K-shot image classification from one uint8 array per split: the shared task source.

A dataset of labelled images (Omniglot, and the next ones) implements four things: its
``input_shape``, ``examples_per_class``, :meth:`ImageTasks.class_counts` (classes per split,
without reading pixels) and :meth:`ImageTasks.load_split` (one split as uint8 ``[classes,
examples, H, W]`` for grey images or ``[classes, examples, H, W, C]``); this base class does
the rest of :class:`~jaxmeta.data.source.TaskSource`: option checks, on-device episode
sampling (:mod:`jaxmeta.data.episodes`), fixed evaluation episodes, the zero example input.
"""

from __future__ import annotations

import numbers
from typing import Any, ClassVar

import jax
import numpy as np

from jaxmeta.data.episodes import ROTATIONS, eval_episodes, sample_episodes
from jaxmeta.data.source import TaskSource, TaskSourceError, check_option
from jaxmeta.types import Episode, PRNGKey

__all__ = ["ImageTasks"]


class ImageTasks(TaskSource):
    """Base of the few-shot image classification sources (see the module docstring).

    Args:
      ways: N classes per task (>= 2).
      shots: K support images per class.
      queries: query images per class (training).
      rotations: rotated copies (90/180/270 degrees) of every class are new classes (square
        images only).
      distinct_characters: with ``rotations``, a task never holds two rotations of one class
        (:func:`jaxmeta.data.episodes.sample_episodes`; cbfinn/maml's sampling).
      eval_rotations: rotations in the validation and test episodes; ``None`` (default) = as
        ``rotations``. ``False``: unrotated test classes (openai/supervised-reptile and
        HowToTrainYourMAMLPytorch rotate only the training classes).
      train_on_val: meta-train on the training and validation classes together (the final
        training of jakesnell/prototypical-networks ``run_trainval.py``; Reptile's 1200
        training characters). Validation then scores seen classes: set ``train.eval_every: 0``.

    The data is loaded lazily on first use, once per object.
    """

    classification: ClassVar[bool] = True
    name: ClassVar[str] = "images"
    examples_per_class: int | None = None  # None: unequal or unknown before the data is read

    def __init__(
        self,
        *,
        ways: int,
        shots: int,
        queries: int,
        rotations: bool = False,
        distinct_characters: bool = False,
        eval_rotations: bool | None = None,
        train_on_val: bool = False,
    ):
        if ways is not None and isinstance(ways, numbers.Integral) and ways < 2:
            raise TaskSourceError("ways", f"must be >= 2 for classification, got {ways}")
        self.ways = check_option("ways", ways, minimum=2)
        self.shots = check_option("shots", shots, minimum=1)
        self.queries = check_option("queries", queries, minimum=1)
        self.rotations = bool(rotations)
        if not isinstance(distinct_characters, bool):
            raise TaskSourceError(
                "distinct_characters", f"must be true or false, got {distinct_characters!r}"
            )
        self.distinct_characters = distinct_characters
        for key, value in (("eval_rotations", eval_rotations), ("train_on_val", train_on_val)):
            if value is not None and not isinstance(value, bool):
                raise TaskSourceError(key, f"must be true or false, got {value!r}")
        self.eval_rotations = self.rotations if eval_rotations is None else eval_rotations
        self.train_on_val = train_on_val
        self._split_cache: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ what a dataset gives

    def class_counts(self) -> dict[str, int]:
        """Classes of every split before augmentation (rotations), without reading pixels."""
        raise NotImplementedError

    def load_split(self, split: str) -> np.ndarray:
        """uint8 ``[classes, examples, H, W]`` or ``[classes, examples, H, W, C]`` of ``split``."""
        raise NotImplementedError

    def split_label(self, split: str) -> str:
        """How messages name a split, e.g. ``"'maml' val split"``."""
        return f"{self.name} {split} split"

    def describe(self) -> dict[str, Any]:
        """What evaluation results record besides the dataset name and the episode shape."""
        out: dict[str, Any] = {"rotations": self.rotations} if self.rotations else {}
        if self.rotations and self.distinct_characters:
            out["distinct_characters"] = True
        if self.eval_rotations != self.rotations:
            out["eval_rotations"] = self.eval_rotations
        if self.train_on_val:
            out["train_on_val"] = True
        return out

    # ------------------------------------------------------------------ the shared part

    def split_classes(self) -> dict[str, int]:
        """Classes per split, rotations included."""
        factor = ROTATIONS if self.rotations else 1
        return {s: n * factor for s, n in self.class_counts().items() if s in self.splits}

    def check_episodes(self, split: str, *, ways: int | None, shots: int, queries: int) -> None:
        """Raise :class:`TaskSourceError` unless ``split`` can give such episodes."""
        if ways is None or ways < 2:
            raise TaskSourceError("ways", f"must be >= 2 for classification, got {ways}")
        n = self.split_classes()[split]
        if ways > n:
            raise TaskSourceError(
                "ways",
                f"{ways}-way is larger than the {n} classes of the {self.split_label(split)}"
                + (f" (rotations={self.rotations})" if "rotations" in self.describe() else ""),
            )
        if self.examples_per_class is not None and shots + queries > self.examples_per_class:
            raise TaskSourceError(
                "queries",
                related=("shots",),
                message=f"shots + queries = {shots} + {queries} = {shots + queries} > "
                f"{self.examples_per_class}: {self._examples_note()}",
            )

    def _examples_note(self) -> str:
        return f"a {self.name} class has only {self.examples_per_class} examples"

    def split_images(self, split: str, *, ways: int | None = None) -> np.ndarray:
        """One split's images (loaded once), checked against ``ways`` (default: training's)."""
        ways = self.ways if ways is None else ways
        if split not in self.splits:
            desc = ", ".join(f"{k}={v}" for k, v in self.describe().items())
            raise ValueError(
                f"split {split!r} does not exist for {self.name}{f' ({desc})' if desc else ''} "
                f"(available: {', '.join(self.splits)})"
            )
        if split not in self._split_cache:
            self._split_cache[split] = self.load_split(split)
        images = self._split_cache[split]
        n = images.shape[0] * (ROTATIONS if self.rotations else 1)
        if ways > n:
            raise ValueError(
                f"{ways}-way tasks need {ways} classes but the {self.split_label(split)} has {n}"
                + (f" (rotations={self.rotations})" if self.rotations else "")
            )
        return images

    def train_data(self) -> jax.Array:
        if self.train_on_val:
            if "val" not in self.splits:
                desc = ", ".join(f"{k}={v}" for k, v in self.describe().items())
                raise TaskSourceError(
                    "train_on_val", f"{self.name} ({desc}) has no validation split to train on"
                )
            both = [self.split_images("train"), self.split_images("val")]
            return jax.device_put(np.concatenate(both, axis=0))
        return jax.device_put(self.split_images("train"))

    def sample(self, key: PRNGKey, data: jax.Array, *, tasks: int) -> Episode:
        return sample_episodes(
            key,
            data,
            tasks=tasks,
            ways=self.ways,
            shots=self.shots,
            queries=self.queries,
            rotations=self.rotations,
            distinct_characters=self.distinct_characters,
        )

    def fixed_episodes(
        self, split: str, *, episodes: int, seed: int, ways: int | None, shots: int, queries: int
    ) -> Episode:
        """Fixed, seeded episodes of ``split`` (:func:`jaxmeta.data.episodes.eval_episodes`)."""
        return eval_episodes(
            self.split_images(split, ways=ways),
            episodes=episodes,
            ways=ways,
            shots=shots,
            queries=queries,
            rotations=self.eval_rotations,
            seed=seed,
            distinct_characters=self.distinct_characters,
        )

    @classmethod
    def prepare(cls, **options: Any) -> list[str]:
        """Build the source from ``options`` (the constructor's), load every split (preparing
        the data if needed) and list them; ``jaxmeta data NAME`` runs this."""
        source = cls(**options)
        lines = [f"{'split':<8} {'classes':>8} {'examples':>9}  image"]
        for split in source.splits:
            images = source.split_images(split, ways=2)
            lines.append(
                f"{split:<8} {source.split_classes()[split]:>8} {images.shape[1]:>9}  "
                f"{'x'.join(map(str, source.input_shape))} uint8"
            )
        return lines
