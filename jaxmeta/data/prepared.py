"""What every image dataset reader returns: the prepared form and its uint8 ``.npz`` cache.

A reader (``prepare_miniimagenet``, ``prepare_tieredimagenet``, ``prepare_cifar_fs``,
``prepare_fc100``, ``prepare_folder``) turns the files of one dataset into a
:class:`Prepared`: per split, one uint8 array ``[n_images, H, W, C]`` with the images of
each class contiguous, the class boundaries (classes may differ in size), the class names,
plus where the data came from. Nothing here knows about JAX or episodes: the episode
sampler reads class ``c`` as ``images[offsets[c]:offsets[c + 1]]``.

* :class:`SplitSpec` / :func:`check_counts`: the published sizes a reader checks (classes,
  images per class or in all, superclasses); ``expected=None`` skips them (a partial copy).
* :func:`save_cache` / :func:`load_cache`: a :class:`Prepared` as one uncompressed ``.npz``
  written and read by :mod:`jaxmeta.data.cache` (atomic writes, unreadable or stale files
  rebuilt), with a sha256 of each split's content, checked when read back.

Finding, downloading and verifying the files (missing-file messages, HTML pages saved as
``.pkl``, safe pickles, checked downloads) is :mod:`jaxmeta.data.archives`, shared with
Omniglot.

References:
  Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016 (episodes over
  classes of a split).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxmeta.data import cache as npz_cache
from jaxmeta.data.archives import CorruptFileError, file_digests

__all__ = [
    "CACHE_FORMAT",
    "Prepared",
    "SourceFile",
    "Split",
    "SplitSpec",
    "check_counts",
    "check_splits",
    "folder_source",
    "group_by_class",
    "load_cache",
    "save_cache",
    "source_file",
]

CACHE_FORMAT = 2  # 1: part A's own .npz writer (meta inside); 2: jaxmeta.data.cache's layout


# --------------------------------------------------------------------------------------------
# The prepared form.


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """The published size of one split, checked by the readers.

    Attributes:
      classes: number of classes.
      images_per_class: every class has exactly this many images (``None``: any number).
      images: total number of images (``None``: not checked).
      groups: number of distinct superclasses (``None``: not checked).
    """

    classes: int
    images_per_class: int | None = None
    images: int | None = None
    groups: int | None = None


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One file a dataset was prepared from (provenance; not a published checksum).

    Attributes:
      path: as found (for a folder of images: the folder, with ``"(N images)"``).
      size: bytes (for a folder: the sum over its images).
      sha256: of the file's bytes (for a folder: of its sorted ``"<sha256>  <name>\\n"``
        lines).
    """

    path: str
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split: the images of each class contiguous, classes possibly of different sizes.

    Attributes:
      images: uint8 ``[n_images, H, W, C]``.
      offsets: int64 ``[classes + 1]``, ``offsets[0] = 0``, ``offsets[-1] = n_images``;
        class ``c`` is ``images[offsets[c]:offsets[c + 1]]``.
      class_names: ``[classes]`` (wnids for the ImageNet subsets, CIFAR-100 names, folder
        names).
      class_groups: ``[classes]`` superclass of each class (FC100, tieredImageNet), or None.
    """

    images: np.ndarray
    offsets: np.ndarray
    class_names: tuple[str, ...]
    class_groups: tuple[str, ...] | None = None

    def __post_init__(self):
        images, offsets = self.images, np.asarray(self.offsets, np.int64)
        object.__setattr__(self, "offsets", offsets)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 [n, H, W, C], got {images.dtype} {images.shape}"
            )
        if offsets.ndim != 1 or len(offsets) != len(self.class_names) + 1:
            raise ValueError(
                f"offsets must have classes + 1 = {len(self.class_names) + 1} entries, "
                f"got shape {offsets.shape}"
            )
        if offsets[0] != 0 or offsets[-1] != len(images) or np.any(np.diff(offsets) < 1):
            raise ValueError(
                "offsets must rise strictly from 0 to n_images (every class non-empty), got "
                f"{offsets[:5].tolist()}... for {len(images)} images"
            )
        if self.class_groups is not None and len(self.class_groups) != len(self.class_names):
            raise ValueError("class_groups must have one entry per class")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def counts(self) -> np.ndarray:
        """int64 ``[classes]``: images per class."""
        return np.diff(self.offsets)

    def class_images(self, c: int) -> np.ndarray:
        """uint8 ``[n_c, H, W, C]``: the images of class ``c`` (a view)."""
        return self.images[self.offsets[c] : self.offsets[c + 1]]

    def content_sha256(self) -> str:
        """sha256 of the images, the class boundaries, names and groups (~2 GB/s)."""
        h = hashlib.sha256()
        h.update(json.dumps([list(self.images.shape), list(self.class_names)]).encode())
        h.update(json.dumps(list(self.class_groups or ())).encode())
        h.update(self.offsets.astype("<i8").tobytes())
        h.update(memoryview(np.ascontiguousarray(self.images)).cast("B"))
        return h.hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class Prepared:
    """A dataset ready for the episode sampler: its splits plus where they came from.

    Attributes:
      name: dataset name (``"miniimagenet"``, ``"cifar_fs"``, ...).
      splits: ``{split name: Split}``.
      image_shape: ``(H, W, C)`` of every image.
      files: the source files and their sizes and sha256.
      citation: the paper(s) to cite.
      preprocessing: how the stored images were made from the files (one line).
    """

    name: str
    splits: Mapping[str, Split]
    image_shape: tuple[int, int, int]
    files: tuple[SourceFile, ...] = ()
    citation: str = ""
    preprocessing: str = ""

    def __post_init__(self):
        for split, data in self.splits.items():
            if tuple(data.images.shape[1:]) != tuple(self.image_shape):
                raise ValueError(
                    f"split {split!r}: images {data.images.shape[1:]}, expected {self.image_shape}"
                )

    def split_counts(self) -> dict[str, dict[str, int]]:
        """``{split: {"classes": C, "images": n}}``."""
        return {
            s: {"classes": d.num_classes, "images": d.num_images} for s, d in self.splits.items()
        }

    @property
    def nbytes(self) -> int:
        """Bytes of all the uint8 images (the cache's size; a device copy needs as much)."""
        return sum(d.images.nbytes for d in self.splits.values())


def check_splits(splits: Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    """``splits`` as a tuple; a ``ValueError`` unless a non-empty subset of ``allowed``."""
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    if not splits or any(s not in allowed for s in splits):
        raise ValueError(f"splits must be a non-empty subset of {tuple(allowed)}, got {splits}")
    return splits


def group_by_class(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Order that makes each class contiguous (stable), and the class boundaries.

    Args:
      labels: int ``[n]`` in ``[0, num_classes)``.
      num_classes: ``C``.

    Returns:
      ``(order [n], offsets [C + 1])``: ``labels[order]`` is sorted, and class ``c`` is
      ``order[offsets[c]:offsets[c + 1]]`` (in its original order).
    """
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=num_classes)
    return order, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def check_counts(
    spec: SplitSpec | None,
    *,
    counts: Sequence[int],
    class_names: Sequence[str],
    class_groups: Sequence[str] | None = None,
    where: str,
) -> None:
    """Raise :class:`CorruptFileError` naming ``where`` when a split is not ``spec``.

    Args:
      spec: the published sizes (``None``: nothing to check).
      counts: images per class.
      class_names: ``[classes]``, for the message.
      class_groups: superclass per class (checked against ``spec.groups``).
      where: the file or folder to name.
    """
    if spec is None:
        return
    problems = []
    if len(counts) != spec.classes:
        problems.append(f"{len(counts)} classes, expected {spec.classes}")
    if spec.images_per_class is not None:
        bad = [
            f"{n} ({int(c)})"
            for n, c in zip(class_names, counts, strict=True)
            if c != spec.images_per_class
        ]
        if bad:
            problems.append(
                f"{len(bad)} classes without exactly {spec.images_per_class} images: "
                + ", ".join(bad[:5])
                + (" ..." if len(bad) > 5 else "")
            )
    if spec.images is not None and int(np.sum(counts)) != spec.images:
        problems.append(f"{int(np.sum(counts))} images, expected {spec.images}")
    if spec.groups is not None:
        got = len(set(class_groups or ()))
        if got != spec.groups:
            problems.append(f"{got} superclasses, expected {spec.groups}")
    if problems:
        raise CorruptFileError(f"{where}: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------
# Files: missing, HTML pages, pickles, digests.


def source_file(path: Path) -> SourceFile:
    """Size and sha256 of one source file."""
    return SourceFile(str(path), path.stat().st_size, file_digests(path)["sha256"])


def folder_source(
    folder: Path, names: Sequence[str], sha256: Sequence[str], size: int
) -> SourceFile:
    """One :class:`SourceFile` for a folder of images: a manifest hash of (name, sha256)."""
    manifest = "".join(f"{d}  {n}\n" for n, d in sorted(zip(names, sha256, strict=True)))
    return SourceFile(
        f"{folder} ({len(names)} images)", size, hashlib.sha256(manifest.encode()).hexdigest()
    )


# --------------------------------------------------------------------------------------------
# The uint8 .npz cache (one function each way, so a shared cache can replace them).


def save_cache(prepared: Prepared, path: str | os.PathLike) -> Path:
    """Write ``prepared`` as one uncompressed ``.npz`` (:func:`jaxmeta.data.cache.save_arrays`:
    atomic). Keys: ``images_<split>``, ``offsets_<split>`` and a JSON ``meta`` with the
    metadata and each split's :meth:`Split.content_sha256`."""
    meta = {
        "name": prepared.name,
        "image_shape": list(prepared.image_shape),
        "files": [dataclasses.asdict(f) for f in prepared.files],
        "citation": prepared.citation,
        "preprocessing": prepared.preprocessing,
        "splits": {
            s: {
                "class_names": list(d.class_names),
                "class_groups": None if d.class_groups is None else list(d.class_groups),
                "sha256": d.content_sha256(),
            }
            for s, d in prepared.splits.items()
        },
    }
    arrays = {"meta": np.array(json.dumps(meta))}
    for s, d in prepared.splits.items():
        arrays[f"images_{s}"] = d.images
        arrays[f"offsets_{s}"] = d.offsets
    return npz_cache.save_arrays(path, format=CACHE_FORMAT, **arrays)


def load_cache(
    path: str | os.PathLike, *, splits: Sequence[str] | None = None, verify: bool = True
) -> Prepared | None:
    """Read a cache written by :func:`save_cache`; ``None`` (with a warning) when it is
    missing, unreadable, of another format, lacks a split, or its content hash differs.

    Args:
      path: the ``.npz``.
      splits: the splits to read (default all); the others are not loaded.
      verify: recompute each split's sha256 (about 1 s per 2 GB) and compare.
    """
    wanted = None if splits is None else list(splits)
    built: dict[str, Split] = {}

    def check(arrays: dict[str, np.ndarray]) -> bool:
        meta = json.loads(str(arrays["meta"]))
        names = list(meta["splits"]) if wanted is None else wanted
        for s in names:
            info = meta["splits"].get(s)
            if info is None:
                return False
            groups = info["class_groups"]
            built[s] = Split(
                images=arrays[f"images_{s}"],
                offsets=arrays[f"offsets_{s}"],
                class_names=tuple(info["class_names"]),
                class_groups=None if groups is None else tuple(groups),
            )
            if verify and built[s].content_sha256() != info["sha256"]:
                return False
        return True

    keys = None
    if wanted is not None:
        keys = {"format", "meta"} | {f"{k}_{s}" for s in wanted for k in ("images", "offsets")}
    arrays = npz_cache.load_arrays(
        path, format=CACHE_FORMAT, check=check, what="prepared dataset cache", keys=keys
    )
    if arrays is None:
        return None
    meta = json.loads(str(arrays["meta"]))
    return Prepared(
        name=meta["name"],
        splits=built,
        image_shape=tuple(meta["image_shape"]),
        files=tuple(SourceFile(**f) for f in meta["files"]),
        citation=meta["citation"],
        preprocessing=meta["preprocessing"],
    )
