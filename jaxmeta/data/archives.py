"""Acquiring dataset files safely: find them, probe the network once, verify archives.

Shared by every dataset that prepares itself from published files (Omniglot's zips today).
The failure modes peers suffer from (a download that retries for minutes offline, an HTML
quota page saved as the archive, a truncated file) are each turned into a fast error that
names the file and what to do:

* :func:`locate` looks for the files in a folder and, when some are missing, fails at once
  unless downloading is allowed *and* one TCP connect (:func:`network_available`, 5 s
  timeout) succeeds;
* :func:`read_zip` reads every member of a zip archive, so a truncated or corrupt archive
  fails there, naming it;
* :func:`manifest_sha256` fingerprints the *content* of an archive (the sha256 of its
  path-sorted ``"<sha256>  <path>"`` lines), so a re-zipped but genuine copy is accepted
  while any change to a file is not; :func:`sha256_file` checks a downloaded file's bytes.
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "CorruptFileError",
    "FilesMissingError",
    "NETWORK_TIMEOUT_S",
    "locate",
    "manifest_sha256",
    "network_available",
    "probe_address",
    "read_zip",
    "sha256_file",
]

NETWORK_TIMEOUT_S = 5.0


class FilesMissingError(FileNotFoundError):
    """A dataset's files are neither in its folder nor downloadable (offline or not allowed)."""


class CorruptFileError(ValueError):
    """A dataset file is unreadable, truncated, or not the genuine content (names the file)."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def probe_address(default: tuple[str, int]) -> tuple[str, int]:
    """Where a download would connect first: the HTTPS proxy if one is configured, else
    ``default`` (host, port)."""
    proxy = urllib.request.getproxies().get("https")
    if proxy:
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            return parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    return default


def network_available(address: tuple[str, int], timeout: float = NETWORK_TIMEOUT_S) -> bool:
    """One TCP connect with a short timeout (a downloader would retry for minutes instead)."""
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


def locate(
    folder: Path,
    filenames: Mapping[str, str],
    *,
    download: bool,
    host: tuple[str, int],
    missing_message: Callable[[Sequence[str], str], str],
    error: type[FilesMissingError] = FilesMissingError,
) -> dict[str, Path | None]:
    """Path of each file in ``folder`` (``None``: to be downloaded); fails fast otherwise.

    Args:
      folder: where the files are expected (a manual dir).
      filenames: ``{key: file name}``.
      download: whether missing files may be downloaded.
      host: ``(host, port)`` a download would reach (probed once when files are missing).
      missing_message: ``(missing keys, reason) -> message`` naming the files and where to
        get them.
      error: the exception class raised (a :class:`FilesMissingError`).

    Raises:
      FilesMissingError: files are missing and ``download`` is false or the network is
        unreachable within :data:`NETWORK_TIMEOUT_S`.
    """
    found = {
        k: (folder / name if (folder / name).is_file() else None) for k, name in filenames.items()
    }
    missing = [k for k, p in found.items() if p is None]
    if missing:
        if not download:
            raise error(missing_message(missing, "download=False"))
        address = probe_address(host)
        if not network_available(address):
            raise error(
                missing_message(
                    missing,
                    f"offline: no connection to {address[0]} within {NETWORK_TIMEOUT_S:g} s",
                )
            )
    return found


def read_zip(
    path: str | os.PathLike,
    *,
    suffix: str,
    hint: str = "",
    error: type[CorruptFileError] = CorruptFileError,
) -> list[tuple[str, bytes]]:
    """Every member of a zip whose name ends with ``suffix``, read (CRC-checked), by path.

    Raises:
      CorruptFileError: the archive cannot be opened or a member cannot be read (a truncated
        download, an HTML page saved under the archive's name, ...); ``hint`` is appended.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(n for n in zf.namelist() if n.endswith(suffix))
            return [(n, zf.read(n)) for n in names]
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        msg = f"{path}: not a readable, complete zip archive ({type(e).__name__}: {e})."
        raise error(f"{msg} {hint}".rstrip()) from e


def manifest_sha256(files: Iterable[tuple[str, bytes]]) -> str:
    """Hex sha256 of the ``"<sha256 of the bytes>  <path>\\n"`` lines of ``files``, in the
    order given (sort them by path for an archive-independent fingerprint)."""
    manifest = "".join(f"{hashlib.sha256(b).hexdigest()}  {n}\n" for n, b in files)
    return hashlib.sha256(manifest.encode()).hexdigest()
