"""A dataset defined outside the package, registered as a plug-in (tests/test_plugins.py).

Everything a new image dataset writes: its shapes, its split sizes and how to load a split;
:class:`jaxmeta.data.ImageTasks` does the rest. The images are generated in code: each class
is a fixed random pattern plus noise, so a few meta-steps already learn something.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from jaxmeta.data import ImageTasks, TaskSourceError, register_task_source

SPLITS = {"train": 12, "val": 6, "test": 6}  # classes per split


class ToyTasks(ImageTasks):
    """N-way K-shot episodes of small random RGB classes.

    Args:
      ways, shots, queries: the episode shape.
      image_size: side of the square images.
      channels: colour channels.
      seed: which random classes.
    """

    name: ClassVar[str] = "toy"
    examples_per_class = 6

    def __init__(
        self,
        *,
        ways: int = 3,
        shots: int = 1,
        queries: int = 2,
        image_size: int = 8,
        channels: int = 3,
        seed: int = 0,
    ):
        super().__init__(ways=ways, shots=shots, queries=queries)
        if image_size < 4:
            raise TaskSourceError("image_size", f"must be >= 4, got {image_size}")
        self.input_shape = (image_size, image_size, channels)
        self.seed = seed
        self.check_episodes("train", ways=self.ways, shots=self.shots, queries=self.queries)

    def class_counts(self) -> dict[str, int]:
        return dict(SPLITS)

    def load_split(self, split: str) -> np.ndarray:
        rng = np.random.default_rng([self.seed, list(SPLITS).index(split)])
        n, (h, w, c) = SPLITS[split], self.input_shape
        pattern = rng.integers(0, 256, (n, 1, h, w, c))
        noise = rng.integers(-40, 41, (n, self.examples_per_class, h, w, c))
        return np.clip(pattern + noise, 0, 255).astype(np.uint8)


register_task_source("toy", ToyTasks)
