"""Task sources over the dataset readers: files -> :class:`~jaxmeta.data.prepared.Prepared`
-> one uint8 ``.npz`` per split -> episodes.

:class:`PreparedTasks` is the shared part of miniImageNet, tieredImageNet, CIFAR-FS and FC100
(and, with its own layout scan, :class:`~jaxmeta.data.folder.FolderTasks`): a subclass names
its reader (:meth:`PreparedTasks.read`), its published split sizes and its defaults. A split
whose classes all have the same number of images is handed to the sampler as uint8
``[classes, examples, S, S, C]`` (no copy); unequal classes (tieredImageNet, folders) as
:class:`~jaxmeta.data.episodes.ClassImages` (no padding).

Where files are: ``manual_dir`` (default ``$JAXMETA_DATA_DIR/<name>``, else
``~/jaxmeta_data/<name>``) holds the published files; the cache
(``jaxmeta_<name>_<S>px_<split>.npz``, one per split so a large split is read alone) goes to
``data_dir`` (default: ``manual_dir``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from jaxmeta.data.episodes import ClassImages
from jaxmeta.data.image_tasks import ImageTasks
from jaxmeta.data.prepared import Prepared, Split, SplitSpec, load_cache, save_cache
from jaxmeta.data.source import TaskSourceError, check_option

__all__ = ["PreparedTasks", "default_manual_dir", "to_sampler_array"]


def default_manual_dir(name: str) -> Path:
    """``$JAXMETA_DATA_DIR/<name>``, else ``~/jaxmeta_data/<name>``."""
    root = os.environ.get("JAXMETA_DATA_DIR") or "~/jaxmeta_data"
    return Path(root).expanduser() / name


def to_sampler_array(split: Split) -> np.ndarray | ClassImages:
    """What the episode sampler reads: ``[classes, examples, H, W, C]`` when every class has
    the same number of images (a view), else :class:`ClassImages`."""
    counts = split.counts
    if np.all(counts == counts[0]):
        return split.images.reshape(split.num_classes, int(counts[0]), *split.images.shape[1:])
    return ClassImages.from_offsets(split.images, split.offsets)


class PreparedTasks(ImageTasks):
    """Base of the sources read from published files (see the module docstring).

    Args:
      ways, shots, queries: as :class:`~jaxmeta.data.image_tasks.ImageTasks`.
      image_size: side ``S`` of the stored square images (default: the dataset's).
      manual_dir: folder with the published files.
      data_dir: folder for the ``.npz`` cache (default: ``manual_dir``).
      published_counts: check the published class and image counts; false for a partial
        copy (the classes must still be the published ones).
    """

    resumable_options: ClassVar[tuple[str, ...]] = ("manual_dir", "data_dir", "download")
    published: ClassVar[Mapping[str, SplitSpec]]
    default_image_size: ClassVar[int]
    channels: ClassVar[int] = 3

    def __init__(
        self,
        *,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        image_size: int | None = None,
        manual_dir: str | None = None,
        data_dir: str | None = None,
        published_counts: bool = True,
    ):
        super().__init__(ways=ways, shots=shots, queries=queries, rotations=False)
        size = self.default_image_size if image_size is None else image_size
        self.image_size = check_option("image_size", size, minimum=1)
        self.input_shape = (self.image_size, self.image_size, self.channels)
        self.manual_dir = (
            Path(manual_dir).expanduser() if manual_dir else default_manual_dir(self.name)
        )
        self.data_dir = Path(data_dir).expanduser() if data_dir else self.manual_dir
        self.published_counts = bool(published_counts)
        self._loaded: dict[str, Split] = {}
        self.check_episodes("train", ways=self.ways, shots=self.shots, queries=self.queries)

    # ------------------------------------------------------------------ what a subclass gives

    def read(self, splits: Sequence[str]) -> Prepared:
        """Run the dataset's reader on ``manual_dir`` for ``splits``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the shared part

    def class_counts(self) -> dict[str, int]:
        return {s: spec.classes for s, spec in self.published.items()}

    def expected(self) -> Mapping[str, SplitSpec] | None:
        """The sizes the reader checks (``None`` with ``published_counts=False``)."""
        return self.published if self.published_counts else None

    def cache_path(self, split: str) -> Path:
        return self.data_dir / f"jaxmeta_{self.name}_{self.image_size}px_{split}.npz"

    def prepared_split(self, split: str) -> Split:
        """One split from its cache, or read from the files and cached (one split at a time,
        so tieredImageNet's 9.5 GB training split is never in memory with the others)."""
        if split not in self._loaded:
            got = load_cache(self.cache_path(split), splits=[split])
            if got is None:
                prepared = self.read([split])
                for s, data in prepared.splits.items():
                    save_cache(
                        Prepared(
                            name=prepared.name,
                            splits={s: data},
                            image_shape=prepared.image_shape,
                            files=prepared.files,
                            citation=prepared.citation,
                            preprocessing=prepared.preprocessing,
                        ),
                        self.cache_path(s),
                    )
                    self._loaded[s] = data
            else:
                self._loaded[split] = got.splits[split]
        return self._loaded[split]

    def load_split(self, split: str) -> np.ndarray | ClassImages:
        data = self.prepared_split(split)
        fewest = int(data.counts.min())
        if split == "train" and self.shots + self.queries > fewest:
            raise TaskSourceError(
                "queries",
                related=("shots",),
                message=f"shots + queries = {self.shots} + {self.queries} > {fewest}, the images "
                f"of the smallest class of the {self.split_label(split)}",
            )
        return to_sampler_array(data)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image_size": self.image_size}
        if self.rotations:
            out["rotations"] = True
        return out

    @classmethod
    def prepare(cls, **options: Any) -> list[str]:
        """Build the source from ``options`` (the constructor's), read every split (from the
        cache, else from the files, then cached) and list them; ``jaxmeta data NAME``."""
        source = cls(**options)
        lines = [
            f"{source.name}: {source.manual_dir} -> cache in {source.data_dir}",
            f"{'split':<6} {'classes':>7} {'images':>8} {'per class':>11} {'uint8 MB':>9}  image",
        ]
        total = 0
        for split in source.splits:
            data = source.prepared_split(split)
            lo, hi = int(data.counts.min()), int(data.counts.max())
            per = f"{lo}" if lo == hi else f"{lo}-{hi}"
            total += data.images.nbytes
            lines.append(
                f"{split:<6} {data.num_classes:>7} {data.num_images:>8} {per:>11} "
                f"{data.images.nbytes / 1e6:>9.1f}  {'x'.join(map(str, source.input_shape))}"
            )
        lines.append(
            f"total {total / 1e6:.1f} MB of uint8 (the cache; a device copy of a split needs as "
            "much again)"
        )
        return lines
