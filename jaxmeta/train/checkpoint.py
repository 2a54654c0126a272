"""Orbax checkpoints of a training run: the latest few, and the best one.

Layout in the workdir::

    checkpoints/<step>/{state,meta}   the last ``keep`` checkpoints (resume from the newest)
    best/<step>/{state,meta}          the checkpoint with the best validation score

Orbax writes each checkpoint into a temporary directory and renames it when complete,
so a process killed mid-save leaves no half-written step behind (the temporary
directory is ignored and cleaned up the next time the manager opens). Saving is
synchronous: when :meth:`Checkpoints.save` returns, the step is on disk, which the
training loop relies on to keep its metrics log consistent with the checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from jaxmeta.types import PyTree


def _manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocm.LatestN(n=keep),
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,
        create=True,
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


class Checkpoints:
    """The latest-``keep`` and the best checkpoint of one workdir.

    Args:
      workdir: the run's directory.
      keep: how many of the latest checkpoints to keep.
    """

    def __init__(self, workdir: str | Path, *, keep: int = 3):
        workdir = Path(workdir).absolute()
        self.latest_dir = workdir / "checkpoints"
        self.best_dir = workdir / "best"
        self._latest = _manager(self.latest_dir, keep)
        self._best = _manager(self.best_dir, 1)

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def best_step(self) -> int | None:
        return self._best.latest_step()

    def save(self, step: int, state: PyTree, *, meta: dict[str, Any], best: bool = False) -> None:
        """Save ``state`` at ``step`` in ``checkpoints/`` (or ``best/`` when ``best``).

        ``meta`` is JSON (step, best score so far, validation metrics...). Saving a step
        that already exists is a no-op (a resumed run re-reaching a saved step).
        """
        mngr = self._best if best else self._latest
        if step in mngr.all_steps():
            return
        mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        mngr.wait_until_finished()

    def restore(
        self, target: PyTree, *, step: int | None = None, best: bool = False
    ) -> tuple[PyTree, dict[str, Any]]:
        """Restore ``(state, meta)``; ``target`` gives the structure/shapes/dtypes.

        Args:
          target: a state (or ``ShapeDtypeStruct`` tree) of the same structure.
          step: which step (default: the newest).
          best: read from ``best/`` instead of ``checkpoints/``.

        Raises:
          FileNotFoundError: no checkpoint there.
        """
        mngr = self._best if best else self._latest
        step = mngr.latest_step() if step is None else step
        if step is None:
            where = self.best_dir if best else self.latest_dir
            raise FileNotFoundError(f"no checkpoint in {where}")
        out = mngr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_placed(target)), meta=ocp.args.JsonRestore()
            ),
        )
        return out.state, dict(out.meta)

    def delete_best(self, step: int) -> None:
        """Remove a step from ``best/``."""
        self._best.delete(step)

    def close(self) -> None:
        self._latest.close()
        self._best.close()
