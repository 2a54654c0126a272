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

import numpy as np

from jaxmeta.data.images import IMAGE_SUFFIXES, ImageFolderError, _image_files, load_images
from jaxmeta.data.prepared import Prepared, Split, folder_source
from jaxmeta.validation import check_int

__all__ = ["SPLIT_FOLDERS", "prepare_folder", "split_classes"]

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

    out, names, shas, size = {}, [], [], 0
    for split, classes in layout.items():
        files = []
        counts = []
        for c in classes:
            found = _images_of(c)
            if len(found) < min_images:
                raise ImageFolderError(
                    f"class folder {c} has {len(found)} images; at least {min_images} are needed "
                    f"({', '.join(IMAGE_SUFFIXES)})"
                    if found
                    else f"class folder {c} has no images ({', '.join(IMAGE_SUFFIXES)})"
                )
            files += found
            counts.append(len(found))
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
