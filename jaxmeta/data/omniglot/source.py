"""Omniglot as a task source: N-way K-shot episodes from a scheme's class split."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from jaxmeta.data.image_tasks import ImageTasks, check_option
from jaxmeta.data.omniglot.dataset import load_omniglot, split_images
from jaxmeta.data.omniglot.decode import RESIZE_MODES
from jaxmeta.data.omniglot.export import export_test_images
from jaxmeta.data.omniglot.splits import DRAWERS, SCHEMES, split_counts
from jaxmeta.data.source import TaskSourceError

__all__ = ["OmniglotTasks"]

_LAKE_NAMES = {"background": "train", "evaluation": "test"}


class OmniglotTasks(ImageTasks):
    """N-way K-shot Omniglot episodes (Lake et al. 2015) from a prepared dataset.

    Args:
      ways: N classes per task (>= 2).
      shots: K support drawings per class.
      queries: query drawings per class (training).
      scheme: class split, ``"maml"`` (1100/100/423), ``"vinyals"`` (1028/172/423) or
        ``"lake"`` (background/evaluation, no validation split).
      rotations: rotated copies (90/180/270) are new classes.
      distinct_characters: with ``rotations``, a task never holds two rotations of one
        character: ``ways`` distinct characters, then a rotation for each (cbfinn/maml
        ``data_generator.py``). Default ``False``: ``ways`` of the ``4 C`` rotated classes.
      image_size: side of the square images (28 in the literature).
      resize: ``"lanczos"`` (default: greyscale, anti-aliased) or ``"binary"`` (the binary
        images the reference implementations trained on; :mod:`jaxmeta.data.omniglot.decode`).
      eval_rotations, train_on_val: see :class:`~jaxmeta.data.image_tasks.ImageTasks`.
      data_dir, manual_dir, download: where the prepared data and the zips are, and
        whether the zips may be downloaded (:func:`jaxmeta.data.omniglot.load_omniglot`).

    Raises:
      TaskSourceError: a bad option (unknown scheme, N-way larger than the training split,
        shots + queries above the 20 drawings of a class, ...), naming it.
    """

    name: ClassVar[str] = "omniglot"
    resumable_options: ClassVar[tuple[str, ...]] = ("data_dir", "manual_dir", "download")
    examples_per_class = DRAWERS

    def __init__(
        self,
        *,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        scheme: str = "maml",
        rotations: bool = True,
        image_size: int = 28,
        data_dir: str | None = None,
        manual_dir: str | None = None,
        download: bool = True,
        distinct_characters: bool = False,
        resize: str = "lanczos",
        eval_rotations: bool | None = None,
        train_on_val: bool = False,
    ):
        super().__init__(
            ways=ways,
            shots=shots,
            queries=queries,
            rotations=rotations,
            distinct_characters=distinct_characters,
            eval_rotations=eval_rotations,
            train_on_val=train_on_val,
        )
        if resize not in RESIZE_MODES:
            raise TaskSourceError(
                "resize", f"unknown resize {resize!r}; available: {', '.join(RESIZE_MODES)}"
            )
        self.resize = resize
        if scheme not in SCHEMES:
            raise TaskSourceError(
                "scheme", f"unknown split scheme {scheme!r}; available: {', '.join(SCHEMES)}"
            )
        self.scheme = scheme
        self.image_size = check_option("image_size", image_size, minimum=1)
        self.input_shape = (self.image_size, self.image_size, 1)
        self.splits = ("train", "test") if scheme == "lake" else ("train", "val", "test")
        self._load_kwargs = dict(
            data_dir=data_dir,
            manual_dir=manual_dir,
            image_size=image_size,
            download=download,
            resize=resize,
        )
        self._omniglot = None
        self.check_episodes("train", ways=self.ways, shots=self.shots, queries=self.queries)

    def class_counts(self) -> dict[str, int]:
        counts = split_counts(rotations=False)[self.scheme]
        return {_LAKE_NAMES.get(s, s): n for s, n in counts.items()}

    def split_label(self, split: str) -> str:
        return f"{self.scheme!r} {split} split"

    def _examples_note(self) -> str:
        return f"an Omniglot class has only {DRAWERS} drawings"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scheme": self.scheme, "rotations": self.rotations}
        if self.rotations and self.distinct_characters:
            out["distinct_characters"] = True
        if self.resize != "lanczos":
            out["resize"] = self.resize
        if self.eval_rotations != self.rotations:
            out["eval_rotations"] = self.eval_rotations
        if self.train_on_val:
            out["train_on_val"] = True
        return out

    def dataset(self):
        """The whole :class:`~jaxmeta.data.omniglot.Omniglot` (loaded, or prepared, once)."""
        if self._omniglot is None:
            self._omniglot = load_omniglot(**self._load_kwargs)
        return self._omniglot

    def load_split(self, split: str) -> np.ndarray:
        return split_images(self.dataset(), self.scheme, split)

    @classmethod
    def prepare(
        cls,
        *,
        manual_dir: str | None = None,
        data_dir: str | None = None,
        image_size: int = 28,
        download: bool = True,
        export_test: str | None = None,
        scheme: str = "maml",
        classes: int = 5,
        per_class: int = 6,
        shots: int = 1,
        seed: int = 0,
    ) -> list[str]:
        """Prepare Omniglot (from the zips in --manual-dir, else downloaded) and print the
        classes of each split of the maml, vinyals and lake schemes, without and with
        rotations (x4).

        With --export-test, also write PNGs of characters of a scheme's test split (never
        seen by a run trained with that scheme) as DIR/support/<class>/ and
        DIR/query/<class>/, ready for 'jaxmeta predict'.

        Args:
          manual_dir: folder with images_background.zip and images_evaluation.zip (default:
            <data-dir>/downloads/manual)
          data_dir: TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)
          image_size: image side (default 28)
          download: --no-download: never use the network; fail if the zips are not in the
            manual dir
          export_test: export test characters into DIR (a new folder)
          scheme: split scheme whose test split to draw from (default: maml, as the shipped
            MAML-family configs; ProtoNets/Matching configs use vinyals)
          classes: characters to export (default 5)
          per_class: drawings per character (default 6): --shots support + the rest as queries
          shots: support drawings per character (default 1)
          seed: which characters/drawers (default 0)
        """
        om = load_omniglot(
            data_dir=data_dir, manual_dir=manual_dir, image_size=image_size, download=download
        )
        lines = [
            f"Omniglot: {om.images.shape[0]} characters x {om.images.shape[1]} drawers, "
            f"{om.image_size}x{om.image_size} uint8"
        ]
        if om.cache_path is not None:
            lines.append(f"cache: {om.cache_path}")
        plain, rot = split_counts(rotations=False), split_counts(rotations=True)
        lines.append(f"{'scheme':<9} {'split':<11} {'classes':>8} {'with rotations':>15}")
        for name, splits in plain.items():
            for split, n in splits.items():
                lines.append(f"{name:<9} {split:<11} {n:>8} {rot[name][split]:>15}")
        if export_test:
            info = export_test_images(
                om,
                export_test,
                scheme=scheme,
                classes=classes,
                per_class=per_class,
                shots=shots,
                seed=seed,
            )
            lines.append(
                f"exported {len(info['characters'])} characters of the {scheme} "
                f"{info['split']} split (never seen in training with data.scheme={scheme}) to "
                f"{info['support']} and {info['query']}; see {export_test}/README.txt"
            )
        return lines
