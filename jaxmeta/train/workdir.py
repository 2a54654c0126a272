"""The workdir of a run: created with one-line errors, locked, written atomically.

Two ``jaxmeta train`` processes writing one workdir corrupt each other's checkpoints and
metrics log, so training holds an exclusive ``fcntl.flock`` on ``<workdir>/.lock`` for its
whole life. The kernel releases the lock when the process ends in any way (``kill -9``
included), so a lock is never stale; the file itself stays and holds the PID of the last
holder, which the refusal names. Readers (``jaxmeta evaluate``) take no lock; every file
a run writes outside orbax is replaced atomically (:func:`atomic_write_text`), so a reader
never sees half a file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

LOCK_FILE = ".lock"


class WorkdirError(ValueError):
    """The workdir cannot be used (its message is one line naming the path and the fix)."""


class WorkdirInUse(WorkdirError):
    """Another process holds the workdir's lock."""


def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (or ``path``) that is not a directory."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def ensure_workdir(path: str | Path) -> Path:
    """Create ``path`` (and its parents) if needed; the absolute path.

    Raises:
      WorkdirError: the path is a file, lies under a file, or cannot be created.
    """
    path = Path(path).absolute()
    blocker = _file_above(path)
    if blocker == path:
        raise WorkdirError(f"workdir {path} is a file, not a directory; choose another --workdir")
    if blocker is not None:
        raise WorkdirError(
            f"workdir {path} lies under {blocker}, which is a file; choose another --workdir"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WorkdirError(
            f"cannot create workdir {path}: {err.strerror or err}; choose another --workdir"
        ) from None
    return path


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def describe_os_error(err: OSError) -> str:
    """``PATH: reason; what to do`` for an ``OSError``, on one line."""
    where = err.filename if err.filename is not None else ""
    reason = err.strerror or str(err)
    out = f"{where}: {reason}" if where else reason
    if err.errno in _NO_SPACE:
        out += "; free some disk space and run the same command again"
    elif err.errno in _NOT_WRITABLE:
        out += "; fix the permissions or choose another folder"
    return out


class WorkdirLock:
    """An exclusive lock on a workdir, held from :meth:`acquire` to :meth:`release`.

    Args:
      workdir: an existing directory.

    Attributes:
      warning: set when the file system does not support locks (the run goes on unlocked).
    """

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_FILE
        self.warning: str | None = None
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        """Take the lock at once or raise.

        Raises:
          WorkdirInUse: another process holds it ("workdir DIR is in use by process PID").
          WorkdirError: the workdir is not writable.
        """
        import fcntl

        try:
            # O_NOFOLLOW: a received workdir's .lock may be a link to another file, which
            # the PID would overwrite.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise WorkdirError(
                    f"workdir {self.workdir}: {LOCK_FILE} is a symbolic link; jaxmeta writes "
                    "nothing through a link: delete it and run the same command again"
                ) from None
            raise WorkdirError(
                f"workdir {self.workdir} is not writable ({err.strerror or err}); "
                "fix its permissions or choose another --workdir"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                # e.g. a network file system without locks: go on, but say so.
                self.warning = (
                    f"cannot lock workdir {self.workdir} ({err.strerror or err}); make sure no "
                    "other process trains in it"
                )
                self._fd = fd
                return self
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise WorkdirInUse(
                f"workdir {self.workdir} is in use by {who}; wait for it to finish, or use "
                "another --workdir"
            ) from None
        st = os.fstat(fd)
        if st.st_nlink > 1 or not stat.S_ISREG(st.st_mode):
            os.close(fd)  # a hard link is another file's content too: never truncate it
            raise WorkdirError(
                f"workdir {self.workdir}: {LOCK_FILE} is not a file of its own (a hard link or "
                "a special file); delete it and run the same command again"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    return atomic_write(path, text.encode("utf-8"))


def atomic_write(path: str | Path, data: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write ``data`` (bytes, or a function that writes to a binary file) to ``path``
    through a fresh temporary file in the same directory, renamed over ``path``.

    Readers see the old content or the new one, never a mix; two writers never share a
    temporary file; nothing is written through a link (``mkstemp`` creates a new file
    with ``O_EXCL``, and the rename replaces a link at ``path`` rather than its target).
    The temporary file is removed when the write fails (e.g. disk full).
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:
            # Name the file the caller asked for, not our temporary one.
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    return path


def remove_empty_skeleton(path: str | Path) -> bool:
    """Delete ``path`` when it holds nothing but the skeleton a run creates before its first
    record (empty folders such as ``checkpoints/`` and ``best/``, the ``.lock`` file): what
    a run that failed before training (e.g. a wrong ``data.manual_dir``) leaves behind.

    Returns:
      Whether it was deleted. A workdir with any other file is left alone.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    for p in path.rglob("*"):
        if p.is_symlink() or (p.is_file() and not (p.name == LOCK_FILE and p.parent == path)):
            return False
        if not (p.is_dir() or p.is_file()):
            return False
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


# --------------------------------------------------------------------------- result files
# ``jaxmeta evaluate``: one file per evaluation setting, never silently replaced.


def eval_result_name(
    *,
    split: str,
    checkpoint: str,
    episodes: int,
    inner_steps: int | None = None,
    bn_mode: str | None = None,
    run: int | None = None,
) -> str:
    """``eval_<split>_<checkpoint>_<episodes>ep[_<inner>steps][_<bn_mode>][_run<i>].json``.

    ``inner_steps`` appears only when the evaluation overrode the algorithm's own,
    ``bn_mode`` only when a single BatchNorm mode was asked for (the default reports both).
    """
    name = f"eval_{split}_{checkpoint}_{episodes}ep"
    if inner_steps is not None:
        name += f"_{inner_steps}steps"
    if bn_mode is not None:
        name += f"_{bn_mode}"
    if run is not None:  # one member of a population
        name += f"_run{run}"
    return name + ".json"


def write_new_json(path: str | Path, data: dict[str, Any]) -> tuple[Path, str]:
    """Write ``data`` to ``path`` without ever replacing a different result.

    Returns:
      ``(path written or found, status)``: ``"new"``; ``"unchanged"`` when ``path`` already
      holds exactly ``data`` (nothing is written); ``"kept"`` when ``path`` holds another
      result, which stays, and ``data`` went to ``<stem>-2.json`` (``-3``, ...).
    """
    path = Path(path)
    text = json.dumps(data, indent=2) + "\n"
    status = "new"
    candidate, n = path, 1
    while candidate.exists():
        try:
            same = json.loads(candidate.read_text()) == json.loads(text)
        except (OSError, json.JSONDecodeError):
            same = False
        if same:
            return candidate, "unchanged"
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        status = "kept"
    atomic_write_text(candidate, text)
    return candidate, status
