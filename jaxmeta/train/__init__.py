"""The training engine: configs, building an experiment, the training run, evaluation.

The public API (what the CLI, :func:`jaxmeta.load`, the benchmarks and the examples use)::

    cfg = load_config("configs/omniglot/maml_5w1s.yaml", ["train.steps=100"])
    result = train_and_evaluate(cfg, "runs/maml")          # train (or resume), then test
    run = restore_run("runs/maml")                          # a checkpoint, restored
    print(format_result(evaluate_run(run, split="test")))  # accuracy ± 95% CI

``build_experiment(cfg)`` gives the task source, model, learner and optimizer of a config,
``initial_state(cfg, exp)`` its step-0 :class:`~jaxmeta.step.TrainState`;
``evaluate(learner, params, episodes, ...)`` evaluates any parameters on given episodes.
The modules are described in docs/architecture.md.
"""

from jaxmeta.step import TrainState, init_train_state, make_train_chunk, step_key
from jaxmeta.train.build import Experiment, build_experiment, initial_state
from jaxmeta.train.checkpoint import CheckpointError, Checkpoints, CheckpointWriteError
from jaxmeta.train.config import ConfigError, ExperimentConfig, config_from_dict, load_config
from jaxmeta.train.evaluate import evaluate, make_evaluator, mean_ci95
from jaxmeta.train.loop import TrainingDiverged, TrainingInterrupted, train_and_evaluate
from jaxmeta.train.metrics import MetricsWriter, plot_learning_curves, read_metrics
from jaxmeta.train.run import (
    TrainedRun,
    evaluate_run,
    format_result,
    restore_run,
    task_mesh,
    write_eval_json,
)
from jaxmeta.train.workdir import WorkdirError, WorkdirInUse

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "Checkpoints",
    "ConfigError",
    "Experiment",
    "ExperimentConfig",
    "MetricsWriter",
    "TrainState",
    "TrainedRun",
    "TrainingDiverged",
    "TrainingInterrupted",
    "WorkdirError",
    "WorkdirInUse",
    "build_experiment",
    "config_from_dict",
    "evaluate",
    "evaluate_run",
    "format_result",
    "init_train_state",
    "initial_state",
    "load_config",
    "make_evaluator",
    "make_train_chunk",
    "mean_ci95",
    "plot_learning_curves",
    "read_metrics",
    "restore_run",
    "step_key",
    "task_mesh",
    "train_and_evaluate",
    "write_eval_json",
]
