"""CIFAR-FS and FC100: few-shot splits of CIFAR-100, read from the official python archive.

Both datasets are the 100 classes of CIFAR-100 (Krizhevsky 2009), each with its 500
training and 100 test images combined (600 per class), 32x32 RGB, split by class:

* **CIFAR-FS** (Bertinetto et al. 2019): 64 / 16 / 20 classes drawn at random.
* **FC100** (Oreshkin et al. 2018): split by superclass to minimise the information
  overlap between splits: 12 / 4 / 4 superclasses = 60 / 20 / 20 classes.

Files (``manual_dir``): ``cifar-100-python.tar.gz``, the official archive
(https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz, published md5
``eb9058c3a382ffc7106e4002c42a8d85``), or the folder ``cifar-100-python/`` it unpacks
to (``train``, ``test``, ``meta``). With ``download=True`` a missing archive is downloaded
and its md5 checked; offline this fails within ~3 s. The content is verified either way:
the 100 class and 20 superclass names of ``meta`` (against the table below), 32x32x3 uint8
images, every image's superclass consistent with its class, and 600 images per class. A
local archive whose md5 differs from the published one (e.g. re-compressed) is accepted
with a warning when its content passes these checks.

Class lists, embedded here with their sources:

* :data:`CIFAR100_SUPERCLASSES`: the CIFAR-100 superclass table of
  https://www.cs.toronto.edu/~kriz/cifar.html, with the names as spelled in the archive's
  ``meta`` (``keyboard``, ``sweet_pepper``, ...).
* :data:`CIFAR_FS_CLASSES`: Bertinetto's split files (``splits/bertinetto/{train,val,
  test}.txt`` of the CIFAR-FS zip linked from github.com/bertinetto/r2d2; the repository
  itself does not hold them). Read from two public copies that agree exactly:
  tristandeleu/pytorch-meta ``torchmeta/datasets/assets/cifar100/cifar-fs/*.json`` and
  ArnoutDevos/maml-cifar-fs ``data/CIFARFS/cifar-fs-splits/*.txt``.
* :data:`FC100_SUPERCLASSES`: Oreshkin et al. 2018, Appendix "Few-shot CIFAR100 details"
  (superclass labels train {1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19}, val {8, 11, 13, 16},
  test {0, 7, 12, 14}), identical in ElementAI/TADAM ``datasets/create_dataset_cifar100.py``
  (``class_split``) and torchmeta's ``assets/cifar100/fc100/*.json``. (The paper's main text
  says "5 superclasses each" for validation and test; its appendix and code use 4, which
  gives the 20 classes it states.)

Within a split the classes are in CIFAR-100 label order (alphabetical); within a class the
500 training images come first, then the 100 test images, in archive order.

Memory: all 100 classes at 32x32 are 60,000 x 3,072 B = 184 MB of uint8 (the cache, and a
device copy of all splits); 64 CIFAR-FS training classes 118 MB. ``image_size`` other than
32 resizes with Pillow's LANCZOS (bit-exact, :func:`jaxmeta.data.images.resize_images`).

References:
  Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", tech. report 2009.
  Bertinetto, Henriques, Torr & Vedaldi, "Meta-learning with differentiable closed-form
  solvers", ICLR 2019. Oreshkin, Rodriguez & Lacoste, "TADAM: Task dependent adaptive metric
  for improved few-shot learning", NeurIPS 2018.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from jaxmeta.data.archives import (
    CorruptFileError,
    DownloadError,
    FilesMissingError,
    check_not_html,
    download,
    file_digests,
    load_pickle,
    missing_files_message,
    read_tar,
)
from jaxmeta.data.images import resize_images
from jaxmeta.data.prepared import (
    Prepared,
    SourceFile,
    Split,
    SplitSpec,
    check_counts,
    check_splits,
    group_by_class,
    source_file,
)
from jaxmeta.data.prepared_tasks import PreparedTasks
from jaxmeta.validation import check_int

__all__ = [
    "CIFAR100_ARCHIVE",
    "CifarFSTasks",
    "FC100Tasks",
    "CIFAR100_MD5",
    "CIFAR100_SUPERCLASSES",
    "CIFAR100_URL",
    "CIFAR_FS_CLASSES",
    "CIFAR_FS_EXPECTED",
    "FC100_CLASSES",
    "FC100_EXPECTED",
    "FC100_SUPERCLASSES",
    "SPLITS",
    "prepare_cifar_fs",
    "prepare_fc100",
    "read_cifar100",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # published on the CIFAR page
_MEMBERS = ("train", "test", "meta")
_IMAGES_PER_CLASS = 600  # 500 train + 100 test

# (superclass, its 5 classes), superclasses in CIFAR-100 coarse-label order (0..19).
CIFAR100_SUPERCLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("aquatic_mammals", ("beaver", "dolphin", "otter", "seal", "whale")),
    ("fish", ("aquarium_fish", "flatfish", "ray", "shark", "trout")),
    ("flowers", ("orchid", "poppy", "rose", "sunflower", "tulip")),
    ("food_containers", ("bottle", "bowl", "can", "cup", "plate")),
    ("fruit_and_vegetables", ("apple", "mushroom", "orange", "pear", "sweet_pepper")),
    ("household_electrical_devices", ("clock", "keyboard", "lamp", "telephone", "television")),
    ("household_furniture", ("bed", "chair", "couch", "table", "wardrobe")),
    ("insects", ("bee", "beetle", "butterfly", "caterpillar", "cockroach")),
    ("large_carnivores", ("bear", "leopard", "lion", "tiger", "wolf")),
    ("large_man-made_outdoor_things", ("bridge", "castle", "house", "road", "skyscraper")),
    ("large_natural_outdoor_scenes", ("cloud", "forest", "mountain", "plain", "sea")),
    ("large_omnivores_and_herbivores", ("camel", "cattle", "chimpanzee", "elephant", "kangaroo")),
    ("medium_mammals", ("fox", "porcupine", "possum", "raccoon", "skunk")),
    ("non-insect_invertebrates", ("crab", "lobster", "snail", "spider", "worm")),
    ("people", ("baby", "boy", "girl", "man", "woman")),
    ("reptiles", ("crocodile", "dinosaur", "lizard", "snake", "turtle")),
    ("small_mammals", ("hamster", "mouse", "rabbit", "shrew", "squirrel")),
    ("trees", ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree")),
    ("vehicles_1", ("bicycle", "bus", "motorcycle", "pickup_truck", "train")),
    ("vehicles_2", ("lawn_mower", "rocket", "streetcar", "tank", "tractor")),
)
_COARSE_NAMES = tuple(s for s, _ in CIFAR100_SUPERCLASSES)
_FINE_NAMES = tuple(sorted(c for _, cs in CIFAR100_SUPERCLASSES for c in cs))  # label order
_SUPERCLASS_OF = {c: s for s, cs in CIFAR100_SUPERCLASSES for c in cs}

# Bertinetto et al. 2019 (sources in the module docstring), in CIFAR-100 label order.
CIFAR_FS_CLASSES: dict[str, tuple[str, ...]] = {
    "train": (
        "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "boy", "bridge", "bus",
        "can", "castle", "caterpillar", "chair", "clock", "cloud", "cockroach", "couch", "cup",
        "dinosaur", "dolphin", "elephant", "forest", "girl", "hamster", "house", "kangaroo",
        "keyboard", "lawn_mower", "lion", "lizard", "lobster", "mountain", "mouse", "mushroom",
        "oak_tree", "orange", "orchid", "palm_tree", "pear", "pine_tree", "plate", "porcupine",
        "possum", "rabbit", "raccoon", "ray", "road", "seal", "shrew", "skunk", "skyscraper",
        "snake", "spider", "squirrel", "streetcar", "sunflower", "tank", "tiger", "train",
        "trout", "tulip", "turtle", "willow_tree", "wolf",
    ),
    "val": (
        "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish",
        "lamp", "maple_tree", "motorcycle", "otter", "sea", "shark", "television", "tractor",
    ),
    "test": (
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck",
        "plain", "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone",
        "wardrobe", "whale", "woman", "worm",
    ),
}  # fmt: skip

# Oreshkin et al. 2018, Appendix (superclass labels in the comments).
FC100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "train": (
        "fish", "flowers", "food_containers", "fruit_and_vegetables",  # 1, 2, 3, 4
        "household_electrical_devices", "household_furniture",  # 5, 6
        "large_man-made_outdoor_things", "large_natural_outdoor_scenes",  # 9, 10
        "reptiles", "trees", "vehicles_1", "vehicles_2",  # 15, 17, 18, 19
    ),
    "val": (
        "large_carnivores", "large_omnivores_and_herbivores",  # 8, 11
        "non-insect_invertebrates", "small_mammals",  # 13, 16
    ),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),  # 0, 7, 12, 14
}  # fmt: skip
FC100_CLASSES: dict[str, tuple[str, ...]] = {
    split: tuple(c for c in _FINE_NAMES if _SUPERCLASS_OF[c] in groups)
    for split, groups in FC100_SUPERCLASSES.items()
}

CIFAR_FS_EXPECTED: dict[str, SplitSpec] = {
    "train": SplitSpec(64, _IMAGES_PER_CLASS, 64 * _IMAGES_PER_CLASS),
    "val": SplitSpec(16, _IMAGES_PER_CLASS, 16 * _IMAGES_PER_CLASS),
    "test": SplitSpec(20, _IMAGES_PER_CLASS, 20 * _IMAGES_PER_CLASS),
}
FC100_EXPECTED: dict[str, SplitSpec] = {
    "train": SplitSpec(60, _IMAGES_PER_CLASS, 60 * _IMAGES_PER_CLASS, groups=12),
    "val": SplitSpec(20, _IMAGES_PER_CLASS, 20 * _IMAGES_PER_CLASS, groups=4),
    "test": SplitSpec(20, _IMAGES_PER_CLASS, 20 * _IMAGES_PER_CLASS, groups=4),
}

_WHAT = "the CIFAR-100 python archive"
_CITATIONS = {
    "cifar_fs": (
        "Bertinetto, Henriques, Torr & Vedaldi. Meta-learning with differentiable closed-form "
        "solvers. ICLR 2019. Krizhevsky. Learning Multiple Layers of Features from Tiny "
        "Images. 2009."
    ),
    "fc100": (
        "Oreshkin, Rodriguez & Lacoste. TADAM: Task dependent adaptive metric for improved "
        "few-shot learning. NeurIPS 2018. Krizhevsky. Learning Multiple Layers of Features "
        "from Tiny Images. 2009."
    ),
}


def _corrupt(path: Path, why: str) -> CorruptFileError:
    return CorruptFileError(
        f"{path}: {why}. Replace it with a fresh copy of {CIFAR100_URL} (md5 {CIFAR100_MD5})"
    )


# The most bytes each member may have: the genuine pickles are ~157 MB (50,000 images of
# 3,072 bytes plus labels and file names), ~31 MB and ~1.5 KB; checked before reading.
MEMBER_LIMITS = {"train": 200 * 2**20, "test": 48 * 2**20, "meta": 2**16}


def _read_members(path: Path) -> dict[str, bytes]:
    """The bytes of ``train``, ``test`` and ``meta`` from the archive or unpacked folder,
    each size checked against :data:`MEMBER_LIMITS` before it is read."""
    if path.is_dir():
        out = {}
        for m in _MEMBERS:
            size = (path / m).stat().st_size if (path / m).is_file() else 0
            if size > MEMBER_LIMITS[m]:
                raise _corrupt(path / m, f"{size:,} bytes, more than the genuine file has")
            out[m] = (path / m).read_bytes()
        return out
    limits = {f"{CIFAR100_FOLDER}/{m}": MEMBER_LIMITS[m] for m in _MEMBERS}
    members = read_tar(path, limits, corrupt=lambda why: _corrupt(path, why))
    return {m: members[f"{CIFAR100_FOLDER}/{m}"] for m in _MEMBERS}


def read_cifar100(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All 60,000 CIFAR-100 images with their class and superclass labels, verified.

    Args:
      path: ``cifar-100-python.tar.gz`` or the ``cifar-100-python/`` folder it unpacks to.

    Returns:
      ``(images uint8 [n, 32, 32, 3], fine int64 [n], coarse int64 [n])``: the ``train``
      images then the ``test`` images, in archive order; ``fine`` indexes the 100 names in
      alphabetical order (the archive's ``fine_label_names``), ``coarse`` the 20
      superclasses of :data:`CIFAR100_SUPERCLASSES`.

    Raises:
      CorruptFileError: an HTML page, a truncated or foreign archive, other class names,
        bad shapes, or a class filed under another superclass (names the file).
    """
    path = Path(path)
    if path.is_file():
        check_not_html(path, what=_WHAT, get_from=CIFAR100_URL)
    members = _read_members(path)
    loaded = {
        m: load_pickle(
            data, what=f"a CIFAR-100 {m} pickle", get_from=CIFAR100_URL, name=f"{path}:{m}"
        )
        for m, data in members.items()
    }
    meta = loaded["meta"]
    if not isinstance(meta, dict):
        raise _corrupt(path, "meta is not a dict")
    fine_names = tuple(_text(n) for n in meta.get("fine_label_names", ()))
    coarse_names = tuple(_text(n) for n in meta.get("coarse_label_names", ()))
    if fine_names != _FINE_NAMES:
        raise _corrupt(path, f"meta lists {len(fine_names)} classes that are not CIFAR-100's 100")
    if coarse_names != _COARSE_NAMES:
        raise _corrupt(path, f"meta lists {len(coarse_names)} superclasses, not CIFAR-100's 20")
    images, fine, coarse = [], [], []
    for m in ("train", "test"):
        d = loaded[m]
        try:
            data = np.asarray(d["data"])
            f = np.asarray(d["fine_labels"], np.int64)
            c = np.asarray(d["coarse_labels"], np.int64)
        except (TypeError, KeyError, ValueError) as err:
            raise _corrupt(path, f"{m} lacks data/fine_labels/coarse_labels ({err})") from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise _corrupt(
                path, f"{m}: data is {data.dtype} {data.shape}, expected uint8 [n, 3072]"
            )
        if not (len(data) == len(f) == len(c)):
            raise _corrupt(path, f"{m}: {len(data)} images but {len(f)}/{len(c)} labels")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        fine.append(f)
        coarse.append(c)
    fine, coarse = np.concatenate(fine), np.concatenate(coarse)
    if fine.min(initial=0) < 0 or fine.max(initial=0) >= 100 or coarse.max(initial=0) >= 20:
        raise _corrupt(path, "labels outside [0, 100) / [0, 20)")
    want_coarse = np.array([_COARSE_NAMES.index(_SUPERCLASS_OF[n]) for n in _FINE_NAMES])
    if np.any(want_coarse[fine] != coarse):
        i = int(np.flatnonzero(want_coarse[fine] != coarse)[0])
        raise _corrupt(
            path,
            f"image {i} of class {_FINE_NAMES[fine[i]]} is filed under superclass "
            f"{_COARSE_NAMES[coarse[i]]}, not {_SUPERCLASS_OF[_FINE_NAMES[fine[i]]]}",
        )
    return np.ascontiguousarray(np.concatenate(images)), fine, coarse


def _text(x) -> str:
    return x.decode("latin1") if isinstance(x, bytes) else str(x)


def _locate(manual_dir: Path, *, download_missing: bool, url: str, timeout: float) -> Path:
    archive, folder = manual_dir / CIFAR100_ARCHIVE, manual_dir / CIFAR100_FOLDER
    if archive.is_file():
        return archive
    if folder.is_dir() and all((folder / m).is_file() for m in _MEMBERS):
        return folder
    message = missing_files_message(
        "CIFAR-100",
        manual_dir,
        [
            ("the official archive", [CIFAR100_ARCHIVE]),
            ("the archive unpacked", [f"{CIFAR100_FOLDER}/{m}" for m in _MEMBERS]),
        ],
        f"{CIFAR100_URL} (md5 {CIFAR100_MD5}), or pass download=True when online",
    )
    if not download_missing:
        raise FilesMissingError(message + "\n(download=False: not downloading)")
    try:
        return download(url, archive, md5=CIFAR100_MD5, timeout=timeout)
    except DownloadError as err:
        raise FilesMissingError(f"{message}\n(download failed: {err})") from None


def _prepare(
    name: str,
    classes: Mapping[str, Sequence[str]],
    manual_dir: str | os.PathLike,
    *,
    image_size: int,
    splits: Sequence[str],
    download: bool,
    url: str,
    timeout: float,
    expected: Mapping[str, SplitSpec] | None,
) -> Prepared:
    image_size = check_int("image_size", image_size, minimum=1)
    splits = check_splits(splits, SPLITS)
    manual = Path(manual_dir).expanduser()
    path = _locate(manual, download_missing=download, url=url, timeout=timeout)
    images, fine, _ = read_cifar100(path)
    if path.is_file():
        digests = file_digests(path, ("md5", "sha256"))
        if digests["md5"] != CIFAR100_MD5:
            log.warning(
                "%s has md5 %s, not the published %s (a re-packed copy?); its content passed "
                "the checks, so it is used",
                path,
                digests["md5"],
                CIFAR100_MD5,
            )
        files = (SourceFile(str(path), path.stat().st_size, digests["sha256"]),)
    else:
        files = tuple(source_file(path / m) for m in _MEMBERS)
    out = {}
    for split in splits:
        names = tuple(classes[split])
        index = np.array([_FINE_NAMES.index(n) for n in names])
        lookup = np.full(100, -1, np.int64)
        lookup[index] = np.arange(len(index))
        keep = np.flatnonzero(lookup[fine] >= 0)
        order, offsets = group_by_class(lookup[fine[keep]], len(names))
        absent = [n for n, k in zip(names, np.diff(offsets), strict=True) if k == 0]
        if absent:
            raise _corrupt(path, f"no images of class {', '.join(absent)}")
        sel = images[keep[order]]
        data = Split(
            images=resize_images(sel, image_size) if image_size != 32 else sel,
            offsets=offsets,
            class_names=names,
            class_groups=tuple(_SUPERCLASS_OF[n] for n in names),
        )
        check_counts(
            None if expected is None else expected.get(split),
            counts=data.counts,
            class_names=names,
            class_groups=data.class_groups,
            where=f"{path} ({name} {split})",
        )
        out[split] = data
    resample = "" if image_size == 32 else f", resized to {image_size}x{image_size} (LANCZOS)"
    return Prepared(
        name=name,
        splits=out,
        image_shape=(image_size, image_size, 3),
        files=files,
        citation=_CITATIONS[name],
        preprocessing=f"CIFAR-100 train+test images, 32x32 RGB uint8{resample}",
    )


def prepare_cifar_fs(
    manual_dir: str | os.PathLike,
    *,
    image_size: int = 32,
    splits: Sequence[str] = SPLITS,
    download: bool = True,
    url: str = CIFAR100_URL,
    timeout: float = 3.0,
    expected: Mapping[str, SplitSpec] | None = CIFAR_FS_EXPECTED,
) -> Prepared:
    """CIFAR-FS (Bertinetto et al. 2019): 64 / 16 / 20 CIFAR-100 classes x 600 images.

    Args:
      manual_dir: folder with ``cifar-100-python.tar.gz`` (or ``cifar-100-python/``).
      image_size: side ``S`` of the stored images (32: the originals).
      splits: the splits to prepare.
      download: download the official archive (md5 checked) when it is not in
        ``manual_dir``; offline this fails within ``timeout`` seconds.
      url: where to download from (the official URL).
      timeout: seconds for the connection test and for each read of the download.
      expected: the published sizes to check (:data:`CIFAR_FS_EXPECTED`); ``None`` skips.

    Returns:
      :class:`~jaxmeta.data.prepared.Prepared` with splits of uint8 ``[n, S, S, 3]``, classes
      in :data:`CIFAR_FS_CLASSES` order, ``class_groups`` = their CIFAR-100 superclasses.

    Raises:
      FilesMissingError: no archive and no download (names the file, the folder and
        the URL).
      CorruptFileError: see :func:`read_cifar100`; wrong counts.

    References:
      Bertinetto et al., ICLR 2019; Krizhevsky 2009.
    """
    return _prepare(
        "cifar_fs",
        CIFAR_FS_CLASSES,
        manual_dir,
        image_size=image_size,
        splits=splits,
        download=download,
        url=url,
        timeout=timeout,
        expected=expected,
    )


def prepare_fc100(
    manual_dir: str | os.PathLike,
    *,
    image_size: int = 32,
    splits: Sequence[str] = SPLITS,
    download: bool = True,
    url: str = CIFAR100_URL,
    timeout: float = 3.0,
    expected: Mapping[str, SplitSpec] | None = FC100_EXPECTED,
) -> Prepared:
    """FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass, 60 / 20 / 20 classes
    (12 / 4 / 4 superclasses, :data:`FC100_SUPERCLASSES`) x 600 images.

    Arguments, result and errors as :func:`prepare_cifar_fs` (``expected`` defaults to
    :data:`FC100_EXPECTED`, which also checks the superclass counts).

    References:
      Oreshkin, Rodriguez & Lacoste, NeurIPS 2018 (Appendix); Krizhevsky 2009.
    """
    return _prepare(
        "fc100",
        FC100_CLASSES,
        manual_dir,
        image_size=image_size,
        splits=splits,
        download=download,
        url=url,
        timeout=timeout,
        expected=expected,
    )


class _CifarTasks(PreparedTasks):
    """The shared part of CIFAR-FS and FC100 as task sources."""

    examples_per_class = _IMAGES_PER_CLASS
    default_image_size: ClassVar[int] = 32
    reader: ClassVar[Any]

    def __init__(
        self,
        *,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        image_size: int = 32,
        manual_dir: str | None = None,
        data_dir: str | None = None,
        download: bool = True,
        published_counts: bool = True,
    ):
        self.download = bool(download)
        super().__init__(
            ways=ways,
            shots=shots,
            queries=queries,
            image_size=image_size,
            manual_dir=manual_dir,
            data_dir=data_dir,
            published_counts=published_counts,
        )

    def read(self, splits: Sequence[str]) -> Prepared:
        return type(self).reader(
            self.manual_dir,
            image_size=self.image_size,
            splits=splits,
            download=self.download,
            expected=self.expected(),
        )


class CifarFSTasks(_CifarTasks):
    """N-way K-shot CIFAR-FS episodes (Bertinetto et al. 2019: 64/16/20 CIFAR-100 classes x
    600 images, 32x32 RGB), from the official CIFAR-100 python archive (:func:`prepare_cifar_fs`).

    Args:
      ways: N classes per task (>= 2).
      shots: K support images per class.
      queries: query images per class (training).
      image_size: side of the stored images (32: the originals).
      manual_dir: folder with cifar-100-python.tar.gz (default ``~/jaxmeta_data/cifar_fs``
        or ``$JAXMETA_DATA_DIR/cifar_fs``).
      data_dir: folder for the uint8 cache (default: the manual dir).
      download: download the official archive (md5 checked) when it is missing.
      published_counts: check 64/16/20 classes x 600.
    """

    name: ClassVar[str] = "cifar_fs"
    published: ClassVar[Mapping[str, SplitSpec]] = CIFAR_FS_EXPECTED
    reader = staticmethod(prepare_cifar_fs)


class FC100Tasks(_CifarTasks):
    """N-way K-shot FC100 episodes (Oreshkin et al. 2018: CIFAR-100 split by superclass,
    60/20/20 classes x 600 images, 32x32 RGB), from the official archive (:func:`prepare_fc100`).

    Args:
      ways: N classes per task (>= 2).
      shots: K support images per class.
      queries: query images per class (training).
      image_size: side of the stored images (32: the originals).
      manual_dir: folder with cifar-100-python.tar.gz (default ``~/jaxmeta_data/fc100`` or
        ``$JAXMETA_DATA_DIR/fc100``).
      data_dir: folder for the uint8 cache (default: the manual dir).
      download: download the official archive (md5 checked) when it is missing.
      published_counts: check 60/20/20 classes x 600 and 12/4/4 superclasses.
    """

    name: ClassVar[str] = "fc100"
    published: ClassVar[Mapping[str, SplitSpec]] = FC100_EXPECTED
    reader = staticmethod(prepare_fc100)
