"""Omniglot's zips: where they come from, where they are looked for, how they are verified.

The two zips (``images_background.zip``, ``images_evaluation.zip``) are taken from TFDS's
manual dir (``<data_dir>/downloads/manual/`` or a given ``manual_dir``) when present, and
their *content* is verified (:func:`read_verified_zip`): exact counts per alphabet and
character (20 drawers each) and the sha256 of a path-sorted manifest of PNG sha256s, so the
official zips and genuine re-zipped copies are both accepted. Otherwise (``download=True``)
the official zips are downloaded after one network probe (5 s), and their registered sha256
is checked too. The generic parts are :mod:`jaxmeta.data.archives`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

from jaxmeta.data import archives
from jaxmeta.data.omniglot.splits import ALPHABETS, DRAWERS

__all__ = [
    "OmniglotCorruptError",
    "OmniglotFilesMissingError",
    "ZIPS",
    "default_data_dir",
    "locate_zips",
    "read_verified_zip",
]

DOWNLOAD_HOST = ("github.com", 443)


class OmniglotFilesMissingError(archives.FilesMissingError):
    """The zips are neither in the manual dir nor downloadable (offline or ``download=False``)."""


class OmniglotCorruptError(archives.CorruptFileError):
    """A zip is unreadable, truncated, or not genuine Omniglot content (the message names it)."""


@dataclasses.dataclass(frozen=True)
class ZipSpec:
    filename: str
    url: str
    size: int  # official zip, bytes
    sha256: str  # official zip bytes (TFDS url_checksums/omniglot.txt)
    manifest_sha256: str  # content: sha256 of the path-sorted "sha256  path\n" lines of its PNGs


_OFFICIAL_BASE = "https://github.com/brendenlake/omniglot/raw/master/python/"
# origin: (official zip bytes, their sha256 (TFDS url_checksums/omniglot.txt), content manifest)
_OFFICIAL = {
    "background": (
        9464212,
        "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
        "deaa02f758afda524b3a045c7af40311f2d9ded3e2a39f715ece8470d474bc6a",
    ),
    "evaluation": (
        6462886,
        "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
        "3d5e035f27423c362bf9a181af649b43cda64c1008f842177ddc5203269c901e",
    ),
}
ZIPS = {
    origin: ZipSpec(f"images_{origin}.zip", f"{_OFFICIAL_BASE}images_{origin}.zip", *spec)
    for origin, spec in _OFFICIAL.items()
}
# The same manifest over both sets together, as published in the data README (cross-check).
FULL_MANIFEST_SHA256 = "8745d3284205c70953ebeacd9061b7dfdadc5961afab7b71a1553c9aa5bcb1af"

PNG_RE = re.compile(r"^images_(background|evaluation)/([^/]+)/(character\d\d)/(\d{4})_(\d\d)\.png$")


def default_data_dir() -> Path:
    """TFDS's data dir: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def _missing_message(manual_dir: Path, missing: Sequence[str], reason: str) -> str:
    lines = [
        f"Omniglot zips not found ({reason}). Put these files into {manual_dir}/ :",
        *(f"  {ZIPS[o].filename}   (from {ZIPS[o].url})" for o in missing),
        "or pass manual_dir=DIR (CLI: `jaxmeta data omniglot --manual-dir DIR`, config: "
        "data.manual_dir) pointing at a folder that holds them. Re-zipped copies are accepted: "
        "their PNG content is verified, not the zip bytes.",
    ]
    return "\n".join(lines)


def locate_zips(manual_dir: Path, *, download: bool) -> dict[str, Path | None]:
    """Zip path per origin (``None`` = must be downloaded); raises fast when that is impossible.

    Raises:
      OmniglotFilesMissingError: zips absent and ``download=False`` or no network.
    """
    return archives.locate(
        manual_dir,
        {origin: spec.filename for origin, spec in ZIPS.items()},
        download=download,
        host=DOWNLOAD_HOST,
        missing_message=lambda missing, reason: _missing_message(manual_dir, missing, reason),
        error=OmniglotFilesMissingError,
    )


def check_download(path: Path, origin: str) -> None:
    """A downloaded official zip must have its registered sha256.

    Raises:
      OmniglotCorruptError: naming the file, its digest and the expected one.
    """
    spec = ZIPS[origin]
    digest = archives.sha256_file(path)
    if digest != spec.sha256:
        raise OmniglotCorruptError(
            f"{path}: downloaded {spec.url} has sha256 {digest}, expected {spec.sha256}"
        )


# Declared sizes a genuine zip stays far below (its PNGs: <= 522 bytes, 4.8 MB together).
MAX_PNG_BYTES = 2**16
MAX_ZIP_PNG_BYTES = 2**26


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
    spec = ZIPS[origin]
    prefix = f"images_{origin}/"
    files = archives.read_zip(
        path,
        suffix=".png",
        hint=f"Replace it with a fresh copy of {spec.url}",
        error=OmniglotCorruptError,
        # genuine PNGs are at most 522 bytes, 4.8 MB per zip: checked before reading
        max_member_bytes=MAX_PNG_BYTES,
        max_total_bytes=MAX_ZIP_PNG_BYTES,
    )
    per_character: dict[tuple[str, str], list[str]] = {}
    for name, _ in files:
        m = PNG_RE.match(name)
        if m is None or not name.startswith(prefix):
            raise OmniglotCorruptError(
                f"{path}: unexpected member {name!r} (expected {prefix}<alphabet>/characterNN/"
                "NNNN_DD.png)"
            )
        per_character.setdefault((m.group(2), m.group(3)), []).append(m.group(5))
    expected = ALPHABETS[origin]
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
    digest = archives.manifest_sha256(files)
    if digest != spec.manifest_sha256:
        raise OmniglotCorruptError(
            f"{path}: the PNG content differs from genuine Omniglot {origin} (manifest sha256 "
            f"{digest}, expected {spec.manifest_sha256}). "
            f"Replace it with a fresh copy of {spec.url}"
        )
    return files
