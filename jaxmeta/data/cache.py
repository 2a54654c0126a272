"""A prepared dataset as one ``.npz`` file of arrays (uint8 images and their metadata).

Preparing a dataset (decoding and resizing tens of thousands of images) is done once; the
result is written here and every later load reads this one file (tens of milliseconds, no
TFDS import). Writes are atomic (a reader never sees half a file); a file that cannot be
read, or whose ``format`` or content checks fail, is ignored with a warning and rebuilt.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np

__all__ = ["load_arrays", "save_arrays"]

log = logging.getLogger(__name__)


def save_arrays(path: str | os.PathLike, *, format: int, **arrays: np.ndarray) -> Path:
    """Write ``arrays`` (and ``format``, the layout's version) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, format=np.int32(format), **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # atomic: a reader never sees a half-written cache
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_arrays(
    path: str | os.PathLike,
    *,
    format: int,
    check: Callable[[dict[str, np.ndarray]], bool],
    what: str = "dataset cache",
    keys: Collection[str] | None = None,
) -> dict[str, np.ndarray] | None:
    """The arrays of a cache written by :func:`save_arrays`, or ``None`` (absent, unreadable,
    another ``format``, a key of ``keys`` missing, or ``check(arrays)`` false: a warning says
    it will be rebuilt). ``keys``: read only these arrays (default all; e.g. one split of a
    large dataset)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in (z.files if keys is None else keys)}
        ok = int(arrays["format"]) == format and check(arrays)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        # EOFError: a 0-byte file; the others: truncated, garbage or foreign files.
        log.warning("ignoring unreadable %s %s (%s); rebuilding it", what, path, e)
        return None
    if not ok:
        log.warning("ignoring stale %s %s; rebuilding it", what, path)
        return None
    return arrays
