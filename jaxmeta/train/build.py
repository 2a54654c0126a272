"""Building an experiment from a validated config: task source, model, learner, optimizer.

Every registry check lives here, and runs while building (nothing is built twice with
dummies): the ``data:`` section against the task source's constructor, ``model:`` against
the Flax module's fields, ``algorithm:`` against the factory's signature, ``optimizer:``
against the optax alias. A failure is a :class:`~jaxmeta.train.config.ConfigError` naming
the key and the file that set it. Building reads no data and compiles nothing;
:func:`jaxmeta.train.config.load_config` validates a config by building it once
(:func:`check_config`), and the first :func:`build_experiment` of that same config object
(the command that loaded it: ``train_and_evaluate``, ``restore_run``, ...) is handed that
experiment instead of building it again.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
import weakref
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax._src import core as jax_core  # trace_state_clean (run_once_jit)

from jaxmeta.algorithms import ALGORITHMS
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.data.registry import TASK_SOURCES
from jaxmeta.data.source import TaskSource, TaskSourceError
from jaxmeta.losses import mse_loss
from jaxmeta.models import MODELS
from jaxmeta.step import TrainState, init_train_state
from jaxmeta.train.evaluate import accepts_steps
from jaxmeta.train.schedules import ScheduleError, build_schedule, schedule_kwargs
from jaxmeta.train.schema import ConfigError, DataConfig, ExperimentConfig
from jaxmeta.yaml_io import check_type, describe_type, did_you_mean

__all__ = [
    "DATA_SUPPLIED",
    "ENGINE_SUPPLIED",
    "Experiment",
    "TrainedRun",
    "algorithm_kwargs",
    "algorithm_parameters",
    "build_experiment",
    "build_learner",
    "build_optimizer",
    "check_buildable",
    "check_config",
    "eval_episode_shape",
    "initial_state",
    "model_kwargs",
    "seed_state",
]

# Arguments of an algorithm factory that the engine supplies itself.
ENGINE_SUPPLIED = ("apply_fn", "loss_fn")
# Arguments filled from the task source when a factory asks for them and the config does not
# set them (N and K of learners with fixed shapes, the example shape for their own networks).
DATA_SUPPLIED = ("ways", "shots", "queries", "num_classes", "n_way", "k_shot", "input_shape")
WAYS_KEYS = ("ways", "n_way", "num_classes")
SHOTS_KEYS = ("shots", "k_shot")
# Every resolved config before issue 14 carried these data keys, whatever the dataset (a fixed
# schema); a source that does not take them ignored them. Such a key with exactly this value
# is dropped when a config is read, so old workdirs (e.g. sinusoid runs) load unchanged.
LEGACY_DATA_DEFAULTS = {
    "ways": 5,
    "scheme": "maml",
    "rotations": True,
    "image_size": 28,
    "data_dir": None,
    "manual_dir": None,
    "download": True,
}


class Experiment(NamedTuple):
    """Everything built from a config (no data read, nothing compiled yet)."""

    source: TaskSource
    model: Any
    learner: MetaLearner
    optimizer: optax.GradientTransformation


def _hints(obj, *, init: bool = False) -> dict[str, Any]:
    """Annotations of a factory (or, ``init``, of a class's constructor; else its fields)."""
    target = getattr(obj, "func", obj)  # functools.partial
    try:
        return typing.get_type_hints(target.__init__ if init else target)
    except Exception:  # unresolvable annotations: skip type checks, keep name checks
        return {}


def _check_kw(cfg: ExperimentConfig, dotted: str, value: Any, hint: Any) -> Any:
    """``value`` coerced to ``hint``; a ConfigError when it does not fit."""
    if hint is None:
        return value
    ok, coerced = check_type(value, hint)
    if not ok:
        raise ConfigError(
            cfg.where(dotted),
            dotted,
            f"expected {describe_type(hint)}, got {value!r} ({type(value).__name__})",
        )
    return coerced


def _check_not_supplied(cfg: ExperimentConfig, section: str, source: TaskSource) -> None:
    """A key the task source supplies (``TaskSource.supplies``) may not be set by the config."""
    supplied = source.supplies()
    for key, _ in getattr(cfg, section).options:
        if key in supplied:
            raise ConfigError(
                cfg.where(f"{section}.{key}"),
                f"{section}.{key}",
                f"set by the dataset {cfg.data.name!r}; leave it out",
            )


def _unknown(cfg: ExperimentConfig, section: str, registry: Mapping[str, Any], what: str):
    name = getattr(cfg, section).name
    if name not in registry:
        raise ConfigError(
            cfg.where(f"{section}.name"),
            f"{section}.name",
            f"unknown {what} {name!r}; available: {', '.join(sorted(registry))}",
        )
    return registry[name]


# --------------------------------------------------------------------------- data


def resolve_data(cfg: ExperimentConfig) -> DataConfig:
    """The ``data:`` section checked against the source's constructor and completed with its
    defaults, in signature order (what the resolved config spells out)."""
    cls = _unknown(cfg, "data", TASK_SOURCES, "dataset")
    params = {
        n: p
        for n, p in inspect.signature(cls).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    hints = _hints(cls, init=True)
    given = {
        k: v
        for k, v in cfg.data.options
        if k in params or k not in LEGACY_DATA_DEFAULTS or LEGACY_DATA_DEFAULTS[k] != v
    }
    for key, value in given.items():
        if key not in params:
            raise ConfigError(
                cfg.where(f"data.{key}"),
                f"data.{key}",
                f"unknown key for dataset {cfg.data.name!r}{did_you_mean(key, params)}; "
                f"valid keys: name, {', '.join(params)}",
            )
        given[key] = _check_kw(cfg, f"data.{key}", value, hints.get(key))
    missing = [n for n, p in params.items() if p.default is p.empty and n not in given]
    if missing:
        raise ConfigError(
            cfg.where("data"), "data", f"dataset {cfg.data.name!r} needs {', '.join(missing)}"
        )
    options = tuple((n, given.get(n, p.default)) for n, p in params.items())
    return DataConfig(name=cfg.data.name, options=options)


def _eval_key(cfg: ExperimentConfig, option: str) -> str:
    """The config key an evaluation-episode error is about: eval.<option> when set."""
    if option in ("ways", "shots", "queries") and getattr(cfg.eval, option) is not None:
        return f"eval.{option}"
    if option == "queries" and cfg.eval.shots is not None:
        return "eval.shots"
    return f"data.{option}"


def _blamed(cfg: ExperimentConfig, keys: list[str]) -> str:
    """Of the keys a failed check combines, the one to name: the first the user set with
    ``--set``, else the first set in the config file itself (not a base file it extends),
    else the first."""
    first_file = cfg.origins.get("", None)
    for wanted in ("--set", first_file):
        for key in keys:
            if wanted is not None and cfg.origins.get(key) == wanted:
                return key
    return keys[0]


def make_source(cfg: ExperimentConfig) -> TaskSource:
    """The task source, with the evaluation episodes checked against its splits."""
    cls = TASK_SOURCES[cfg.data.name]
    try:
        source = cls(**cfg.data.kwargs)
    except TaskSourceError as err:
        key = _blamed(cfg, [f"data.{o}" for o in (err.option, *err.related)])
        raise ConfigError(cfg.where(key), key, str(err)) from None
    if not source.classification and cfg.eval.ways is not None:
        raise ConfigError(
            cfg.where("eval.ways"),
            "eval.ways",
            f"{cfg.data.name} is regression: it has no ways; leave it null",
        )
    for split in ("val", "test"):
        if split not in source.splits or (split == "val" and not cfg.train.eval_every):
            continue
        try:
            source.check_episodes(
                split,
                ways=cfg.eval_ways if source.classification else None,
                shots=cfg.eval_shots,
                queries=cfg.eval_queries,
            )
        except TaskSourceError as err:
            key = _blamed(cfg, [_eval_key(cfg, o) for o in (err.option, *err.related)])
            raise ConfigError(cfg.where(key), key, str(err)) from None
    return source


def eval_episode_shape(cfg: ExperimentConfig, source: TaskSource) -> dict[str, Any]:
    """``queries``/``shots``/``ways`` keyword arguments of ``source.eval_episodes``."""
    out: dict[str, Any] = {"queries": cfg.eval_queries, "shots": cfg.eval_shots}
    if source.classification:
        out["ways"] = cfg.eval_ways
    return out


# --------------------------------------------------------------------------- model


def model_kwargs(cfg: ExperimentConfig, source: TaskSource | None = None) -> dict[str, Any]:
    """Keyword arguments for the model; the output width defaults to ``data.ways``."""
    cls = MODELS[cfg.model.name]
    hints = _hints(cls)
    kwargs = {
        k: (check_type(v, hints[k])[1] if k in hints else v) for k, v in cfg.model.kwargs.items()
    }
    classification = cfg.classification if source is None else source.classification
    fields = {f.name for f in dataclasses.fields(cls)}
    for k, v in (source.supplies() if source is not None else {}).items():
        if k in fields:
            kwargs.setdefault(k, v)
    if classification:
        for out_key in ("num_classes", "out"):
            if out_key in fields:
                kwargs.setdefault(out_key, cfg.data.ways)
                break
    return kwargs


def make_model(cfg: ExperimentConfig, source: TaskSource):
    """The Flax module, its options checked against its fields."""
    cls = _unknown(cfg, "model", MODELS, "model")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("parent", "name")}
    hints = _hints(cls)
    _check_not_supplied(cfg, "model", source)
    for key, value in cfg.model.options:
        dotted = f"model.{key}"
        if key not in fields:
            raise ConfigError(
                cfg.where(dotted),
                dotted,
                f"unknown key for model {cfg.model.name!r}{did_you_mean(key, fields)}; "
                f"valid keys: name, {', '.join(fields)}",
            )
        _check_kw(cfg, dotted, value, hints.get(key))
        # Every integer of a model is a size (filters, widths, steps): 0 or -1 would fail
        # deep inside Flax (ZeroDivisionError) or build an empty layer.
        ints = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, int) and not isinstance(v, bool) and v < 1 for v in ints):
            raise ConfigError(
                cfg.where(dotted), dotted, f"must be positive (a size), got {value!r}"
            )
    return cls(**model_kwargs(cfg, source))


# --------------------------------------------------------------------------- algorithm


def algorithm_parameters(factory) -> dict[str, inspect.Parameter]:
    """Parameters of an algorithm factory (after the first, positional ``apply_fn``)."""
    params = dict(inspect.signature(factory).parameters)
    first = next(iter(params), None)
    if first is not None and first not in ENGINE_SUPPLIED:
        params.pop(first)  # the positional apply_fn, whatever it is called
    return params


def eval_differs(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The DATA_SUPPLIED arguments whose evaluation value differs from training's."""
    out: tuple[str, ...] = ()
    if cfg.classification and cfg.eval_ways != cfg.data.ways:
        out += WAYS_KEYS
    if cfg.eval_shots != getattr(cfg.data, "shots", None):
        out += SHOTS_KEYS
    if cfg.eval_queries != getattr(cfg.data, "queries", None):
        out += ("queries",)
    return out


def algorithm_kwargs(
    cfg: ExperimentConfig, source: TaskSource | None = None, *, any_ways: bool = False
) -> dict[str, Any]:
    """Keyword arguments for the configured factory: the config's, the data's, the loss.

    ``any_ways``: leave optional shape arguments that the config does not set (ProtoNets' /
    Matching Nets' ``ways``) to the episode, so the learner takes any N-way support set.
    """
    factory = ALGORITHMS[cfg.algorithm.name].make
    params = algorithm_parameters(factory)
    hints = _hints(factory)
    kwargs = {
        k: (check_type(v, hints[k])[1] if k in hints else v) for k, v in cfg.algorithm.options
    }
    data_values = {
        "ways": getattr(cfg.data, "ways", None),
        "n_way": getattr(cfg.data, "ways", None),
        "num_classes": getattr(cfg.data, "ways", None),
        "shots": getattr(cfg.data, "shots", None),
        "k_shot": getattr(cfg.data, "shots", None),
        "queries": getattr(cfg.data, "queries", None),
    }
    if source is not None:
        data_values["input_shape"] = tuple(source.input_shape)
        for k, v in source.supplies().items():
            if k in params and k not in kwargs:
                kwargs[k] = v
    for k in DATA_SUPPLIED:
        if k in params and k not in kwargs and k in data_values:
            # An optional shape argument (e.g. ProtoNets' ``ways``) that evaluation does
            # not share stays at its default: the learner then derives it from shapes.
            optional = params[k].default is not inspect.Parameter.empty
            if optional and (any_ways or k in eval_differs(cfg)) and k != "input_shape":
                continue
            kwargs[k] = data_values[k]
    classification = cfg.classification if source is None else source.classification
    if not classification and "loss_fn" in params:
        kwargs["loss_fn"] = mse_loss
    return kwargs


def build_learner(
    cfg: ExperimentConfig, *, apply_fn, source: TaskSource | None = None, any_ways: bool = False
) -> MetaLearner:
    """The configured :class:`~jaxmeta.algorithms.base.MetaLearner` for ``apply_fn``."""
    return ALGORITHMS[cfg.algorithm.name].make(
        apply_fn, **algorithm_kwargs(cfg, source, any_ways=any_ways)
    )


def _check_eval_shapes(cfg: ExperimentConfig, params) -> None:
    """eval.ways / eval.shots that differ from data.* need a learner that allows it."""
    differs = eval_differs(cfg)
    for key, names, value, train_value in (
        ("eval.ways", WAYS_KEYS, cfg.eval_ways, getattr(cfg.data, "ways", None)),
        ("eval.shots", SHOTS_KEYS, cfg.eval_shots, getattr(cfg.data, "shots", None)),
    ):
        if names[0] not in differs:
            continue
        for name in names:
            p = params.get(name)
            fixed = cfg.algorithm.kwargs.get(name)
            if p is None or (p.default is not inspect.Parameter.empty and fixed is None):
                continue
            raise ConfigError(
                cfg.where(key),
                key,
                f"algorithm {cfg.algorithm.name!r} is built for {name}={fixed or train_value} "
                f"(its {name!r} argument fixes the network's shapes), so it cannot evaluate "
                f"{key.split('.')[1]}={value}; leave {key} null",
            )
    if "ways" in differs:
        out = {k: v for k, v in model_kwargs(cfg).items() if k in ("num_classes", "out")}
        if any(v is not None for v in out.values()):
            k, v = next(iter(out.items()))
            raise ConfigError(
                cfg.where("eval.ways"),
                "eval.ways",
                f"model {cfg.model.name!r} has a {v}-way output head ({k}={v}), so it cannot "
                f"evaluate {cfg.eval_ways}-way episodes; evaluating with other ways than "
                "training needs an embedding model (model.num_classes: null) and a metric-based "
                "algorithm (protonets, matching)",
            )


def make_learner(
    cfg: ExperimentConfig, *, apply_fn, source: TaskSource, any_ways: bool = False
) -> MetaLearner:
    """The learner, its options checked against the factory's signature, then built."""
    factory = _unknown(cfg, "algorithm", ALGORITHMS, "algorithm").make
    params = algorithm_parameters(factory)
    hints = _hints(factory)
    _check_not_supplied(cfg, "algorithm", source)
    for key, value in cfg.algorithm.options:
        dotted = f"algorithm.{key}"
        if key not in params or key in ENGINE_SUPPLIED:
            valid = [p for p in params if p not in ENGINE_SUPPLIED]
            raise ConfigError(
                cfg.where(dotted),
                dotted,
                f"unknown key for algorithm {cfg.algorithm.name!r}{did_you_mean(key, valid)}; "
                f"valid keys: name, {', '.join(valid)}",
            )
        _check_kw(cfg, dotted, value, hints.get(key))
    _check_eval_shapes(cfg, params)
    missing = [
        p.name
        for p in params.values()
        if p.default is inspect.Parameter.empty
        and p.name not in ENGINE_SUPPLIED
        and p.name not in cfg.algorithm.kwargs
        and p.name not in DATA_SUPPLIED
        and p.name not in source.supplies()
    ]
    if missing:
        raise ConfigError(
            cfg.where("algorithm"),
            "algorithm",
            f"algorithm {cfg.algorithm.name!r} needs {', '.join(missing)}",
        )
    try:
        learner = build_learner(cfg, apply_fn=apply_fn, source=source, any_ways=any_ways)
    except (TypeError, ValueError) as err:
        # Name the offending keyword when the factory's message starts with it.
        key = next(
            (f"algorithm.{k}" for k in cfg.algorithm.kwargs if str(err).startswith(k)),
            "algorithm",
        )
        raise ConfigError(cfg.where(key), key, f"{cfg.algorithm.name}: {err}") from None
    # A learner that evaluates itself (meta-RL returns) needs no regression loss.
    if not source.classification and "loss_fn" not in params and learner.evaluate is None:
        raise ConfigError(
            cfg.where("algorithm.name"),
            "algorithm.name",
            f"algorithm {cfg.algorithm.name!r} has no loss_fn argument, so it cannot do "
            f"regression ({cfg.data.name})",
        )
    if cfg.eval.inner_steps is not None and not accepts_steps(learner.predict):
        raise ConfigError(
            cfg.where("eval.inner_steps"),
            "eval.inner_steps",
            f"algorithm {cfg.algorithm.name!r} does not adapt by inner steps at evaluation "
            "(its predict has no steps= argument); leave eval.inner_steps null",
        )
    return learner


# --------------------------------------------------------------------------- optimizer


def build_optimizer(cfg: ExperimentConfig, *, learning_rate=None) -> optax.GradientTransformation:
    """The optax optimizer (optionally after clipping each gradient entry to ``[-v, v]``
    (``grad_clip_value``, cbfinn/maml's miniImageNet ``tf.clip_by_value``) and/or its global
    norm (``grad_clip_norm``); ``schedule`` -> optax).

    ``learning_rate``: replaces ``optimizer.learning_rate`` (e.g. a traced per-run value of
    a population sweep, :mod:`jaxmeta.train.population`).
    """
    kwargs = cfg.optimizer.kwargs
    clip = kwargs.pop("grad_clip_norm", None)
    clip_value = kwargs.pop("grad_clip_value", None)
    schedule = kwargs.pop("schedule", None)
    if learning_rate is not None and schedule is None:
        kwargs["learning_rate"] = learning_rate
    else:
        lr = learning_rate
        if lr is None:
            lr = float(check_type(kwargs.get("learning_rate", 1e-3), float)[1])
        kwargs["learning_rate"] = build_schedule(schedule, lr, cfg.train.steps)
    opt = getattr(optax, cfg.optimizer.name)(**kwargs)
    if clip is not None:
        opt = optax.chain(optax.clip_by_global_norm(float(clip)), opt)
    if clip_value is not None:
        opt = optax.chain(optax.clip(float(clip_value)), opt)
    return opt


def make_optimizer(cfg: ExperimentConfig) -> optax.GradientTransformation:
    """The optimizer, its options checked against the optax alias first."""
    opt_name = cfg.optimizer.name
    fn = getattr(optax, opt_name, None)
    if fn is None or not callable(fn):
        raise ConfigError(
            cfg.where("optimizer.name"), "optimizer.name", f"unknown optax optimizer {opt_name!r}"
        )
    sig = inspect.signature(fn).parameters
    for key, value in cfg.optimizer.options:
        dotted = f"optimizer.{key}"
        if key == "schedule":
            if value is not None:
                try:
                    schedule_kwargs(value, 1.0, cfg.train.steps)
                except ScheduleError as err:
                    sub = f"{dotted}.{err.key}" if isinstance(value, Mapping) else dotted
                    raise ConfigError(cfg.where(dotted), sub, str(err).split(": ", 1)[1]) from None
            continue
        if key in ("grad_clip_norm", "grad_clip_value"):
            if value is not None:
                _check_kw(cfg, dotted, value, float)
                if value <= 0:
                    raise ConfigError(cfg.where(dotted), dotted, f"must be positive, got {value}")
            continue
        if key not in sig:
            raise ConfigError(
                cfg.where(dotted),
                dotted,
                f"unknown key for optax.{opt_name}"
                f"{did_you_mean(key, ['grad_clip_norm', 'grad_clip_value', 'schedule', *sig])}; "
                f"valid keys: grad_clip_norm, grad_clip_value, schedule, {', '.join(sig)}",
            )
    lr = cfg.optimizer.kwargs.get("learning_rate")
    if lr is not None:
        ok, lr = check_type(lr, float)
        if not ok or lr <= 0:
            raise ConfigError(
                cfg.where("optimizer.learning_rate"),
                "optimizer.learning_rate",
                f"must be a positive number, got {cfg.optimizer.kwargs['learning_rate']!r}",
            )
    return build_optimizer(cfg)


# --------------------------------------------------------------------------- the experiment


class TrainedRun(NamedTuple):
    """A restored run: its config, experiment (built, no data read) and train state."""

    config: ExperimentConfig
    experiment: Experiment
    state: TrainState
    checkpoint: str  # "best" or "latest"
    step: int


def build_experiment(cfg: ExperimentConfig, *, any_ways: bool = False) -> Experiment:
    """Task source, model, algorithm and optimizer described by ``cfg`` (checked on the way).

    Args:
      cfg: a config (its ``data`` section completed by :func:`check_config`, as every loaded
        config is).
      any_ways: build a learner that takes any N-way support set where the algorithm allows
        (:func:`algorithm_kwargs`; :func:`jaxmeta.load`).

    Raises:
      ConfigError: naming the key and the file.
    """
    global _validated
    if not any_ways and _validated is not None:
        ref, registered, exp = _validated
        if ref() is cfg and registered == _registered(cfg):
            _validated = None  # handed over once: a later build of cfg builds afresh
            return exp
    source = make_source(cfg)
    model = make_model(cfg, source)
    learner = make_learner(cfg, apply_fn=model.apply, source=source, any_ways=any_ways)
    return Experiment(source, model, learner, make_optimizer(cfg))


def check_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """Validate ``cfg`` against the registries by building it; the config with its ``data``
    section completed (the resolved form). A sweep's keys are checked by
    :func:`jaxmeta.train.population.check_sweep` (:func:`jaxmeta.train.config.config_from_dict`
    calls both).

    Raises:
      ConfigError: naming the key and the file.
    """
    global _validated
    cfg = dataclasses.replace(cfg, data=resolve_data(cfg))
    _validated = None
    exp = build_experiment(cfg)
    _validated = (weakref.ref(cfg), _registered(cfg), exp)
    return cfg


# The experiment check_config built for the config object it returned, while no other build
# has taken it: (weak reference to that config, the registry entries it was built from, it).
# Keyed by identity, not equality (a config changed by ``replace`` is another object), and by
# the registry entries (a plug-in registered since builds afresh).
_validated: tuple[weakref.ref, tuple, Experiment] | None = None


def _registered(cfg: ExperimentConfig) -> tuple:
    return (
        TASK_SOURCES.get(cfg.data.name),
        MODELS.get(cfg.model.name),
        ALGORITHMS.get(cfg.algorithm.name),
    )


def initial_state(cfg: ExperimentConfig, exp: Experiment) -> TrainState:
    """Step-0 state: ``model.init`` on a zero support set with the seed's init key."""
    return seed_state(exp, cfg.train.seed)


def seed_state(exp: Experiment, seed, *, learner=None, optimizer=None) -> TrainState:
    """:func:`initial_state` of ``seed`` (an int or a traced int32: a population's members
    are ``vmap``-ed over it), with ``exp``'s learner and optimizer unless given."""
    learner = exp.learner if learner is None else learner
    optimizer = exp.optimizer if optimizer is None else optimizer

    def init(seed, example):
        init_key, run_key = jax.random.split(jax.random.key(seed))
        params = exp.model.init(init_key, example)
        return init_train_state(learner, optimizer, params, key=run_key)

    return run_once_jit(init)(seed, jnp.asarray(exp.source.example_input()))


# XLA compiler options of a program that runs once or a few times on small shapes: no backend
# (LLVM) optimisation. Exact all the same (XLA's CPU backend does no fast-math either way).
RUN_ONCE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def run_once_jit(fn):
    """``jax.jit`` for a program that runs once per process (initialisation).

    Run eagerly, ``model.init`` and the learner's and optimizer's ``init`` dispatch and compile
    op by op (100+ small XLA programs). Jitted as one program with XLA's backend optimisations
    off, it compiles 5-8x faster (CPU, 2026-12-07: 0.6 vs 4.8 s for Conv-4 MAML, 2.0 vs 11.0 s
    for SNAIL), and running it unoptimised costs milliseconds. Inside a trace (``eval_shape``,
    ``vmap``'s caller ``jit``) a nested jit takes no compiler options: a plain one is used.
    """
    if _at_top_level():
        return jax.jit(fn, compiler_options=RUN_ONCE_COMPILER_OPTIONS)
    return jax.jit(fn)


def _at_top_level() -> bool:
    # jax has no public form of this; without it, every call gets the plain jit (slower to
    # compile, same result).
    clean = getattr(jax_core, "trace_state_clean", None)
    return bool(clean is not None and clean())


def check_buildable(cfg: ExperimentConfig, exp: Experiment) -> None:
    """Build the initial state abstractly (``jax.eval_shape``): catches model options that
    pass the type checks but cannot make a model for this data, before a workdir is touched.

    Raises:
      ConfigError: naming the model section and the error.
    """
    try:
        jax.eval_shape(lambda: initial_state(cfg, exp))
    except Exception as err:
        opts = ", ".join(f"{k}={v!r}" for k, v in cfg.model.options)
        raise ConfigError(
            "config",
            "model",
            f"{cfg.model.name}({opts}) cannot be built for this data: {type(err).__name__}: {err}",
        ) from None
