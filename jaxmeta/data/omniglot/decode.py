"""Decoding Omniglot's PNGs into the uint8 training form (strokes 255, resized to ``S x S``).

Two preprocessings (:data:`RESIZE_MODES`, ``data.resize`` in configs). PIL decodes the 1-bit
PNGs to {0, 1} with 1 = white paper; ``ink = ~(png > 0)`` (the ``img > 0`` normalisation, robust
to decoders that give {0, 255}); then

* ``"lanczos"`` (jaxmeta's default): ``ink * 255`` as a greyscale image resized with LANCZOS
  (anti-aliased grey levels);
* ``"binary"`` (what the reference implementations trained on: cbfinn/maml, ProtoNets and
  Reptile call ``resize`` on the mode-``"1"`` image, which Pillow performs as NEAREST whatever
  filter is named, LANCZOS included): binary images, 0 or 255
  (:func:`jaxmeta.data.images.resize_ink_binary`).

Stored as ``uint8`` with strokes high. Float images are ``u8 / 255``. The default path does this
vectorised: the PNGs (all 1-bit, unfiltered rows) are inflated with :mod:`zlib` and
bit-unpacked, and Pillow's fixed-point LANCZOS is reproduced as two exact matrix products; the
result is bit-identical to ``Image.resize(..., Image.LANCZOS)`` (tested), and any PNG of another
kind goes through PIL. :func:`jaxmeta.data.images.preprocess` applies the same transformation
to any decoded image, so your own drawings reach a model in the training form.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence

import numpy as np

from jaxmeta.data.images import resize_ink, resize_ink_binary

__all__ = ["PNG_SIZE", "RESIZE_MODES", "decode_and_resize", "decode_png"]

PNG_SIZE = 105
RESIZE_MODES = ("lanczos", "binary")


def decode_png(png: bytes) -> np.ndarray:
    """Ink mask of one Omniglot PNG with PIL: bool ``[105, 105]``, True = stroke.

    PIL decodes these 1-bit PNGs to {0, 1} (OpenCV/TF to {0, 255}); paper is non-zero, so
    ``ink = ~(img > 0)`` works for every decoder.
    """
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return ~(np.asarray(im) > 0)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR of every Omniglot PNG: 105x105, 1 bit, greyscale, deflate, adaptive filter, no interlace.
_OMNIGLOT_IHDR = struct.pack(">IIBBBBB", PNG_SIZE, PNG_SIZE, 1, 0, 0, 0, 0)
_ROW_BYTES = 1 + (PNG_SIZE + 7) // 8  # filter-type byte + 14 bytes of packed pixels


def _ink_fast(pngs: Sequence[bytes]) -> np.ndarray | None:
    """Vectorised decode of plain Omniglot PNGs (1-bit, no row filters), or None if any is not.

    Every genuine Omniglot PNG is of this kind (all rows use filter type 0), so the pixels are the
    inflated IDAT bytes with bits unpacked; anything else falls back to PIL in the caller.
    """
    n = len(pngs)
    raw = np.empty((n, PNG_SIZE * _ROW_BYTES), np.uint8)
    for i, png in enumerate(pngs):
        if png[:8] != _PNG_SIGNATURE:
            return None
        pos, idat = 8, []
        while pos + 8 <= len(png):
            length, kind = struct.unpack_from(">I4s", png, pos)
            if kind == b"IHDR" and png[pos + 8 : pos + 21] != _OMNIGLOT_IHDR:
                return None
            if kind == b"IDAT":
                idat.append(png[pos + 8 : pos + 8 + length])
            if kind == b"IEND":
                break
            pos += 12 + length
        try:
            pixels = zlib.decompress(b"".join(idat))
        except zlib.error:
            return None
        if len(pixels) != raw.shape[1]:
            return None
        raw[i] = np.frombuffer(pixels, np.uint8)
    rows = raw.reshape(n, PNG_SIZE, _ROW_BYTES)
    if rows[:, :, 0].any():  # some row uses a PNG filter: let PIL undo it
        return None
    bits = np.unpackbits(rows[:, :, 1:], axis=-1)[:, :, :PNG_SIZE]
    return bits == 0  # 0 = black = ink


def decode_and_resize(
    pngs: Sequence[bytes], image_size: int, *, use_pil: bool = False, resize: str = "lanczos"
) -> np.ndarray:
    """Decode PNGs, invert so strokes are 255, resize (:data:`RESIZE_MODES`).

    The default path decodes and resizes vectorised (bit-exact with PIL, and faster); PNGs that
    are not plain 1-bit Omniglot files, or ``use_pil=True``, go through PIL image by image.

    Args:
      pngs: ``n`` Omniglot PNG files.
      image_size: output side ``S``.
      use_pil: force the PIL reference path.
      resize: ``"lanczos"`` (greyscale LANCZOS of the ink) or ``"binary"`` (the reference
        code's ``Image.resize(LANCZOS)`` of the mode-``"1"`` image, which Pillow does as
        NEAREST).

    Returns:
      uint8 ``[n, S, S]``, strokes high.
    """
    from PIL import Image

    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    ink = None if use_pil else _ink_fast(pngs)
    if ink is not None:
        if resize == "binary":
            return resize_ink_binary(ink, image_size)
        return resize_ink(ink, image_size)  # the code path of preprocess()
    out = np.empty((len(pngs), image_size, image_size), np.uint8)
    for i, png in enumerate(pngs):
        if resize == "binary":
            out[i] = resize_ink_binary(decode_png(png)[None], image_size)[0]
            continue
        im = decode_png(png).astype(np.uint8) * np.uint8(255)
        if im.shape != (image_size, image_size):
            im = np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.LANCZOS))
        out[i] = im
    return out
