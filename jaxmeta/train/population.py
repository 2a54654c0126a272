"""Populations: many independent runs (seeds, hyperparameter sweeps) in one program.

A population is ``train.seeds: S`` runs with seeds ``train.seed ... train.seed+S-1``, times
the product of the ``sweep:`` values (run ``r`` = sweep point ``r // S``, seed
``train.seed + r % S``). Every member's :class:`~jaxmeta.step.TrainState` is stacked on a
leading ``[runs]`` axis and the fused train chunk is ``vmap``-ed over it
(:func:`jaxmeta.step.make_population_chunk`); swept values are traced per-run scalars (the
learner and the optimizer are built from them while tracing), so one compiled program
trains every member. Run ``r`` computes what a single ``jaxmeta train`` of
:func:`member_config` ``(cfg, r)`` computes (tests/test_population.py).

This module holds what is a pure function of the config: the members, the per-run
hyperparameters, the stacked initial state, the sweep check, restoring one member and the
memory check. The training session is :mod:`jaxmeta.train.population_loop`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import typing
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmeta import yaml_io
from jaxmeta.algorithms import ALGORITHMS
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.step import TrainState
from jaxmeta.train.build import (
    Experiment,
    TrainedRun,
    algorithm_kwargs,
    algorithm_parameters,
    build_experiment,
    build_optimizer,
    seed_state,
)
from jaxmeta.train.checkpoint import Checkpoints, resolve_checkpoint
from jaxmeta.train.schema import ConfigError, ExperimentConfig

__all__ = [
    "PopulationMemoryError",
    "check_memory",
    "check_sweep",
    "is_population",
    "is_population_workdir",
    "member_config",
    "members",
    "population_builder",
    "population_hparams",
    "population_state",
    "select_run",
    "sweepable_keys",
]

OUTER_LR = "optimizer.learning_rate"


class PopulationMemoryError(ValueError):
    """The population does not fit in the device's memory (the message gives the largest
    number of runs that does)."""


def is_population(cfg: ExperimentConfig) -> bool:
    """Whether ``cfg`` trains a population (``train.seeds`` set or a ``sweep:``)."""
    return cfg.train.seeds is not None or bool(cfg.sweep)


def is_population_workdir(workdir) -> bool:
    """Whether a workdir's ``config.yaml`` trains a population (read as plain YAML; a
    broken file is left to :func:`jaxmeta.train.run.restore_run` to name)."""
    from pathlib import Path

    try:
        raw = yaml_io.load(yaml_io.read_text(Path(workdir) / "config.yaml")) or {}
    except Exception:
        return False
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    return bool(raw.get("sweep")) or train.get("seeds") is not None


def members(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """One entry per run: ``{"run": r, "seed": s, <swept key>: value, ...}``."""
    seeds = range(cfg.train.seed, cfg.train.seed + (cfg.train.seeds or 1))
    keys = [k for k, _ in cfg.sweep]
    out = []
    for point in itertools.product(*(v for _, v in cfg.sweep)):
        for seed in seeds:
            out.append({"run": len(out), "seed": seed, **dict(zip(keys, point, strict=True))})
    return out


def member_config(cfg: ExperimentConfig, run: int) -> ExperimentConfig:
    """The single-run config that member ``run`` stands for (its seed and values)."""
    every = members(cfg)
    if (
        isinstance(run, bool)
        or not isinstance(run, int | np.integer)
        or not (0 <= run < len(every))
    ):
        raise ValueError(f"run must be an int in 0..{len(every) - 1}, got {run!r}")
    m = every[int(run)]
    sections: dict[str, dict[str, Any]] = {}
    for key, _ in cfg.sweep:
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = m[key]
    new = dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, seed=m["seed"], seeds=None),
        sweep=(),
    )
    for section, values in sections.items():
        named = getattr(new, section)
        opts = dict(named.options)
        opts.update(values)
        new = dataclasses.replace(
            new, **{section: dataclasses.replace(named, options=tuple(opts.items()))}
        )
    return new


def sweepable_keys(cfg: ExperimentConfig) -> list[str]:
    """Keys whose per-run values one program can hold: the outer learning rate and the
    algorithm's real-valued learning-rate arguments (``float``, named ``*lr*``: the inner
    loops take them as traced values). Integers and strings change shapes or the program;
    other floats may be checked in Python by their factory (e.g. Reptile's betas)."""
    factory = ALGORITHMS[cfg.algorithm.name].make
    target = getattr(factory, "func", factory)
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        hints = {}
    keys = [OUTER_LR]
    for name in algorithm_parameters(factory):
        if hints.get(name) is float and "lr" in name.split("_"):
            keys.append(f"algorithm.{name}")
    return keys


def check_sweep(cfg: ExperimentConfig) -> None:
    """Every ``sweep:`` key is one the program can trace, with valid values.

    Raises:
      ConfigError: a key that changes shapes or the program (ways, filters, inner steps,
        ...; those need separate runs), or a non-positive learning rate.
    """
    allowed = sweepable_keys(cfg)
    for key, values in cfg.sweep:
        dotted = f"sweep.{key}"
        where = cfg.where("sweep")
        if key not in allowed:
            raise ConfigError(
                where,
                dotted,
                "cannot vary inside one program (it changes shapes or the program, e.g. "
                "ways, filters, inner steps: train those as separate runs); sweepable here: "
                + ", ".join(allowed),
            )
        if any(v <= 0 for v in values) and (key == OUTER_LR or key.endswith("lr")):
            raise ConfigError(where, dotted, f"learning rates must be positive, got {values}")
        if key == OUTER_LR and cfg.optimizer.kwargs.get("schedule") is not None:
            raise ConfigError(
                where,
                dotted,
                "cannot be swept together with optimizer.schedule in this version (optax "
                "schedules check their values in Python, so they cannot take a traced "
                "per-run rate); sweep without a schedule, or train those as separate runs",
            )


def population_hparams(cfg: ExperimentConfig) -> dict[str, jax.Array]:
    """The swept values per run: ``{key: f32[runs]}`` (empty without a sweep)."""
    every = members(cfg)
    return {k: jnp.asarray([m[k] for m in every], jnp.float32) for k, _ in cfg.sweep}


def population_builder(cfg: ExperimentConfig, exp: Experiment):
    """``hparams -> (learner, optimizer)`` of one member (traced values); without a sweep
    the experiment's own learner and optimizer (the single run's program)."""
    if not cfg.sweep:
        return lambda hparams: (exp.learner, exp.optimizer)
    factory = ALGORITHMS[cfg.algorithm.name].make

    def build(hparams: dict[str, jax.Array]) -> tuple[MetaLearner, optax.GradientTransformation]:
        kwargs = algorithm_kwargs(cfg, exp.source)
        for key, value in hparams.items():
            if key.startswith("algorithm."):
                kwargs[key.split(".", 1)[1]] = value
        learner = factory(exp.model.apply, **kwargs)
        optimizer = build_optimizer(cfg, learning_rate=hparams.get(OUTER_LR))
        return learner, optimizer

    return build


def population_state(cfg: ExperimentConfig, exp: Experiment) -> TrainState:
    """The members' step-0 states stacked on a leading ``[runs]`` axis (each is
    :func:`~jaxmeta.train.build.initial_state` of its :func:`member_config`)."""
    build = population_builder(cfg, exp)
    seeds = jnp.asarray([m["seed"] for m in members(cfg)], jnp.int32)

    def one(seed, hparams):
        learner, optimizer = build(hparams)
        return seed_state(exp, seed, learner=learner, optimizer=optimizer)

    return jax.jit(jax.vmap(one))(seeds, population_hparams(cfg))


def select_run(tree: Any, run: int) -> Any:
    """Member ``run`` of a stacked pytree."""
    return jax.tree_util.tree_map(lambda x: x[run], tree)


# --------------------------------------------------------------------------- memory


def device_memory_limit() -> int | None:
    """Bytes the first device can hold, or ``None`` when it does not say (the CPU)."""
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:
        return None
    return stats.get("bytes_limit")


def memory_limit() -> int | None:
    """Bytes a program may use: the first device's memory, else (the CPU) the host's RAM."""
    limit = device_memory_limit()
    if limit is None and jax.local_devices()[0].platform == "cpu":
        try:
            limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    return limit


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def check_sizes(
    cfg: ExperimentConfig,
    source,
    *,
    train: bool = True,
    episodes: int | None = None,
    limit: int | None = None,
) -> None:
    """Refuse, before anything is compiled or sampled, sizes whose inputs alone cannot fit.

    The estimate is a lower bound: the float32 inputs of one meta-batch (times the runs of
    a population), and of the fixed validation and test episodes, each against ``limit``
    (default :func:`memory_limit`). A config that passes may still not fit; the compiled
    train step is checked again by :func:`check_program` before it runs.

    Args:
      train: also check the training meta-batch (not for an evaluation).
      episodes: the test episodes, if not ``eval.episodes``.

    Raises:
      ConfigError: naming the key, the estimate and the limit (one line).
    """
    limit = memory_limit() if limit is None else limit
    if limit is None:
        return
    example = 4 * int(np.prod(tuple(source.input_shape) or (1,)))
    ways = getattr(source, "ways", None) if source.classification else None
    shots, queries = getattr(source, "shots", 0) or 0, getattr(source, "queries", 0) or 0

    def per_task(ways, shots, queries) -> int:
        return (ways or 1) * (shots + queries) * example

    t, e = cfg.train, cfg.eval
    runs = len(members(cfg)) if is_population(cfg) else 1
    need = runs * t.meta_batch_size * per_task(ways, shots, queries)
    ev = per_task(
        (e.ways or ways) if ways else None,
        shots if e.shots is None else e.shots,
        queries if e.queries is None else e.queries,
    )
    episodes = e.episodes if episodes is None else episodes
    checks = [("eval.episodes", episodes, episodes * ev, "evaluation episodes")]
    if train:
        checks.append(("train.meta_batch_size", t.meta_batch_size, need, "tasks per meta-step"))
    if train and e.val_episodes is not None:
        checks.append(("eval.val_episodes", e.val_episodes, e.val_episodes * ev, "episodes"))
    for key, value, need, what in checks:
        if need > limit:
            raise ConfigError(
                cfg.origins.get(key, "config"),
                key,
                f"{value:,} {what} need at least {_gib(need)} for their float32 inputs alone, "
                f"more than the {_gib(limit)} this machine's "
                f"{'device' if device_memory_limit() else 'RAM'} holds; lower it",
            )


def check_program(compiled, what: str, *, limit: int | None = None) -> None:
    """Refuse a compiled program whose memory analysis exceeds ``limit`` (default
    :func:`memory_limit`) before it runs (a ConfigError stating both)."""
    limit = memory_limit() if limit is None else limit
    need = program_bytes(compiled)
    if limit is None or need is None or need <= limit:
        return
    raise ConfigError(
        "config",
        "train.meta_batch_size",
        f"the compiled {what} needs {_gib(need)} (its memory analysis), more than the "
        f"{_gib(limit)} this machine holds; lower train.meta_batch_size or the model's size",
    )


def program_bytes(compiled) -> int | None:
    """Arguments + outputs + temporaries of a compiled program (its memory analysis)."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
    )


def check_memory(compiled, runs: int, *, one_run=None, limit: int | None = None) -> None:
    """Refuse a population whose compiled program does not fit the device, before it runs.

    Args:
      compiled: the population's compiled chunk.
      runs: its number of runs.
      one_run: ``() -> compiled`` the same program for one run; called only when the
        population does not fit, to split the memory into a shared part (data, program) and
        a per-run part: ``need(R) ~ shared + R * per_run``.
      limit: bytes the device holds (default: what it reports; none on the CPU).

    Raises:
      PopulationMemoryError: naming the need, the limit and the largest ``runs`` that fits.
    """
    limit = device_memory_limit() if limit is None else limit
    need = program_bytes(compiled)
    if limit is None or need is None or need <= limit:
        return
    single = program_bytes(one_run()) if one_run is not None and runs > 1 else None
    if single is None:
        per_run, shared = need / runs, 0.0
    else:
        per_run = max((need - single) / (runs - 1), 1.0)
        shared = max(single - per_run, 0.0)
    fits = max(int((limit - shared) // per_run), 0)
    raise PopulationMemoryError(
        f"a population of {runs} runs needs {need / 2**20:.2f} MiB on the device (compiled "
        f"program's memory analysis: {per_run / 2**20:.2f} MiB per run, {shared / 2**20:.2f} "
        f"MiB shared), the device holds {limit / 2**20:.2f} MiB: at most {fits} runs fit; "
        "lower train.seeds or the sweep's values"
    )


# --------------------------------------------------------------------------- a trained member


def restore_population(workdir, cfg: ExperimentConfig, exp: Experiment, checkpoint="best"):
    """``(stacked state, "best" | "latest")`` of a population workdir: ``best`` holds each
    run at its own best validation step."""
    ckpt = Checkpoints(workdir, keep=cfg.train.keep_checkpoints, read_only=True)
    try:
        which, step = resolve_checkpoint(ckpt, checkpoint)
        target = jax.eval_shape(lambda: population_state(cfg, exp))
        if which == "best":
            state, _ = ckpt.restore(target, step=step, best=True)
        else:
            both, _ = ckpt.restore({"state": target, "best": target}, step=step)
            state = both["state"]
    finally:
        ckpt.close()
    return state, which


def restore_member(workdir, cfg: ExperimentConfig, checkpoint="best", *, run, any_ways=False):
    """Member ``run`` of a population workdir as a single :class:`TrainedRun` (its state,
    and the config of the run it stands for); ``best`` is the member's own best step.

    Raises:
      ValueError: ``run`` missing or out of range.
      FileNotFoundError, CheckpointError: as :func:`jaxmeta.train.run.restore_run`.
    """
    count = len(members(cfg))
    if run is None:
        raise ValueError(
            f"{workdir} holds a population of {count} runs: pick one with run=I (--run I), "
            f"I in 0..{count - 1} ('jaxmeta evaluate' without --run evaluates every one)"
        )
    mcfg = member_config(cfg, run)
    state, which = restore_population(workdir, cfg, build_experiment(cfg), checkpoint)
    member = select_run(state, int(run))
    return TrainedRun(
        mcfg, build_experiment(mcfg, any_ways=any_ways), member, which, int(member.step)
    )
