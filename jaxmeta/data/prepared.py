"""What every image dataset reader returns, and the helpers they share.

A reader (``prepare_miniimagenet``, ``prepare_tieredimagenet``, ``prepare_cifar_fs``,
``prepare_fc100``, ``prepare_folder``) turns the files of one dataset into a
:class:`Prepared`: per split, one uint8 array ``[n_images, H, W, C]`` with the images of
each class contiguous, the class boundaries (classes may differ in size), the class names,
plus where the data came from. Nothing here knows about JAX or episodes: the episode
sampler reads class ``c`` as ``images[offsets[c]:offsets[c + 1]]``.

Shared pieces:

* :class:`SplitSpec`: the published sizes a reader checks (classes, images per class or in
  all, superclasses); ``expected=None`` in a reader skips those checks (a partial copy).
* :func:`missing_files_message`: the one message listing every missing file, the folder
  and where to get it.
* :func:`check_not_html`, :func:`load_pickle`: a file that is an HTML page (the page a
  failed Google-Drive download saves under the requested name), empty, truncated or not
  a pickle is rejected with a message naming it. Pickles are read with an allow-list of
  the types a dataset pickle holds (NumPy arrays, lists, dicts, ...), so a hostile file
  cannot run code.
* :func:`download`: a checked download that fails within ``timeout`` seconds offline.
* :func:`save_cache` / :func:`load_cache`: the prepared arrays as one uncompressed
  ``.npz`` with a sha256 of each split's content, checked when read back.

References:
  Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016 (episodes over
  classes of a split).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import json
import logging
import os
import pickle
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "DatasetCorruptError",
    "DatasetFilesMissingError",
    "DownloadError",
    "Prepared",
    "SourceFile",
    "Split",
    "SplitSpec",
    "check_counts",
    "check_not_html",
    "check_splits",
    "download",
    "file_digests",
    "folder_source",
    "group_by_class",
    "load_cache",
    "load_pickle",
    "missing_files_message",
    "save_cache",
    "source_file",
]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
DOWNLOAD_TIMEOUT_S = 3.0


class DatasetFilesMissingError(FileNotFoundError):
    """Files a dataset needs are not in its folder (the message lists them and their source)."""


class DatasetCorruptError(ValueError):
    """A dataset file is unreadable, truncated, an HTML page, or has the wrong content."""


class DownloadError(OSError):
    """A download could not be made (offline, refused, HTTP error, wrong checksum)."""


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
    """Raise :class:`DatasetCorruptError` naming ``where`` when a split is not ``spec``.

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
        raise DatasetCorruptError(f"{where}: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------
# Files: missing, HTML pages, pickles, digests.


def missing_files_message(
    dataset: str, folder: Path, options: Sequence[tuple[str, Sequence[str]]], where_to_get: str
) -> str:
    """One message naming every missing file, the folder and where to get them.

    Args:
      dataset: display name (``"miniImageNet"``).
      folder: the manual dir that was searched.
      options: ``[(layout description, [missing file names])]``, one per accepted layout.
      where_to_get: where the files are published.
    """
    exists = "" if folder.is_dir() else " (the folder does not exist)"
    lines = [f"{dataset} files not found in {folder}/{exists}."]
    if len(options) == 1:
        desc, missing = options[0]
        lines.append(f"Put these files there ({desc}):")
        lines += [f"  {name}" for name in missing]
    else:
        lines.append("Put ONE of these sets of files there:")
        for i, (desc, missing) in enumerate(options, 1):
            lines.append(f"  ({i}) {desc}; missing: {', '.join(missing)}")
    lines.append(f"Where to get them: {where_to_get}")
    return "\n".join(lines)


_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<?xml")


def check_not_html(
    data: Path | bytes, *, what: str, get_from: str, name: str | None = None
) -> None:
    """Reject an empty file or an HTML page saved under a data file's name.

    A Google-Drive download that hits the virus-scan or quota page saves that page as the
    requested ``.pkl``/``.tar.gz`` (learn2learn #367, #310, #238; torchmeta #54, #134).

    Args:
      data: the file, or its first bytes.
      what: what it should be (``"a pickle of miniImageNet images"``).
      get_from: where to download it again.
      name: the name for the message (default: the path).

    Raises:
      DatasetCorruptError: naming the file, what it should be and where to get it again.
    """
    if isinstance(data, bytes):
        head = data[:1024]
    else:
        name = name or str(data)
        try:
            with open(data, "rb") as f:
                head = f.read(1024)
        except OSError as err:
            raise DatasetCorruptError(f"{name}: cannot be read ({err})") from None
    if not head:
        raise DatasetCorruptError(
            f"{name} is empty (0 bytes), not {what}; get it again from {get_from}"
        )
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith(_HTML_STARTS):
        raise DatasetCorruptError(
            f"{name} is an HTML page, not {what}: a failed download (Google Drive saves its "
            f"virus-scan or quota page under the requested file name). Delete it and download "
            f"it again from {get_from}"
        )


# Everything a dataset pickle may reference: NumPy arrays and scalars, builtin containers.
_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    *(
        ("builtins", n)
        for n in ("list", "dict", "tuple", "set", "frozenset", "range", "bytearray", "int", "str")
    ),
}
_MODULE_ALIASES = {
    "__builtin__": "builtins",  # Python 2 pickles
    "numpy.core.multiarray": "numpy._core.multiarray",  # NumPy 1 pickles
    "numpy.core.numeric": "numpy._core.numeric",
}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        module = _MODULE_ALIASES.get(module, module)
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not dataset content)")
        return getattr(importlib.import_module(module), name)


def load_pickle(data: Path | bytes, *, what: str, get_from: str, name: str | None = None):
    """Load a dataset pickle (Python 2 or 3, NumPy 1 or 2) without running code from it.

    Python 2 strings are decoded as latin-1 (how NumPy arrays pickled by Python 2 load
    back); only the types of an allow-list are built.

    Args:
      data: the file, or its bytes (a member of an archive).
      what, get_from, name: for the messages (see :func:`check_not_html`).

    Raises:
      DatasetCorruptError: an HTML page, an empty, truncated or foreign file (names it).
    """
    name = name or str(data if not isinstance(data, bytes) else "<bytes>")
    check_not_html(data, what=what, get_from=get_from, name=name)
    try:
        if isinstance(data, bytes):
            return _DataUnpickler(io.BytesIO(data), encoding="latin1").load()
        with open(data, "rb") as f:
            return _DataUnpickler(f, encoding="latin1").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        IndexError,
        OverflowError,
    ) as err:
        raise DatasetCorruptError(
            f"{name} is truncated or not {what} ({type(err).__name__}: {err}); get it again "
            f"from {get_from}"
        ) from None


def file_digests(path: Path, algorithms: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """``{algorithm: hexdigest}`` of a file's bytes, read once."""
    hashes = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            for h in hashes.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashes.items()}


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
# Download.


def _probe_address(url: str) -> tuple[str, int]:
    """Where a download of ``url`` connects first: the proxy for its scheme, else its host."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if p.hostname:
            return p.hostname, p.port or (443 if p.scheme == "https" else 80)
    return host, port


def download(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download ``url`` to ``dest`` and check its checksum; never a long hang offline.

    One TCP connect to the host (or the configured proxy) with ``timeout`` seconds decides
    whether the network is there; the transfer itself also times out after ``timeout``
    seconds without data. The file is written next to ``dest`` and renamed into place only
    when its checksum matches, so ``dest`` is never a partial or wrong file.

    Raises:
      DownloadError: offline (no connection within ``timeout``), refused, an HTTP error, a
        stalled transfer, or a checksum mismatch (the message says which).
    """
    host, port = _probe_address(url)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        raise DownloadError(
            f"offline: no connection to {host}:{port} within {timeout:g} s ({err})"
        ) from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    hashes = {"md5": hashlib.md5(), "sha256": hashlib.sha256()}
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                f.write(chunk)
                for h in hashes.values():
                    h.update(chunk)
        for name, want in (("md5", md5), ("sha256", sha256)):
            got = hashes[name].hexdigest()
            if want is not None and got != want:
                raise DownloadError(
                    f"{url}: {name} {got}, expected {want} (not the published file)"
                )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, DownloadError):
            raise
        raise DownloadError(f"download of {url} failed ({err})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


# --------------------------------------------------------------------------------------------
# The uint8 .npz cache (one function each way, so a shared cache can replace them).


def save_cache(prepared: Prepared, path: str | os.PathLike) -> Path:
    """Write ``prepared`` as one uncompressed ``.npz`` (atomically: a reader never sees a
    partial file). Keys: ``images_<split>``, ``offsets_<split>`` and a JSON ``meta`` with
    the metadata and each split's :meth:`Split.content_sha256`."""
    path = Path(path)
    meta = {
        "format": CACHE_FORMAT,
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != CACHE_FORMAT:
                log.warning("ignoring cache %s of another format", path)
                return None
            names = list(meta["splits"]) if splits is None else list(splits)
            missing = [s for s in names if s not in meta["splits"]]
            if missing:
                log.warning("ignoring cache %s: it has no split %s", path, ", ".join(missing))
                return None
            out = {}
            for s in names:
                info = meta["splits"][s]
                groups = info["class_groups"]
                out[s] = Split(
                    images=z[f"images_{s}"],
                    offsets=z[f"offsets_{s}"],
                    class_names=tuple(info["class_names"]),
                    class_groups=None if groups is None else tuple(groups),
                )
                if verify and out[s].content_sha256() != info["sha256"]:
                    log.warning("ignoring cache %s: split %s differs from its hash", path, s)
                    return None
            return Prepared(
                name=meta["name"],
                splits=out,
                image_shape=tuple(meta["image_shape"]),
                files=tuple(SourceFile(**f) for f in meta["files"]),
                citation=meta["citation"],
                preprocessing=meta["preprocessing"],
            )
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        EOFError,
        zipfile.BadZipFile,
        zlib.error,
    ) as e:
        log.warning("ignoring unreadable cache %s (%s: %s)", path, type(e).__name__, e)
        return None
