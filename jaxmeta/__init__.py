"""jaxmeta: fast, functional meta-learning in JAX.

Algorithms are factories returning a :class:`MetaLearner` of pure functions over a
parameter pytree (``init``, ``meta_grad``, ``predict``, ...); one :class:`TrainState` and
one step (:func:`meta_update`, jitted by :func:`make_meta_step`, fused by
:func:`jaxmeta.step.make_train_chunk`) apply an optax optimizer, for the library API and the
``jaxmeta train`` engine alike. :func:`load` turns a trained ``jaxmeta train`` workdir into a
few-shot classifier. The modules and the words used are in docs/architecture.md.

Importing ``jaxmeta`` is lazy (PEP 562): each name below is imported on first use, so
``jaxmeta --help`` and ``jaxmeta.__version__`` do not import JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# public name -> the module that defines it
_EXPORTS = {
    "anil": "jaxmeta.algorithms.anil",
    "boil": "jaxmeta.algorithms.boil",
    "MetaLearner": "jaxmeta.algorithms.base",
    "imaml": "jaxmeta.algorithms.imaml",
    "leo": "jaxmeta.algorithms.leo",
    "fomaml": "jaxmeta.algorithms.maml",
    "maml": "jaxmeta.algorithms.maml",
    "mamlpp": "jaxmeta.algorithms.mamlpp",
    "matching": "jaxmeta.algorithms.matching",
    "metasgd": "jaxmeta.algorithms.metasgd",
    "protonets": "jaxmeta.algorithms.protonets",
    "reptile": "jaxmeta.algorithms.reptile",
    "snail": "jaxmeta.algorithms.snail",
    "map_tasks": "jaxmeta.execution",
    "mean_map_tasks": "jaxmeta.execution",
    "FewShotClassifier": "jaxmeta.inference",
    "load": "jaxmeta.inference",
    "sgd_adapt": "jaxmeta.inner",
    "accuracy": "jaxmeta.losses",
    "cross_entropy_loss": "jaxmeta.losses",
    "mse_loss": "jaxmeta.losses",
    "MLP": "jaxmeta.models.mlp",
    "MetaTrainState": "jaxmeta.step",
    "TrainState": "jaxmeta.step",
    "apply_gradients": "jaxmeta.step",
    "init_meta_train_state": "jaxmeta.step",
    "init_train_state": "jaxmeta.step",
    "make_meta_step": "jaxmeta.step",
    "meta_update": "jaxmeta.step",
    "step_key": "jaxmeta.step",
    "Episode": "jaxmeta.types",
    "evaluate": "jaxmeta.train.evaluate",
}

if TYPE_CHECKING:  # what static tools see: the eager imports
    from jaxmeta.algorithms.anil import anil
    from jaxmeta.algorithms.base import MetaLearner
    from jaxmeta.algorithms.boil import boil
    from jaxmeta.algorithms.imaml import imaml
    from jaxmeta.algorithms.leo import leo
    from jaxmeta.algorithms.maml import fomaml, maml
    from jaxmeta.algorithms.mamlpp import mamlpp
    from jaxmeta.algorithms.matching import matching
    from jaxmeta.algorithms.metasgd import metasgd
    from jaxmeta.algorithms.protonets import protonets
    from jaxmeta.algorithms.reptile import reptile
    from jaxmeta.algorithms.snail import snail
    from jaxmeta.execution import map_tasks, mean_map_tasks
    from jaxmeta.inference import FewShotClassifier, load
    from jaxmeta.inner import sgd_adapt
    from jaxmeta.losses import accuracy, cross_entropy_loss, mse_loss
    from jaxmeta.models.mlp import MLP
    from jaxmeta.step import (
        MetaTrainState,
        TrainState,
        apply_gradients,
        init_meta_train_state,
        init_train_state,
        make_meta_step,
        meta_update,
        step_key,
    )
    from jaxmeta.train.evaluate import evaluate
    from jaxmeta.types import Episode

__all__ = [
    "MLP",
    "Episode",
    "FewShotClassifier",
    "MetaLearner",
    "MetaTrainState",
    "TrainState",
    "__version__",
    "accuracy",
    "anil",
    "apply_gradients",
    "boil",
    "cross_entropy_loss",
    "fomaml",
    "imaml",
    "init_meta_train_state",
    "init_train_state",
    "leo",
    "load",
    "make_meta_step",
    "maml",
    "mamlpp",
    "map_tasks",
    "mean_map_tasks",
    "matching",
    "meta_update",
    "metasgd",
    "mse_loss",
    "protonets",
    "reptile",
    "sgd_adapt",
    "snail",
    "step_key",
    "evaluate",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    else:
        try:  # a submodule: jaxmeta.train, jaxmeta.data, ...
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
