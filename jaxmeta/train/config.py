"""Typed experiment configs: the schema, and YAML loading (base files, overrides, plug-ins).

A config file has these sections; every key is optional except where noted and an unknown
key, a wrong type or an impossible value is a :class:`ConfigError` that names the key and the
file it came from (or ``--set`` for command-line overrides), raised before anything is
compiled. What the named sections may contain is checked against their registries by
:mod:`jaxmeta.train.build`, which :func:`load_config` runs::

    base: omniglot_base.yaml        # optional: start from this file (relative to this one),
                                    #   then apply what this file says (see "Base files")
    plugins: [my_dataset.py]        # optional: modules or .py files (relative to this file)
                                    #   imported first; they register datasets, algorithms...
    name: omniglot_maml_5w1s        # free text, used in logs (default: the file's name)
    data:                           # the task source: name + its constructor's keywords
      name: omniglot                # jaxmeta.data.registry (omniglot | sinusoid | plug-ins)
      ways: 5                       # N (classification only)
      shots: 1                      # K support examples per class (sinusoid: points)
      queries: 15                   # query examples per class (sinusoid: points)
      scheme: maml                  # omniglot: maml (1100/100/423) | vinyals (1028/172/423)
                                    #   | lake; rotations, image_size, data_dir, manual_dir,
                                    #   download, resize (lanczos | binary),
                                    #   distinct_characters, eval_rotations, train_on_val:
                                    #   see jaxmeta.data.omniglot.OmniglotTasks
    model:                          # name + keyword arguments of the Flax module
      name: conv4                   # jaxmeta.models.MODELS
      filters: 64                   # any field of the module; checked against it (integers
                                    #   are sizes, >= 1); the model is built abstractly
                                    #   before training starts
    algorithm:                      # name + keyword arguments of the factory
      name: maml                    # jaxmeta.algorithms.ALGORITHMS
      inner_lr: 0.4                 # any keyword of the factory, checked against
      inner_steps: 1                #   its signature (inspect.signature)
      eval_inner_steps: 10
    optimizer:                      # name + keyword arguments of the optax alias
      name: adam
      learning_rate: 0.001
      grad_clip_norm: null          # optional optax.clip_by_global_norm before it
      grad_clip_value: null         # optional optax.clip (each entry to [-v, v]) before it
      schedule: null                # optional learning-rate schedule (optax), e.g.
                                    #   {name: linear, end_value: 0.0}  (to 0 at train.steps)
                                    #   {name: exponential, transition_steps: 2000,
                                    #    decay_rate: 0.5, staircase: true}
                                    #   {name: cosine, alpha: 0.0}
                                    #   {name: warmup_cosine, warmup_steps: 500, end_value: 0.0}
                                    #   peak/initial value = learning_rate; step counts
                                    #   default to train.steps (see SCHEDULES)
    train:
      steps: 60000                  # meta-steps
      meta_batch_size: 32           # tasks per meta-step
      seed: 0
      steps_per_call: 10            # meta-steps fused into one jitted lax.scan
      log_every: 10                 # JSONL/TensorBoard row every N steps (mean)
      eval_every: 1000              # validation every N steps (0: never)
      checkpoint_every: 1000        # orbax checkpoint every N steps
      keep_checkpoints: 3           # latest checkpoints kept (+ the best one)
      tensorboard: false            # needs tensorboardX
      plot: true                    # learning-curve PNG at the end (matplotlib)
    eval:
      episodes: 600                 # test episodes
      val_episodes: null            # validation episodes (default: episodes)
      queries: null                 # queries per class at evaluation (default: data.queries)
      ways: null                    # N at evaluation (default: data.ways); a different value
                                    #   needs a head-free model and algorithm (ProtoNets,
                                    #   Matching Nets: e.g. 60-way training, 5-way test)
      shots: null                   # K at evaluation (default: data.shots)
      batch_size: 50                # evaluation chunk: episodes vmapped together (lax.map)
      seed: 0                       # the fixed evaluation episodes
      inner_steps: null             # override the algorithm's evaluation inner steps
    execution:                      # how the computation is mapped (results unchanged)
      task_chunk: auto              # tasks of a meta-batch: auto (per backend) | null (all
                                    #   vmapped) | b (chunks of b in a lax.map); was
                                    #   algorithm.task_batch_size (still read, with a warning)
    mesh:                           # data parallelism over the task axis (jaxmeta.sharding)
      devices: null                 # devices of the task mesh: null = 1 (all of them in a
                                    #   multi-process run), N = the first N, 0 = all
      sampler: constraint           # constraint (same episodes as 1 device) | shard_map
      shard_params: false           # split large weights and their Adam moments over the
                                    #   devices (FSDP-style) instead of replicating them
    distributed:                    # multi-process runs (jax.distributed.initialize)
      coordinator_address: null     # host:port of process 0 (else $JAXMETA_COORDINATOR_ADDRESS)
      num_processes: null           # (else $JAXMETA_NUM_PROCESSES)
      process_id: null              # (else $JAXMETA_PROCESS_ID)
      auto: false                   # let JAX detect the cluster (SLURM, Open MPI, TPU)

Base files. ``base: FILE`` starts from ``FILE`` (itself possibly with a base; a cycle is an
error), then applies this file: a section is merged key by key, except that a ``data``,
``model``, ``algorithm`` or ``optimizer`` section with another ``name`` replaces the base's
section; values (lists, ``optimizer.schedule``) are replaced whole; ``name`` is never
inherited; ``plugins`` add up. The resolved config (what a workdir and its checkpoints save)
has no ``base``: it spells everything out.

Overrides (``--set key=value``, value parsed as YAML) use the same dotted keys, e.g.
``train.steps=60000``, ``train.seed=1``, ``eval.episodes=600``,
``data.manual_dir=/path/to/zips``, ``algorithm.inner_lr=0.1``.
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from jaxmeta import yaml_io
from jaxmeta.execution import check_task_chunk
from jaxmeta.plugins import PluginError, load_plugins
from jaxmeta.sharding import SAMPLERS
from jaxmeta.train.build import check_config
from jaxmeta.train.population import check_sweep

# The schema: its own module since the loader imports the builder; importable from here too.
from jaxmeta.train.schema import (  # noqa: F401
    DEFAULT_NAMED,
    NAMED_SECTIONS,
    SECTIONS,
    TOP_LEVEL,
    ConfigError,
    DataConfig,
    DistributedConfig,
    EvalConfig,
    ExecutionConfig,
    ExperimentConfig,
    MeshConfig,
    NamedConfig,
    TrainConfig,
    _train_dict,
    replace,
)
from jaxmeta.train.sweep_config import parse_sweep
from jaxmeta.yaml_io import check_type, describe_type, did_you_mean

# --------------------------------------------------------------------------- loading


def find_config(path: str | Path) -> Path:
    """Resolve a ``--config`` argument.

    Tried in order: the path as given; relative to the repository root (so
    ``configs/omniglot/maml_5w1s.yaml`` works from anywhere in a source checkout); the
    configs shipped inside the package (``jaxmeta/configs``), if any.

    Raises:
      FileNotFoundError: nowhere to be found (the message lists where it looked).
    """
    p = Path(path).expanduser()
    tried = [p]
    if p.is_file():
        return p
    if not p.is_absolute():
        pkg = Path(__file__).resolve().parents[1]
        rel = Path(*p.parts[1:]) if p.parts and p.parts[0] == "configs" else p
        for cand in (pkg.parent / "configs" / rel, pkg / "configs" / rel):
            tried.append(cand)
            if cand.is_file():
                return cand
    raise FileNotFoundError(
        f"config {str(path)!r} not found (looked at: {', '.join(str(t) for t in tried)})"
    )


def _read_yaml(file: Path, source: str) -> dict[str, Any]:
    try:
        raw = yaml_io.load(yaml_io.read_text(file))
    except yaml_io.NotUtf8Error as e:
        raise ConfigError(source, "<encoding>", str(e)) from None
    except OSError as e:
        raise ConfigError(source, "<file>", f"cannot read it: {e.strerror or e}") from None
    except yaml_io.DuplicateKeyError as e:
        raise ConfigError(source, e.key, e.reason) from None
    except yaml.YAMLError as e:
        raise ConfigError(source, None, f"not valid YAML: {yaml_io.describe_error(e)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(source, "<top level>", "must be a mapping of sections")
    return raw


def _as_plugin(entry: Any, file: Path, source: str) -> str:
    """A plug-in entry as saved: module names as given, ``.py`` paths made absolute."""
    if not isinstance(entry, str) or not entry:
        raise ConfigError(source, "plugins", f"expected module names or .py files, got {entry!r}")
    if entry.endswith(".py"):
        path = Path(entry).expanduser()
        return str(path if path.is_absolute() else (file.parent / path).resolve())
    return entry


def read_config_file(
    path: str | Path, *, source: str | None = None, _seen: tuple[Path, ...] = ()
) -> tuple[dict[str, Any], dict[str, str]]:
    """A config file with its ``base`` chain resolved: ``(raw dict, origins)``.

    ``origins`` maps ``section`` and ``section.key`` to the file that set them. See the
    module docstring for how a file extends its base.

    Raises:
      ConfigError: unreadable file, bad YAML, a missing base or a cycle of bases.
      FileNotFoundError: ``path`` does not exist.
    """
    file = find_config(path) if not _seen else Path(path)
    source = source or str(path)
    resolved = file.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise ConfigError(source, "base", f"a cycle of base files: {chain}")
    raw = _read_yaml(file, source)
    base_name = raw.pop("base", None)
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if base_name is not None:
        if not isinstance(base_name, str):
            raise ConfigError(source, "base", f"expected a file name, got {base_name!r}")
        base_path = (file.parent / Path(base_name).expanduser()).resolve()
        if not base_path.is_file():
            raise ConfigError(source, "base", f"base file {base_path} not found")
        merged, origins = read_config_file(
            base_path, source=str(base_path), _seen=(*_seen, resolved)
        )
        merged.pop("name", None)  # a name is never inherited
        origins.pop("name", None)
    for key, value in raw.items():
        if key == "plugins":
            if not isinstance(value, list):
                value = [value]
            merged["plugins"] = [
                *merged.get("plugins", []),
                *(_as_plugin(v, file, source) for v in value),
            ]
            origins["plugins"] = source
            continue
        old = merged.get(key)
        same_entry = not (
            key in NAMED_SECTIONS
            and isinstance(value, Mapping)
            and "name" in value
            and isinstance(old, Mapping)
            and value["name"] != old.get("name", DEFAULT_NAMED[key])
        )
        if isinstance(value, Mapping) and isinstance(old, Mapping) and same_entry:
            merged[key] = {**old, **value}
        else:
            merged[key] = dict(value) if isinstance(value, Mapping) else value
            for k in [k for k in origins if k.startswith(f"{key}.")]:
                del origins[k]
        origins[key] = source
        if isinstance(value, Mapping):
            origins.update({f"{key}.{k}": source for k in value})
    if "name" not in merged:
        merged["name"] = file.stem
        origins["name"] = source
    return merged, origins


def load_config(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    trust_plugins: bool | tuple[str, ...] | list[str] = True,
) -> ExperimentConfig:
    """Read a YAML config (and its base files), apply ``key=value`` overrides, import its
    plug-ins, validate everything (:func:`jaxmeta.train.build.check_config`).

    Args:
      path: the YAML file (see :func:`find_config` for how it is resolved).
      overrides: ``"section.key=value"`` strings; ``value`` is parsed as YAML.
      trust_plugins: ``True`` (a config the user chose): import its plug-ins. ``False`` or
        a list (a run folder's config): only plug-ins shipped in jaxmeta, already imported
        or listed (:func:`jaxmeta.plugins.load_plugins`); another is a ConfigError.

    Returns:
      The validated, frozen :class:`ExperimentConfig`.

    Raises:
      ConfigError: unknown key, wrong type or impossible value (names key and source).
      FileNotFoundError: no such config.
    """
    raw, origins = read_config_file(path)
    return config_from_dict(
        raw, source=str(path), overrides=overrides, origins=origins, trust_plugins=trust_plugins
    )


def parse_override(item: str) -> tuple[str, Any]:
    """``"train.steps=100"`` -> ``("train.steps", 100)`` (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError("--set", item, "expected key=value, e.g. train.steps=100")
    key, value = item.split("=", 1)
    key = key.strip()
    try:
        parsed = yaml_io.load(value) if value.strip() else None
    except yaml_io.DuplicateKeyError as e:
        raise ConfigError("--set", f"{key}.{e.key}", e.reason) from None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


# Keys that moved: (section, old key) -> (section, new key).
MOVED_KEYS = {("algorithm", "task_batch_size"): ("execution", "task_chunk")}


def migrate(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """Rewrite keys that moved (:data:`MOVED_KEYS`) in a raw config, in place.

    Returns the ``(old, new)`` dotted keys rewritten. A value already at the new place wins.
    """
    done = []
    for (sec, key), (new_sec, new_key) in MOVED_KEYS.items():
        section = raw.get(sec)
        if isinstance(section, dict) and key in section:
            value = section.pop(key)
            target = raw.setdefault(new_sec, {})
            if isinstance(target, dict):
                target.setdefault(new_key, value)
            done.append((f"{sec}.{key}", f"{new_sec}.{new_key}"))
    return done


def config_from_dict(
    raw: Mapping[str, Any],
    *,
    source: str = "<dict>",
    overrides: list[str] | tuple[str, ...] = (),
    origins: Mapping[str, str] | None = None,
    trust_plugins: bool | tuple[str, ...] | list[str] = True,
) -> ExperimentConfig:
    """Validate a nested dict (as read from YAML) plus overrides into a config.

    ``trust_plugins``: as :func:`load_config` (``False`` for a dict read from a run folder
    or a checkpoint: nothing outside jaxmeta that is not already imported is imported).

    Each value remembers where it came from (``origins``, else ``source``; ``--set`` for an
    overridden key), so an error names the right file. Plug-ins are imported before the
    registries are consulted; the registry checks are :func:`jaxmeta.train.build.check_config`.
    """
    raw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    raw.pop("base", None)
    origin: dict[str, str] = dict(origins or {})
    origin.setdefault("", source)
    _apply_overrides(raw, overrides, origin, source)
    for old, new in migrate(raw):
        origin[new] = origin.get(old, source)
        warnings.warn(
            f"{origin[new]}: {old} is now {new} (how tasks are mapped is an execution "
            f"setting, not an algorithm's); the config was read as {new}",
            FutureWarning,
            stacklevel=2,
        )

    def src(key: str) -> str:
        return origin.get(key) or origin.get(key.split(".")[0]) or source

    for key in raw:
        if key not in TOP_LEVEL and key not in SECTIONS:
            raise ConfigError(
                src(key), key, f"unknown section; expected name, plugins, {', '.join(SECTIONS)}"
            )
    for key in SECTIONS:
        if raw.get(key) is not None and not isinstance(raw[key], Mapping):
            raise ConfigError(src(key), key, f"must be a mapping, got {raw[key]!r}")
    name = raw.get("name") or Path(source).stem
    if not isinstance(name, str):
        raise ConfigError(src("name"), "name", f"must be a string, got {name!r}")
    plugins = raw.get("plugins") or []
    if not isinstance(plugins, list | tuple) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(src("plugins"), "plugins", f"expected a list, got {plugins!r}")
    allow = None if trust_plugins is True else tuple(trust_plugins or ())
    try:
        load_plugins(plugins, allow=allow)
    except PluginError as err:
        raise ConfigError(src("plugins"), "plugins", str(err)) from None

    section = lambda k: raw.get(k) or {}
    cfg = ExperimentConfig(
        name=name,
        data=_named_section("data", section("data"), src, cls=DataConfig),
        model=_named_section("model", section("model"), src),
        algorithm=_named_section("algorithm", section("algorithm"), src),
        optimizer=_named_section("optimizer", section("optimizer"), src),
        train=_dataclass_section(TrainConfig, "train", section("train"), src),
        eval=_dataclass_section(EvalConfig, "eval", section("eval"), src),
        execution=_dataclass_section(ExecutionConfig, "execution", section("execution"), src),
        mesh=_dataclass_section(MeshConfig, "mesh", section("mesh"), src),
        distributed=_dataclass_section(
            DistributedConfig, "distributed", section("distributed"), src
        ),
        plugins=tuple(plugins),
        sweep=parse_sweep(raw.get("sweep"), src),
        origins=origin,
    )
    _check_values(cfg, src)
    # The registries (datasets, models, algorithms, optax) are consulted by the builder.
    cfg = check_config(cfg)
    if cfg.sweep:
        check_sweep(cfg)
    return cfg


# --------------------------------------------------------------------------- validation


def _apply_overrides(raw: dict[str, Any], overrides, origin: dict[str, str], source: str) -> None:
    """``--set key=value`` items into ``raw`` (in place), each recorded in ``origin``."""
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        if len(parts) == 1 and parts[0] in ("name", "plugins"):
            raw[parts[0]] = value
        elif len(parts) >= 2 and parts[0] == "sweep":
            sweep = raw.setdefault("sweep", {})
            if not isinstance(sweep, dict):
                raise ConfigError(source, "sweep", "must be a mapping")
            sweep[".".join(parts[1:])] = value
        elif len(parts) == 2 and parts[0] in SECTIONS:
            section = raw.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ConfigError(source, parts[0], "must be a mapping")
            section[parts[1]] = value
        else:
            hint = did_you_mean(parts[0], SECTIONS) if len(parts) == 2 else ""
            raise ConfigError(
                "--set",
                key,
                f"unknown key{hint}; use section.key with section one of " + ", ".join(SECTIONS),
            )
        origin[key] = "--set"


def _dataclass_section(cls, section: str, raw: Mapping[str, Any], src: Callable[[str], str]):
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{section}.{key}"
        if key not in fields:
            raise ConfigError(
                src(dotted),
                dotted,
                f"unknown key{did_you_mean(key, fields)}; valid keys: {', '.join(sorted(fields))}",
            )
        ok, value = check_type(value, hints[key])
        if not ok:
            raise ConfigError(
                src(dotted),
                dotted,
                f"expected {describe_type(hints[key])}, got {value!r} ({type(value).__name__})",
            )
        kwargs[key] = value
    return cls(**kwargs)


def _named_section(section: str, raw: Mapping[str, Any], src, *, cls=NamedConfig) -> NamedConfig:
    raw = dict(raw)
    name = raw.pop("name", DEFAULT_NAMED[section])
    if not isinstance(name, str):
        raise ConfigError(
            src(f"{section}.name"), f"{section}.name", f"must be a string, got {name!r}"
        )
    opts = []
    for k, v in raw.items():
        if isinstance(v, list):
            v = tuple(v)
        opts.append((k, v))
    return cls(name=name, options=tuple(opts))


def _positive(cfg_section, section: str, keys, src, *, minimum: int = 1) -> None:
    for key in keys:
        value = getattr(cfg_section, key)
        if value is not None and value < minimum:
            dotted = f"{section}.{key}"
            word = "positive" if minimum == 1 else f">= {minimum}"
            raise ConfigError(src(dotted), dotted, f"must be {word}, got {value}")


def _check_values(cfg: ExperimentConfig, src) -> None:
    """The checks that need no registry: sizes, intervals, mesh, task chunk."""
    t, e = cfg.train, cfg.eval
    _positive(
        t,
        "train",
        (
            "steps",
            "meta_batch_size",
            "steps_per_call",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
        ),
        src,
    )
    _positive(t, "train", ("eval_every", "seed"), src, minimum=0)
    _positive(t, "train", ("seeds",), src)
    _positive(e, "eval", ("episodes", "val_episodes", "queries", "shots", "batch_size"), src)
    _positive(e, "eval", ("seed", "inner_steps"), src, minimum=0)
    for key in ("checkpoint_every", "eval_every"):
        value = getattr(t, key)
        if value and value % t.log_every:
            raise ConfigError(
                src(f"train.{key}"),
                f"train.{key}",
                f"must be a multiple of train.log_every ({t.log_every}), got {value}: "
                "metric rows average whole log windows, which a resume must not split",
            )
    try:
        check_task_chunk(cfg.execution.task_chunk)
    except (TypeError, ValueError) as err:
        raise ConfigError(src("execution.task_chunk"), "execution.task_chunk", str(err)) from None
    m, dist = cfg.mesh, cfg.distributed
    _positive(m, "mesh", ("devices",), src, minimum=0)
    if m.devices and t.meta_batch_size % m.devices:
        raise ConfigError(
            src("mesh.devices"),
            "mesh.devices",
            f"train.meta_batch_size {t.meta_batch_size} is not divisible by mesh.devices "
            f"{m.devices}: every device must get the same number of tasks",
        )
    if m.sampler not in SAMPLERS:
        raise ConfigError(
            src("mesh.sampler"),
            "mesh.sampler",
            f"unknown sampler {m.sampler!r}; available: {', '.join(SAMPLERS)}",
        )
    _positive(dist, "distributed", ("num_processes",), src)
    _positive(dist, "distributed", ("process_id",), src, minimum=0)
    if (
        dist.num_processes is not None
        and dist.process_id is not None
        and dist.process_id >= dist.num_processes
    ):
        raise ConfigError(
            src("distributed.process_id"),
            "distributed.process_id",
            f"must be < distributed.num_processes ({dist.num_processes}), got {dist.process_id}",
        )
    addr = dist.coordinator_address
    if addr is not None and (":" not in addr or not addr.rsplit(":", 1)[1].isdigit()):
        raise ConfigError(
            src("distributed.coordinator_address"),
            "distributed.coordinator_address",
            f"expected host:port, got {addr!r}",
        )
