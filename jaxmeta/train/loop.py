"""``train_and_evaluate(config, workdir)``: the whole training run, resumable.

One run in a workdir::

    config.yaml           the resolved config (kept on resume unless train.steps etc. changed)
    environment.json      package versions, Python, devices; a resume appends to "resumes"
    metrics.jsonl         train rows every log_every steps, val rows every eval_every
    checkpoints/, best/   orbax checkpoints (see jaxmeta.train.checkpoint)
    eval_test.json        test result (from the best checkpoint, else the final one)
    learning_curves.png   when matplotlib is installed

Exact resume. The key of step ``s`` is ``fold_in(base_key, s)`` and the base key is
part of the checkpointed state, so the updates of a resumed run are the same XLA
computations on the same inputs as those of an uninterrupted run, whatever the chunk
boundaries (``train.steps_per_call``) or the moment of the kill: the final parameters
are bit-identical. Checkpoints are written synchronously after the metrics rows up to
that step are flushed; on resume the metrics log is cut back to the checkpoint step,
so it ends up with each step exactly once. Validation is deterministic (fixed
episodes, fixed key), so best-checkpoint decisions replay identically too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmeta import sharding, yaml_io
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.data.registry import TaskSource, get_task_source
from jaxmeta.models import get_model
from jaxmeta.train.checkpoint import CheckpointError, Checkpoints
from jaxmeta.train.config import (
    ConfigError,
    ExperimentConfig,
    build_learner,
    build_optimizer,
    migrate,
    model_kwargs,
)
from jaxmeta.train.evaluate import make_evaluator, summarize
from jaxmeta.train.interrupt import Interrupted, InterruptGuard
from jaxmeta.train.metrics import (
    METRICS_FILE,
    DivergenceMonitor,
    MetricsWriter,
    logged_wall_time,
    plot_learning_curves,
    record_run_start,
    truncate_metrics,
)
from jaxmeta.train.state import TrainState, init_train_state, make_train_chunk
from jaxmeta.train.workdir import WorkdirLock, atomic_write_text, ensure_workdir

PACKAGES = (
    "jaxmeta",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "tensorflow-datasets",
    "array-record",
    "pyyaml",
    "tqdm",
    "matplotlib",
    "tensorboardX",
)
# Config keys that may change between a run and its resumption.
RESUMABLE_CHANGES = {
    "name",
    "data.data_dir",
    "data.manual_dir",
    "data.download",
    "train.steps",
    "train.steps_per_call",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.tensorboard",
    "train.plot",
    # Same computation, other task mapping (float rounding aside), like mesh.devices.
    "execution.task_chunk",
    # The default (constraint) sampler draws the same episodes on any device count.
    "mesh.devices",
    "mesh.shard_params",
    "distributed.coordinator_address",
    "distributed.num_processes",
    "distributed.process_id",
    "distributed.auto",
}


class TrainingDiverged(RuntimeError):
    """A non-finite training metric; the run stopped without saving the bad state."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run between steps (``exit_code``: 130 or 143)."""

    def __init__(self, message: str, exit_code: int):
        self.exit_code = exit_code
        super().__init__(message)


class Experiment(NamedTuple):
    """Everything built from a config (no compilation has happened yet)."""

    source: TaskSource
    model: Any
    learner: MetaLearner
    optimizer: optax.GradientTransformation


def build_experiment(cfg: ExperimentConfig) -> Experiment:
    """Task source, model, algorithm and optimizer described by ``cfg``."""
    source = get_task_source(cfg.data.name)(**_source_kwargs(cfg))
    model = get_model(cfg.model.name)(**model_kwargs(cfg))
    learner = build_learner(cfg, apply_fn=model.apply)
    return Experiment(source, model, learner, build_optimizer(cfg))


def _source_kwargs(cfg: ExperimentConfig) -> dict[str, Any]:
    d = cfg.data
    if d.name == "sinusoid":
        return {"shots": d.shots, "queries": d.queries}
    kwargs = dataclasses.asdict(d)
    kwargs.pop("name")
    return kwargs


def eval_shape(cfg: ExperimentConfig) -> dict[str, Any]:
    """``queries``/``ways``/``shots`` keyword arguments of ``source.eval_episodes``."""
    out: dict[str, Any] = {"queries": cfg.eval.queries, "shots": cfg.eval.shots}
    if cfg.classification:
        out["ways"] = cfg.eval.ways
    return out


def initial_state(cfg: ExperimentConfig, exp: Experiment) -> TrainState:
    """Step-0 state: ``model.init`` on a zero support set with the seed's init key."""
    init_key, run_key = jax.random.split(jax.random.key(cfg.train.seed))
    # jit: eager Flax init dispatches op by op (seconds for a Conv-4 on a busy CPU).
    params = jax.jit(exp.model.init)(init_key, jnp.asarray(exp.source.example_input()))
    return init_train_state(exp.learner, exp.optimizer, params, key=run_key)


def environment() -> dict[str, Any]:
    """Package versions, Python, platform and devices (written to environment.json)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "packages": versions,
        "python": sys.version,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "command": sys.argv,
    }


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def _saved_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config a run records (launch details such as the process id are per process)."""
    return dataclasses.replace(cfg, distributed=type(cfg.distributed)())


def _check_resumable(workdir: Path, cfg: ExperimentConfig, meta: dict[str, Any] | None) -> None:
    """``cfg`` may resume the run whose newest checkpoint has ``meta``.

    The config saved inside the checkpoint is the reference (it cannot be lost or edited
    apart from the state); checkpoints written before it was recorded fall back to the
    workdir's config.yaml.
    """
    import yaml

    raw = (meta or {}).get("config")
    if raw is None:
        saved_path = workdir / "config.yaml"
        if not saved_path.exists():
            return
        try:
            raw = yaml_io.load(yaml_io.read_text(saved_path)) or {}
        except (ValueError, yaml.YAMLError) as err:
            raise ValueError(
                f"{saved_path}: cannot read the run's config ({err}); restore it or use a new "
                "--workdir"
            ) from None
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    migrate(raw)  # keys that moved since the run was saved
    saved = _flatten(raw)
    new = _flatten(_saved_config(cfg).to_dict())
    changed = sorted(
        k
        for k in set(saved) | set(new)
        if saved.get(k) != new.get(k) and k not in RESUMABLE_CHANGES
    )
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(
            f"{workdir} holds a checkpointed run with a different config ({details}); "
            "resume with the same config or use a new --workdir"
        )
    from jaxmeta.train.schedules import steps_from_train

    tied = steps_from_train(cfg.optimizer.kwargs.get("schedule"))
    old_steps, new_steps = saved.get("train.steps"), new.get("train.steps")
    if tied and old_steps != new_steps:
        raise ValueError(
            f"{workdir}: train.steps changed ({old_steps} -> {new_steps}) but the learning-rate "
            f"schedule's {', '.join(tied)} follows train.steps, so the rates already used would "
            f"change; set optimizer.schedule.{tied[0]} explicitly (e.g. {old_steps}) to extend "
            "or shorten this run, or use a new --workdir"
        )


def task_mesh(cfg: ExperimentConfig):
    """The mesh that splits the meta-batch, or ``None`` for the plain one-device step.

    ``mesh.devices``: ``null`` is 1 device (all devices in a multi-process run), ``0`` all
    devices, ``N`` the first N. Raises ValueError when the meta-batch does not divide.
    """
    n = cfg.mesh.devices
    if n is None:
        n = len(jax.devices()) if jax.process_count() > 1 else 1
    elif n == 0:
        n = len(jax.devices())
    if n == 1 and jax.process_count() == 1:
        return None
    mesh = sharding.make_task_mesh(n)
    sharding.check_divisible(cfg.train.meta_batch_size, mesh)
    return mesh


class _NoMetrics:
    """The metrics writer of processes other than 0 (only process 0 writes files)."""

    def write(self, row) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _next_boundary(step: int, every: int) -> int:
    return (step // every + 1) * every


def _is_better(score: float, best: float | None, *, higher: bool) -> bool:
    if best is None:
        return True
    return score > best if higher else score < best


def train_and_evaluate(
    cfg: ExperimentConfig,
    workdir: str | Path,
    *,
    progress: bool = True,
    log=None,
) -> dict[str, Any]:
    """Train (or resume) the experiment ``cfg`` in ``workdir``, then test it.

    Args:
      cfg: the validated experiment config.
      workdir: output directory; an existing checkpoint there is resumed.
      progress: show a tqdm progress bar (steps/s, loss, accuracy, ETA).
      log: ``str -> None`` for status lines (default: print to stderr).

    Returns:
      Summary dict: ``start_step``, ``steps``, ``best_step``, ``best_val``, ``test``
      (the eval_test.json content, or ``None`` when the data has no test split).

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
    exp = check_buildable(cfg)  # before anything is written
    workdir = ensure_workdir(workdir)
    primary = sharding.is_primary()  # only process 0 writes logs, configs and results
    where: dict[str, int | None] = {"step": None, "checkpoint": None}
    try:  # around the cleanup too: a signal while closing is still one clean message
        with contextlib.ExitStack() as stack:
            guard = stack.enter_context(InterruptGuard())
            lock = stack.enter_context(WorkdirLock(workdir)) if primary else None
            ckpt = Checkpoints(workdir, keep=cfg.train.keep_checkpoints)

            def close() -> None:
                with guard.critical():  # orbax's threads must not be cut short either
                    ckpt.close()

            stack.callback(close)
            return _train(
                cfg, exp, workdir, ckpt, guard, where, progress=progress, log=log, lock=lock
            )
    except Interrupted as err:
        step, last = where["step"], where["checkpoint"]
        if step is None:
            msg = "interrupted before training started; resume with the same command"
        else:
            msg = f"interrupted at step {step}; resume with the same command"
            if last != step:
                msg += (
                    f" (it continues from the checkpoint of step {last})"
                    if last is not None
                    else " (no checkpoint was written yet: it starts over)"
                )
        raise TrainingInterrupted(msg, err.exit_code) from None


def check_buildable(cfg: ExperimentConfig) -> Experiment:
    """Build the experiment and its initial state abstractly (``jax.eval_shape``).

    Catches model options that pass the config's type checks but cannot make a model
    (e.g. a filter count the layers cannot use) before a workdir is touched.

    Raises:
      ConfigError: naming the model section and the error.
    """
    exp = build_experiment(cfg)
    try:
        jax.eval_shape(lambda: initial_state(cfg, exp))
    except Exception as err:
        opts = ", ".join(f"{k}={v!r}" for k, v in cfg.model.options)
        raise ConfigError(
            "config",
            "model",
            f"{cfg.model.name}({opts}) cannot be built for this data: {type(err).__name__}: {err}",
        ) from None
    return exp


def _train(
    cfg: ExperimentConfig,
    exp: Experiment,
    workdir: Path,
    ckpt: Checkpoints,
    guard: InterruptGuard,
    where: dict[str, int | None],
    *,
    progress: bool,
    log,
    lock: WorkdirLock | None,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    t, ev = cfg.train, cfg.eval
    bar = None

    def say(msg: str) -> None:
        if jax.process_index() != 0:  # one voice in a multi-process run
            return
        if log is not None:
            log(msg)
        elif bar is not None:
            bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    mesh = task_mesh(cfg)
    if mesh is not None and cfg.execution.task_chunk not in (None, "auto"):
        # lax.map's loop over task chunks is not split across devices by XLA: exact, but
        # every device then runs the whole meta-batch (see docs/scaling.md).
        say(
            "warning: execution.task_chunk is set, so tasks run in a sequential "
            "lax.map that is not parallelised over the mesh; use "
            "--set execution.task_chunk=auto when training on several devices"
        )
    primary = sharding.is_primary()
    progress = progress and primary
    if lock is not None and lock.warning:
        say(f"warning: {lock.warning}")
    resuming = ckpt.latest_step() is not None
    if resuming:
        _check_resumable(workdir, cfg, ckpt.saved_meta())
    saved_config = _saved_config(cfg).to_dict()

    classification = exp.source.classification
    data = exp.source.train_data()
    state = initial_state(cfg, exp)
    if mesh is not None:  # replicated state and data; the restore keeps these shardings
        data = sharding.replicate(data, mesh)
        state = sharding.place_state(state, mesh, shard_params=cfg.mesh.shard_params)
    best_score: float | None = None
    best_step: int | None = None
    latest = None
    if resuming:
        # A damaged newest step (truncated or deleted file, torn JSON, checksum mismatch)
        # is skipped for the newest one that verifies; the metrics log is cut back to it.
        state, meta, skipped = ckpt.restore_newest(state)
        for msg in skipped:
            say(f"warning: {msg}; skipped it")
        latest = int(state.step)
        best_score, best_step = meta.get("best_score"), meta.get("best_step")
        stale = ckpt.best_step()
        if stale is not None and stale > latest:
            # Saved after the latest checkpoint by the interrupted run: the replay
            # recomputes (bit-identically) whether it is the best.
            ckpt.delete_best(stale)
        say(f"resuming from step {latest} in {workdir / 'checkpoints'}")
    start = int(state.step)
    where.update(step=start, checkpoint=latest)
    time_before = 0.0  # training time of earlier sessions: wall_time continues from it
    if primary:
        env = {**environment(), "mesh": sharding.describe(mesh)}
        record_run_start(
            workdir, config_yaml=_saved_config(cfg).to_yaml(), env=env, resume_step=latest
        )
        truncate_metrics(workdir / METRICS_FILE, max_step=start)
        time_before = logged_wall_time(workdir / METRICS_FILE, max_step=start)
    writer = MetricsWriter(workdir, tensorboard=t.tensorboard) if primary else _NoMetrics()

    has_val = bool(t.eval_every) and "val" in exp.source.splits
    higher = classification
    main_metric = "accuracy" if classification else "mse"
    if t.eval_every and not has_val:
        say(
            f"no validation split in {cfg.data.name}/{cfg.data.scheme}: no best-checkpoint "
            "selection; the final checkpoint is tested"
        )
    # One jitted evaluator for validation and test (one program when the shapes agree).
    evaluator = make_evaluator(
        exp.learner,
        classification=classification,
        batch_size=ev.batch_size,
        inner_steps=ev.inner_steps,
    )
    val_eps = None
    if has_val:
        val_eps = exp.source.eval_episodes(
            "val", episodes=ev.val_episodes or ev.episodes, seed=ev.seed, **eval_shape(cfg)
        )
        val_eps = (
            jax.device_put(val_eps) if mesh is None else sharding.shard_eval_episodes(val_eps, mesh)
        )
    eval_key = jax.random.key(ev.seed)

    sample = lambda k, d: exp.source.sample(k, d, tasks=t.meta_batch_size)
    if mesh is not None:  # each device draws and differentiates its own tasks
        sample = sharding.sharded_sampler(
            lambda k, d, n: exp.source.sample(k, d, tasks=n),
            mesh,
            tasks=t.meta_batch_size,
            sampler=cfg.mesh.sampler,
        )
    chunk = make_train_chunk(
        exp.learner,
        exp.optimizer,
        sample,
        length=t.steps_per_call,
        task_chunk=cfg.execution.task_chunk,
    )

    step = start
    if step < t.steps:
        # Compile before the clock starts, so steps/s and the ETA measure training only.
        t0 = time.perf_counter()
        chunk = chunk.lower(state, data, jnp.asarray(1, jnp.int32)).compile()
        say(
            f"compiled the fused step ({t.steps_per_call} meta-steps per call) in "
            f"{time.perf_counter() - t0:.1f} s"
        )
    window: list[dict[str, np.ndarray]] = []
    last_good = latest
    divergence = DivergenceMonitor(cfg.data.ways if classification else None)
    acc_label = train_accuracy_label(cfg)
    bar = tqdm(
        total=t.steps,
        initial=start,
        unit="step",
        dynamic_ncols=True,
        disable=not progress,
        desc=cfg.name,
        smoothing=0.1,
    )
    t_start = t_row = time.perf_counter()
    steps_in_row = 0
    try:
        while step < t.steps:
            stops = [
                t.steps,
                step + t.steps_per_call,
                _next_boundary(step, t.log_every),
                _next_boundary(step, t.checkpoint_every),
            ]
            if has_val:
                stops.append(_next_boundary(step, t.eval_every))
            nxt = min(stops)
            n = nxt - step
            state, metrics = chunk(state, data, jnp.asarray(n, jnp.int32))
            metrics = {k: np.asarray(v)[:n] for k, v in jax.device_get(metrics).items()}
            # Report the loss first when several metrics go bad in the same step.
            for name in sorted(metrics, key=lambda k: (k != "loss", k)):
                values = metrics[name]
                bad = np.flatnonzero(~np.isfinite(values))
                if bad.size:
                    i = int(bad[0])
                    raise TrainingDiverged(
                        f"training diverged at step {step + i + 1}: metric {name!r} is "
                        f"{values[i]} (non-finite). The run stopped without saving this "
                        "state; the last good checkpoint is "
                        + (
                            f"step {last_good} in {ckpt.latest_dir}"
                            if last_good is not None
                            else "none (no checkpoint was written yet)"
                        )
                        + ". Lower the learning rates (optimizer.learning_rate, "
                        "algorithm.inner_lr) or set optimizer.grad_clip_norm."
                    )
            warning = divergence.update(metrics["loss"], first_step=step + 1)
            if warning is not None:
                writer.write(warning)
                say(f"warning: {warning['message']}")
            step = nxt
            where["step"] = step
            window.append(metrics)
            steps_in_row += n
            bar.update(n)
            post = {"loss": f"{metrics['loss'].mean():.4f}"}
            if "accuracy" in metrics:
                post[acc_label] = f"{metrics['accuracy'].mean():.3f}"
            bar.set_postfix(post, refresh=False)

            if step % t.log_every == 0 or step == t.steps:
                now = time.perf_counter()
                row: dict[str, Any] = {"split": "train", "step": step}
                for name in window[0]:
                    row[name] = float(np.concatenate([w[name] for w in window]).mean())
                row["steps_per_sec"] = steps_in_row / max(now - t_row, 1e-9)
                row["wall_time"] = time_before + (now - t_start)
                row["session_time"] = now - t_start
                writer.write(row)
                window, t_row, steps_in_row = [], now, 0

            if has_val and (step % t.eval_every == 0 or step == t.steps):
                per = evaluator(state.params, val_eps, eval_key)
                per = jax.device_get(per) if mesh is None else sharding.gather(per, mesh)
                res = summarize(per, classification=classification)
                res.pop("per_episode")
                writer.write({"split": "val", "step": step, **res})
                score = res[main_metric]
                improved = _is_better(score, best_score, higher=higher)
                msg = f"step {step}: val {main_metric} {score:.4f} ± {res['ci95']:.4f}"
                if improved:
                    best_score, best_step = score, step
                    meta = _meta(step, best_score, best_step, res, saved_config)
                    with guard.critical():
                        writer.flush()
                        ckpt.save(step, state, meta=meta, best=True)
                    msg += " (best so far, saved)"
                say(msg)

            if step % t.checkpoint_every == 0 or step == t.steps:
                meta = _meta(step, best_score, best_step, None, saved_config)
                with guard.critical():
                    writer.flush()
                    ckpt.save(step, state, meta=meta)
                last_good = step
                where["checkpoint"] = step
    finally:
        bar.close()
        writer.close()

    result: dict[str, Any] = {
        "start_step": start,
        "steps": step,
        "best_step": best_step,
        "best_val": best_score,
    }
    if t.plot and primary:
        if plot_learning_curves(
            workdir / METRICS_FILE, workdir / "learning_curves.png", title=cfg.name
        ):
            result["plot"] = str(workdir / "learning_curves.png")
    if "test" in exp.source.splits:
        which = "best" if ckpt.best_step() is not None else "final"
        if which == "best":
            try:
                state, _ = ckpt.restore(state, best=True)
            except CheckpointError as err:
                say(f"warning: {err}; testing the final state instead")
                which = "final"
        test = run_evaluation(
            cfg,
            exp,
            state.params,
            split="test",
            episodes=ev.episodes,
            inner_steps=ev.inner_steps,
            mesh=mesh,
            evaluator=evaluator,
        )
        test.update(step=int(state.step), checkpoint=which)
        if primary:
            write_eval_json(workdir, test)
            say(format_result(test) + f" [checkpoint: {which}, step {int(state.step)}]")
        result["test"] = test
    return result


def train_accuracy_label(cfg: ExperimentConfig) -> str:
    """The progress bar's name for the training accuracy, e.g. ``train_acc(q,K=1)``.

    It is the accuracy on the training tasks' queries after the training inner steps
    ``K`` (gradient learners), not the validation accuracy, which the status lines print.
    """
    from jaxmeta.algorithms import ALGORITHMS
    from jaxmeta.train.config import algorithm_parameters

    param = algorithm_parameters(ALGORITHMS[cfg.algorithm.name]).get("inner_steps")
    if param is None:
        return "train_acc(q)"
    steps = cfg.algorithm.kwargs.get("inner_steps", param.default)
    return f"train_acc(q,K={steps})"


def _meta(step: int, best_score, best_step, val, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "step": step,
        "best_score": best_score,
        "best_step": best_step,
        "val": val,
        "config": config,  # the resume check's reference, even if config.yaml is lost
    }


def run_evaluation(
    cfg: ExperimentConfig,
    exp: Experiment,
    params: Any,
    *,
    split: str,
    episodes: int,
    inner_steps: int | None = None,
    bn_mode: str | None = None,
    mesh=None,
    evaluator=None,
) -> dict[str, Any]:
    """Evaluate ``params`` on ``episodes`` fixed episodes of ``split``; summary dict.

    With a ``mesh`` (:func:`task_mesh`) the episodes are split over its devices (of all
    processes) and the per-episode results gathered on every process. ``evaluator``
    (from :func:`make_evaluator` with the same ``inner_steps`` and ``bn_mode``) is reused
    when given. The result records the inner steps actually used (the learner's
    evaluation steps unless overridden) and, for models with batch statistics, the
    BatchNorm mode (``transductive`` unless ``bn_mode`` says otherwise).
    """
    eps = exp.source.eval_episodes(split, episodes=episodes, seed=cfg.eval.seed, **eval_shape(cfg))
    fn = evaluator or make_evaluator(
        exp.learner,
        classification=exp.source.classification,
        batch_size=cfg.eval.batch_size,
        inner_steps=inner_steps,
        bn_mode=bn_mode,
    )
    if mesh is None:
        per = jax.device_get(fn(params, jax.device_put(eps), jax.random.key(cfg.eval.seed)))
    else:
        eps = sharding.shard_eval_episodes(eps, mesh)
        per = sharding.gather(fn(params, eps, jax.random.key(cfg.eval.seed)), mesh)
    res = summarize(per, classification=exp.source.classification)
    res.pop("per_episode")
    res.update(
        split=split,
        algorithm=cfg.algorithm.name,
        dataset=cfg.data.name,
        inner_steps=exp.learner.eval_inner_steps if inner_steps is None else inner_steps,
    )
    if getattr(exp.model, "uses_batch_statistics", False):
        res["bn_mode"] = bn_mode or "transductive"
    if exp.source.classification:
        res.update(
            ways=cfg.eval_ways,
            shots=cfg.eval_shots,
            queries=cfg.eval_queries,
            train_ways=cfg.data.ways,
            scheme=cfg.data.scheme,
            rotations=cfg.data.rotations,
        )
    return res


def write_eval_json(workdir: str | Path, result: dict[str, Any]) -> Path:
    """Write ``eval_<split>.json`` atomically."""
    path = Path(workdir) / f"eval_{result['split']}.json"
    return atomic_write_text(path, json.dumps(result, indent=2) + "\n")


def format_result(res: dict[str, Any]) -> str:
    """``test accuracy: 98.70% ± 0.40% (600 episodes)`` or the MSE equivalent."""
    if "accuracy" in res:
        return (
            f"{res['split']} accuracy: {100 * res['accuracy']:.2f}% ± "
            f"{100 * res['ci95']:.2f}% (95% CI, {res['episodes']} episodes)"
        )
    return (
        f"{res['split']} mse: {res['mse']:.4f} ± {res['ci95']:.4f} "
        f"(95% CI, {res['episodes']} episodes)"
    )
