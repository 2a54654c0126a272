"""jaxmeta: fast, functional meta-learning in JAX.

Algorithms are factories returning a :class:`MetaLearner` of pure functions over a
parameter pytree (``init``, ``meta_grad``, ``predict``, ...); one :class:`TrainState` and
one step (:func:`meta_update`, jitted by :func:`make_meta_step`, fused by
:func:`jaxmeta.step.make_train_chunk`) apply an optax optimizer, for the library API and the
``jaxmeta train`` engine alike. :func:`load` turns a trained ``jaxmeta train`` workdir into a
few-shot classifier. The modules and the words used are in docs/architecture.md.
"""

from jaxmeta.algorithms.anil import anil
from jaxmeta.algorithms.base import MetaLearner
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
from jaxmeta.types import Episode

__version__ = "0.1.0"

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
]
