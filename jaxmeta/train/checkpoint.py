"""Orbax checkpoints of a training run: the latest few, and the best one.

Layout in the workdir::

    checkpoints/<step>/{state,meta}   the last ``keep`` checkpoints (resume from the newest)
    best/<step>/{state,meta}          the checkpoint with the best validation score

Orbax writes each checkpoint into a temporary directory and renames it when complete,
so a process killed mid-save leaves no half-written step behind (the temporary
directory is ignored and cleaned up the next time the manager opens). Saving is
synchronous: when :meth:`Checkpoints.save` returns, the step is on disk, which the
training loop relies on to keep its metrics log consistent with the checkpoints.

Integrity. Orbax checks the structure of what it reads but not the bytes of the array
data: a flipped bit in a data file restores as a silently different model. So ``meta``
records a sha256 of the saved state's arrays (:func:`state_checksum`), and every restore
recomputes it. Any failure to read a step (a file truncated or deleted, a torn JSON, a
checksum mismatch) is a :class:`CheckpointError` that names the step's directory and what
is wrong; :meth:`Checkpoints.restore_newest` skips such steps and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from jaxmeta.types import PyTree


class CheckpointError(ValueError):
    """A checkpoint step cannot be restored (damaged or incomplete); the message says which."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. disk full); the message says where and why."""


def _manager(directory: Path, keep: int, *, read_only: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocm.LatestN(n=keep),
        enable_async_checkpointing=False,
        # A reader must neither create folders nor delete a writer's temporary ones.
        cleanup_tmp_directories=not read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))


def _placed(target: PyTree) -> PyTree:
    """Give shapes without a sharding one (the first local device).

    Orbax otherwise restores into the sharding saved in the checkpoint, which fails when
    the checkpoint was written on another topology (e.g. a multi-device run, see
    jaxmeta.sharding) and is read on one device (``jaxmeta evaluate``).
    """
    import jax

    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def one(x):
        if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device)
        return x

    return jax.tree_util.tree_map(one, target)


def _host(x) -> np.ndarray:
    import jax

    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def state_checksum(state: PyTree) -> str:
    """``sha256:<hex>`` over every leaf's tree path, dtype, shape and bytes (host order)."""
    import jax

    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        a = np.ascontiguousarray(_host(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


def _reason(err: BaseException) -> str:
    """One line saying what went wrong, without tensorstore's multi-kilobyte specs."""
    while err.__cause__ is not None:  # orbax wraps tensorstore's error, which names the file
        err = err.__cause__
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    if isinstance(err, json.JSONDecodeError):
        return f"its meta JSON is torn or not JSON ({err})"
    if isinstance(err, KeyError) and "was not found in the checkpoint" in str(err):
        item = re.search(r'Item "(\w+)"', str(err))
        return f"its {item.group(1) if item else 'data'}/ folder is missing"
    msg = str(err).split("[tensorstore_spec", 1)[0].strip()
    os_error = re.search(r"\[os_error_code='(\d+)'\]", msg)
    if os_error:  # e.g. a full disk under tensorstore's layers: say that, plainly
        return os.strerror(int(os_error.group(1)))
    msg = re.sub(r'Error opening "\w+" driver: ', "", msg)  # tensorstore's layers
    first = msg.splitlines()[0] if msg else ""
    if len(first) > 300:
        first = first[:300] + "..."
    if re.match(r"[A-Z_]{4,}: ", first):  # a tensorstore status: "NOT_FOUND: ..."
        return first
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


class _DropErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


_ORPHAN_NOISE = ("Event loop is closed", "sys.meta_path is None")
_hook_installed = False


def _silence_orphaned_callbacks() -> None:
    """After a failed orbax read or write, tensorstore operations still in flight complete
    on orbax's closed event loop and print one 'Event loop is closed' traceback each (and
    more at interpreter shutdown). They carry nothing beyond the error already raised;
    drop them, and only them (installed once, process-wide, on first use of orbax)."""
    global _hook_installed
    if _hook_installed:
        return
    previous = sys.unraisablehook

    def from_orbax(unraisable) -> bool:
        if any(s in str(unraisable.exc_value) for s in _ORPHAN_NOISE):
            return True
        tb = unraisable.exc_traceback
        while tb is not None:
            if "orbax" in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        return False

    def hook(unraisable):
        if not from_orbax(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    _hook_installed = True


def _end_abandoned_tasks() -> None:
    """End the tasks a failed orbax call left behind on its closed event loops.

    Orbax runs each operation on an event loop of its own and closes that loop as soon as
    the first error arrives; sibling tasks still pending there (tensorstore writes, and
    the writes a sibling was about to start) can never run again. They stay referenced by
    the error's traceback until a later garbage collection, often at interpreter exit,
    which then reports each one after our error line ("coroutine ... was never awaited" for
    a task that had not started, "Task was destroyed but it is pending!"). Closing their
    coroutines now ends them for good: they are freed silently, whenever that happens.
    """
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.Task) and not obj.done() and obj.get_loop().is_closed():
            obj._log_destroy_pending = False
            with contextlib.suppress(Exception):  # "coroutine ignored GeneratorExit"
                obj.get_coro().close()


@contextlib.contextmanager
def _orbax_quiet():
    """Orbax's worker threads log every failure at ERROR level, with a traceback and a
    tensorstore spec, before the same error reaches us; we report it once instead."""
    _silence_orphaned_callbacks()
    drop = _DropErrors()
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    for lg in loggers:
        lg.addFilter(drop)
    try:
        yield
    except Exception:
        _end_abandoned_tasks()
        gc.collect()  # "Task exception was never retrieved" is logged when tasks are freed
        raise
    finally:
        for lg in loggers:
            lg.removeFilter(drop)


class Checkpoints:
    """The latest-``keep`` and the best checkpoint of one workdir.

    Args:
      workdir: the run's directory.
      keep: how many of the latest checkpoints to keep.
      read_only: only read (``jaxmeta evaluate``): create no folder, clean up nothing.
    """

    def __init__(self, workdir: str | Path, *, keep: int = 3, read_only: bool = False):
        workdir = Path(workdir).absolute()
        self.latest_dir = workdir / "checkpoints"
        self.best_dir = workdir / "best"
        self.read_only = read_only
        if not read_only:
            for folder in (self.latest_dir, self.best_dir):
                if folder.is_symlink():  # a received workdir's link to somewhere else
                    raise CheckpointWriteError(
                        f"{folder} is a symbolic link; jaxmeta writes no checkpoint through a "
                        "link: remove the link (or copy the run into a real folder) and run "
                        "the same command again"
                    )
        self._latest = _manager(self.latest_dir, keep, read_only=read_only)
        self._best = _manager(self.best_dir, 1, read_only=read_only)
        self._damaged: set[tuple[bool, int]] = set()

    def _mngr(self, best: bool) -> ocp.CheckpointManager:
        return self._best if best else self._latest

    def step_dir(self, step: int, *, best: bool = False) -> Path:
        return (self.best_dir if best else self.latest_dir) / str(step)

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def best_step(self) -> int | None:
        return self._best.latest_step()

    def save(self, step: int, state: PyTree, *, meta: dict[str, Any], best: bool = False) -> None:
        """Save ``state`` at ``step`` in ``checkpoints/`` (or ``best/`` when ``best``).

        ``meta`` is JSON (step, best score so far, validation metrics...); the state's
        checksum is added to it. Saving a step that already exists is a no-op (a resumed
        run re-reaching a saved step), unless that step was found damaged: it is replaced.

        Raises:
          CheckpointWriteError: the write failed (disk full, permissions...).
        """
        mngr = self._mngr(best)
        if step in mngr.all_steps():
            if (best, step) not in self._damaged:
                return
            mngr.delete(step)
            self._damaged.discard((best, step))
        meta = {**meta, "checksum": state_checksum(state)}
        try:
            with _orbax_quiet():
                mngr.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                    ),
                    force=True,
                )
                mngr.wait_until_finished()
        except Exception as err:
            reason = _reason(err)
            space = any(w in reason.lower() for w in ("no space", "quota"))
            raise CheckpointWriteError(
                f"cannot write checkpoint {self.step_dir(step, best=best)}: {reason}; "
                "the checkpoints before it are intact: fix the cause"
                + (" (free disk space)" if space else "")
                + " and run the same command again"
            ) from None

    def restore(
        self, target: PyTree, *, step: int | None = None, best: bool = False
    ) -> tuple[PyTree, dict[str, Any]]:
        """Restore ``(state, meta)`` and verify the state's checksum.

        Args:
          target: a state (or ``ShapeDtypeStruct`` tree) of the same structure.
          step: which step (default: the newest).
          best: read from ``best/`` instead of ``checkpoints/``.

        Raises:
          FileNotFoundError: no checkpoint there.
          CheckpointError: the step is damaged (the message names it and the fault).
        """
        mngr = self._mngr(best)
        step = mngr.latest_step() if step is None else step
        if step is None:
            where = self.best_dir if best else self.latest_dir
            raise FileNotFoundError(f"no checkpoint in {where}")
        where = self.step_dir(step, best=best)
        try:
            if not (where / "state" / "_METADATA").is_file() and (where / "state").is_dir():
                raise CheckpointError(f"checkpoint {where} is damaged: state/_METADATA is missing")
            with _orbax_quiet():
                out = mngr.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(_placed(target)),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
            state, meta = out.state, dict(out.meta)
            saved = meta.get("checksum")
            if saved is not None and saved != state_checksum(state):
                raise CheckpointError(
                    f"checkpoint {where} is damaged: its data does not match the sha256 "
                    "recorded when it was saved"
                )
        except CheckpointError:
            self._damaged.add((best, step))
            raise
        except Exception as err:
            self._damaged.add((best, step))
            raise CheckpointError(f"checkpoint {where} is damaged: {_reason(err)}") from None
        return state, meta

    def restore_newest(
        self, target: PyTree, *, best: bool = False
    ) -> tuple[PyTree, dict[str, Any], list[str]]:
        """The newest step that restores and verifies: ``(state, meta, skipped)``.

        ``skipped`` says, one line per step, which newer steps were damaged and why.

        Raises:
          FileNotFoundError: no checkpoint there.
          CheckpointError: every step is damaged (the message lists them).
        """
        steps = sorted(self._mngr(best).all_steps(), reverse=True)
        if not steps:
            where = self.best_dir if best else self.latest_dir
            raise FileNotFoundError(f"no checkpoint in {where}")
        skipped: list[str] = []
        for step in steps:
            try:
                state, meta = self.restore(target, step=step, best=best)
            except CheckpointError as err:
                skipped.append(str(err))
                continue
            return state, meta, skipped
        raise CheckpointError(
            "no intact checkpoint: " + "; ".join(skipped) + ". Move the workdir away to start over"
        )

    def saved_meta(self, *, best: bool = False) -> dict[str, Any] | None:
        """The JSON meta of the newest step whose meta reads (``None`` if there is none)."""
        mngr = self._mngr(best)
        for step in sorted(mngr.all_steps(), reverse=True):
            try:
                with _orbax_quiet():
                    out = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                return dict(out.meta)
            except Exception:
                continue
        return None

    def delete_best(self, step: int) -> None:
        """Remove a step from ``best/``."""
        self._best.delete(step)

    def close(self) -> None:
        self._latest.close()
        self._best.close()


def resolve_checkpoint(ckpt: Checkpoints, checkpoint: str | int) -> tuple[str, int]:
    """``("best" | "latest", step)`` to restore for a ``checkpoint`` request.

    ``"best"`` falls back to ``"latest"`` when the run has no best checkpoint (no validation
    split); an int picks that step from ``best/`` or ``checkpoints/``.

    Raises:
      FileNotFoundError: no checkpoint at all, or not the requested step (the message lists
        the steps there are).
    """
    latest_dir = Path(ckpt.latest_dir)
    workdir = latest_dir.parent
    if isinstance(checkpoint, str) and checkpoint.isdigit():
        checkpoint = int(checkpoint)
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, str | int):
        raise ValueError(f"checkpoint must be 'best', 'latest' or a step, got {checkpoint!r}")
    if isinstance(checkpoint, str) and checkpoint not in ("best", "latest"):
        raise ValueError(f"checkpoint must be 'best', 'latest' or a step, got {checkpoint!r}")
    if checkpoint == "best" and ckpt.best_step() is not None:
        return "best", int(ckpt.best_step())
    if checkpoint in ("best", "latest"):
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {workdir} (nothing trained yet?)")
        return "latest", int(ckpt.latest_step())
    steps = {}
    for which, folder in (("latest", latest_dir), ("best", Path(ckpt.best_dir))):
        if folder.is_dir():  # finished checkpoints are folders named by their step
            steps.update({int(p.name): which for p in folder.iterdir() if p.name.isdigit()})
    if checkpoint not in steps:
        have = ", ".join(str(s) for s in sorted(steps)) or "none"
        raise FileNotFoundError(
            f"no checkpoint of step {checkpoint} in {workdir} (steps there: {have})"
        )
    return steps[checkpoint], checkpoint
