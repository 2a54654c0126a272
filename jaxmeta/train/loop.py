"""``train_and_evaluate(config, workdir)``: the whole training run, resumable.

One run in a workdir::

    config.yaml           the resolved config (kept on resume unless train.steps etc. changed)
    environment.json      package versions, Python, devices; a resume appends to "resumes"
    metrics.jsonl         train rows every log_every steps, val rows every eval_every
    checkpoints/, best/   orbax checkpoints (see jaxmeta.train.checkpoint)
    eval_test.json        test result (from the best checkpoint, else the final one)
    learning_curves.png   when matplotlib is installed

The run is a sequence of named steps (:class:`jaxmeta.train.session.Training`, or
:class:`jaxmeta.train.population_loop.PopulationTraining` for a population): resume, compile,
then chunks of fused meta-steps, each followed by its log row, validation and checkpoint when
due, and at the end the plot and the test.

Exact resume. The key of step ``s`` is ``fold_in(base_key, s)`` and the base key is
part of the checkpointed state, so the updates of a resumed run are the same XLA
computations on the same inputs as those of an uninterrupted run, whatever the chunk
boundaries (``train.steps_per_call``) or the moment of the kill: the final parameters
are bit-identical. Checkpoints are written synchronously after the metrics rows up to
that step are flushed; on resume the metrics log is cut back to the checkpoint step,
so it ends up with each step exactly once. Validation is deterministic (fixed
episodes, fixed key), so best-checkpoint decisions replay identically too.

Reliability: one process per workdir (a lock), damaged checkpoints skipped for the newest
intact one, SIGINT/SIGTERM stop between steps (never inside a save), a non-finite metric
stops the run without saving it, a loss far above chance is warned about, disk-full and
other OS errors are one-line errors, every file outside orbax is written atomically.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from jaxmeta import sharding
from jaxmeta.train.build import build_experiment, check_buildable
from jaxmeta.train.checkpoint import Checkpoints
from jaxmeta.train.config import ExperimentConfig
from jaxmeta.train.interrupt import Interrupted, InterruptGuard
from jaxmeta.train.population import check_sizes, is_population
from jaxmeta.train.population_loop import PopulationTraining
from jaxmeta.train.session import Training, TrainingDiverged
from jaxmeta.train.workdir import WorkdirLock, ensure_workdir, remove_empty_skeleton

# Training and TrainingDiverged live in jaxmeta.train.session (re-exported: their former home).
__all__ = ["Training", "TrainingDiverged", "TrainingInterrupted", "train_and_evaluate"]


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run between steps (``exit_code``: 130 or 143)."""

    def __init__(self, message: str, exit_code: int):
        self.exit_code = exit_code
        super().__init__(message)


def train_and_evaluate(
    cfg: ExperimentConfig,
    workdir: str | Path,
    *,
    progress: bool = True,
    log=None,
) -> dict[str, Any]:
    """Train (or resume) the experiment ``cfg`` in ``workdir``, then test it.

    Args:
      cfg: the validated experiment config (:func:`jaxmeta.train.load_config`).
      workdir: output directory; an existing checkpoint there is resumed.
      progress: show a tqdm progress bar (steps/s, loss, accuracy, ETA).
      log: ``str -> None`` for status lines (default: print to stderr).

    Returns:
      Summary dict: ``start_step``, ``steps``, ``best_step``, ``best_val``, ``test``
      (the eval_test.json content, absent when the data has no test split).

    Raises:
      TrainingDiverged: a non-finite training metric (the last good checkpoint stays).
      TrainingInterrupted: SIGINT or SIGTERM (the run stops between steps; a checkpoint
        being written is completed first).
      ConfigError: the model cannot be built (checked before anything is written).
      WorkdirError: the workdir is a file, not writable, or in use by another process.
      CheckpointError: every checkpoint in the workdir is damaged.
      CheckpointWriteError: a checkpoint could not be written (e.g. disk full).
      ValueError: the workdir holds a run of an incompatible config.
    """
    exp = build_experiment(cfg)
    check_buildable(cfg, exp)  # before anything is written
    check_sizes(cfg, exp.source)  # absurd sizes: before anything is sampled or compiled
    created = not Path(workdir).exists()
    workdir = ensure_workdir(workdir)
    try:
        return _train_in(cfg, exp, workdir, progress=progress, log=log)
    except BaseException:
        if created and sharding.is_primary():  # e.g. the data step failed: no skeleton left
            remove_empty_skeleton(workdir)
        raise


def _train_in(cfg: ExperimentConfig, exp, workdir: Path, *, progress: bool, log) -> dict[str, Any]:
    where: dict[str, int | None] = {"step": None, "checkpoint": None}
    try:  # around the cleanup too: a signal while closing is still one clean message
        with contextlib.ExitStack() as stack:
            guard = stack.enter_context(InterruptGuard())
            # Only process 0 writes logs, configs and results, and holds the lock.
            lock = stack.enter_context(WorkdirLock(workdir)) if sharding.is_primary() else None
            ckpt = Checkpoints(workdir, keep=cfg.train.keep_checkpoints)

            def close() -> None:
                with guard.critical():  # orbax's threads must not be cut short either
                    ckpt.close()

            stack.callback(close)
            # train.seeds / sweep: the runs vmapped in one program
            session = PopulationTraining if is_population(cfg) else Training
            training = session(cfg, exp, workdir, ckpt, guard, where, progress=progress, log=log)
            if lock is not None and lock.warning:
                training.say(f"warning: {lock.warning}")
            return training.run()
    except Interrupted as err:
        raise TrainingInterrupted(_interrupted_message(where), err.exit_code) from None


def _interrupted_message(where: dict[str, int | None]) -> str:
    step, last = where["step"], where["checkpoint"]
    if step is None:
        return "interrupted before training started; resume with the same command"
    msg = f"interrupted at step {step}; resume with the same command"
    if last != step:
        msg += (
            f" (it continues from the checkpoint of step {last})"
            if last is not None
            else " (no checkpoint was written yet: it starts over)"
        )
    return msg
