"""The training engine: typed configs, the fused training step, checkpoints, evaluation.

``train_and_evaluate(config, workdir)`` runs (or resumes) one experiment; the
``jaxmeta`` command (:mod:`jaxmeta.cli`) is a thin layer over it.
"""

from jaxmeta.train.checkpoint import CheckpointError, Checkpoints, CheckpointWriteError
from jaxmeta.train.config import ConfigError, ExperimentConfig, config_from_dict, load_config
from jaxmeta.train.evaluate import evaluate, make_evaluator, mean_ci95
from jaxmeta.train.loop import (
    TrainingDiverged,
    TrainingInterrupted,
    build_experiment,
    train_and_evaluate,
)
from jaxmeta.train.metrics import MetricsWriter, plot_learning_curves, read_metrics
from jaxmeta.train.state import TrainState, init_train_state, make_train_chunk, step_key
from jaxmeta.train.workdir import WorkdirError, WorkdirInUse

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "Checkpoints",
    "ConfigError",
    "ExperimentConfig",
    "MetricsWriter",
    "TrainState",
    "TrainingDiverged",
    "TrainingInterrupted",
    "WorkdirError",
    "WorkdirInUse",
    "build_experiment",
    "config_from_dict",
    "evaluate",
    "init_train_state",
    "load_config",
    "make_evaluator",
    "make_train_chunk",
    "mean_ci95",
    "plot_learning_curves",
    "read_metrics",
    "step_key",
    "train_and_evaluate",
]
