"""miniImageNet (Vinyals et al. 2016) with the split of Ravi & Larochelle (2017).

100 ImageNet classes x 600 images, 84x84 RGB: 64 train / 16 val / 20 test classes
(38,400 / 9,600 / 12,000 images). Two distributions are accepted in ``manual_dir``:

1. **learn2learn's pickles** ``mini-imagenet-cache-train.pkl``, ``mini-imagenet-cache-
   val.pkl`` (learn2learn's Zenodo copy calls it ``mini-imagenet-cache-validation.pkl``;
   both names work) and ``mini-imagenet-cache-test.pkl``: each a pickled dict with
   ``image_data`` (uint8 ``[n, 84, 84, 3]``, RGB) and ``class_dict`` (``{wnid: [indices
   into image_data]}``), as learnables/learn2learn ``vision/datasets/mini_imagenet.py``
   reads them (also the ``mini-imagenet.tar.gz`` of renmengye/few-shot-ssl-public). The
   images are used as stored.
2. **Ravi & Larochelle's CSVs** ``train.csv``, ``val.csv``, ``test.csv`` (``filename,label``
   rows, e.g. ``n0153282900000005.jpg,n01532829``; twitter/meta-learning-lstm
   ``data/miniImagenet/``) plus an ``images/`` folder with the JPEGs they name. Each image
   is decoded with Pillow, converted to RGB and stretched to 84x84 with
   ``Image.resize((84, 84), Image.LANCZOS)``: the preprocessing of MAML's
   ``data/miniImagenet/proc_images.py`` (cbfinn/maml), which these JPEGs usually went
   through (without its re-encoding as JPEG). Images already 84x84 are used unchanged.
   Other tools differ: Ravi & Larochelle's Lua loader uses Torch's ``image.scale`` (bilinear),
   yaoyao-liu/mini-imagenet-tools ``cv2.resize(INTER_AREA)`` from the ImageNet originals,
   TADAM a centre crop then bilinear; results can shift slightly with the filter.

When both are present the pickles are used. Either way the content is checked: every class
belongs to the requested split of Ravi & Larochelle (:data:`RAVI_WNIDS`, the 64/16/20 wnids
of their CSVs; this catches swapped or Vinyals-split files), 600 images per class, the
image shape, every image in exactly one class. Classes are stored in wnid order.

Memory: 60,000 x 84 x 84 x 3 uint8 = 1.27 GB for all splits (train 813 MB, val 203 MB,
test 254 MB), once in the cache and once more for a device copy of the splits in use. Reading
a pickle holds its array and the class-ordered copy (if the file is not already in class
order): about twice the split.

References:
  Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, "Matching Networks for One Shot
  Learning", NeurIPS 2016. Ravi & Larochelle, "Optimization as a Model for Few-Shot
  Learning", ICLR 2017. Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning", ICML 2017
  (the LANCZOS preprocessing).
"""

from __future__ import annotations

import csv
import io
import os
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
    folder_source,
    source_file,
)
from jaxmeta.data.prepared_tasks import PreparedTasks
from jaxmeta.data.source import TaskSourceError
from jaxmeta.validation import check_int

__all__ = [
    "EXPECTED",
    "IMAGE_SIZE",
    "RAVI_WNIDS",
    "SPLITS",
    "MiniImageNetTasks",
    "prepare_miniimagenet",
]

SPLITS = ("train", "val", "test")
IMAGE_SIZE = 84
_PER_CLASS = 600

# The classes of each split: the sorted distinct labels of Ravi & Larochelle's CSVs
# (twitter/meta-learning-lstm data/miniImagenet/{train,val,test}.csv, 600 rows per class).
RAVI_WNIDS: dict[str, tuple[str, ...]] = {
    "train": (
        "n01532829", "n01558993", "n01704323", "n01749939", "n01770081", "n01843383",
        "n01910747", "n02074367", "n02089867", "n02091831", "n02101006", "n02105505",
        "n02108089", "n02108551", "n02108915", "n02111277", "n02113712", "n02120079",
        "n02165456", "n02457408", "n02606052", "n02687172", "n02747177", "n02795169",
        "n02823428", "n02966193", "n03017168", "n03047690", "n03062245", "n03207743",
        "n03220513", "n03337140", "n03347037", "n03400231", "n03476684", "n03527444",
        "n03676483", "n03838899", "n03854065", "n03888605", "n03908618", "n03924679",
        "n03998194", "n04067472", "n04243546", "n04251144", "n04258138", "n04275548",
        "n04296562", "n04389033", "n04435653", "n04443257", "n04509417", "n04515003",
        "n04596742", "n04604644", "n04612504", "n06794110", "n07584110", "n07697537",
        "n07747607", "n09246464", "n13054560", "n13133613",
    ),
    "val": (
        "n01855672", "n02091244", "n02114548", "n02138441", "n02174001", "n02950826",
        "n02971356", "n02981792", "n03075370", "n03417042", "n03535780", "n03584254",
        "n03770439", "n03773504", "n03980874", "n09256479",
    ),
    "test": (
        "n01930112", "n01981276", "n02099601", "n02110063", "n02110341", "n02116738",
        "n02129165", "n02219486", "n02443484", "n02871525", "n03127925", "n03146219",
        "n03272010", "n03544143", "n03775546", "n04146614", "n04149813", "n04418357",
        "n04522168", "n07613480",
    ),
}  # fmt: skip
_SPLIT_OF = {w: s for s, ws in RAVI_WNIDS.items() for w in ws}

EXPECTED: dict[str, SplitSpec] = {
    s: SplitSpec(len(w), _PER_CLASS, len(w) * _PER_CLASS) for s, w in RAVI_WNIDS.items()
}

_PICKLE_NAMES = {
    "train": ("mini-imagenet-cache-train.pkl",),
    "val": ("mini-imagenet-cache-val.pkl", "mini-imagenet-cache-validation.pkl"),
    "test": ("mini-imagenet-cache-test.pkl",),
}
_IMAGES_DIR = "images"
_GET_PICKLES = (
    "learn2learn's copies at https://zenodo.org/record/7978538 (mini-imagenet-cache-"
    "{train,validation,test}.pkl), or mini-imagenet.tar.gz of "
    "github.com/renmengye/few-shot-ssl-public"
)
_GET_CSV = (
    "the CSVs of github.com/twitter/meta-learning-lstm (data/miniImagenet/), and the "
    "ImageNet (ILSVRC-2012 train) JPEGs they name in images/ (e.g. made with "
    "github.com/yaoyao-liu/mini-imagenet-tools)"
)
_CITATION = (
    "Vinyals et al. Matching Networks for One Shot Learning. NeurIPS 2016. Ravi & "
    "Larochelle. Optimization as a Model for Few-Shot Learning. ICLR 2017."
)


def _pickle_path(folder: Path, split: str) -> Path | None:
    for name in _PICKLE_NAMES[split]:
        if (folder / name).is_file():
            return folder / name
    return None


def _foreign_class(path: Path, split: str, wnid: str) -> CorruptFileError:
    other = _SPLIT_OF.get(wnid)
    hint = (
        f"it is a {other} class: is this the {other} file?" if other else "not a miniImageNet class"
    )
    return CorruptFileError(
        f"{path}: class {wnid!r} is not in Ravi & Larochelle's {split} split ({hint})"
    )


def _read_pickle_split(
    path: Path, split: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(image_data, order, offsets, wnids)`` of one learn2learn pickle, verified: class
    ``c`` (``wnids[c]``) is ``image_data[order[offsets[c]:offsets[c + 1]]]``."""
    data = load_pickle(path, what="a miniImageNet pickle", get_from=_GET_PICKLES)
    if isinstance(data, dict):
        data = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in data.items()}
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= set(data):
        raise CorruptFileError(
            f"{path}: expected a dict with 'image_data' and 'class_dict', got "
            f"{type(data).__name__} {sorted(data) if isinstance(data, dict) else ''}"
        )
    images = data["image_data"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise CorruptFileError(
            f"{path}: image_data is {type(images).__name__} "
            f"{getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}, expected uint8 "
            f"[n, {IMAGE_SIZE}, {IMAGE_SIZE}, 3]"
        )
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise CorruptFileError(
            f"{path}: images of shape {images.shape[1:]}, expected ({IMAGE_SIZE}, {IMAGE_SIZE}, 3)"
        )
    class_dict = {
        (k.decode("latin1") if isinstance(k, bytes) else str(k)): v
        for k, v in dict(data["class_dict"]).items()
    }
    wnids = tuple(sorted(class_dict))
    for w in wnids:
        if _SPLIT_OF.get(w) != split:
            raise _foreign_class(path, split, w)
    try:
        parts = [np.asarray(class_dict[w], np.int64).reshape(-1) for w in wnids]
    except (TypeError, ValueError) as err:
        raise CorruptFileError(f"{path}: class_dict values are not index lists ({err})") from None
    order = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    n = len(images)
    if (
        len(order) != n
        or (n and (order.min() < 0 or order.max() >= n))
        or len(np.unique(order)) != n
    ):
        raise CorruptFileError(
            f"{path}: class_dict does not assign each of the {n} images to exactly one class "
            f"({len(order)} indices, {len(np.unique(order))} distinct)"
        )
    if any(len(p) == 0 for p in parts):
        raise CorruptFileError(f"{path}: a class of class_dict has no images")
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
    return images, order, offsets, wnids


def _read_csv(path: Path, split: str) -> dict[str, list[str]]:
    """``{wnid: [file names]}`` of one Ravi CSV, verified."""
    check_not_html(path, what=f"Ravi & Larochelle's {split}.csv", get_from=_GET_CSV)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path}: not a readable text file ({err})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        got = ",".join(rows[0]) if rows else ""
        raise CorruptFileError(f"{path}: expected the header 'filename,label', got {got!r}")
    classes: dict[str, list[str]] = {}
    for i, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2:
            raise CorruptFileError(f"{path}, line {i}: expected 'filename,label', got {row}")
        name, wnid = row[0].strip(), row[1].strip()
        if _SPLIT_OF.get(wnid) != split:
            raise _foreign_class(path, split, wnid)
        classes.setdefault(wnid, []).append(name)
    return dict(sorted(classes.items()))


def prepare_miniimagenet(
    manual_dir: str | os.PathLike,
    *,
    image_size: int = IMAGE_SIZE,
    splits: Sequence[str] = SPLITS,
    source: str = "auto",
    expected: Mapping[str, SplitSpec] | None = EXPECTED,
) -> Prepared:
    """Read miniImageNet from ``manual_dir`` (see the module docstring for the layouts).

    Args:
      manual_dir: folder with the pickles, or the CSVs and ``images/``.
      image_size: side ``S`` of the stored images (84 in the literature); other sizes are
        resized from the 84x84 images (pickles) or the JPEGs (CSVs) with LANCZOS.
      splits: the splits to read.
      source: ``"auto"`` (pickles when all requested are there, else CSVs + images),
        ``"pickle"`` or ``"csv"``.
      expected: the published sizes checked (:data:`EXPECTED`: 64/16/20 classes x 600);
        ``None`` skips the count checks (the classes must still be Ravi's).

    Returns:
      :class:`~jaxmeta.data.prepared.Prepared` (``name="miniimagenet"``) with splits of uint8
      ``[n, S, S, 3]``, classes in wnid order, ``class_names`` the wnids.

    Raises:
      FilesMissingError: within seconds, before any image is decoded: every missing
        file of both layouts, the folder and where to get them (for the CSV layout also the
        JPEGs the CSVs name that are not in ``images/``).
      CorruptFileError: an HTML page saved as a pickle or CSV, a truncated pickle, a class
        of another split, wrong counts or shapes, an unreadable JPEG (names the file).

    References:
      Vinyals et al., NeurIPS 2016; Ravi & Larochelle, ICLR 2017.
    """
    image_size = check_int("image_size", image_size, minimum=1)
    splits = check_splits(splits, SPLITS)
    if source not in ("auto", "pickle", "csv"):
        raise ValueError(f"source must be 'auto', 'pickle' or 'csv', got {source!r}")
    folder = Path(manual_dir).expanduser()
    pickles = {s: _pickle_path(folder, s) for s in splits}
    missing_pickles = [_PICKLE_NAMES[s][0] for s, p in pickles.items() if p is None]
    missing_csv = [f"{s}.csv" for s in splits if not (folder / f"{s}.csv").is_file()]
    if not (folder / _IMAGES_DIR).is_dir():
        missing_csv.append(f"{_IMAGES_DIR}/ (the JPEGs)")
    use_pickles = source == "pickle" or (source == "auto" and not missing_pickles)
    options = []
    if source in ("auto", "pickle"):
        options.append(("learn2learn's pickles", missing_pickles))
    if source in ("auto", "csv"):
        options.append(("Ravi & Larochelle's CSVs + images/", missing_csv))
    if (use_pickles and missing_pickles) or (not use_pickles and missing_csv):
        where = "; or ".join(
            g for g, skip in ((_GET_PICKLES, "csv"), (_GET_CSV, "pickle")) if source != skip
        )
        raise FilesMissingError(missing_files_message("miniImageNet", folder, options, where))
    if use_pickles:
        out, files = _from_pickles(pickles, image_size=image_size, expected=expected)
        how = "learn2learn pickles' 84x84 RGB images as stored"
    else:
        out, files = _from_csv(folder, splits, image_size=image_size, expected=expected)
        how = "JPEGs decoded with Pillow, RGB, Image.resize((S, S), LANCZOS) (cbfinn/maml)"
    if image_size != IMAGE_SIZE and use_pickles:
        how += f", resized to {image_size}x{image_size} (LANCZOS)"
    return Prepared(
        name="miniimagenet",
        splits=out,
        image_shape=(image_size, image_size, 3),
        files=files,
        citation=_CITATION,
        preprocessing=how,
    )


def _from_pickles(pickles, *, image_size, expected):
    out, files = {}, []
    for split, path in pickles.items():
        images, order, offsets, wnids = _read_pickle_split(path, split)
        check_counts(
            None if expected is None else expected.get(split),
            counts=np.diff(offsets),
            class_names=wnids,
            where=str(path),
        )
        if not np.array_equal(order, np.arange(len(order))):
            images = images[order]
        out[split] = Split(
            images=resize_images(images, image_size), offsets=offsets, class_names=wnids
        )
        del images
        files.append(source_file(path))
    return out, tuple(files)


def _from_csv(folder: Path, splits, *, image_size, expected):
    image_dir = folder / _IMAGES_DIR
    tables = {s: _read_csv(folder / f"{s}.csv", s) for s in splits}
    for split, table in tables.items():
        check_counts(
            None if expected is None else expected.get(split),
            counts=[len(v) for v in table.values()],
            class_names=list(table),
            where=str(folder / f"{split}.csv"),
        )
    names = [n for t in tables.values() for v in t.values() for n in v]
    absent = [n for n in names if not (image_dir / n).is_file()]
    if absent:
        raise FilesMissingError(
            f"{len(absent)} of the {len(names)} JPEGs named by the CSVs are not in "
            f"{image_dir}/: {', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''}\n"
            f"Where to get them: {_GET_CSV}"
        )
    out, digests = {}, []
    for split, table in tables.items():
        files = [image_dir / n for v in table.values() for n in v]
        shas: list[str] = []
        try:
            images = load_images(files, size=image_size, channels=3, sha256=shas)
        except ImageFolderError as err:
            raise CorruptFileError(str(err)) from None
        digests += shas
        counts = [len(v) for v in table.values()]
        out[split] = Split(
            images=images,
            offsets=np.concatenate([[0], np.cumsum(counts)]),
            class_names=tuple(table),
        )
    size = sum((image_dir / n).stat().st_size for n in names)
    sources = [source_file(folder / f"{s}.csv") for s in splits]
    sources.append(folder_source(image_dir, names, digests, size))
    return out, tuple(sources)


class MiniImageNetTasks(PreparedTasks):
    """N-way K-shot miniImageNet episodes (Vinyals et al. 2016; Ravi & Larochelle 2017 split:
    64/16/20 classes x 600 images, 84x84 RGB), read by :func:`prepare_miniimagenet`.

    Args:
      ways: N classes per task (>= 2).
      shots: K support images per class.
      queries: query images per class (training).
      image_size: side of the stored images (84 in the literature).
      source: ``"auto"``, ``"pickle"`` (learn2learn's) or ``"csv"`` (Ravi's CSVs + JPEGs).
      manual_dir: folder with the files (default ``~/jaxmeta_data/miniimagenet`` or
        ``$JAXMETA_DATA_DIR/miniimagenet``).
      data_dir: folder for the uint8 cache (default: the manual dir).
      published_counts: check 64/16/20 classes x 600 (false: a partial copy).

    Raises:
      TaskSourceError: a bad option, naming it.
    """

    name: ClassVar[str] = "miniimagenet"
    published: ClassVar[Mapping[str, SplitSpec]] = EXPECTED
    default_image_size: ClassVar[int] = IMAGE_SIZE
    examples_per_class = _PER_CLASS

    def __init__(
        self,
        *,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        image_size: int = IMAGE_SIZE,
        source: str = "auto",
        manual_dir: str | None = None,
        data_dir: str | None = None,
        published_counts: bool = True,
    ):
        if source not in ("auto", "pickle", "csv"):
            raise TaskSourceError("source", f"must be 'auto', 'pickle' or 'csv', got {source!r}")
        self.source = source
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
        return prepare_miniimagenet(
            self.manual_dir,
            image_size=self.image_size,
            splits=splits,
            source=self.source,
            expected=self.expected(),
        )
