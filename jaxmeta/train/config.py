"""Typed experiment configs: YAML validated into frozen dataclasses.

A config file has six sections; every key is optional except where noted and an
unknown key, a wrong type or an impossible value is a :class:`ConfigError` that names
the key and the file (or ``--set`` for command-line overrides), raised before anything
is compiled::

    name: omniglot_maml_5w1s        # free text, used in logs
    data:                           # the task source (jaxmeta.data.registry)
      name: omniglot                # omniglot | sinusoid
      ways: 5                       # N (classification only)
      shots: 1                      # K support examples per class (sinusoid: points)
      queries: 15                   # query examples per class (sinusoid: points)
      scheme: maml                  # maml (1100/100/423) | vinyals (1028/172/423) | lake
      rotations: true               # x4 classes by 90/180/270 degree rotations
      image_size: 28
      data_dir: null                # TFDS data dir (default ~/tensorflow_datasets)
      manual_dir: null              # folder with the Omniglot zips (offline preparation)
      download: true
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
      schedule: null                # optional learning-rate schedule (optax), e.g.
                                    #   {name: linear, end_value: 0.0}  (to 0 at train.steps)
                                    #   {name: exponential, transition_steps: 2000,
                                    #    decay_rate: 0.5, staircase: true}
                                    #   {name: cosine, alpha: 0.0}
                                    #   {name: warmup_cosine, warmup_steps: 500, end_value: 0.0}
                                    #   peak/initial value = learning_rate; step counts
                                    #   default to train.steps (see SCHEDULES)
    train:
      steps: 60000                  # meta-iterations
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
      batch_size: 50                # episodes per vmapped chunk (lax.map)
      seed: 0                       # the fixed evaluation episodes
      inner_steps: null             # override the algorithm's evaluation inner steps
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

Overrides (``--set key=value``, value parsed as YAML) use the same dotted keys, e.g.
``train.steps=60000``, ``train.seed=1``, ``eval.episodes=600``,
``data.manual_dir=/path/to/zips``, ``algorithm.inner_lr=0.1``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import numbers
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from jaxmeta import yaml_io

SECTIONS = (
    "data",
    "model",
    "algorithm",
    "optimizer",
    "train",
    "eval",
    "execution",
    "mesh",
    "distributed",
)

OMNIGLOT_DRAWERS = 20


def omniglot_splits() -> dict[str, dict[str, int]]:
    """Characters per split of each scheme (train/val/test names; no data is read)."""
    from jaxmeta.data.omniglot import split_counts

    lake_alias = {"background": "train", "evaluation": "test"}
    return {
        scheme: {lake_alias.get(k, k): v for k, v in splits.items()}
        for scheme, splits in split_counts(rotations=False).items()
    }


DATASETS = ("omniglot", "sinusoid")


class ConfigError(ValueError):
    """A bad config value; the message names the source (file or ``--set``) and the key."""

    def __init__(self, source: str, key: str, message: str):
        self.source, self.key = source, key
        super().__init__(f"{source}: {key}: {message}")


# --------------------------------------------------------------------------- schema


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Task source. See the module docstring for the meaning of each key."""

    name: str = "omniglot"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    scheme: str = "maml"
    rotations: bool = True
    image_size: int = 28
    data_dir: str | None = None
    manual_dir: str | None = None
    download: bool = True


@dataclasses.dataclass(frozen=True)
class NamedConfig:
    """A registry name plus keyword arguments (model, algorithm, optimizer sections)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.kwargs}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 60000
    meta_batch_size: int = 32
    seed: int = 0
    steps_per_call: int = 10
    log_every: int = 10
    eval_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    tensorboard: bool = False
    plot: bool = True


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    episodes: int = 600
    val_episodes: int | None = None
    queries: int | None = None
    ways: int | None = None
    shots: int | None = None
    batch_size: int = 50
    seed: int = 0
    inner_steps: int | None = None


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    """How the computation is mapped, without changing what it computes.

    ``task_chunk``: how the tasks of a meta-batch run (:mod:`jaxmeta.execution`): ``auto``
    (per backend), ``null`` (all vmapped) or ``b`` (chunks of ``b`` tasks in a ``lax.map``).
    """

    task_chunk: int | str | None = "auto"


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Task-axis data parallelism (see :mod:`jaxmeta.sharding`)."""

    devices: int | None = None
    sampler: str = "constraint"
    shard_params: bool = False


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """``jax.distributed.initialize`` arguments; ``None`` falls back to ``$JAXMETA_*``."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: everything :func:`jaxmeta.train.train_and_evaluate` reads."""

    name: str
    data: DataConfig
    model: NamedConfig
    algorithm: NamedConfig
    optimizer: NamedConfig
    train: TrainConfig
    eval: EvalConfig
    execution: ExecutionConfig = ExecutionConfig()
    mesh: MeshConfig = MeshConfig()
    distributed: DistributedConfig = DistributedConfig()

    @property
    def classification(self) -> bool:
        return self.data.name != "sinusoid"

    @property
    def eval_ways(self) -> int:
        """N of the evaluation episodes (``eval.ways``, default ``data.ways``)."""
        return self.data.ways if self.eval.ways is None else self.eval.ways

    @property
    def eval_shots(self) -> int:
        """K of the evaluation episodes (``eval.shots``, default ``data.shots``)."""
        return self.data.shots if self.eval.shots is None else self.eval.shots

    @property
    def eval_queries(self) -> int:
        """Queries per class of the evaluation episodes (``eval.queries`` or ``data.queries``)."""
        return self.data.queries if self.eval.queries is None else self.eval.queries

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (the resolved config written to the workdir)."""
        return {
            "name": self.name,
            "data": dataclasses.asdict(self.data),
            "model": self.model.to_dict(),
            "algorithm": self.algorithm.to_dict(),
            "optimizer": self.optimizer.to_dict(),
            "train": dataclasses.asdict(self.train),
            "eval": dataclasses.asdict(self.eval),
            "execution": dataclasses.asdict(self.execution),
            "mesh": dataclasses.asdict(self.mesh),
            "distributed": dataclasses.asdict(self.distributed),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


DEFAULT_NAMED = {
    "model": "conv4",
    "algorithm": "maml",
    "optimizer": "adam",
}

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


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a YAML config, apply ``key=value`` overrides and validate everything.

    Args:
      path: the YAML file (see :func:`find_config` for how it is resolved).
      overrides: ``"section.key=value"`` strings; ``value`` is parsed as YAML.

    Returns:
      The validated, frozen :class:`ExperimentConfig`.

    Raises:
      ConfigError: unknown key, wrong type or impossible value (names key and source).
      FileNotFoundError: no such config.
    """
    file = find_config(path)
    source = str(path)
    try:
        raw = yaml_io.load(yaml_io.read_text(file))
    except yaml_io.NotUtf8Error as e:
        raise ConfigError(source, "<encoding>", str(e)) from None
    except OSError as e:
        raise ConfigError(source, "<file>", f"cannot read it: {e.strerror or e}") from None
    except yaml_io.DuplicateKeyError as e:
        raise ConfigError(source, e.key, e.reason) from None
    except yaml.YAMLError as e:
        raise ConfigError(source, "<yaml>", f"not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, "<top level>", "must be a mapping of sections")
    return config_from_dict(raw, source=source, overrides=overrides)


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


def config_from_dict(
    raw: Mapping[str, Any],
    *,
    source: str = "<dict>",
    overrides: list[str] | tuple[str, ...] = (),
) -> ExperimentConfig:
    """Validate a nested dict (as read from YAML) plus overrides into a config.

    Each value remembers where it came from, so an error names ``--set`` for an
    overridden key and the file otherwise.
    """
    raw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in raw.items()}
    origin: dict[str, str] = {}
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        if len(parts) == 1 and parts[0] == "name":
            raw["name"] = value
        elif len(parts) == 2 and parts[0] in SECTIONS:
            section = raw.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ConfigError(source, parts[0], "must be a mapping")
            section[parts[1]] = value
        else:
            raise ConfigError(
                "--set",
                key,
                "unknown key; use section.key with section one of " + ", ".join(SECTIONS),
            )
        origin[key] = "--set"

    for old, new in migrate(raw):
        origin[new] = origin.get(old, source)
        warnings.warn(
            f"{origin[new]}: {old} is now {new} (how tasks are mapped is an execution "
            f"setting, not an algorithm's); the config was read as {new}",
            FutureWarning,
            stacklevel=2,
        )

    def src(key: str) -> str:
        return origin.get(key, source)

    for key in raw:
        if key != "name" and key not in SECTIONS:
            raise ConfigError(
                src(key), key, f"unknown section; expected name, {', '.join(SECTIONS)}"
            )
    for key in SECTIONS:
        if raw.get(key) is not None and not isinstance(raw[key], Mapping):
            raise ConfigError(src(key), key, f"must be a mapping, got {raw[key]!r}")
    name = raw.get("name") or Path(source).stem
    if not isinstance(name, str):
        raise ConfigError(src("name"), "name", f"must be a string, got {name!r}")

    data = _dataclass_section(DataConfig, "data", raw.get("data") or {}, src)
    train = _dataclass_section(TrainConfig, "train", raw.get("train") or {}, src)
    evalc = _dataclass_section(EvalConfig, "eval", raw.get("eval") or {}, src)
    model = _named_section("model", raw.get("model") or {}, src)
    algorithm = _named_section("algorithm", raw.get("algorithm") or {}, src)
    optimizer = _named_section("optimizer", raw.get("optimizer") or {}, src)
    execution = _dataclass_section(ExecutionConfig, "execution", raw.get("execution") or {}, src)
    mesh = _dataclass_section(MeshConfig, "mesh", raw.get("mesh") or {}, src)
    dist = _dataclass_section(DistributedConfig, "distributed", raw.get("distributed") or {}, src)
    cfg = ExperimentConfig(
        name, data, model, algorithm, optimizer, train, evalc, execution, mesh, dist
    )
    _check_values(cfg, src)
    _check_registries(cfg, src)
    return cfg


# --------------------------------------------------------------------------- validation


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def check_type(value: Any, tp: Any) -> tuple[bool, Any]:
    """Does ``value`` fit annotation ``tp``? Returns ``(ok, coerced value)``.

    Handles the annotations configs use (int, float, bool, str, ``X | None``, tuples
    and sequences of those); anything else is accepted as is. ``bool`` is not an int
    here, an int is a float, and a string such as ``"1e-3"`` is a float (YAML 1.1
    reads ``1e-3`` without a dot as a string).
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            return (type(None) in args), value
        for a in args:
            if a is type(None):
                continue
            ok, v = check_type(value, a)
            if ok:
                return True, v
        return False, value
    if tp is Any or tp is inspect.Parameter.empty:
        return True, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return ok, (int(value) if ok else value)
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin in (tuple, list, collections.abc.Sequence) or tp in (tuple, list):
        if not isinstance(value, list | tuple):
            return False, value
        args = typing.get_args(tp)
        item = args[0] if args and (len(args) == 1 or args[-1] is Ellipsis) else Any
        out = []
        for v in value:
            ok, v = check_type(v, item)
            if not ok:
                return False, value
            out.append(v)
        return True, tuple(out)
    return True, value


def _dataclass_section(cls, section: str, raw: Mapping[str, Any], src: Callable[[str], str]):
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{section}.{key}"
        if key not in fields:
            raise ConfigError(
                src(dotted), dotted, f"unknown key; valid keys: {', '.join(sorted(fields))}"
            )
        ok, value = check_type(value, hints[key])
        if not ok:
            raise ConfigError(
                src(dotted),
                dotted,
                f"expected {_describe(hints[key])}, got {value!r} ({type(value).__name__})",
            )
        kwargs[key] = value
    return cls(**kwargs)


def _describe(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return _type_name(tp)


def _named_section(section: str, raw: Mapping[str, Any], src) -> NamedConfig:
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
    return NamedConfig(name=name, options=tuple(opts))


def _positive(cfg_section, section: str, keys, src, *, minimum: int = 1) -> None:
    for key in keys:
        value = getattr(cfg_section, key)
        if value is not None and value < minimum:
            dotted = f"{section}.{key}"
            word = "positive" if minimum == 1 else f">= {minimum}"
            raise ConfigError(src(dotted), dotted, f"must be {word}, got {value}")


def _check_values(cfg: ExperimentConfig, src) -> None:
    d, t, e = cfg.data, cfg.train, cfg.eval
    if d.name not in DATASETS:
        raise ConfigError(
            src("data.name"),
            "data.name",
            f"unknown dataset {d.name!r}; available: {', '.join(DATASETS)}",
        )
    _positive(d, "data", ("shots", "queries", "image_size"), src)
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
    _positive(e, "eval", ("episodes", "val_episodes", "queries", "shots", "batch_size"), src)
    _positive(e, "eval", ("seed", "inner_steps"), src, minimum=0)
    _check_mesh(cfg, src)
    from jaxmeta.execution import check_task_chunk

    try:
        check_task_chunk(cfg.execution.task_chunk)
    except (TypeError, ValueError) as err:
        raise ConfigError(src("execution.task_chunk"), "execution.task_chunk", str(err)) from None
    for key in ("checkpoint_every", "eval_every"):
        value = getattr(t, key)
        if value and value % t.log_every:
            raise ConfigError(
                src(f"train.{key}"),
                f"train.{key}",
                f"must be a multiple of train.log_every ({t.log_every}), got {value}: "
                "metric rows average whole log windows, which a resume must not split",
            )
    if d.name == "omniglot":
        if d.ways < 2:
            raise ConfigError(
                src("data.ways"), "data.ways", f"must be >= 2 for classification, got {d.ways}"
            )
        schemes = omniglot_splits()
        if d.scheme not in schemes:
            raise ConfigError(
                src("data.scheme"),
                "data.scheme",
                f"unknown split scheme {d.scheme!r}; available: {', '.join(schemes)}",
            )
        if e.ways is not None and e.ways < 2:
            raise ConfigError(
                src("eval.ways"), "eval.ways", f"must be >= 2 for classification, got {e.ways}"
            )
        mult = 4 if d.rotations else 1
        for split, n in schemes[d.scheme].items():
            if split == "val" and not t.eval_every:
                continue
            key = "data.ways" if split == "train" or e.ways is None else "eval.ways"
            ways = d.ways if split == "train" else cfg.eval_ways
            if ways > n * mult:
                raise ConfigError(
                    src(key),
                    key,
                    f"{ways}-way is larger than the {n * mult} classes of the "
                    f"{d.scheme!r} {split} split (rotations={d.rotations})",
                )
        for key, k, q in (
            ("data.queries", d.shots, d.queries),
            ("eval.queries", cfg.eval_shots, cfg.eval_queries),
        ):
            if k + q > OMNIGLOT_DRAWERS:
                what = (
                    "data.shots + data.queries"
                    if key == "data.queries"
                    else ("eval shots + eval queries")
                )
                if key == "eval.queries" and e.queries is None and e.shots is not None:
                    key = "eval.shots"
                raise ConfigError(
                    src(key),
                    key,
                    f"{what} = {k} + {q} = {k + q} > {OMNIGLOT_DRAWERS}: an Omniglot class "
                    f"has only {OMNIGLOT_DRAWERS} drawings",
                )
    elif e.ways is not None:
        raise ConfigError(
            src("eval.ways"), "eval.ways", f"{d.name} is regression: it has no ways; leave it null"
        )


def _check_mesh(cfg: ExperimentConfig, src) -> None:
    from jaxmeta.sharding import SAMPLERS

    m, dist, t = cfg.mesh, cfg.distributed, cfg.train
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


def _check_registries(cfg: ExperimentConfig, src) -> None:
    """Names exist and keyword arguments fit the model / factory / optax signatures."""
    from jaxmeta.algorithms import ALGORITHMS
    from jaxmeta.models import MODELS

    if cfg.model.name not in MODELS:
        raise ConfigError(
            src("model.name"),
            "model.name",
            f"unknown model {cfg.model.name!r}; available: {', '.join(sorted(MODELS))}",
        )
    model_fields = {
        f.name: f
        for f in dataclasses.fields(MODELS[cfg.model.name])
        if f.name not in ("parent", "name")
    }
    hints = _hints(MODELS[cfg.model.name])
    for key, value in cfg.model.options:
        dotted = f"model.{key}"
        if key not in model_fields:
            raise ConfigError(
                src(dotted),
                dotted,
                f"unknown key for model {cfg.model.name!r}; "
                f"valid keys: name, {', '.join(model_fields)}",
            )
        _check_kw(dotted, value, hints.get(key), src)
        # Every integer of a model is a size (filters, widths, steps): 0 or -1 would fail
        # deep inside Flax (ZeroDivisionError) or build an empty layer.
        ints = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, int) and not isinstance(v, bool) and v < 1 for v in ints):
            raise ConfigError(src(dotted), dotted, f"must be positive (a size), got {value!r}")

    if cfg.algorithm.name not in ALGORITHMS:
        raise ConfigError(
            src("algorithm.name"),
            "algorithm.name",
            f"unknown algorithm {cfg.algorithm.name!r}; available: {', '.join(sorted(ALGORITHMS))}",
        )
    factory = ALGORITHMS[cfg.algorithm.name]
    params = algorithm_parameters(factory)
    hints = _hints(factory)
    for key, value in cfg.algorithm.options:
        dotted = f"algorithm.{key}"
        if key not in params or key in ENGINE_SUPPLIED:
            valid = [p for p in params if p not in ENGINE_SUPPLIED]
            raise ConfigError(
                src(dotted),
                dotted,
                f"unknown key for algorithm {cfg.algorithm.name!r}; "
                f"valid keys: name, {', '.join(valid)}",
            )
        _check_kw(dotted, value, hints.get(key), src)
    _check_eval_shapes(cfg, params, src)
    missing = [
        p.name
        for p in params.values()
        if p.default is inspect.Parameter.empty
        and p.name not in ENGINE_SUPPLIED
        and p.name not in cfg.algorithm.kwargs
        and p.name not in DATA_SUPPLIED
    ]
    if missing:
        raise ConfigError(
            src("algorithm"),
            "algorithm",
            f"algorithm {cfg.algorithm.name!r} needs {', '.join(missing)}",
        )
    if not cfg.classification and "loss_fn" not in params:
        raise ConfigError(
            src("algorithm.name"),
            "algorithm.name",
            f"algorithm {cfg.algorithm.name!r} has no loss_fn argument, so it cannot do "
            f"regression ({cfg.data.name})",
        )
    # Construct once with a dummy apply_fn: catches values the factory rejects, still
    # before anything is traced or compiled.
    try:
        learner = build_learner(cfg, apply_fn=lambda p, x: x)
    except (TypeError, ValueError) as err:
        # Name the offending keyword when the factory's message starts with it.
        key = next(
            (f"algorithm.{k}" for k in cfg.algorithm.kwargs if str(err).startswith(k)),
            "algorithm",
        )
        raise ConfigError(src(key), key, f"{cfg.algorithm.name}: {err}") from None
    from jaxmeta.train.evaluate import accepts_steps

    if cfg.eval.inner_steps is not None and not accepts_steps(learner.predict):
        raise ConfigError(
            src("eval.inner_steps"),
            "eval.inner_steps",
            f"algorithm {cfg.algorithm.name!r} does not adapt by inner steps at evaluation "
            "(its predict has no steps= argument); leave eval.inner_steps null",
        )

    import optax

    opt_name = cfg.optimizer.name
    fn = getattr(optax, opt_name, None)
    if fn is None or not callable(fn):
        raise ConfigError(
            src("optimizer.name"), "optimizer.name", f"unknown optax optimizer {opt_name!r}"
        )
    sig = inspect.signature(fn).parameters
    for key, value in cfg.optimizer.options:
        dotted = f"optimizer.{key}"
        if key == "schedule":
            if value is not None:
                from jaxmeta.train.schedules import ScheduleError, schedule_kwargs

                try:
                    schedule_kwargs(value, 1.0, cfg.train.steps)
                except ScheduleError as err:
                    sub = f"{dotted}.{err.key}" if isinstance(value, Mapping) else dotted
                    raise ConfigError(src(dotted), sub, str(err).split(": ", 1)[1]) from None
            continue
        if key == "grad_clip_norm":
            if value is not None:
                _check_kw(dotted, value, float, src)
                if value <= 0:
                    raise ConfigError(src(dotted), dotted, f"must be positive, got {value}")
            continue
        if key not in sig:
            raise ConfigError(
                src(dotted),
                dotted,
                f"unknown key for optax.{opt_name}; valid keys: grad_clip_norm, schedule, "
                f"{', '.join(sig)}",
            )
    lr = cfg.optimizer.kwargs.get("learning_rate")
    if lr is not None:
        ok, lr = check_type(lr, float)
        if not ok or lr <= 0:
            raise ConfigError(
                src("optimizer.learning_rate"),
                "optimizer.learning_rate",
                f"must be a positive number, got {cfg.optimizer.kwargs['learning_rate']!r}",
            )


def _check_kw(dotted: str, value: Any, hint: Any, src) -> None:
    if hint is None:
        return
    ok, _ = check_type(value, hint)
    if not ok:
        raise ConfigError(
            src(dotted),
            dotted,
            f"expected {_describe(hint)}, got {value!r} ({type(value).__name__})",
        )


def _hints(obj) -> dict[str, Any]:
    target = getattr(obj, "func", obj)  # functools.partial
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: skip type checks, keep name checks
        return {}


# Arguments of an algorithm factory that the engine supplies itself.
ENGINE_SUPPLIED = ("apply_fn", "loss_fn")
# Arguments filled from the data section when a factory asks for them and the config
# does not set them (e.g. prototype-based learners that need N and K at build time).
DATA_SUPPLIED = ("ways", "shots", "queries", "num_classes", "n_way", "k_shot")


WAYS_KEYS = ("ways", "n_way", "num_classes")
SHOTS_KEYS = ("shots", "k_shot")


def eval_differs(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The DATA_SUPPLIED arguments whose evaluation value differs from training's."""
    out: tuple[str, ...] = ()
    if cfg.classification and cfg.eval_ways != cfg.data.ways:
        out += WAYS_KEYS
    if cfg.eval_shots != cfg.data.shots:
        out += SHOTS_KEYS
    if cfg.eval_queries != cfg.data.queries:
        out += ("queries",)
    return out


def _check_eval_shapes(cfg: ExperimentConfig, params, src) -> None:
    """eval.ways / eval.shots that differ from data.* need a learner that allows it."""
    differs = eval_differs(cfg)
    for key, names, value, train_value in (
        ("eval.ways", WAYS_KEYS, cfg.eval_ways, cfg.data.ways),
        ("eval.shots", SHOTS_KEYS, cfg.eval_shots, cfg.data.shots),
    ):
        if names[0] not in differs:
            continue
        for name in names:
            p = params.get(name)
            fixed = cfg.algorithm.kwargs.get(name)
            if p is None or (p.default is not inspect.Parameter.empty and fixed is None):
                continue
            raise ConfigError(
                src(key),
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
                src("eval.ways"),
                "eval.ways",
                f"model {cfg.model.name!r} has a {v}-way output head ({k}={v}), so it cannot "
                f"evaluate {cfg.eval_ways}-way episodes; evaluating with other ways than "
                "training needs an embedding model (model.num_classes: null) and a metric-based "
                "algorithm (protonets, matching)",
            )


def algorithm_parameters(factory) -> dict[str, inspect.Parameter]:
    """Parameters of an algorithm factory (after the first, positional ``apply_fn``)."""
    params = dict(inspect.signature(factory).parameters)
    first = next(iter(params), None)
    if first is not None and first not in ENGINE_SUPPLIED:
        params.pop(first)  # the positional apply_fn, whatever it is called
    return params


def algorithm_kwargs(cfg: ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments for the configured algorithm factory (config + data + loss)."""
    from jaxmeta.algorithms import ALGORITHMS
    from jaxmeta.losses import mse_loss

    factory = ALGORITHMS[cfg.algorithm.name]
    params = algorithm_parameters(factory)
    hints = _hints(factory)
    kwargs = {}
    for k, v in cfg.algorithm.kwargs.items():
        kwargs[k] = check_type(v, hints[k])[1] if k in hints else v
    data_values = {
        "ways": cfg.data.ways,
        "n_way": cfg.data.ways,
        "num_classes": cfg.data.ways,
        "shots": cfg.data.shots,
        "k_shot": cfg.data.shots,
        "queries": cfg.data.queries,
    }
    for k in DATA_SUPPLIED:
        if k in params and k not in kwargs:
            # An optional shape argument (e.g. ProtoNets' ``ways``) that evaluation does
            # not share stays at its default: the learner then derives it from shapes.
            optional = params[k].default is not inspect.Parameter.empty
            if optional and k in eval_differs(cfg):
                continue
            kwargs[k] = data_values[k]
    if not cfg.classification and "loss_fn" in params:
        kwargs["loss_fn"] = mse_loss
    return kwargs


def build_learner(cfg: ExperimentConfig, *, apply_fn):
    """The configured :class:`~jaxmeta.algorithms.base.MetaLearner` for ``apply_fn``."""
    from jaxmeta.algorithms import ALGORITHMS

    return ALGORITHMS[cfg.algorithm.name](apply_fn, **algorithm_kwargs(cfg))


def model_kwargs(cfg: ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments for the model; the output width defaults to ``data.ways``."""
    from jaxmeta.models import MODELS

    cls = MODELS[cfg.model.name]
    hints = _hints(cls)
    kwargs = {
        k: (check_type(v, hints[k])[1] if k in hints else v) for k, v in cfg.model.kwargs.items()
    }
    fields = {f.name for f in dataclasses.fields(cls)}
    if cfg.classification:
        for out_key in ("num_classes", "out"):
            if out_key in fields:
                kwargs.setdefault(out_key, cfg.data.ways)
                break
    return kwargs


def build_optimizer(cfg: ExperimentConfig):
    """The optax optimizer (optionally after global-norm clipping; ``schedule`` -> optax)."""
    import optax

    from jaxmeta.train.schedules import build_schedule

    kwargs = cfg.optimizer.kwargs
    clip = kwargs.pop("grad_clip_norm", None)
    lr = float(check_type(kwargs.get("learning_rate", 1e-3), float)[1])
    kwargs["learning_rate"] = build_schedule(kwargs.pop("schedule", None), lr, cfg.train.steps)
    opt = getattr(optax, cfg.optimizer.name)(**kwargs)
    if clip is not None:
        opt = optax.chain(optax.clip_by_global_norm(float(clip)), opt)
    return opt


def replace(cfg: ExperimentConfig, **sections: dict[str, Any]) -> ExperimentConfig:
    """A copy with some dataclass-section fields replaced (e.g. ``eval={"episodes": 10}``)."""
    new = {}
    for section, values in sections.items():
        new[section] = dataclasses.replace(getattr(cfg, section), **values)
    return dataclasses.replace(cfg, **new)
