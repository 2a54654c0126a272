"""The ``jaxmeta_omniglot`` TFDS builder (no TensorFlow) and reading its prepared data back.

The stock ``omniglot`` builder of tensorflow-datasets cannot be used: it lists and extracts the
zips with ``tf.io.gfile`` (TensorFlow), always asks for all four zips, and accepts files in
``manual_dir`` only if their zip bytes match the registered sha256 (our full zips are re-zipped,
with genuine PNGs but different zip bytes). Offline, its download attempt retries for minutes.
TFDS's *writer*, however, works without TensorFlow in tfds 4.9.10: ``GeneratorBasedBuilder``
with ``file_format="array_record"`` serializes examples with TFDS's own ``tf_example_pb2``
protos (``core/example_serializer.py``), writes them with
``array_record_module.ArrayRecordWriter`` (``core/file_adapters.py:
ArrayRecordFileAdapter.write_examples``), and ``tfds.features.Image`` stores bytes it is given
as is (only *encoding* a NumPy image needs ``tf.image.encode_png``). So this builder

* reads the zips with :mod:`zipfile` (no TF) and yields the original PNG bytes, after
  :func:`~jaxmeta.data.omniglot.acquire.read_verified_zip`;
* downloads missing zips only after a network probe, through TFDS's ``DownloadManager``, and
  checks their registered sha256; it never lets TFDS retry a download and never asks GCS.

The prepared data (splits ``background`` and ``evaluation``, 19,280 + 13,180 examples) is read
back with ``tfds.data_source`` (PNG decoding skipped there: we decode ourselves, once, because
we also resize; :func:`read_prepared`). The small1/small2 zips are not needed and not used.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jaxmeta.data.omniglot.acquire import (
    PNG_RE,
    ZIPS,
    OmniglotCorruptError,
    check_download,
    locate_zips,
    read_verified_zip,
)
from jaxmeta.data.omniglot.decode import PNG_SIZE, decode_and_resize
from jaxmeta.data.omniglot.splits import DRAWERS, NUM_CHARACTERS, ORIGINS, character_table

__all__ = [
    "DATASET_NAME",
    "DATASET_VERSION",
    "PreparedDataCorruptError",
    "builder_class",
    "prepared_folder",
    "quiet_tfds",
    "read_prepared",
]

DATASET_NAME = "jaxmeta_omniglot"
DATASET_VERSION = "1.0.0"


class PreparedDataCorruptError(OmniglotCorruptError):
    """The prepared TFDS data (array_record files) cannot be read back; rebuildable from the zips.

    Attributes:
      folder: the prepared dataset's version folder.
    """

    def __init__(self, message: str, folder: Path):
        self.folder = folder
        super().__init__(message)


@functools.cache
def builder_class() -> type:
    """The ``jaxmeta_omniglot`` ``tfds.core.GeneratorBasedBuilder`` subclass (registered in TFDS).

    Construct it as ``builder_class()(data_dir=..., download=..., file_format="array_record")``
    and prepare with ``download_and_prepare(download_config=tfds.download.DownloadConfig(
    manual_dir=..., try_download_gcs=False))``; :func:`load_omniglot` does exactly that.
    """
    import tensorflow_datasets as tfds

    class JaxmetaOmniglot(tfds.core.GeneratorBasedBuilder):
        """Omniglot (Lake et al. 2015) as original 105x105 1-bit PNGs, without TensorFlow.

        Splits ``background`` (19,280 images) and ``evaluation`` (13,180 images). Features:
        ``image`` (PNG bytes, decodes to uint8 {0,1} [105,105,1], 1 = paper), ``alphabet``,
        ``character`` (``characterNN``), ``character_id`` (``NNNN``), ``drawer`` (1..20).
        """

        VERSION = tfds.core.Version(DATASET_VERSION)
        RELEASE_NOTES = {
            DATASET_VERSION: "Builder that needs no TensorFlow; content-verified zips."
        }
        MANUAL_DOWNLOAD_INSTRUCTIONS = (
            "Put images_background.zip and images_evaluation.zip (from "
            "https://github.com/brendenlake/omniglot/tree/master/python) into the manual dir."
        )

        def __init__(self, *, download: bool = True, **kwargs: Any):
            self._allow_download = download
            super().__init__(**kwargs)

        # TFDS announces "Downloading and preparing dataset Unknown size ..." even when the
        # zips are local; load_omniglot prints what really happens instead.
        def _log_download_bytes(self) -> None:
            pass

        def _log_download_done(self) -> None:
            pass

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=(
                    "Omniglot handwritten characters: 50 alphabets, 1623 characters x 20 drawers."
                ),
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(PNG_SIZE, PNG_SIZE, 1)),
                        "alphabet": tfds.features.Text(),
                        "character": tfds.features.Text(),
                        "character_id": tfds.features.Scalar(np.int32),
                        "drawer": tfds.features.Scalar(np.int32),
                    }
                ),
                homepage="https://github.com/brendenlake/omniglot",
                license="MIT",
                citation=(
                    "@article{lake2015human, title={Human-level concept learning through "
                    "probabilistic program induction}, author={Lake, Brenden M and Salakhutdinov, "
                    "Ruslan and Tenenbaum, Joshua B}, journal={Science}, volume={350}, "
                    "number={6266}, pages={1332--1338}, year={2015}}"
                ),
            )

        def _split_generators(self, dl_manager):
            manual = getattr(dl_manager, "_manual_dir", None)
            manual_dir = (
                Path(manual) if manual else Path(self._data_dir_root) / "downloads" / "manual"
            )
            found = locate_zips(manual_dir, download=self._allow_download)
            paths = {}
            for origin, path in found.items():
                if path is None:
                    path = Path(os.fspath(dl_manager.download(ZIPS[origin].url)))
                    check_download(path, origin)
                paths[origin] = path
            return {origin: self._generate_examples(path, origin) for origin, path in paths.items()}

        def _generate_examples(self, path, origin):
            for name, png in read_verified_zip(path, origin):
                m = PNG_RE.match(name)
                assert m is not None  # checked by read_verified_zip
                yield (
                    name,
                    {
                        "image": png,
                        "alphabet": m.group(2),
                        "character": m.group(3),
                        "character_id": int(m.group(4)),
                        "drawer": int(m.group(5)),
                    },
                )

    return JaxmetaOmniglot


def prepared_folder(data_dir: Path) -> Path:
    return data_dir / DATASET_NAME / DATASET_VERSION


def _records(sources: dict[str, Any], data_dir: Path) -> Iterator[tuple[str, Any]]:
    """(origin, tf.train.Example proto) for every stored image.

    The sources return raw bytes and we parse them with TFDS's own ``tf_example_pb2`` (upb):
    TFDS's NumPy feature decoding is pure Python and took ~25x longer here.

    Raises:
      PreparedDataCorruptError: a record cannot be read or parsed (names the split's files).
    """
    from tensorflow_datasets.proto import tf_example_pb2

    for origin in ORIGINS:
        try:
            src = sources[origin]
            n = len(src)
            for start in range(0, n, 4096):
                for raw in src.__getitems__(list(range(start, min(start + 4096, n)))):
                    yield origin, tf_example_pb2.Example.FromString(raw)
        except Exception as e:  # Riegeli RuntimeError, protobuf DecodeError, OSError...
            folder = prepared_folder(data_dir)
            files = sorted(folder.glob(f"{DATASET_NAME}-{origin}.array_record*"))
            named = ", ".join(str(f) for f in files) or f"the {origin} split in {folder}"
            raise PreparedDataCorruptError(
                f"{named} is corrupt ({type(e).__name__}: {str(e).splitlines()[0][:200]})", folder
            ) from None


def read_prepared(
    data_dir: Path, image_size: int, resize: str = "lanczos"
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and resize (``resize``: :func:`decode_and_resize`) every prepared image:
    ``(images uint8 [1623, 20, S, S], character ids int32 [1623])`` in cache order.

    Raises:
      PreparedDataCorruptError: the prepared data cannot be opened or read, or is incomplete.
    """
    import tensorflow_datasets as tfds

    builder_class()  # registers the builder under DATASET_NAME
    folder = prepared_folder(data_dir)
    try:
        sources = tfds.data_source(
            DATASET_NAME,
            data_dir=os.fspath(data_dir),
            download=False,
            deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES,
        )
    except Exception as e:
        raise PreparedDataCorruptError(
            f"prepared TFDS data in {folder} cannot be opened ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''})",
            folder,
        ) from None
    row = {key: i for i, key in enumerate(character_table())}
    images = np.zeros((NUM_CHARACTERS, DRAWERS, image_size, image_size), np.uint8)
    seen = np.zeros((NUM_CHARACTERS, DRAWERS), np.int32)
    ids = np.zeros(NUM_CHARACTERS, np.int32)
    pngs: list[bytes] = []
    where: list[tuple[int, int]] = []
    for origin, ex in _records(sources, data_dir):
        f = ex.features.feature
        key = (
            origin,
            f["alphabet"].bytes_list.value[0].decode(),
            f["character"].bytes_list.value[0].decode(),
        )
        if key not in row:
            raise PreparedDataCorruptError(
                f"prepared TFDS data in {folder}: unknown character {key}", folder
            )
        c, d = row[key], int(f["drawer"].int64_list.value[0]) - 1
        pngs.append(f["image"].bytes_list.value[0])
        where.append((c, d))
        ids[c] = int(f["character_id"].int64_list.value[0])
    cs, ds = (np.array(v) for v in zip(*where, strict=True))
    np.add.at(seen, (cs, ds), 1)
    if not (seen == 1).all():
        raise PreparedDataCorruptError(
            f"prepared TFDS data in {folder} is incomplete or has duplicates "
            f"({len(where)} records for {seen.size} images)",
            folder,
        )
    images[cs, ds] = decode_and_resize(pngs, image_size, resize=resize)
    return images, ids


@contextlib.contextmanager
def quiet_tfds(*, progress: bool):
    """Silence absl warnings (and TFDS's progress bars unless ``progress``) for a while."""
    from tensorflow_datasets.core.utils import tqdm_utils

    absl = logging.getLogger("absl")
    level, bars = absl.level, getattr(tqdm_utils, "_active", True)
    absl.setLevel(logging.ERROR)
    tqdm_utils.display_progress_bar(progress and bars)
    try:
        yield
    finally:
        absl.setLevel(level)
        tqdm_utils.display_progress_bar(bars)
