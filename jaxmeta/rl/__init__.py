"""Meta-reinforcement learning: environments in JAX, rollouts, MAML with a TRPO outer step.

Everything is a pure function over arrays, so one meta-iteration (rollouts of every task,
inner policy-gradient steps, the second-order meta-gradient, conjugate gradient and the
line search) is one compiled program, and many are fused with ``lax.scan``.

Importing this module registers the environments as task sources, the policy as the model
``gaussian_mlp`` and MAML-RL as the algorithms ``maml_trpo`` / ``maml_rl``
(:mod:`jaxmeta.rl.engine`): a config that lists ``plugins: [jaxmeta.rl]`` trains with
``jaxmeta train`` (configs/rl/).
"""

from jaxmeta.rl import engine
from jaxmeta.rl.envs import ENVIRONMENTS, Environment, make_env
from jaxmeta.rl.maml import (
    MetaBatch,
    MetaRL,
    make_train_chunk,
    maml_rl,
    maml_trpo,
    train,
)
from jaxmeta.rl.policy import GaussianMLPPolicy
from jaxmeta.rl.rollout import Batch, Trajectories, advantages, linear_baseline, rollout

engine.register()

__all__ = [
    "ENVIRONMENTS",
    "Batch",
    "Environment",
    "GaussianMLPPolicy",
    "MetaBatch",
    "MetaRL",
    "Trajectories",
    "advantages",
    "linear_baseline",
    "make_env",
    "make_train_chunk",
    "maml_rl",
    "maml_trpo",
    "rollout",
    "train",
]
