"""Omniglot: acquisition through TensorFlow Datasets, a compact uint8 cache, the standard splits.

Data flows one way: the official zips → a TFDS dataset prepared once (array_record) → decoded
and resized once into a ``uint8`` array ``[1623 characters, 20 drawers, S, S]`` cached as an
``.npz`` next to the TFDS data → one split's characters on the device →
:mod:`jaxmeta.data.episodes`.

TFDS design (and why):
  The stock ``omniglot`` builder of tensorflow-datasets cannot be used: it lists and extracts the
  zips with ``tf.io.gfile`` (TensorFlow), always asks for all four zips, and accepts files in
  ``manual_dir`` only if their zip bytes match the registered sha256 (our full zips are re-zipped,
  with genuine PNGs but different zip bytes). Offline, its download attempt retries for minutes.
  TFDS's *writer*, however, works without TensorFlow in tfds 4.9.10: ``GeneratorBasedBuilder``
  with ``file_format="array_record"`` serializes examples with TFDS's own ``tf_example_pb2``
  protos (``core/example_serializer.py``), writes them with
  ``array_record_module.ArrayRecordWriter`` (``core/file_adapters.py:
  ArrayRecordFileAdapter.write_examples``), and ``tfds.features.Image``
  stores bytes it is given as is (only *encoding* a NumPy image needs ``tf.image.encode_png``).
  So this module defines its own TFDS builder, ``jaxmeta_omniglot``, that

  * reads the zips with :mod:`zipfile` (no TF) and yields the original PNG bytes;
  * takes the zips from TFDS's manual dir (``<data_dir>/downloads/manual/`` or a given
    ``manual_dir``) when present, and verifies their *content*: exact counts per alphabet and
    character (20 drawers each) and the sha256 of a path-sorted manifest of PNG sha256s;
  * otherwise (``download=True``) probes the network with a 5 s connect timeout, downloads the
    official zips through TFDS's ``DownloadManager`` and checks their registered sha256 (TFDS's
    ``url_checksums/omniglot.txt``) *and* their content;
  * with ``download=False`` (or no network) fails at once, naming the missing files and where to
    put them. It never lets TFDS retry a download and never asks GCS (``try_download_gcs=False``).

  The prepared data (splits ``background`` and ``evaluation``, 19,280 + 13,180 examples) is read
  back with ``tfds.data_source`` (PNG decoding skipped there: we decode ourselves, once, because
  we also resize) and turned into the cache. The small1/small2 zips are not needed and not used.

Preprocessing (the standard one, Finn et al. 2017; Vinyals et al. 2016): PIL decodes the 1-bit PNGs
to {0, 1} with 1 = white paper; ``ink = ~(png > 0)`` (the ``img > 0`` normalisation, robust to
decoders that give {0, 255}); ``ink * 255`` resized to ``S x S`` with LANCZOS; stored as ``uint8``
with strokes high. Float images are ``u8 / 255``. The default path does this vectorised: the PNGs
(all 1-bit, unfiltered rows) are inflated with :mod:`zlib` and bit-unpacked, and Pillow's
fixed-point LANCZOS is reproduced as two exact matrix products; the result is bit-identical to
``Image.resize(..., Image.LANCZOS)`` (tested), and any PNG of another kind goes through PIL.
:func:`preprocess` (from :mod:`jaxmeta.data.images`, where the resize lives) applies the same
transformation to any decoded image, so your own drawings reach a model in the training form.

Cost (2-core CPU shared with other jobs; CPU seconds, which is what an idle machine pays):
TFDS prepare (read + verify zips, write array_record) ~4 s; read back with ``tfds.data_source``,
decode and resize 32,460 images ~6 s; later loads read the 26 MB ``.npz`` in ~0.06 s and do not
import tensorflow_datasets.

Character order (index ``c`` of ``images[c]``): the 964 background characters, then the 659
evaluation characters; inside each set, alphabets in byte-wise sorted order, then ``characterNN``.

Splits (``scheme`` / ``split``), with their sources:
  * ``"lake"``: ``background`` (30 alphabets, 964 characters) / ``evaluation`` (20 alphabets,
    659 characters), the original split of Lake et al. 2015. ``train``/``test`` are accepted as
    aliases; there is no validation split in this protocol.
  * ``"maml"``: 1100 train / 100 val / 423 test characters. cbfinn/maml ``data_generator.py``
    lists every ``alphabet/character`` folder of all 50 alphabets, calls ``random.seed(1);
    random.shuffle(character_folders)`` and takes the first 1200 for meta-training, of which the
    last 100 are its validation set, and the remaining 423 for testing. MAML listed the folders
    with ``os.listdir``, whose order is file-system dependent, so its exact assignment cannot be
    reproduced. We list the 1623 ``alphabet/characterNN`` names in byte-wise sorted order
    (all 50 alphabets together) and shuffle them with ``random.Random(1).shuffle`` (a private
    generator, same algorithm as ``random.seed(1); random.shuffle``); ``[:1100]`` train,
    ``[1100:1200]`` val, ``[1200:]`` test.
  * ``"vinyals"``: 1028 train / 172 val / 423 test characters, the split of Vinyals et al. 2016
    as distributed by jakesnell/prototypical-networks ``data/omniglot/splits/vinyals``. It is the
    first 1200 characters in Lake's id order (background, then evaluation alphabets in sorted
    order) for train+val and the last 423 for test, so Gurmukhi is cut: characters 01-41 in
    train, 42-45 in test. Val is exactly the five alphabets of ProtoNets' ``val.txt`` (Hebrew,
    Mkhedruli_(Georgian), Armenian, Early_Aramaic, Bengali: 172 characters; read from the
    repository). ProtoNets' ``train.txt``/``test.txt`` were not available to us verbatim; test is
    reconstructed from the alphabet-level copy in jvlmdr/omniglot-eval ``splits/vinyals/test.txt``
    (which notes that it dropped Gurmukhi) and from a second public code base that lists
    ``Gurmukhi/character42..45`` plus the same 12 alphabets as the Vinyals test set. The counts
    1028/172/423 then follow exactly, which confirms the reconstruction.

  Rotations by 90/180/270 degrees make new classes (``rotations=True`` in the episode sampler):
  a split of ``C`` characters then has ``4 C`` classes.

References:
  Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through probabilistic program
  induction", Science 2015. Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS
  2016. Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning", ICML 2017. Snell, Swersky & Zemel,
  "Prototypical Networks for Few-shot Learning", NeurIPS 2017.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import logging
import os
import random
import re
import shutil
import socket
import struct
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxmeta.data.images import preprocess, resize_ink

__all__ = [
    "BACKGROUND_ALPHABETS",
    "EVALUATION_ALPHABETS",
    "DATASET_NAME",
    "DRAWERS",
    "NUM_CHARACTERS",
    "Omniglot",
    "OmniglotCorruptError",
    "OmniglotFilesMissingError",
    "SCHEMES",
    "character_names",
    "load_omniglot",
    "preprocess",
    "split_counts",
    "split_images",
    "split_indices",
]

log = logging.getLogger(__name__)

DATASET_NAME = "jaxmeta_omniglot"
DATASET_VERSION = "1.0.0"
DRAWERS = 20
PNG_SIZE = 105
CACHE_FORMAT = 1
_NETWORK_TIMEOUT_S = 5.0
_DOWNLOAD_HOST = ("github.com", 443)

# (alphabet, number of characters), byte-wise sorted: the ground truth that content checks use.
BACKGROUND_ALPHABETS: tuple[tuple[str, int], ...] = (
    ("Alphabet_of_the_Magi", 20),
    ("Anglo-Saxon_Futhorc", 29),
    ("Arcadian", 26),
    ("Armenian", 41),
    ("Asomtavruli_(Georgian)", 40),
    ("Balinese", 24),
    ("Bengali", 46),
    ("Blackfoot_(Canadian_Aboriginal_Syllabics)", 14),
    ("Braille", 26),
    ("Burmese_(Myanmar)", 34),
    ("Cyrillic", 33),
    ("Early_Aramaic", 22),
    ("Futurama", 26),
    ("Grantha", 43),
    ("Greek", 24),
    ("Gujarati", 48),
    ("Hebrew", 22),
    ("Inuktitut_(Canadian_Aboriginal_Syllabics)", 16),
    ("Japanese_(hiragana)", 52),
    ("Japanese_(katakana)", 47),
    ("Korean", 40),
    ("Latin", 26),
    ("Malay_(Jawi_-_Arabic)", 40),
    ("Mkhedruli_(Georgian)", 41),
    ("N_Ko", 33),
    ("Ojibwe_(Canadian_Aboriginal_Syllabics)", 14),
    ("Sanskrit", 42),
    ("Syriac_(Estrangelo)", 23),
    ("Tagalog", 17),
    ("Tifinagh", 55),
)
EVALUATION_ALPHABETS: tuple[tuple[str, int], ...] = (
    ("Angelic", 20),
    ("Atemayar_Qelisayer", 26),
    ("Atlantean", 26),
    ("Aurek-Besh", 26),
    ("Avesta", 26),
    ("Ge_ez", 26),
    ("Glagolitic", 45),
    ("Gurmukhi", 45),
    ("Kannada", 41),
    ("Keble", 26),
    ("Malayalam", 47),
    ("Manipuri", 40),
    ("Mongolian", 30),
    ("Old_Church_Slavonic_(Cyrillic)", 45),
    ("Oriya", 46),
    ("Sylheti", 28),
    ("Syriac_(Serto)", 23),
    ("Tengwar", 25),
    ("Tibetan", 42),
    ("ULOG", 26),
)
_ALPHABETS = {"background": BACKGROUND_ALPHABETS, "evaluation": EVALUATION_ALPHABETS}
ORIGINS = ("background", "evaluation")
NUM_CHARACTERS = sum(n for _, n in BACKGROUND_ALPHABETS + EVALUATION_ALPHABETS)  # 1623


@dataclasses.dataclass(frozen=True)
class _ZipSpec:
    filename: str
    url: str
    size: int  # official zip, bytes
    sha256: str  # official zip bytes (TFDS url_checksums/omniglot.txt)
    manifest_sha256: str  # content: sha256 of the path-sorted "sha256  path\n" lines of its PNGs


_OFFICIAL_BASE = "https://github.com/brendenlake/omniglot/raw/master/python/"
_ZIPS = {
    "background": _ZipSpec(
        filename="images_background.zip",
        url=_OFFICIAL_BASE + "images_background.zip",
        size=9464212,
        sha256="ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
        manifest_sha256="deaa02f758afda524b3a045c7af40311f2d9ded3e2a39f715ece8470d474bc6a",
    ),
    "evaluation": _ZipSpec(
        filename="images_evaluation.zip",
        url=_OFFICIAL_BASE + "images_evaluation.zip",
        size=6462886,
        sha256="1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
        manifest_sha256="3d5e035f27423c362bf9a181af649b43cda64c1008f842177ddc5203269c901e",
    ),
}
# The same manifest over both sets together, as published in the data README (cross-check).
_FULL_MANIFEST_SHA256 = "8745d3284205c70953ebeacd9061b7dfdadc5961afab7b71a1553c9aa5bcb1af"

_PNG_RE = re.compile(
    r"^images_(background|evaluation)/([^/]+)/(character\d\d)/(\d{4})_(\d\d)\.png$"
)


class OmniglotFilesMissingError(FileNotFoundError):
    """The zips are neither in the manual dir nor downloadable (offline or ``download=False``)."""


class OmniglotCorruptError(ValueError):
    """A zip is unreadable, truncated, or not genuine Omniglot content (the message names it)."""


class PreparedDataCorruptError(OmniglotCorruptError):
    """The prepared TFDS data (array_record files) cannot be read back; rebuildable from the zips.

    Attributes:
      folder: the prepared dataset's version folder.
    """

    def __init__(self, message: str, folder: Path):
        self.folder = folder
        super().__init__(message)


# --------------------------------------------------------------------------------------------
# Canonical character table and splits (pure metadata: no data needed).


@functools.cache
def _table() -> tuple[tuple[str, str, str], ...]:
    """(origin, alphabet, characterNN) for the 1623 characters, in cache order."""
    rows = []
    for origin in ORIGINS:
        for alphabet, n in _ALPHABETS[origin]:
            rows.extend((origin, alphabet, f"character{i:02d}") for i in range(1, n + 1))
    return tuple(rows)


def character_names() -> tuple[str, ...]:
    """``"Alphabet/characterNN"`` for each of the 1623 characters, in cache order (index = row)."""
    return tuple(f"{a}/{c}" for _, a, c in _table())


_VINYALS_VAL_ALPHABETS = ("Hebrew", "Mkhedruli_(Georgian)", "Armenian", "Early_Aramaic", "Bengali")
_VINYALS_TEST_ALPHABETS = (
    "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian", "Old_Church_Slavonic_(Cyrillic)",
    "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar", "Tibetan", "ULOG",
)  # fmt: skip
_VINYALS_TEST_CHARACTERS = tuple(f"Gurmukhi/character{i}" for i in (42, 43, 44, 45))

SCHEMES: dict[str, tuple[str, ...]] = {
    "lake": ("background", "evaluation"),
    "maml": ("train", "val", "test"),
    "vinyals": ("train", "val", "test"),
}
_LAKE_ALIASES = {"train": "background", "test": "evaluation"}


@functools.cache
def _split_table() -> dict[str, dict[str, np.ndarray]]:
    rows = _table()
    names = character_names()
    index = {name: i for i, name in enumerate(names)}
    origin = np.array([o for o, _, _ in rows])
    lake = {s: np.flatnonzero(origin == s) for s in ORIGINS}

    shuffled = sorted(names)  # MAML lists all 50 alphabets together
    random.Random(1).shuffle(shuffled)
    maml = {
        "train": shuffled[:1100],
        "val": shuffled[1100:1200],
        "test": shuffled[1200:],
    }
    maml = {s: np.sort([index[n] for n in v]) for s, v in maml.items()}

    alphabet = [a for _, a, _ in rows]
    vin = np.array(
        [
            "test"
            if (a in _VINYALS_TEST_ALPHABETS or n in _VINYALS_TEST_CHARACTERS)
            else "val"
            if a in _VINYALS_VAL_ALPHABETS
            else "train"
            for a, n in zip(alphabet, names, strict=True)
        ]
    )
    vinyals = {s: np.flatnonzero(vin == s) for s in SCHEMES["vinyals"]}
    out = {"lake": lake, "maml": maml, "vinyals": vinyals}
    for splits in out.values():
        for v in splits.values():
            v.setflags(write=False)
    return out


def _resolve_split(scheme: str, split: str) -> tuple[str, str]:
    if scheme not in SCHEMES:
        raise ValueError(
            f"unknown Omniglot split scheme {scheme!r}; choose one of {sorted(SCHEMES)}"
        )
    if scheme == "lake":
        split = _LAKE_ALIASES.get(split, split)
        if split == "val":
            raise ValueError(
                "scheme 'lake' has no validation split (Lake et al.: background/evaluation only); "
                "use scheme 'maml' or 'vinyals' for train/val/test"
            )
    if split not in SCHEMES[scheme]:
        raise ValueError(
            f"unknown split {split!r} for scheme {scheme!r}; choose one of {SCHEMES[scheme]}"
            + (" (or the aliases 'train'/'test')" if scheme == "lake" else "")
        )
    return scheme, split


def split_indices(scheme: str, split: str) -> np.ndarray:
    """Character indices (rows of :attr:`Omniglot.images`) of one split, sorted ascending.

    Args:
      scheme: ``"lake"``, ``"maml"`` or ``"vinyals"`` (see the module docstring for sources).
      split: ``"background"``/``"evaluation"`` for lake (aliases ``"train"``/``"test"``),
        ``"train"``/``"val"``/``"test"`` for maml and vinyals.

    Returns:
      Read-only int64 array ``[C]`` of character indices in ``[0, 1623)``.

    Raises:
      ValueError: unknown scheme or split, or ``"val"`` for lake.
    """
    scheme, split = _resolve_split(scheme, split)
    return _split_table()[scheme][split]


def split_counts(*, rotations: bool = False) -> dict[str, dict[str, int]]:
    """Number of classes of every split of every scheme, e.g. for the CLI to print.

    Args:
      rotations: count each character's 90/180/270 degree rotations as new classes (x4).

    Returns:
      ``{scheme: {split: classes}}``, e.g. ``{"lake": {"background": 964, "evaluation": 659},
      "maml": {"train": 1100, "val": 100, "test": 423}, "vinyals": {"train": 1028, "val": 172,
      "test": 423}}`` without rotations.
    """
    factor = 4 if rotations else 1
    return {
        scheme: {split: factor * len(idx) for split, idx in splits.items()}
        for scheme, splits in _split_table().items()
    }


# --------------------------------------------------------------------------------------------
# The loaded dataset.


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


# --------------------------------------------------------------------------------------------
# Locating and verifying the zips.


def default_data_dir() -> Path:
    """TFDS's data dir: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def _missing_message(manual_dir: Path, missing: Sequence[str], reason: str) -> str:
    lines = [
        f"Omniglot zips not found ({reason}). Put these files into {manual_dir}/ :",
        *(f"  {_ZIPS[o].filename}   (from {_ZIPS[o].url})" for o in missing),
        "or pass manual_dir=DIR (CLI: `jaxmeta data omniglot --manual-dir DIR`, config: "
        "data.manual_dir) pointing at a folder that holds them. Re-zipped copies are accepted: "
        "their PNG content is verified, not the zip bytes.",
    ]
    return "\n".join(lines)


def _probe_address() -> tuple[str, int]:
    """Where a download would connect first: the HTTPS proxy if one is configured, else GitHub."""
    proxy = urllib.request.getproxies().get("https")
    if proxy:
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    return _DOWNLOAD_HOST


def _network_available(timeout: float = _NETWORK_TIMEOUT_S) -> bool:
    """One TCP connect with a short timeout: TFDS's downloader would retry for minutes instead."""
    try:
        with socket.create_connection(_probe_address(), timeout=timeout):
            return True
    except OSError:
        return False


def _locate(manual_dir: Path, *, download: bool) -> dict[str, Path | None]:
    """Zip path per origin (None = must be downloaded); raises fast when that is impossible."""
    found: dict[str, Path | None] = {}
    for origin, spec in _ZIPS.items():
        path = manual_dir / spec.filename
        found[origin] = path if path.is_file() else None
    missing = [o for o, p in found.items() if p is None]
    if missing:
        if not download:
            raise OmniglotFilesMissingError(_missing_message(manual_dir, missing, "download=False"))
        if not _network_available():
            raise OmniglotFilesMissingError(
                _missing_message(
                    manual_dir,
                    missing,
                    f"offline: no connection to {_probe_address()[0]} within "
                    f"{_NETWORK_TIMEOUT_S:g} s",
                )
            )
    return found


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_verified_zip(path: str | os.PathLike, origin: str) -> list[tuple[str, bytes]]:
    """Read every PNG of one Omniglot zip and verify the content is genuine.

    Checks: the zip opens and every member decompresses with a correct CRC; exactly the expected
    alphabets, ``character01..NN`` per alphabet and 20 files ``NNNN_01..20.png`` per character;
    the sha256 of the path-sorted ``"<png sha256>  <path>\\n"`` manifest equals the constant
    computed from the genuine files (identical for the official and the re-zipped archives).

    Args:
      path: ``images_background.zip`` or ``images_evaluation.zip``.
      origin: ``"background"`` or ``"evaluation"``.

    Returns:
      ``[(member path, png bytes)]`` sorted by path.

    Raises:
      OmniglotCorruptError: naming ``path`` and what is wrong.
    """
    path = Path(path)
    spec = _ZIPS[origin]
    prefix = f"images_{origin}/"
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(n for n in zf.namelist() if n.endswith(".png"))
            files = [(n, zf.read(n)) for n in names]
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        raise OmniglotCorruptError(
            f"{path}: not a readable, complete zip archive ({type(e).__name__}: {e}). "
            f"Replace it with a fresh copy of {spec.url}"
        ) from e

    per_character: dict[tuple[str, str], list[str]] = {}
    for name, _ in files:
        m = _PNG_RE.match(name)
        if m is None or not name.startswith(prefix):
            raise OmniglotCorruptError(
                f"{path}: unexpected member {name!r} (expected {prefix}<alphabet>/characterNN/"
                "NNNN_DD.png)"
            )
        per_character.setdefault((m.group(2), m.group(3)), []).append(m.group(5))
    expected = _ALPHABETS[origin]
    got_alphabets = {a for a, _ in per_character}
    want_alphabets = {a for a, _ in expected}
    if got_alphabets != want_alphabets:
        raise OmniglotCorruptError(
            f"{path}: alphabets differ from Omniglot {origin}: missing "
            f"{sorted(want_alphabets - got_alphabets)}, "
            f"unexpected {sorted(got_alphabets - want_alphabets)}"
        )
    drawers = [f"{d:02d}" for d in range(1, DRAWERS + 1)]
    for alphabet, n in expected:
        chars = sorted(c for a, c in per_character if a == alphabet)
        want = [f"character{i:02d}" for i in range(1, n + 1)]
        if chars != want:
            raise OmniglotCorruptError(
                f"{path}: alphabet {alphabet} has {len(chars)} characters, expected {n} "
                f"(missing {sorted(set(want) - set(chars))})"
            )
        for c in chars:
            got = sorted(per_character[(alphabet, c)])
            if got != drawers:
                raise OmniglotCorruptError(
                    f"{path}: {alphabet}/{c} has {len(got)} images, expected {DRAWERS} "
                    f"(drawers {', '.join(got)})"
                )
    manifest = "".join(f"{hashlib.sha256(b).hexdigest()}  {n}\n" for n, b in files)
    digest = hashlib.sha256(manifest.encode()).hexdigest()
    if digest != spec.manifest_sha256:
        raise OmniglotCorruptError(
            f"{path}: the PNG content differs from genuine Omniglot {origin} (manifest sha256 "
            f"{digest}, expected {spec.manifest_sha256}). "
            f"Replace it with a fresh copy of {spec.url}"
        )
    return files


# --------------------------------------------------------------------------------------------
# The TFDS builder (made lazily: importing tensorflow_datasets takes ~1 s; a cache hit needs none).


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
            found = _locate(manual_dir, download=self._allow_download)
            paths = {}
            for origin, path in found.items():
                if path is None:
                    spec = _ZIPS[origin]
                    path = Path(os.fspath(dl_manager.download(spec.url)))
                    digest = _sha256_file(path)
                    if digest != spec.sha256:
                        raise OmniglotCorruptError(
                            f"{path}: downloaded {spec.url} has sha256 {digest}, "
                            f"expected {spec.sha256}"
                        )
                paths[origin] = path
            return {origin: self._generate_examples(path, origin) for origin, path in paths.items()}

        def _generate_examples(self, path, origin):
            for name, png in read_verified_zip(path, origin):
                m = _PNG_RE.match(name)
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


# --------------------------------------------------------------------------------------------
# Decoding and the cache.


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
    pngs: Sequence[bytes], image_size: int, *, use_pil: bool = False
) -> np.ndarray:
    """Decode PNGs, invert so strokes are 255, resize with LANCZOS.

    The default path decodes and resizes vectorised (bit-exact with PIL, ~3x faster); PNGs that
    are not plain 1-bit Omniglot files, or ``use_pil=True``, go through PIL image by image.

    Args:
      pngs: ``n`` Omniglot PNG files.
      image_size: output side ``S``.
      use_pil: force the PIL reference path.

    Returns:
      uint8 ``[n, S, S]``, strokes high.
    """
    from PIL import Image

    ink = None if use_pil else _ink_fast(pngs)
    if ink is not None:
        return resize_ink(ink, image_size)  # the code path of preprocess()
    out = np.empty((len(pngs), image_size, image_size), np.uint8)
    for i, png in enumerate(pngs):
        im = decode_png(png).astype(np.uint8) * np.uint8(255)
        if im.shape != (image_size, image_size):
            im = np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.LANCZOS))
        out[i] = im
    return out


def _cache_path(data_dir: Path, image_size: int) -> Path:
    return data_dir / DATASET_NAME / DATASET_VERSION / f"jaxmeta_images_{image_size}px.npz"


def _load_cache(path: Path, image_size: int) -> Omniglot | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        ok = (
            int(arrays["format"]) == CACHE_FORMAT
            and arrays["images"].shape == (NUM_CHARACTERS, DRAWERS, image_size, image_size)
            and arrays["images"].dtype == np.uint8
            and tuple(arrays["characters"].tolist()) == character_names()
        )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        # EOFError: a 0-byte file; the others: truncated, garbage or foreign files.
        log.warning("ignoring unreadable Omniglot cache %s (%s); rebuilding it", path, e)
        return None
    if not ok:
        log.warning("ignoring stale Omniglot cache %s; rebuilding it", path)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                format=np.int32(CACHE_FORMAT),
                images=om.images,
                alphabets=np.array(om.alphabets),
                characters=np.array(om.characters),
                origin=np.array(om.origin),
                character_ids=om.character_ids,
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # atomic: a reader never sees a half-written cache
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _prepared_folder(data_dir: Path) -> Path:
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
            folder = _prepared_folder(data_dir)
            files = sorted(folder.glob(f"{DATASET_NAME}-{origin}.array_record*"))
            named = ", ".join(str(f) for f in files) or f"the {origin} split in {folder}"
            raise PreparedDataCorruptError(
                f"{named} is corrupt ({type(e).__name__}: {str(e).splitlines()[0][:200]})", folder
            ) from None


def _build_from_tfds(data_dir: Path, image_size: int) -> Omniglot:
    import tensorflow_datasets as tfds

    builder_class()  # registers the builder under DATASET_NAME
    folder = _prepared_folder(data_dir)
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
    row = {key: i for i, key in enumerate(_table())}
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
    images[cs, ds] = decode_and_resize(pngs, image_size)
    rows = _table()
    return Omniglot(
        images=images,
        alphabets=tuple(a for _, a, _ in rows),
        characters=character_names(),
        origin=tuple(o for o, _, _ in rows),
        character_ids=ids,
        image_size=image_size,
    )


@contextlib.contextmanager
def _quiet_tfds(*, progress: bool):
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


def load_omniglot(
    *,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    image_size: int = 28,
    download: bool = True,
) -> Omniglot:
    """Load all 1623 Omniglot characters, preparing TFDS data and the cache on first use.

    First call: locate the zips (manual dir first), verify them, prepare the ``jaxmeta_omniglot``
    TFDS dataset (array_record) in ``data_dir``, read it back with ``tfds.data_source``, decode,
    invert and resize every image once, and write ``<data_dir>/jaxmeta_omniglot/1.0.0/
    jaxmeta_images_{S}px.npz``. Later calls only read that file (tens of milliseconds).

    Args:
      data_dir: TFDS data dir; default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.
      manual_dir: folder with ``images_background.zip`` and ``images_evaluation.zip``; default
        TFDS's ``<data_dir>/downloads/manual``. Official or re-zipped copies are both accepted
        (their PNG content is verified).
      image_size: side ``S`` of the stored images (28 is the standard; 105 keeps the originals).
      download: when the zips are not in the manual dir, download the official ones (sha256
        checked). ``False`` never touches the network.

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
      Lake et al., Science 2015 (data); Finn et al. 2017 and Vinyals et al. 2016 (28x28 LANCZOS).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    cache = _cache_path(root, image_size)
    om = _load_cache(cache, image_size)
    if om is not None:
        return om

    import tensorflow_datasets as tfds

    manual = (
        Path(manual_dir).expanduser() if manual_dir is not None else root / "downloads" / "manual"
    )
    with _quiet_tfds(progress=True):  # absl: "Variant folder ... has no dataset_info.json"
        builder = builder_class()(
            data_dir=os.fspath(root), download=download, file_format="array_record"
        )
        prepared = builder.is_prepared()
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual), try_download_gcs=False)
    t0 = time.perf_counter()
    if not prepared:
        found = _locate(manual, download=download)  # fail fast, before TFDS creates anything
        fetch = [_ZIPS[o].filename for o, p in found.items() if p is None]
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
        with _quiet_tfds(progress=not local):
            builder.download_and_prepare(download_config=config)
    t1 = time.perf_counter()
    try:
        om = _build_from_tfds(root, image_size)
    except PreparedDataCorruptError as err:
        try:
            _locate(manual, download=download)  # before deleting anything
        except OmniglotFilesMissingError:
            names = " and ".join(z.filename for z in _ZIPS.values())
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
        om = _build_from_tfds(root, image_size)
    _save_cache(cache, om)
    print(
        f"jaxmeta: Omniglot ready ({'TFDS prepare %.1f s, ' % (t1 - t0) if not prepared else ''}"
        f"decode + resize {time.perf_counter() - t1:.1f} s); later loads read {cache}",
        file=sys.stderr,
        flush=True,
    )
    return dataclasses.replace(om, cache_path=cache)
