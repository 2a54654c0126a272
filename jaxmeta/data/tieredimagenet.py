"""tieredImageNet (Ren et al. 2018): 608 ImageNet classes in 34 superclasses, 84x84 RGB.

Splits by superclass (so train and test classes are far apart): train 351 classes / 20
superclasses / 448,695 images, val 97 / 6 / 124,261, test 160 / 8 / 206,209. Classes have
different numbers of images (all of each class's ImageNet training images), so the episode
sampler must handle unequal class sizes.

Files (``manual_dir``), as published by Ren et al. (renmengye/few-shot-ssl-public, the
``tiered-imagenet.tar`` on Google Drive) and read by learnables/learn2learn
``vision/datasets/tiered_imagenet.py``; per split ``S`` in train/val/test:

* ``S_images_png.pkl``: a pickled list of PNG-encoded 84x84 images (uint8 arrays from
  ``cv2.imencode('.png', ...)``, or bytes), decoded here with Pillow (RGB);
* or instead ``S_images.npz`` (key ``images``, uint8 ``[n, 84, 84, 3]``), the decompressed
  form Ren et al.'s code writes (``fewshot/data/compress_tiered_imagenet.py``): its channels
  are in OpenCV's **BGR** order (``cv2.imread``/``cv2.imdecode``) and are flipped to RGB;
* ``S_labels.pkl``: a pickled dict with ``label_specific`` (int ``[n]``, the class of each
  image), ``label_general`` (int ``[n]``, its superclass), ``label_specific_str`` (class
  names) and ``label_general_str`` (superclass names).

Learn2learn's Zenodo copy (https://zenodo.org/record/7978538) names them with a
``tiered-imagenet-`` prefix (``tiered-imagenet-train_images_png.pkl``); both names are
accepted. Checked: HTML pages saved as ``.pkl``, truncated pickles, PNG signature and 84x84
size of every image (from its header, before decoding), one superclass per class, every
class non-empty, and the published counts (:data:`EXPECTED`). Classes are stored in
``label_specific`` order, each class's images in file order.

Memory: 779,165 x 84 x 84 x 3 uint8 = 16.5 GB for all splits (train 9.50 GB, val 2.63 GB,
test 4.37 GB): the cache and a device copy of the training split alone need ~9.5 GB each
(use ``splits=`` to prepare one split at a time). While a split is decoded its PNG pickle
(several GB for train) is in memory too. The ``.npz`` form needs the decompressed split
twice (loaded, then put in class order).

References:
  Ren, Triantafillou, Ravi, Snell, Swersky, Tenenbaum, Larochelle & Zemel, "Meta-Learning
  for Semi-Supervised Few-Shot Classification", ICLR 2018.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from jaxmeta.data.archives import (
    CorruptFileError,
    FilesMissingError,
    check_not_html,
    load_pickle,
    missing_files_message,
)
from jaxmeta.data.images import ImageFolderError, load_images, resize_images
from jaxmeta.data.prepared import (
    Prepared,
    Split,
    SplitSpec,
    check_counts,
    check_splits,
    group_by_class,
    source_file,
)
from jaxmeta.data.prepared_tasks import PreparedTasks
from jaxmeta.validation import check_int

__all__ = ["EXPECTED", "IMAGE_SIZE", "SPLITS", "TieredImageNetTasks", "prepare_tieredimagenet"]

SPLITS = ("train", "val", "test")
IMAGE_SIZE = 84
EXPECTED: dict[str, SplitSpec] = {
    "train": SplitSpec(351, images=448_695, groups=20),
    "val": SplitSpec(97, images=124_261, groups=6),
    "test": SplitSpec(160, images=206_209, groups=8),
}
_PREFIX = "tiered-imagenet-"
_GET = (
    "learn2learn's copies at https://zenodo.org/record/7978538 (tiered-imagenet-"
    "{train,val,test}_{images_png,labels}.pkl), or tiered-imagenet.tar (12.9 GB, Google "
    "Drive) linked from github.com/renmengye/few-shot-ssl-public"
)
_CITATION = "Ren et al. Meta-Learning for Semi-Supervised Few-Shot Classification. ICLR 2018."
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (name, _PREFIX + name):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _locate(folder: Path, splits: Sequence[str]) -> dict[str, tuple[Path, Path]]:
    found, missing = {}, []
    for s in splits:
        images = _find(folder, f"{s}_images_png.pkl") or _find(folder, f"{s}_images.npz")
        labels = _find(folder, f"{s}_labels.pkl")
        if images is None:
            missing.append(f"{s}_images_png.pkl (or {s}_images.npz)")
        if labels is None:
            missing.append(f"{s}_labels.pkl")
        if images and labels:
            found[s] = (images, labels)
    if missing:
        raise FilesMissingError(
            missing_files_message(
                "tieredImageNet",
                folder,
                [(f"names with or without the {_PREFIX!r} prefix", missing)],
                _GET,
            )
        )
    return found


def _text(x) -> str:
    return x.decode("latin1") if isinstance(x, bytes) else str(x)


def _read_labels(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None, dict[int, str]]:
    """``(specific [n], general [n], class names or None, {general: name})``, verified."""
    data = load_pickle(path, what="a tieredImageNet labels pickle", get_from=_GET)
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path}: expected a dict, got {type(data).__name__}")
    data = {_text(k): v for k, v in data.items()}
    if not {"label_specific", "label_general"} <= set(data):
        raise CorruptFileError(
            f"{path}: expected the keys label_specific and label_general, got {sorted(data)}"
        )
    try:
        specific = np.asarray(data["label_specific"], np.int64).reshape(-1)
        general = np.asarray(data["label_general"], np.int64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise CorruptFileError(f"{path}: labels are not integer arrays ({err})") from None
    if len(specific) != len(general):
        raise CorruptFileError(
            f"{path}: {len(specific)} label_specific but {len(general)} label_general"
        )
    if len(specific) and min(specific.min(), general.min()) < 0:
        raise CorruptFileError(f"{path}: negative labels")
    names = data.get("label_specific_str")
    names = None if names is None else [_text(n) for n in names]
    groups = data.get("label_general_str")
    if isinstance(groups, dict):
        groups = {int(k): _text(v) for k, v in groups.items()}
    elif groups is not None:
        groups = {i: _text(v) for i, v in enumerate(groups)}
    return specific, general, names, groups or {}


def _png_items(path: Path, n: int) -> list[bytes]:
    """The PNGs of an ``*_images_png.pkl`` as bytes, each checked to be an 84x84 PNG."""
    items = load_pickle(path, what="a tieredImageNet pickle of PNG images", get_from=_GET)
    if not isinstance(items, list | tuple | np.ndarray):
        raise CorruptFileError(f"{path}: expected a list of PNG images, got {type(items).__name__}")
    if len(items) != n:
        raise CorruptFileError(f"{path}: {len(items)} images, but its labels file has {n}")
    out = []
    for i, item in enumerate(items):
        try:
            png = item.tobytes() if isinstance(item, np.ndarray) else bytes(item)
        except TypeError:
            raise CorruptFileError(f"{path}[{i}]: not encoded image bytes") from None
        if png[:8] != _PNG_SIGNATURE or len(png) < 24:
            raise CorruptFileError(f"{path}[{i}]: not a PNG image")
        size = struct.unpack(">II", png[16:24])
        if size != (IMAGE_SIZE, IMAGE_SIZE):
            raise CorruptFileError(
                f"{path}[{i}]: a {size[0]}x{size[1]} image, expected {IMAGE_SIZE}x{IMAGE_SIZE}"
            )
        out.append(png)
    return out


def _npz_images(path: Path, n: int) -> np.ndarray:
    """The BGR ``images`` array of an ``*_images.npz``, checked."""
    check_not_html(path, what="a tieredImageNet .npz of images", get_from=_GET)
    try:
        with np.load(path, allow_pickle=False) as z:
            # the declared size first: n images of 84x84x3 bytes (plus the .npy header)
            declared = z.zip.getinfo("images.npy").file_size
            if declared > n * IMAGE_SIZE * IMAGE_SIZE * 3 + 2**16:
                raise CorruptFileError(
                    f"{path}: 'images' declares {declared:,} bytes, more than {n} images of "
                    f"{IMAGE_SIZE}x{IMAGE_SIZE}x3; not read (get it again from {_GET})"
                )
            images = z["images"]
    except CorruptFileError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise CorruptFileError(
            f"{path} is truncated or not a tieredImageNet .npz with an 'images' array "
            f"({type(err).__name__}: {err}); get it again from {_GET}"
        ) from None
    if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise CorruptFileError(
            f"{path}: images are {images.dtype} {images.shape}, expected uint8 [n, 84, 84, 3]"
        )
    if len(images) != n:
        raise CorruptFileError(f"{path}: {len(images)} images, but its labels file has {n}")
    return images


def _read_split(images_path: Path, labels_path: Path, *, image_size: int) -> Split:
    specific, general, names, group_names = _read_labels(labels_path)
    n_classes = len(names) if names is not None else int(specific.max(initial=-1)) + 1
    if len(specific) and specific.max() >= n_classes:
        raise CorruptFileError(
            f"{labels_path}: label_specific reaches {specific.max()}, but there are "
            f"{n_classes} class names"
        )
    order, offsets = group_by_class(specific, n_classes)
    counts = np.diff(offsets)
    if np.any(counts == 0):
        empty = int(np.flatnonzero(counts == 0)[0])
        raise CorruptFileError(f"{labels_path}: class {empty} has no images")
    first = general[order[offsets[:-1]]]
    mixed = np.flatnonzero(general[order] != np.repeat(first, counts))
    if len(mixed):
        c = int(specific[order[mixed[0]]])
        raise CorruptFileError(
            f"{labels_path}: class {c} has images in several superclasses (label_general)"
        )
    n = len(specific)
    if images_path.suffix == ".npz":
        bgr = _npz_images(images_path, n)
        images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        for a in range(0, n, 4096):
            images[a : a + 4096] = bgr[order[a : a + 4096]][..., ::-1]
        del bgr
        images = resize_images(images, image_size)
    else:
        pngs = _png_items(images_path, n)
        sources = [pngs[i] for i in order]
        del pngs
        names_of = [f"{images_path}[{i}]" for i in order]
        try:
            images = load_images(sources, size=image_size, channels=3, names=names_of)
        except ImageFolderError as err:
            raise CorruptFileError(str(err)) from None
    class_names = (
        tuple(names) if names is not None else tuple(f"class{c}" for c in range(n_classes))
    )
    groups = tuple(group_names.get(int(g), f"superclass{int(g)}") for g in first)
    return Split(images=images, offsets=offsets, class_names=class_names, class_groups=groups)


def prepare_tieredimagenet(
    manual_dir: str | os.PathLike,
    *,
    image_size: int = IMAGE_SIZE,
    splits: Sequence[str] = SPLITS,
    expected: Mapping[str, SplitSpec] | None = EXPECTED,
) -> Prepared:
    """Read tieredImageNet from ``manual_dir`` (files: see the module docstring).

    Args:
      manual_dir: folder with ``{split}_images_png.pkl`` (or ``{split}_images.npz``) and
        ``{split}_labels.pkl``.
      image_size: side ``S`` of the stored images (84 in the literature; other sizes are
        resized with LANCZOS).
      splits: the splits to read (one at a time keeps the memory down).
      expected: the published sizes checked (:data:`EXPECTED`); ``None`` skips.

    Returns:
      :class:`~jaxmeta.data.prepared.Prepared` (``name="tieredimagenet"``) with splits of
      uint8 ``[n, S, S, 3]`` (RGB), classes of unequal sizes, ``class_groups`` the
      superclass names.

    Raises:
      FilesMissingError: within seconds: every missing file, the folder, the source.
      CorruptFileError: an HTML page saved as a pickle, a truncated pickle, an item that
        is not an 84x84 PNG, inconsistent labels, wrong counts (names the file).

    References:
      Ren et al., ICLR 2018.
    """
    image_size = check_int("image_size", image_size, minimum=1)
    splits = check_splits(splits, SPLITS)
    folder = Path(manual_dir).expanduser()
    found = _locate(folder, splits)
    out, files = {}, []
    for split, (images_path, labels_path) in found.items():
        data = _read_split(images_path, labels_path, image_size=image_size)
        check_counts(
            None if expected is None else expected.get(split),
            counts=data.counts,
            class_names=data.class_names,
            class_groups=data.class_groups,
            where=f"{images_path} / {labels_path.name}",
        )
        out[split] = data
        files += [source_file(images_path), source_file(labels_path)]
    how = (
        "PNGs decoded with Pillow (RGB)"
        if any(p.suffix == ".pkl" for p, _ in found.values())
        else "BGR .npz flipped to RGB"
    )
    if image_size != IMAGE_SIZE:
        how += f", resized to {image_size}x{image_size} (LANCZOS)"
    return Prepared(
        name="tieredimagenet",
        splits=out,
        image_shape=(image_size, image_size, 3),
        files=tuple(files),
        citation=_CITATION,
        preprocessing=how,
    )


class TieredImageNetTasks(PreparedTasks):
    """N-way K-shot tieredImageNet episodes (Ren et al. 2018: 351/97/160 classes of unequal
    sizes, 84x84 RGB), read by :func:`prepare_tieredimagenet`; classes are sampled as
    :class:`~jaxmeta.data.episodes.ClassImages` (no padding).

    Args:
      ways: N classes per task (>= 2).
      shots: K support images per class.
      queries: query images per class (training).
      image_size: side of the stored images (84 in the literature).
      manual_dir: folder with the pickles (default ``~/jaxmeta_data/tieredimagenet`` or
        ``$JAXMETA_DATA_DIR/tieredimagenet``).
      data_dir: folder for the uint8 cache, one file per split (default: the manual dir).
      published_counts: check the published class, image and superclass counts.

    Raises:
      TaskSourceError: a bad option, naming it.
    """

    name: ClassVar[str] = "tieredimagenet"
    published: ClassVar[Mapping[str, SplitSpec]] = EXPECTED
    default_image_size: ClassVar[int] = IMAGE_SIZE

    def read(self, splits: Sequence[str]) -> Prepared:
        return prepare_tieredimagenet(
            self.manual_dir, image_size=self.image_size, splits=splits, expected=self.expected()
        )
