"""Images in the form the models were trained on: preprocessing, folders of image files.

The Omniglot cache holds every drawing as uint8 ``[S, S]`` with the strokes high (255 = ink,
0 = paper), made from the 105x105 PNGs (strokes dark) by inverting and resizing with
Pillow's LANCZOS filter on the greyscale ink (anti-aliased, jaxmeta's default) or, with
``resize="binary"``, as the reference code did (:func:`resize_ink_binary`: binary images).
:func:`preprocess` is the LANCZOS transformation for any decoded image and
is the code the cache builder itself runs (:func:`jaxmeta.data.omniglot.decode_and_resize`
calls :func:`resize_ink`), so a PNG gives the same bytes through either path (tested on the
genuine files). The models then see ``uint8 / 255`` as float32
(:func:`jaxmeta.data.episodes.to_float`).

Pillow's fixed-point LANCZOS is reproduced as two exact matrix products (bit-identical to
``Image.resize(..., Image.LANCZOS)`` for square images, tested), so 32,460 images resize in
one vectorised call.

Reading folders (for ``jaxmeta predict`` and the examples): :func:`read_image` decodes one
file to greyscale (transparent pixels count as paper), :func:`read_support_folder` reads
one subfolder per class, :func:`read_query` a list of files and folders.

Natural images (the dataset readers of :mod:`jaxmeta.data.miniimagenet`,
:mod:`~jaxmeta.data.tieredimagenet`, :mod:`~jaxmeta.data.cifar_fs`,
:mod:`~jaxmeta.data.folder`): :func:`load_image` / :func:`load_images` decode files or
encoded bytes to uint8 ``[S, S, C]`` (RGB or grey, not inverted) resized with Pillow's
LANCZOS, the filter of MAML's miniImageNet preprocessing; :func:`resize_images` does the
same for decoded ``[n, h, w, C]`` arrays with the exact vectorised LANCZOS above.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "ImageFolderError",
    "load_image",
    "load_images",
    "preprocess",
    "read_image",
    "read_query",
    "read_support_folder",
    "resize_images",
    "resize_ink",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# The most pixels read_image decodes (its header is checked first): a 100 KB PNG can declare
# 13000x13000 pixels (169 M, under Pillow's own refusal at 179 M), ~170 MB once decoded.
MAX_IMAGE_PIXELS = 4096 * 4096


class ImageFolderError(ValueError):
    """A support/query folder or file that cannot be used (the message names it)."""


# --------------------------------------------------------------------------------------------
# Pillow's LANCZOS, exactly.


def _lanczos3(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        sinc = np.where(x == 0.0, 1.0, np.sin(np.pi * x) / (np.pi * x))
        sinc3 = np.where(x == 0.0, 1.0, np.sin(np.pi * x / 3.0) / (np.pi * x / 3.0))
    return np.where((x >= -3.0) & (x < 3.0), sinc * sinc3, 0.0)


_PIL_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit resampling (Resample.c)


@functools.cache
def _pil_lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's fixed-point LANCZOS weights ``[out_size, in_size]`` (integers, as float64).

    Mirrors ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` in Pillow's
    ``src/libImaging/Resample.c`` so that :func:`resize_ink` is bit-exact with
    ``Image.resize(..., Image.LANCZOS)`` (checked against PIL in the tests).
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    k = np.zeros((out_size, in_size), np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        w = _lanczos3((np.arange(lo, hi) - center + 0.5) / filterscale)
        if w.sum() != 0.0:
            w = w / w.sum()
        one = float(1 << _PIL_PRECISION_BITS)
        k[xx, lo:hi] = np.where(w < 0, np.trunc(w * one - 0.5), np.trunc(w * one + 0.5))
    return k


@functools.cache
def _pil_nearest_rows(in_size: int, out_size: int) -> np.ndarray:
    """The source row of each output row of Pillow's NEAREST resize (int ``[out_size]``), read
    from Pillow itself (an index ramp resized in mode ``"I"``)."""
    from PIL import Image

    ramp = np.tile(np.arange(in_size, dtype=np.int32), (1, 1))
    return np.asarray(Image.fromarray(ramp).resize((out_size, 1), Image.NEAREST))[0].copy()


def resize_ink_binary(ink: np.ndarray, size: int) -> np.ndarray:
    """What the reference code's ``Image.resize((S, S), Image.LANCZOS)`` of a 1-bit PNG gives.

    cbfinn/maml (``data/omniglot_resized/resize_images.py``), jakesnell/prototypical-networks
    (``protonets/data/omniglot.py``, default filter) and openai/supervised-reptile
    (``supervised_reptile/omniglot.py``) resize the mode-``"1"`` PNGs, and Pillow resamples
    mode ``"1"`` with NEAREST whatever filter is asked for: the images stay binary (0 / 255).
    Vectorised: the rows and columns Pillow picks are gathered (bit-identical, tested).

    Args:
      ink: bool ``[n, h, w]`` ink masks (True = stroke).
      size: output side ``S``.

    Returns:
      uint8 ``[n, S, S]`` in {0, 255}, strokes high.
    """
    ink = np.asarray(ink, bool)
    n, h, w = ink.shape
    rows, cols = _pil_nearest_rows(h, size), _pil_nearest_rows(w, size)
    return ink[:, rows][:, :, cols].astype(np.uint8) * np.uint8(255)


def resize_ink(ink: np.ndarray, size: int, *, chunk: int = 2048) -> np.ndarray:
    """LANCZOS resize of ink images ``[n, h, w]`` to uint8 ``[n, size, size]`` (ink 255).

    Square inputs: Pillow's two fixed-point passes (horizontal, then vertical, each rounded and
    clipped to uint8) as two matrix products; sums of integers stay exact (float32 for 0/1
    masks, float64 otherwise), so the result equals ``Image.fromarray(ink).resize((size,
    size), Image.LANCZOS)`` bit for bit (tested for down- and upscaling). Non-square inputs go
    through Pillow itself, image by image. An image already ``size x size`` is returned
    unchanged (as Pillow does).

    Args:
      ink: bool ``[n, h, w]`` ink masks (True = stroke) or uint8 ``[n, h, w]`` ink intensities
        (255 = stroke).
      size: output side ``S``.
      chunk: images per matrix product (bounds memory).

    Returns:
      uint8 ``[n, S, S]``, strokes high.
    """
    ink = np.asarray(ink)
    n, h, w = ink.shape
    binary = ink.dtype == bool
    as_u8 = ink.astype(np.uint8) * np.uint8(255) if binary else ink.astype(np.uint8)
    if (h, w) == (size, size):
        return as_u8
    if h != w:
        # Pillow (13) does not always run the horizontal pass first for non-square inputs
        # (measured: which pass comes first depends on the shape), so let it resize those.
        from PIL import Image

        return np.stack(
            [np.asarray(Image.fromarray(x).resize((size, size), Image.LANCZOS)) for x in as_u8]
        )
    dtype = np.float32 if binary else np.float64  # 0/1 sums stay below 2^24
    kh = _pil_lanczos_weights(w, size).T.astype(dtype)  # [w, size]
    kv = _pil_lanczos_weights(h, size).T  # [h, size]
    half, shift = 1 << (_PIL_PRECISION_BITS - 1), _PIL_PRECISION_BITS
    out = np.empty((n, size, size), np.uint8)
    for s in range(0, n, chunk):
        c = min(chunk, n - s)
        x = ink[s : s + c].reshape(c * h, w).astype(dtype)
        acc = (x @ kh).astype(np.int64)  # [c*h, size]
        if binary:
            acc *= 255
        t = np.clip((acc + half) >> shift, 0, 255).astype(np.float64)
        t = t.reshape(c, h, size).transpose(0, 2, 1).reshape(c * size, h)
        acc = (t @ kv).astype(np.int64)  # [c*size_x, size_y]
        y = np.clip((acc + half) >> shift, 0, 255).astype(np.uint8)
        out[s : s + c] = y.reshape(c, size, size).transpose(0, 2, 1)
    return out


# --------------------------------------------------------------------------------------------
# Decoded images -> the cached form.


def _ink(image: np.ndarray, where: str) -> np.ndarray:
    """Ink of greyscale images with dark strokes (any shape): bool mask or uint8 (255 = ink)."""
    if image.dtype == bool:  # PIL's 1-bit decode: True = paper
        return ~image
    if image.dtype == np.uint8:
        return np.uint8(255) - image
    if np.issubdtype(image.dtype, np.floating):
        if image.size and (np.nanmin(image) < 0.0 or np.nanmax(image) > 1.0):
            raise ValueError(
                f"{where}: float images must lie in [0, 1] (paper 1, strokes 0), got values in "
                f"[{np.nanmin(image):g}, {np.nanmax(image):g}]"
            )
        grey = np.rint(np.nan_to_num(image, nan=1.0) * 255.0).astype(np.uint8)
        return np.uint8(255) - grey
    raise ValueError(
        f"{where}: unsupported dtype {image.dtype}; expected bool (True = paper), uint8 "
        "(0-255) or float in [0, 1]"
    )


def _one(image, where: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(
            f"{where}: expected a greyscale image [h, w] (or [h, w, 1]), got shape "
            f"{image.shape}; convert colour images first (jaxmeta.data.images.read_image "
            "does it for files)"
        )
    return _ink(image, where)


def _resize_to(ink: np.ndarray, size: int, resize: str) -> np.ndarray:
    if resize == "binary":  # a drawing's grey ink is thresholded at half intensity first
        return resize_ink_binary(ink if ink.dtype == bool else ink >= 128, size)
    return resize_ink(ink, size)


def preprocess(images, *, image_size: int = 28, resize: str = "lanczos") -> np.ndarray:
    """Decoded image files (strokes dark, any size) -> the dataset cache's uint8 form.

    Inverts (ink = 255 - grey, so strokes become high) and resizes to ``image_size`` with
    Pillow's LANCZOS filter (bit-exact), exactly what the Omniglot cache builder does with the
    PNGs (:func:`jaxmeta.data.omniglot.decode_and_resize` runs the same :func:`resize_ink`):
    a genuine Omniglot PNG decoded with PIL gives the very bytes of ``Omniglot.images``.
    Non-square images are stretched to a square, as ``Image.resize`` does.

    Args:
      images: one image ``[h, w]``, a batch ``[n, h, w]`` / ``[n, h, w, 1]``, or a sequence
        of images of any sizes, each ``[h, w]`` or ``[h, w, 1]``. Pixel values: bool (PIL's
        1-bit decode, True = paper), uint8 greyscale 0-255 (255 = paper) or float in [0, 1]
        (1 = paper; rounded to uint8 first). Colour images: convert to greyscale first
        (:func:`read_image` does it for files).
      image_size: output side ``S`` (28 for the shipped configs).
      resize: ``"lanczos"`` (default) or ``"binary"``: the Omniglot cache's two forms
        (:mod:`jaxmeta.data.omniglot.decode`, ``data.resize``); give the one the model was
        trained on. ``"binary"`` thresholds grey ink at 128, then resizes as
        :func:`resize_ink_binary`.

    Returns:
      uint8 ``[n, S, S]`` with strokes high (255 = ink), as
      :attr:`jaxmeta.data.omniglot.Omniglot.images` holds them (``n = 1`` for one image).

    Raises:
      ValueError: a colour or otherwise mis-shaped image, an unsupported dtype, float values
        outside [0, 1].
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if resize not in ("lanczos", "binary"):
        raise ValueError(f"resize must be 'lanczos' or 'binary', got {resize!r}")
    if isinstance(images, np.ndarray) or hasattr(images, "__array__"):
        arr = np.asarray(images)
        if arr.ndim == 2:
            return _resize_to(_one(arr, "image")[None], image_size, resize)
        if arr.ndim == 4 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 3:
            raise ValueError(
                f"images: expected [h, w], [n, h, w] or [n, h, w, 1], got shape {arr.shape}"
            )
        return _resize_to(_ink(arr, "images"), image_size, resize)
    images = list(images)
    out = np.empty((len(images), image_size, image_size), np.uint8)
    for i, im in enumerate(images):
        out[i] = _resize_to(_one(im, f"images[{i}]")[None], image_size, resize)[0]
    return out


# --------------------------------------------------------------------------------------------
# Files and folders.


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode one image file to greyscale for :func:`preprocess`.

    1-bit files (the Omniglot PNGs) give bool ``[h, w]`` (True = paper), as PIL decodes them;
    anything else uint8 ``[h, w]`` (Pillow's ``convert("L")``), with transparent pixels
    composited onto white paper first.

    Raises:
      ImageFolderError: the file cannot be read as an image, or its header declares more
        than :data:`MAX_IMAGE_PIXELS` pixels (checked before decoding).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageFolderError(
                    f"{path}: a {w}x{h} image ({w * h / 1e6:.0f} M pixels), more than the "
                    f"{MAX_IMAGE_PIXELS / 1e6:.1f} M pixels jaxmeta decodes; shrink it first"
                )
            im.load()
            if im.mode == "1":
                return np.asarray(im)
            return np.asarray(_convert_on_white(im, "L"))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ImageFolderError(f"{path}: not a readable image ({err})") from None


def _read_preprocessed(files: list[Path], image_size: int, resize: str) -> np.ndarray:
    """uint8 ``[n, S, S]``: each file decoded and resized in turn (one full-size image in
    memory at a time)."""
    out = np.empty((len(files), image_size, image_size), np.uint8)
    for i, f in enumerate(files):
        out[i] = preprocess(read_image(f), image_size=image_size, resize=resize)[0]
    return out


def _convert_on_white(im, mode: str):
    """``im`` in PIL ``mode``, transparent pixels composited onto white first."""
    from PIL import Image

    if "A" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert(mode)
    return im.convert(mode)


# --------------------------------------------------------------------------------------------
# Natural images (RGB or grey, not inverted) for the dataset readers.

_CHANNEL_MODES = {1: "L", 3: "RGB"}


def _check_channels(channels: int) -> str:
    if channels not in _CHANNEL_MODES:
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    return _CHANNEL_MODES[channels]


def load_image(
    source: bytes | str | os.PathLike, *, size: int, channels: int = 3, where: str | None = None
) -> np.ndarray:
    """Decode one image (a file or its encoded bytes) to uint8 ``[size, size, channels]``.

    Any format and mode Pillow reads; converted to RGB (``channels=3``) or grey (``1``) with
    Pillow's ``convert`` (transparent pixels composited onto white), then stretched to
    ``size x size`` with ``Image.resize((size, size), Image.LANCZOS)`` unless already that
    size: what MAML's miniImageNet script does (cbfinn/maml ``data/miniImagenet/
    proc_images.py``), without its re-encoding as JPEG. Values are not inverted.

    Raises:
      ImageFolderError: the data is not a readable image (names ``where`` or the file).
    """
    from PIL import Image, UnidentifiedImageError

    mode = _check_channels(channels)
    name = where if where is not None else ("<bytes>" if isinstance(source, bytes) else source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.load()
            im = _convert_on_white(im, mode)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise ImageFolderError(f"{name}: not a readable image ({err})") from None
    if im.size != (size, size):
        im = im.resize((size, size), Image.LANCZOS)
    return np.asarray(im, np.uint8).reshape(size, size, channels)


def load_images(
    sources: Sequence[bytes | str | os.PathLike],
    *,
    size: int,
    channels: int = 3,
    names: Sequence[str] | None = None,
    out: np.ndarray | None = None,
    sha256: list[str] | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """:func:`load_image` for many images, decoded by a pool of threads (Pillow's decoders
    release the GIL).

    Args:
      sources: ``n`` files or encoded images.
      size, channels: as :func:`load_image`.
      names: ``n`` names for error messages (default: the paths, or ``item <i>``).
      out: uint8 ``[n, size, size, channels]`` to fill (default: a new array).
      sha256: a list to receive the sha256 of each source's bytes (in order).
      workers: threads (default ``min(8, os.cpu_count())``).

    Returns:
      uint8 ``[n, size, size, channels]`` (``out`` when given).

    Raises:
      ImageFolderError: an unreadable image, naming it (the first in order).
    """
    _check_channels(channels)
    n = len(sources)
    if out is None:
        out = np.empty((n, size, size, channels), np.uint8)
    if out.shape != (n, size, size, channels) or out.dtype != np.uint8:
        raise ValueError(
            f"out must be uint8 {(n, size, size, channels)}, got {out.dtype} {out.shape}"
        )
    digests = [""] * n

    def name_of(i: int) -> str:
        if names is not None:
            return str(names[i])
        return f"item {i}" if isinstance(sources[i], bytes | bytearray) else str(sources[i])

    def work(start: int) -> None:
        for i in range(start, min(start + 256, n)):
            src = sources[i]
            if not isinstance(src, bytes | bytearray | memoryview):
                try:
                    src = Path(src).read_bytes()
                except OSError as err:
                    raise ImageFolderError(f"{name_of(i)}: cannot be read ({err})") from None
            src = bytes(src)
            if sha256 is not None:
                digests[i] = hashlib.sha256(src).hexdigest()
            out[i] = load_image(src, size=size, channels=channels, where=name_of(i))

    workers = workers or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(work, range(0, n, 256)):
            pass  # re-raises the first failure, in order
    if sha256 is not None:
        sha256[:] = digests
    return out


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[n, h, w, C]`` -> ``[n, size, size, C]`` with Pillow's LANCZOS, bit-exact.

    Each channel plane goes through :func:`resize_ink` (two exact matrix products for
    square images), which equals ``Image.resize((size, size), Image.LANCZOS)`` of the RGB or
    grey image (Pillow resamples every band with the same fixed-point weights; tested).
    An array already ``size x size`` is returned unchanged.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [n, h, w, C], got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    planes = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(n * c, h, w)
    out = resize_ink(planes, size).reshape(n, c, size, size)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_support_folder(
    folder: str | os.PathLike, *, image_size: int = 28, resize: str = "lanczos"
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A support set from ``folder/<class name>/<image files>``.

    Classes are the subfolders in sorted order (label ``i`` = the ``i``-th name); files with
    the suffixes in :data:`IMAGE_SUFFIXES` are read in sorted order and preprocessed
    (:func:`preprocess` with ``image_size`` and ``resize``).

    Returns:
      ``(class_names [N], images uint8 [n, S, S], labels int32 [n])``.

    Raises:
      ImageFolderError: missing folder, no class subfolders, a class without images, an
        unreadable file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ImageFolderError(f"support folder {root} does not exist or is not a folder")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ImageFolderError(
            f"support folder {root} has no class subfolders; expected one subfolder per class "
            "holding that class's images (e.g. support/alpha/1.png, support/beta/1.png)"
        )
    names, files, labels = [], [], []
    for label, cls in enumerate(classes):
        found = _image_files(cls)
        if not found:
            raise ImageFolderError(
                f"class folder {cls} has no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        names.append(cls.name)
        files += found
        labels += [label] * len(found)
    return names, _read_preprocessed(files, image_size, resize), np.asarray(labels, np.int32)


def read_query(
    paths: Iterable[str | os.PathLike], *, image_size: int = 28, resize: str = "lanczos"
) -> tuple[list[Path], np.ndarray]:
    """Query images from files and/or folders (a folder's image files, recursively, sorted),
    preprocessed (:func:`preprocess` with ``image_size`` and ``resize``).

    Returns:
      ``(files [n], images uint8 [n, S, S])``.

    Raises:
      ImageFolderError: a path that does not exist, no images at all, an unreadable file.
    """
    paths = [Path(p) for p in paths]
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
            )
        elif p.is_file():
            files.append(p)
        else:
            raise ImageFolderError(f"query path {p} does not exist")
    if not files:
        raise ImageFolderError(
            "no query images found in "
            + ", ".join(map(str, paths))
            + f" ({', '.join(IMAGE_SUFFIXES)})"
        )
    return files, _read_preprocessed(files, image_size, resize)
