"""Omniglot loaded: all 1623 characters as one uint8 array, prepared once and cached.

Data flows one way: the official zips (:mod:`~jaxmeta.data.omniglot.acquire`) -> a TFDS
dataset prepared once (:mod:`~jaxmeta.data.omniglot.tfds_builder`, array_record) -> decoded
and resized once (:mod:`~jaxmeta.data.omniglot.decode`) into a ``uint8`` array ``[1623
characters, 20 drawers, S, S]`` cached as an ``.npz`` next to the TFDS data
(:mod:`jaxmeta.data.cache`) -> one split's characters on the device
(:mod:`~jaxmeta.data.omniglot.splits`, :mod:`jaxmeta.data.episodes`). Later loads read only
the cache and do not import tensorflow_datasets.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from jaxmeta.data import cache as npz_cache
from jaxmeta.data.omniglot.acquire import (
    ZIPS,
    OmniglotCorruptError,
    OmniglotFilesMissingError,
    default_data_dir,
    locate_zips,
)
from jaxmeta.data.omniglot.decode import RESIZE_MODES
from jaxmeta.data.omniglot.splits import (
    DRAWERS,
    NUM_CHARACTERS,
    character_names,
    character_table,
    split_indices,
)
from jaxmeta.data.omniglot.tfds_builder import (
    DATASET_NAME,
    PreparedDataCorruptError,
    builder_class,
    prepared_folder,
    quiet_tfds,
    read_prepared,
)

__all__ = ["CACHE_FORMAT", "Omniglot", "load_omniglot", "split_images"]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True, eq=False)
class Omniglot:
    """All 1623 Omniglot characters, decoded, resized and inverted (strokes high).

    Attributes:
      images: uint8 ``[1623, 20, S, S]`` indexed ``[character, drawer]``; 255 = ink. As float
        images use ``images / 255``.
      alphabets: ``[1623]`` alphabet of each character.
      characters: ``[1623]`` unique names ``"Alphabet/characterNN"``.
      origin: ``[1623]`` ``"background"`` or ``"evaluation"`` (Lake's sets).
      character_ids: int32 ``[1623]``, the ``NNNN`` of the original file names ``NNNN_DD.png``.
      image_size: ``S``.
      cache_path: the ``.npz`` this was loaded from or written to.
    """

    images: np.ndarray
    alphabets: tuple[str, ...]
    characters: tuple[str, ...]
    origin: tuple[str, ...]
    character_ids: np.ndarray
    image_size: int
    cache_path: Path | None = None

    @property
    def num_characters(self) -> int:
        return int(self.images.shape[0])


def split_images(omniglot: Omniglot, scheme: str, split: str) -> np.ndarray:
    """One split's characters as a contiguous uint8 array, ready for ``jax.device_put``.

    Args:
      omniglot: from :func:`load_omniglot`.
      scheme: ``"lake"``, ``"maml"`` or ``"vinyals"``.
      split: see :func:`split_indices`.

    Returns:
      uint8 ``[C, 20, S, S]`` (e.g. C = 1028 for vinyals/train), strokes = 255.
    """
    return np.ascontiguousarray(omniglot.images[split_indices(scheme, split)])


def _cache_path(data_dir: Path, image_size: int, resize: str = "lanczos") -> Path:
    # The default keeps the name caches were written under before ``resize`` existed.
    suffix = "" if resize == "lanczos" else f"_{resize}"
    return prepared_folder(data_dir) / f"jaxmeta_images_{image_size}px{suffix}.npz"


def _load_cache(path: Path, image_size: int) -> Omniglot | None:
    arrays = npz_cache.load_arrays(
        path,
        format=CACHE_FORMAT,
        check=lambda a: (
            a["images"].shape == (NUM_CHARACTERS, DRAWERS, image_size, image_size)
            and a["images"].dtype == np.uint8
            and tuple(a["characters"].tolist()) == character_names()
        ),
        what="Omniglot cache",
    )
    if arrays is None:
        return None
    return Omniglot(
        images=arrays["images"],
        alphabets=tuple(arrays["alphabets"].tolist()),
        characters=tuple(arrays["characters"].tolist()),
        origin=tuple(arrays["origin"].tolist()),
        character_ids=arrays["character_ids"],
        image_size=image_size,
        cache_path=path,
    )


def _save_cache(path: Path, om: Omniglot) -> None:
    npz_cache.save_arrays(
        path,
        format=CACHE_FORMAT,
        images=om.images,
        alphabets=np.array(om.alphabets),
        characters=np.array(om.characters),
        origin=np.array(om.origin),
        character_ids=om.character_ids,
    )


def _build_from_tfds(data_dir: Path, image_size: int, resize: str = "lanczos") -> Omniglot:
    images, ids = read_prepared(data_dir, image_size, resize)
    rows = character_table()
    return Omniglot(
        images=images,
        alphabets=tuple(a for _, a, _ in rows),
        characters=character_names(),
        origin=tuple(o for o, _, _ in rows),
        character_ids=ids,
        image_size=image_size,
    )


def load_omniglot(
    *,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    image_size: int = 28,
    download: bool = True,
    resize: str = "lanczos",
) -> Omniglot:
    """Load all 1623 Omniglot characters, preparing TFDS data and the cache on first use.

    First call: locate the zips (manual dir first), verify them, prepare the ``jaxmeta_omniglot``
    TFDS dataset (array_record) in ``data_dir``, read it back with ``tfds.data_source``, decode,
    invert and resize every image once, and write ``<data_dir>/jaxmeta_omniglot/1.0.0/
    jaxmeta_images_{S}px.npz`` (``..._{S}px_binary.npz`` for ``resize="binary"``). Later calls
    only read that file (tens of milliseconds).

    Args:
      data_dir: TFDS data dir; default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.
      manual_dir: folder with ``images_background.zip`` and ``images_evaluation.zip``; default
        TFDS's ``<data_dir>/downloads/manual``. Official or re-zipped copies are both accepted
        (their PNG content is verified).
      image_size: side ``S`` of the stored images (28 in the literature; 105 keeps the
        originals).
      download: when the zips are not in the manual dir, download the official ones (sha256
        checked). ``False`` never touches the network.
      resize: ``"lanczos"`` (default: greyscale, anti-aliased) or ``"binary"`` (what the
        reference implementations trained on: Pillow resizes their mode-``"1"`` images with
        NEAREST although they ask for LANCZOS); :mod:`jaxmeta.data.omniglot.decode`.

    Returns:
      :class:`Omniglot` with ``images`` uint8 ``[1623, 20, S, S]`` (strokes = 255).

    Prepared TFDS data that cannot be read back (a corrupt array_record file) is deleted and
    prepared again from the zips, with a warning naming the file.

    Raises:
      OmniglotFilesMissingError: zips absent and ``download=False`` or no network (within ~5 s),
        with a message naming the files and the folder to put them in.
      OmniglotCorruptError: a zip is truncated/corrupt or its content is not genuine Omniglot;
        or the prepared data is corrupt and the zips to rebuild it are not available.
      ValueError: ``image_size`` < 1.

    References:
      Lake et al., Science 2015 (data); Finn et al. 2017 and Vinyals et al. 2016 (28x28).
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    cache = _cache_path(root, image_size, resize)
    om = _load_cache(cache, image_size)
    if om is not None:
        return om

    import tensorflow_datasets as tfds

    manual = (
        Path(manual_dir).expanduser() if manual_dir is not None else root / "downloads" / "manual"
    )
    with quiet_tfds(progress=True):  # absl: "Variant folder ... has no dataset_info.json"
        builder = builder_class()(
            data_dir=os.fspath(root), download=download, file_format="array_record"
        )
        prepared = builder.is_prepared()
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual), try_download_gcs=False)
    t0 = time.perf_counter()
    if not prepared:
        found = locate_zips(manual, download=download)  # fail fast, before TFDS creates anything
        fetch = [ZIPS[o].filename for o, p in found.items() if p is None]
        how = (
            f"by downloading {', '.join(fetch)} from github.com/brendenlake/omniglot"
            if fetch
            else f"from the local zips in {manual} (no download)"
        )
        print(
            f"jaxmeta: preparing Omniglot (once) into {root / DATASET_NAME} {how}",
            file=sys.stderr,
            flush=True,
        )
        local = not fetch
        with quiet_tfds(progress=not local):
            builder.download_and_prepare(download_config=config)
    t1 = time.perf_counter()
    try:
        om = _build_from_tfds(root, image_size, resize)
    except PreparedDataCorruptError as err:
        try:
            locate_zips(manual, download=download)  # before deleting anything
        except OmniglotFilesMissingError:
            names = " and ".join(z.filename for z in ZIPS.values())
            raise OmniglotCorruptError(
                f"{err}; to rebuild it, put {names} into {manual} (or set --manual-dir / "
                "data.manual_dir) and run again"
            ) from None
        log.warning("%s; deleting %s and preparing it again from the zips", err, err.folder)
        shutil.rmtree(err.folder)  # only prepared (derived) data and caches live there
        builder = builder_class()(
            data_dir=os.fspath(root), download=download, file_format="array_record"
        )
        builder.download_and_prepare(download_config=config)
        t1 = time.perf_counter()
        om = _build_from_tfds(root, image_size, resize)
    _save_cache(cache, om)
    print(
        f"jaxmeta: Omniglot ready ({'TFDS prepare %.1f s, ' % (t1 - t0) if not prepared else ''}"
        f"decode + resize {time.perf_counter() - t1:.1f} s); later loads read {cache}",
        file=sys.stderr,
        flush=True,
    )
    return dataclasses.replace(om, cache_path=cache)
