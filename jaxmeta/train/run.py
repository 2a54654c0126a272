"""A run in a workdir: what it records, when it may resume, how it is restored and evaluated.

::

    run = restore_run("runs/maml_5w1s")                  # best checkpoint, no data read
    res = evaluate_run(run, split="test", episodes=600)  # accuracy ± 95% CI, both BN modes

Used by ``jaxmeta evaluate``, :func:`jaxmeta.load`, the training loop (resume checks, the
final test) and the benchmarks.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import jax

from jaxmeta import sharding, yaml_io
from jaxmeta.data.registry import get_task_source
from jaxmeta.train.build import (  # noqa: F401 -- TrainedRun: its former home
    Experiment,
    TrainedRun,
    build_experiment,
    eval_episode_shape,
    initial_state,
)
from jaxmeta.train.checkpoint import Checkpoints, resolve_checkpoint  # noqa: F401 -- former home
from jaxmeta.train.config import ExperimentConfig, config_from_dict, load_config, migrate, replace
from jaxmeta.train.evaluate import compared_bn_modes, make_evaluator, summarize
from jaxmeta.train.metrics import flatten_config
from jaxmeta.train.population import check_sizes, is_population, restore_member
from jaxmeta.train.schedules import steps_from_train
from jaxmeta.train.workdir import atomic_write_text

__all__ = [
    "RESUMABLE_CHANGES",
    "TrainedRun",
    "check_resumable",
    "environment",
    "evaluate_run",
    "format_result",
    "restore_run",
    "run_evaluation",
    "saved_config",
    "task_mesh",
    "write_eval_json",
]

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
# Config keys that may change between a run and its resumption (with the task source's own
# ``resumable_options``, e.g. where its files are).
RESUMABLE_CHANGES = {
    "name",
    "plugins",
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
        # The allocator's settings change the speed, not the results (jaxmeta/host_memory.py).
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "command": sys.argv,
    }


def saved_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config a run records (launch details such as the process id are per process)."""
    return dataclasses.replace(cfg, distributed=type(cfg.distributed)())


def _normalised(raw: dict[str, Any]) -> dict[str, Any]:
    """A saved config in today's resolved form (keys that moved, sections added since it was
    saved), or as saved when it no longer validates (the comparison then names what differs)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # A checkpoint's meta is outside its state checksum: never import from it.
            cfg = config_from_dict(raw, source="saved config", trust_plugins=False)
            return saved_config(cfg).to_dict()
    except (ValueError, TypeError):
        raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
        migrate(raw)
        return raw


def check_resumable(workdir: Path, cfg: ExperimentConfig, meta: dict[str, Any] | None) -> None:
    """``cfg`` may resume the run whose newest checkpoint has ``meta``.

    The config saved inside the checkpoint is the reference (it cannot be lost or edited
    apart from the state); checkpoints written before it was recorded fall back to the
    workdir's config.yaml. A config saved by an older version is first brought to today's
    form (moved keys, new sections at their defaults).

    Raises:
      ValueError: a key that may not change did, naming each one.
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
    saved = flatten_config(_normalised(raw))
    new = flatten_config(saved_config(cfg).to_dict())
    # The task source's class says which of its options may change (nothing to build).
    options = getattr(get_task_source(cfg.data.name), "resumable_options", None)
    if options is None:  # registered as a factory, not a class
        options = type(build_experiment(cfg).source).resumable_options
    resumable = RESUMABLE_CHANGES | {f"data.{k}" for k in options}
    changed = sorted(
        k for k in set(saved) | set(new) if saved.get(k) != new.get(k) and k not in resumable
    )
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(
            f"{workdir} holds a checkpointed run with a different config ({details}); "
            "resume with the same config or use a new --workdir"
        )
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


# --------------------------------------------------------------------------- a trained run


def restore_run(
    workdir: str | os.PathLike,
    checkpoint: str | int = "best",
    *,
    overrides: list[str] | tuple[str, ...] = (),
    episodes: int | None = None,
    any_ways: bool = False,
    run: int | None = None,
    trust_plugins: bool | tuple[str, ...] | list[str] = False,
) -> TrainedRun:
    """Restore a ``jaxmeta train`` workdir's checkpoint, reading (and locking) nothing else.

    Args:
      workdir: the run's directory (``config.yaml`` + checkpoints).
      checkpoint: ``"best"`` (the latest when the run has no best), ``"latest"`` or a step.
      overrides: ``--set``-style changes of the run's config (e.g. where its data is).
      episodes: replaces ``eval.episodes``.
      any_ways: a learner that takes any N-way support set where the algorithm allows
        (:func:`jaxmeta.train.build.algorithm_kwargs`).
      run: a population's member (``train.seeds`` / ``sweep``): its state, and the config
        of the single run it stands for (:func:`jaxmeta.train.population.member_config`).
      trust_plugins: import the plug-ins the run's config names (``True``), only those
        listed, or (default ``False``) none but jaxmeta's own and those already imported:
        a run folder is data (:func:`jaxmeta.plugins.load_plugins`).

    Raises:
      FileNotFoundError: not a workdir, no such checkpoint.
      ConfigError: the run's config does not validate (e.g. a plug-in is missing).
      CheckpointError: the checkpoint is damaged (the message names it).
    """
    workdir = Path(workdir)
    if not (workdir / "config.yaml").is_file():
        raise FileNotFoundError(f"{workdir} has no config.yaml: not a 'jaxmeta train' workdir")
    cfg = load_config(workdir / "config.yaml", overrides, trust_plugins=trust_plugins)
    if episodes is not None:
        cfg = replace(cfg, eval={"episodes": episodes})
    if is_population(cfg):
        return restore_member(workdir, cfg, checkpoint, run=run, any_ways=any_ways)
    if run not in (None, 0):
        raise ValueError(f"{workdir} holds a single run, not a population: run={run!r}")
    exp = build_experiment(cfg, any_ways=any_ways)
    # Read only: no lock (a training run may be writing), nothing created or cleaned up.
    ckpt = Checkpoints(workdir, keep=cfg.train.keep_checkpoints, read_only=True)
    try:
        which, step = resolve_checkpoint(ckpt, checkpoint)
        target = jax.eval_shape(lambda: initial_state(cfg, exp))
        state, _ = ckpt.restore(target, step=step, best=which == "best")
    finally:
        ckpt.close()
    return TrainedRun(cfg, exp, state, which, int(state.step))


# --------------------------------------------------------------------------- evaluation


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
    learner_state: Any = None,
) -> dict[str, Any]:
    """Evaluate ``params`` on ``episodes`` fixed episodes of ``split``; summary dict.

    With a ``mesh`` (:func:`task_mesh`) the episodes are split over its devices (of all
    processes) and the per-episode results gathered on every process. ``evaluator``
    (from :func:`make_evaluator` with the same ``inner_steps`` and ``bn_mode``) is reused
    when given. The result records the inner steps actually used (the learner's
    evaluation steps unless overridden), for models with batch statistics the BatchNorm
    mode (``transductive`` unless ``bn_mode`` says otherwise), and what the task source
    describes of itself (e.g. Omniglot's scheme and rotations).
    """
    check_sizes(cfg, exp.source, train=False, episodes=episodes)  # before sampling them
    eps = exp.source.eval_episodes(
        split, episodes=episodes, seed=cfg.eval.seed, **eval_episode_shape(cfg, exp.source)
    )
    fn = evaluator or make_evaluator(
        exp.learner,
        classification=exp.source.classification,
        batch_size=cfg.eval.batch_size,
        inner_steps=inner_steps,
        bn_mode=bn_mode,
    )
    if mesh is None:
        key = jax.random.key(cfg.eval.seed)
        per = jax.device_get(fn(params, jax.device_put(eps), key, learner_state))
    else:
        eps = sharding.shard_eval_episodes(eps, mesh)
        per = sharding.gather(fn(params, eps, jax.random.key(cfg.eval.seed), learner_state), mesh)
    res = summarize(per, classification=exp.source.classification, metric=exp.learner.eval_metric)
    res.pop("per_episode")
    if exp.learner.eval_metric is not None:
        res["metric"] = exp.learner.eval_metric
    res.update(
        split=split,
        algorithm=cfg.algorithm.name,
        dataset=cfg.data.name,
        inner_steps=exp.learner.eval_inner_steps if inner_steps is None else inner_steps,
    )
    if getattr(exp.model, "uses_batch_statistics", False):
        res["bn_mode"] = bn_mode or exp.learner.bn_mode
    if exp.source.classification:
        res.update(
            ways=cfg.eval_ways,
            shots=cfg.eval_shots,
            queries=cfg.eval_queries,
            train_ways=cfg.data.ways,
        )
    res.update(exp.source.describe())
    return res


def evaluate_run(
    run: TrainedRun,
    *,
    split: str = "test",
    episodes: int | None = None,
    inner_steps: int | None = None,
    bn_mode: str = "both",
) -> dict[str, Any]:
    """Evaluate a restored run on the fixed episodes of ``split`` (``jaxmeta evaluate``).

    ``bn_mode="both"`` (models with batch statistics) reports the learner's protocol
    (transductive; ProtoNets with running statistics: running) as ``accuracy``/``ci95``/
    ``loss`` and one other mode next to it (inductive, or transductive after running:
    ``accuracy_inductive``, ...). The result also records the step and which checkpoint it was.

    Raises:
      ValueError: ``split`` does not exist for this data, or ``inner_steps`` for a learner
        that does not adapt by steps.
    """
    cfg, exp = run.config, run.experiment
    if split not in exp.source.splits:
        desc = ", ".join(f"{k}={v}" for k, v in exp.source.describe().items())
        raise ValueError(
            f"split {split!r} does not exist for {cfg.data.name}{f' ({desc})' if desc else ''} "
            f"(available: {', '.join(exp.source.splits)})"
        )
    inner = inner_steps if inner_steps is not None else cfg.eval.inner_steps
    modes: list[str | None] = compared_bn_modes(exp.learner) if bn_mode == "both" else [bn_mode]
    if not getattr(exp.model, "uses_batch_statistics", False):
        modes = [None]  # no BatchNorm: the modes agree
    episodes = cfg.eval.episodes if episodes is None else episodes
    results = [
        run_evaluation(
            cfg,
            exp,
            run.state.params,
            split=split,
            episodes=episodes,
            inner_steps=inner,
            bn_mode=mode,
            learner_state=run.state.learner_state,
        )
        for mode in modes
    ]
    res = results[0]
    res.update(step=run.step, checkpoint=run.checkpoint)
    for extra in results[1:]:  # the inductive numbers next to the protocol's
        metric = "accuracy" if "accuracy" in extra else "mse"
        for key in (metric, "ci95", "loss"):
            if key in extra:
                res[f"{key}_{extra['bn_mode']}"] = extra[key]
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
    if "mse" in res:
        return (
            f"{res['split']} mse: {res['mse']:.4f} ± {res['ci95']:.4f} "
            f"(95% CI, {res['episodes']} episodes)"
        )
    # A learner's own metrics (its eval_metric first, e.g. meta-RL returns): each ± its CI.
    main = res["metric"]
    parts = [f"{main} {res[main]:.4g} ± {res['ci95']:.2g}"]
    parts += [f"{k} {res[k]:.4g} ± {res[f'{k}_ci95']:.2g}" for k in res if f"{k}_ci95" in res]
    return f"{res['split']}: {', '.join(parts)} (95% CI, {res['episodes']} episodes)"
