"""Your own images as a few-shot dataset: one sub-folder per class.

Two layouts of ``root``:

* ``root/<class>/<images>``: every class in one place. With ``split_ratios`` (e.g.
  ``{"train": 0.6, "val": 0.2, "test": 0.2}``) the *classes* are split (few-shot splits
  never share classes): the class names, sorted, are permuted with
  ``numpy.random.default_rng(seed)`` and cut in the order of ``split_ratios`` into counts
  by the largest-remainder rule, so the same folder and seed always give the same split.
  Without ``split_ratios`` there is one split, ``"all"``.
* ``root/{train,val,test}/<class>/<images>``: the splits as you made them (any of the three
  folders; they may not be mixed with class folders at the top level).

Image files are those with a suffix of :data:`jaxmeta.data.images.IMAGE_SUFFIXES` directly
in a class folder (other files, sub-folders and hidden files such as ``._x.jpg`` are
skipped); any size and mode, decoded with Pillow, converted to RGB (``channels=3``) or grey
(``channels=1``; transparent pixels on white) and stretched to ``image_size`` squared with
LANCZOS (:func:`jaxmeta.data.images.load_image`). Pixel values are kept (not inverted, unlike
Omniglot's strokes). Classes may have different numbers of images.

Errors name the folder or file: a missing ``root``, no class folders, images directly in
``root``, a class without images or with fewer than ``min_images`` (the K shots plus the
queries an episode draws), a split with fewer than ``min_classes`` classes (the N of
N-way), an unreadable image.

Memory: ``n_images x S x S x C`` bytes (e.g. 10,000 images at 84x84 RGB: 212 MB).

References:
  Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016 (class-disjoint
  few-shot splits).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from jaxmeta.data.episodes import ClassImages
from jaxmeta.data.image_tasks import ImageTasks
from jaxmeta.data.images import IMAGE_SUFFIXES, ImageFolderError, _image_files, load_images
from jaxmeta.data.prepared import Prepared, Split, folder_source
from jaxmeta.data.prepared_tasks import to_sampler_array
from jaxmeta.data.source import TaskSourceError, check_option
from jaxmeta.validation import check_int

__all__ = ["FolderTasks", "folder_layout", "SPLIT_FOLDERS", "prepare_folder", "split_classes"]

log = logging.getLogger(__name__)

SPLIT_FOLDERS = ("train", "val", "test")


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_of(folder: Path) -> list[Path]:
    return [f for f in _image_files(folder) if not f.name.startswith(".")]


def split_classes(
    names: list[str], split_ratios: Mapping[str, float], *, seed: int
) -> dict[str, list[str]]:
    """Partition class names into splits of the given ratios, deterministically.

    Args:
      names: the class names (any order; they are sorted first).
      split_ratios: ``{split: ratio}``, ratios > 0 summing to 1; the splits are filled in
        this order.
      seed: of ``numpy.random.default_rng``, which permutes the sorted names.

    Returns:
      ``{split: sorted class names}``; split sizes are ``floor(ratio * C)`` plus one for the
      largest remainders (ties: earlier split), so they add up to ``C``.
    """
    ratios = dict(split_ratios)
    if not ratios or any(not (isinstance(r, int | float) and r > 0) for r in ratios.values()):
        raise ValueError(f"split_ratios must be positive numbers, got {split_ratios!r}")
    if not math.isclose(sum(ratios.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"split_ratios must sum to 1, got {sum(ratios.values()):g}")
    order = sorted(names)
    perm = np.random.default_rng(seed).permutation(len(order))
    raw = [r * len(order) for r in ratios.values()]
    sizes = [math.floor(x) for x in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i] - sizes[i]), i))
    for i in by_remainder[: len(order) - sum(sizes)]:
        sizes[i] += 1
    out, start = {}, 0
    for split, size in zip(ratios, sizes, strict=True):
        out[split] = sorted(order[j] for j in perm[start : start + size])
        start += size
    return out


def folder_layout(
    root: str | os.PathLike,
    *,
    split_ratios: Mapping[str, float] | None = None,
    seed: int = 0,
    min_classes: int = 2,
    min_images: int = 1,
) -> dict[str, list[tuple[Path, int]]]:
    """The splits of ``root`` without decoding an image: ``{split: [(class folder, images)]}``.

    Arguments and errors as :func:`prepare_folder` (it lists folders only, so it is fast
    enough for a constructor to call).
    """
    min_classes = check_int("min_classes", min_classes, minimum=2)
    min_images = check_int("min_images", min_images, minimum=1)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ImageFolderError(f"image folder {root} does not exist or is not a folder")
    top = _subfolders(root)
    split_dirs = [p for p in top if p.name in SPLIT_FOLDERS]
    if split_dirs:
        others = [p.name for p in top if p.name not in SPLIT_FOLDERS]
        if others:
            raise ImageFolderError(
                f"{root} mixes split folders ({', '.join(p.name for p in split_dirs)}) with "
                f"other folders ({', '.join(others[:5])}); use either {root}/<class>/<images> "
                f"or {root}/{{train,val,test}}/<class>/<images>"
            )
        if split_ratios is not None:
            raise ValueError(
                f"{root} has train/val/test folders already; split_ratios applies only to "
                f"{root}/<class>/<images>"
            )
        layout = {
            p.name: _classes(p)
            for p in sorted(split_dirs, key=lambda p: SPLIT_FOLDERS.index(p.name))
        }
    else:
        classes = _classes(root)
        if split_ratios is None:
            layout = {"all": classes}
        else:
            by_name = {p.name: p for p in classes}
            parts = split_classes(list(by_name), split_ratios, seed=seed)
            layout = {s: [by_name[n] for n in names] for s, names in parts.items()}
    seen: dict[str, str] = {}
    for split, classes in layout.items():
        if len(classes) < min_classes:
            raise ImageFolderError(
                f"split {split!r} of {root} has {len(classes)} class(es); at least "
                f"{min_classes} are needed (N-way episodes draw N classes)"
            )
        for c in classes:
            if c.name in seen and seen[c.name] != split:
                log.warning(
                    "class %r is in both split %s and %s of %s", c.name, seen[c.name], split, root
                )
            seen.setdefault(c.name, split)

    out = {}
    for split, classes in layout.items():
        out[split] = []
        for c in classes:
            n = len(_images_of(c))
            if n < min_images:
                raise ImageFolderError(
                    f"class folder {c} has {n} images; at least {min_images} are needed "
                    f"({', '.join(IMAGE_SUFFIXES)})"
                    if n
                    else f"class folder {c} has no images ({', '.join(IMAGE_SUFFIXES)})"
                )
            out[split].append((c, n))
    return out


def prepare_folder(
    root: str | os.PathLike,
    *,
    image_size: int,
    channels: int = 3,
    split_ratios: Mapping[str, float] | None = None,
    seed: int = 0,
    min_classes: int = 2,
    min_images: int = 1,
) -> Prepared:
    """Read a folder of class sub-folders (see the module docstring for the layouts).

    Args:
      root: the folder.
      image_size: side ``S`` the images are resized to.
      channels: 3 (RGB) or 1 (grey).
      split_ratios: split the classes of ``root/<class>/`` by these ratios (see
        :func:`split_classes`); not allowed with ``root/{train,val,test}/``.
      seed: the seed of that split.
      min_classes: fewest classes a split may have (N of N-way; at least 2).
      min_images: fewest images a class may have (K shots + queries; at least 1).

    Returns:
      :class:`~jaxmeta.data.prepared.Prepared` (``name="folder"``): splits of uint8
      ``[n, S, S, channels]``, classes in sorted name order, the images of a class in sorted
      file-name order.

    Raises:
      ImageFolderError: naming the folder or file (see the module docstring).
      ValueError: bad arguments.
    """
    image_size = check_int("image_size", image_size, minimum=1)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    root = Path(root).expanduser()
    layout = folder_layout(
        root, split_ratios=split_ratios, seed=seed, min_classes=min_classes, min_images=min_images
    )
    out, names, shas, size = {}, [], [], 0
    for split, found in layout.items():
        classes = [c for c, _ in found]
        counts = [n for _, n in found]
        files = [f for c in classes for f in _images_of(c)]
        digests: list[str] = []
        images = load_images(files, size=image_size, channels=channels, sha256=digests)
        out[split] = Split(
            images=images,
            offsets=np.concatenate([[0], np.cumsum(counts)]),
            class_names=tuple(c.name for c in classes),
        )
        names += [str(f.relative_to(root)) for f in files]
        shas += digests
        size += sum(f.stat().st_size for f in files)
    mode = "RGB" if channels == 3 else "grey"
    return Prepared(
        name="folder",
        splits=out,
        image_shape=(image_size, image_size, channels),
        files=(folder_source(root, names, shas, size),),
        preprocessing=f"files decoded with Pillow, {mode}, Image.resize((S, S), LANCZOS)",
    )


def _classes(folder: Path) -> list[Path]:
    """The class folders of ``folder``; images lying directly in it are an error."""
    stray = _images_of(folder)
    if stray:
        raise ImageFolderError(
            f"{folder} holds images directly ({stray[0].name}, ...); put each class's images "
            f"in its own sub-folder: {folder}/<class>/<images>"
        )
    classes = _subfolders(folder)
    if not classes:
        raise ImageFolderError(
            f"{folder} has no class sub-folders; expected {folder}/<class>/<images> (e.g. "
            f"{folder}/cat/1.jpg, {folder}/dog/1.jpg)"
        )
    return classes


class FolderTasks(ImageTasks):
    """N-way K-shot episodes from your own images: ``data: {name: folder, root: DIR}``.

    ``root`` holds one sub-folder per class, or ``train/``, ``val/``, ``test/`` sub-folders
    of class folders (module docstring). Classes may have different numbers of images
    (sampled as :class:`~jaxmeta.data.episodes.ClassImages`, no padding). The folders are
    listed (not decoded) when the source is built, so a wrong ``root``, too few classes or
    too few images per class fail at once, naming the folder.

    Args:
      root: the image folder.
      ways: N classes per task (>= 2).
      shots: K support images per class.
      queries: query images per class (training).
      image_size: side the images are resized to (LANCZOS).
      channels: 3 (RGB) or 1 (grey).
      split_ratios: ``[train, val, test]`` (or ``[train, val]``) fractions of the classes of
        ``root/<class>/`` (a seeded class split); without it and without split folders,
        every class is in ``train`` (no validation or test).
      seed: the seed of that class split.
      rotations: rotated copies (90/180/270 degrees) are new classes.

    Raises:
      TaskSourceError: naming the option (``root`` for a folder that cannot be used).
    """

    name: ClassVar[str] = "folder"
    resumable_options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        root: str,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        image_size: int = 84,
        channels: int = 3,
        split_ratios: tuple[float, ...] | None = None,
        seed: int = 0,
        rotations: bool = False,
    ):
        super().__init__(ways=ways, shots=shots, queries=queries, rotations=rotations)
        self.image_size = check_option("image_size", image_size, minimum=1)
        if channels not in (1, 3):
            raise TaskSourceError("channels", f"must be 1 (grey) or 3 (RGB), got {channels!r}")
        self.channels = int(channels)
        self.seed = check_option("seed", seed, minimum=0)
        ratios = None
        if split_ratios is not None:
            if not isinstance(split_ratios, list | tuple) or len(split_ratios) not in (2, 3):
                raise TaskSourceError(
                    "split_ratios",
                    f"expected [train, val] or [train, val, test] fractions, got {split_ratios!r}",
                )
            ratios = dict(zip(SPLIT_FOLDERS, split_ratios, strict=False))
        self.split_ratios = None if ratios is None else tuple(ratios.values())
        self.root = Path(root).expanduser()
        try:
            layout = folder_layout(
                self.root,
                split_ratios=ratios,
                seed=self.seed,
            )
        except ImageFolderError as err:
            raise TaskSourceError("root", str(err)) from None
        except ValueError as err:
            raise TaskSourceError("split_ratios", str(err)) from None
        self._layout = {("train" if s == "all" else s): v for s, v in layout.items()}
        self.splits = tuple(s for s in SPLIT_FOLDERS if s in self._layout)
        if "train" not in self.splits:
            raise TaskSourceError("root", f"{self.root} has no train/ split folder")
        self.input_shape = (self.image_size, self.image_size, self.channels)
        self._prepared: Prepared | None = None
        self.check_episodes("train", ways=self.ways, shots=self.shots, queries=self.queries)

    def class_counts(self) -> dict[str, int]:
        return {s: len(v) for s, v in self._layout.items()}

    def check_episodes(self, split: str, *, ways: int | None, shots: int, queries: int) -> None:
        super().check_episodes(split, ways=ways, shots=shots, queries=queries)
        c, fewest = min(self._layout[split], key=lambda cn: cn[1])
        if shots + queries > fewest:
            raise TaskSourceError(
                "queries",
                f"shots + queries = {shots} + {queries} = {shots + queries} > {fewest}, the "
                f"images of {c} (the smallest class of the {split} split)",
            )

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "root": str(self.root),
            "image_size": self.image_size,
            "channels": self.channels,
        }
        if self.split_ratios is not None:
            out.update(split_ratios=list(self.split_ratios), seed=self.seed)
        if self.rotations:
            out["rotations"] = True
        return out

    def load_split(self, split: str) -> np.ndarray | ClassImages:
        if self._prepared is None:
            ratios = None
            if self.split_ratios is not None:
                ratios = dict(zip(SPLIT_FOLDERS, self.split_ratios, strict=False))
            self._prepared = prepare_folder(
                self.root,
                image_size=self.image_size,
                channels=self.channels,
                split_ratios=ratios,
                seed=self.seed,
            )
        splits = self._prepared.splits
        return to_sampler_array(splits["all"] if "all" in splits else splits[split])

    @classmethod
    def prepare(cls, **options: Any) -> list[str]:
        """Read the folder with ``options`` (the constructor's) and list its splits: classes,
        images, the smallest and largest class, memory."""
        source = cls(**options)
        lines = [f"folder {source.root}: {'x'.join(map(str, source.input_shape))} uint8"]
        lines.append(f"{'split':<6} {'classes':>7} {'images':>8} {'per class':>11} {'MB':>8}")
        for split in source.splits:
            data = source.split_images(split, ways=2)
            if isinstance(data, ClassImages):
                counts = data.counts()
            else:
                counts = np.full(data.shape[0], data.shape[1])
            n = int(np.sum(counts))
            lo, hi = int(np.min(counts)), int(np.max(counts))
            per = f"{lo}" if lo == hi else f"{lo}-{hi}"
            mb = n * int(np.prod(source.input_shape)) / 1e6
            lines.append(f"{split:<6} {data.shape[0]:>7} {n:>8} {per:>11} {mb:>8.1f}")
        return lines
