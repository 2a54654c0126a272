"""The experiment schema: the typed sections of a config (frozen dataclasses), their plain
dict / YAML form and :class:`ConfigError`. It reads no file and builds nothing, so that
everything that needs the config's type (:mod:`jaxmeta.train.build`,
:mod:`jaxmeta.train.population`, :mod:`jaxmeta.train.sweep_config`) imports it without
importing the loader above them. Reading YAML and validating a config against the
registries is :mod:`jaxmeta.train.config` (which re-exports every name here).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import yaml

from jaxmeta.data.registry import get_task_source

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
# Top-level keys besides the sections.
TOP_LEVEL = ("name", "base", "plugins", "sweep")
# Sections that are a registry name plus keyword arguments.
NAMED_SECTIONS = ("data", "model", "algorithm", "optimizer")
DEFAULT_NAMED = {"data": "omniglot", "model": "conv4", "algorithm": "maml", "optimizer": "adam"}


class ConfigError(ValueError):
    """A bad config value; the message names the source (file or ``--set``) and the key."""

    def __init__(self, source: str, key: str | None, message: str):
        self.source, self.key = source, key
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")


# --------------------------------------------------------------------------- schema


@dataclasses.dataclass(frozen=True)
class NamedConfig:
    """A registry name plus keyword arguments (data, model, algorithm, optimizer sections)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.kwargs}


@dataclasses.dataclass(frozen=True)
class DataConfig(NamedConfig):
    """The task source: ``name`` plus its constructor's keyword arguments.

    Options read as attributes (``cfg.data.ways``, ``cfg.data.scheme``); after validation
    every constructor argument is present, defaults included (what the resolved config
    spells out).
    """

    name: str = "omniglot"

    def __getattr__(self, key: str) -> Any:
        if not key.startswith("__"):
            for k, v in self.options:
                if k == key:
                    return v
        raise AttributeError(f"data section has no {key!r} (dataset {self.name!r})")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 60000
    meta_batch_size: int = 32
    seed: int = 0
    seeds: int | None = None  # a population of runs seed..seed+seeds-1 (jaxmeta.train.sweep)
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
    """A whole experiment: everything :func:`jaxmeta.train.train_and_evaluate` reads.

    ``origins`` (not part of the value) maps dotted keys to the file (or ``--set``) that set
    them, for error messages; :meth:`where` reads it.
    """

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
    plugins: tuple[str, ...] = ()
    # Per-run values of numeric hyperparameters: ((dotted key, (values...)), ...).
    sweep: tuple[tuple[str, tuple[float, ...]], ...] = ()
    origins: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def where(self, key: str) -> str:
        """The file (or ``--set``) that set the dotted ``key`` (else its section's source)."""
        o = self.origins
        return o.get(key) or o.get(key.split(".")[0]) or o.get("", "config")

    @property
    def classification(self) -> bool:
        """Whether the task source classifies (from the dataset registry)."""
        return bool(get_task_source(self.data.name).classification)

    @property
    def eval_ways(self) -> int | None:
        """N of the evaluation episodes (``eval.ways``, default ``data.ways``)."""
        return getattr(self.data, "ways", None) if self.eval.ways is None else self.eval.ways

    @property
    def eval_shots(self) -> int:
        """K of the evaluation episodes (``eval.shots``, default ``data.shots``)."""
        return getattr(self.data, "shots", None) if self.eval.shots is None else self.eval.shots

    @property
    def eval_queries(self) -> int:
        """Queries per class of the evaluation episodes (``eval.queries`` or ``data.queries``)."""
        train = getattr(self.data, "queries", None)
        return train if self.eval.queries is None else self.eval.queries

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (the resolved config written to the workdir)."""
        out: dict[str, Any] = {}
        if self.plugins:
            out["plugins"] = list(self.plugins)
        out.update(
            name=self.name,
            data=self.data.to_dict(),
            model=self.model.to_dict(),
            algorithm=self.algorithm.to_dict(),
            optimizer=self.optimizer.to_dict(),
            train=_train_dict(self.train),
            eval=dataclasses.asdict(self.eval),
            execution=dataclasses.asdict(self.execution),
            mesh=dataclasses.asdict(self.mesh),
            distributed=dataclasses.asdict(self.distributed),
        )
        if self.sweep:
            out["sweep"] = {k: list(v) for k, v in self.sweep}
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _train_dict(t: TrainConfig) -> dict[str, Any]:
    """The train section; ``seeds`` only when set (a single run's files stay as they were)."""
    out = dataclasses.asdict(t)
    if out["seeds"] is None:
        del out["seeds"]
    return out


def replace(cfg: ExperimentConfig, **sections: dict[str, Any]) -> ExperimentConfig:
    """A copy with some dataclass-section fields replaced (e.g. ``eval={"episodes": 10}``)."""
    new = {}
    for section, values in sections.items():
        new[section] = dataclasses.replace(getattr(cfg, section), **values)
    return dataclasses.replace(cfg, **new)


__all__ = [
    "DEFAULT_NAMED",
    "NAMED_SECTIONS",
    "SECTIONS",
    "TOP_LEVEL",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "EvalConfig",
    "ExecutionConfig",
    "ExperimentConfig",
    "MeshConfig",
    "NamedConfig",
    "TrainConfig",
    "replace",
]
