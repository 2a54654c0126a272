"""Acquiring dataset files safely: find them, probe the network once, verify archives.

Shared by every dataset that prepares itself from published files (Omniglot's zips today).
The failure modes peers suffer from (a download that retries for minutes offline, an HTML
quota page saved as the archive, a truncated file) are each turned into a fast error that
names the file and what to do:

* :func:`locate` looks for the files in a folder and, when some are missing, fails at once
  unless downloading is allowed *and* one TCP connect (:func:`network_available`, 5 s
  timeout) succeeds;
* :func:`read_zip` reads every member of a zip archive, so a truncated or corrupt archive
  fails there, naming it; :func:`read_tar` reads named members of a tar archive. Both
  check each member's declared size against what the genuine file holds *before* reading
  it (a 3 MB archive can declare a 3 GiB member), and read member by member;
* :func:`manifest_sha256` fingerprints the *content* of an archive (the sha256 of its
  path-sorted ``"<sha256>  <path>"`` lines), so a re-zipped but genuine copy is accepted
  while any change to a file is not; :func:`sha256_file` / :func:`file_digests` check a
  file's bytes;
* :func:`download` fetches one file with its checksum checked, after the same one-connect
  probe, and renames it into place only when it matches;
* :func:`check_not_html` and :func:`load_pickle` reject an HTML page saved under a data
  file's name (a failed Google-Drive download), an empty, truncated or foreign pickle, and
  never run code from a pickle;
* :func:`missing_files_message` is the one message listing every missing file, the folder
  and where to get them.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "CorruptFileError",
    "DownloadError",
    "FilesMissingError",
    "NETWORK_TIMEOUT_S",
    "check_not_html",
    "download",
    "file_digests",
    "load_pickle",
    "locate",
    "manifest_sha256",
    "missing_files_message",
    "network_available",
    "probe_address",
    "read_tar",
    "read_zip",
    "sha256_file",
]

NETWORK_TIMEOUT_S = 5.0


class FilesMissingError(FileNotFoundError):
    """A dataset's files are neither in its folder nor downloadable (offline or not allowed)."""


class CorruptFileError(ValueError):
    """A dataset file is unreadable, truncated, or not the genuine content (names the file)."""


class DownloadError(OSError):
    """A download could not be made (offline, refused, HTTP error, wrong checksum)."""


def file_digests(path: Path, algorithms: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """``{algorithm: hexdigest}`` of a file's bytes, read once."""
    hashes = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            for h in hashes.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashes.items()}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    return file_digests(Path(path))["sha256"]


def probe_address(default: tuple[str, int], *, scheme: str = "https") -> tuple[str, int]:
    """Where a download would connect first: the proxy configured for ``scheme`` (unless the
    host bypasses it), else ``default`` (host, port)."""
    proxy = urllib.request.getproxies().get(scheme)
    if proxy and not urllib.request.proxy_bypass(default[0]):
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


def _too_large(path: Path, name: str, size: int, limit: int, what: str) -> str:
    return (
        f"{path}: {what} {name!r} declares {size:,} bytes, more than the {limit:,} any genuine "
        "copy holds; not read (a damaged or hostile archive)"
    )


def read_zip(
    path: str | os.PathLike,
    *,
    suffix: str,
    hint: str = "",
    error: type[CorruptFileError] = CorruptFileError,
    max_member_bytes: int | None = None,
    max_total_bytes: int | None = None,
) -> list[tuple[str, bytes]]:
    """Every member of a zip whose name ends with ``suffix``, read (CRC-checked), by path.

    The sizes the archive declares are checked before anything is read (a member's read
    stops at its declared size, so they bound the memory used).

    Args:
      max_member_bytes: the largest member a genuine archive has (``None``: no limit).
      max_total_bytes: the most all read members may add up to.

    Raises:
      CorruptFileError: the archive cannot be opened, a member cannot be read (a truncated
        download, an HTML page saved under the archive's name, ...) or declares more bytes
        than allowed; ``hint`` is appended.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = sorted(
                (i for i in zf.infolist() if i.filename.endswith(suffix)),
                key=lambda i: i.filename,
            )
            total = 0
            for i in infos:
                total += i.file_size
                if max_member_bytes is not None and i.file_size > max_member_bytes:
                    msg = _too_large(path, i.filename, i.file_size, max_member_bytes, "member")
                    raise error(f"{msg}. {hint}".rstrip())
                if max_total_bytes is not None and total > max_total_bytes:
                    msg = _too_large(path, "*" + suffix, total, max_total_bytes, "members")
                    raise error(f"{msg}. {hint}".rstrip())
            return [(i.filename, zf.read(i)) for i in infos]
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        if isinstance(e, error):
            raise
        msg = f"{path}: not a readable, complete zip archive ({type(e).__name__}: {e})."
        raise error(f"{msg} {hint}".rstrip()) from e


def read_tar(
    path: str | os.PathLike,
    limits: Mapping[str, int],
    *,
    corrupt: Callable[[str], Exception],
) -> dict[str, bytes]:
    """The members named in ``limits`` of a tar archive (compressed or not), each checked
    against its limit (the most bytes a genuine member has) before it is read.

    The archive is read as a stream, member by member, and left as soon as every named
    member is in hand: a huge member declared after them is never reached, one of them is
    refused at its header.

    Raises:
      whatever ``corrupt(reason)`` returns: a member missing, not a regular file or too
      large, or the archive unreadable.
    """
    import tarfile

    path = Path(path)
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                if m.name not in limits or m.name in out:
                    continue
                if not m.isreg():
                    raise corrupt(f"{m.name} is not a file")
                if m.size > limits[m.name]:
                    raise corrupt(
                        f"{m.name} declares {m.size:,} bytes, more than the {limits[m.name]:,} "
                        "the genuine file has; not read"
                    )
                f = tar.extractfile(m)
                if f is None:
                    raise corrupt(f"{m.name} is not a file")
                out[m.name] = f.read()
                if len(out) == len(limits):
                    break
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        kind = ".tar.gz" if path.name.endswith((".tar.gz", ".tgz")) else "tar archive"
        raise corrupt(f"not a readable, complete {kind} ({type(err).__name__}: {err})") from None
    for name in limits:
        if name not in out:
            raise corrupt(f"no member {name}")
    return out


def manifest_sha256(files: Iterable[tuple[str, bytes]]) -> str:
    """Hex sha256 of the ``"<sha256 of the bytes>  <path>\\n"`` lines of ``files``, in the
    order given (sort them by path for an archive-independent fingerprint)."""
    manifest = "".join(f"{hashlib.sha256(b).hexdigest()}  {n}\n" for n, b in files)
    return hashlib.sha256(manifest.encode()).hexdigest()


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
      CorruptFileError: naming the file, what it should be and where to get it again.
    """
    if isinstance(data, bytes):
        head = data[:1024]
    else:
        name = name or str(data)
        try:
            with open(data, "rb") as f:
                head = f.read(1024)
        except OSError as err:
            raise CorruptFileError(f"{name}: cannot be read ({err})") from None
    if not head:
        raise CorruptFileError(
            f"{name} is empty (0 bytes), not {what}; get it again from {get_from}"
        )
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if start.startswith(_HTML_STARTS):
        raise CorruptFileError(
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
      CorruptFileError: an HTML page, an empty, truncated or foreign file (names it).
    """
    name = name or str(data if not isinstance(data, bytes) else "<bytes>")
    check_not_html(data, what=what, get_from=get_from, name=name)
    try:
        if isinstance(data, bytes):
            return _DataUnpickler(io.BytesIO(data), encoding="latin1").load()
        with open(data, "rb") as f:
            return _DataUnpickler(f, encoding="latin1").load()
    except MemoryError:
        # The allow-list holds (no code runs), but a pickle may still ask for a huge
        # bytearray or list: that is not a dataset file either.
        raise CorruptFileError(
            f"{name} asks for more memory than this machine has while loading, so it is not "
            f"{what}; get it again from {get_from}"
        ) from None
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
        raise CorruptFileError(
            f"{name} is truncated or not {what} ({type(err).__name__}: {err}); get it again "
            f"from {get_from}"
        ) from None


def download(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = NETWORK_TIMEOUT_S,
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
    parts = urllib.parse.urlsplit(url)
    host, port = probe_address(
        (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)),
        scheme=parts.scheme,
    )
    if not network_available((host, port), timeout):
        raise DownloadError(f"offline: no connection to {host}:{port} within {timeout:g} s")
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
