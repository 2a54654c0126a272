"""Meta-RL through the engine (``jaxmeta train`` / ``jaxmeta evaluate``): the plug-ins.

Nothing in the engine names reinforcement learning. An environment is a task source whose
``sample`` draws task parameters (the goals), and MAML-RL is an algorithm whose outer-update
hook (:attr:`jaxmeta.MetaLearner.update`) rolls the policies out and applies its own outer
step (TRPO), and whose ``evaluate`` reports returns instead of accuracy or MSE
(docs/architecture.md, "Plug-in points"). Importing :mod:`jaxmeta.rl` registers them; a
config names the module in ``plugins:``::

    plugins: [jaxmeta.rl]
    data: {name: navigation2d}              # navigation2d_sparse, halfcheetah_dir/_vel
    model: {name: gaussian_mlp}             # action_size comes from the environment
    algorithm: {name: maml_trpo, inner_lr: 0.1, num_trajectories: 20, max_kl: 0.01}
    train: {meta_batch_size: 20, steps: 500}

One engine step equals one :attr:`~jaxmeta.rl.maml.MetaRL.meta_step` of the library API on
the same state, bit for bit: the engine's step key is split into the tasks' key and the
rollouts' key exactly as ``meta_step`` splits it (tested).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta.algorithms import register_algorithm
from jaxmeta.algorithms.base import MetaLearner, identity_init
from jaxmeta.data.registry import register_task_source
from jaxmeta.data.source import TaskSource, TaskSourceError, check_option
from jaxmeta.execution import TaskChunk
from jaxmeta.models import register_model
from jaxmeta.rl.envs import Environment, Task, make_env
from jaxmeta.rl.maml import MetaRL, maml_rl
from jaxmeta.rl.policy import GaussianMLPPolicy
from jaxmeta.step import TrainState
from jaxmeta.types import Array, Metrics, Params, PRNGKey
from jaxmeta.validation import check_int

__all__ = ["EnvironmentTasks", "maml_rl_learner", "register"]


# --------------------------------------------------------------------------- task sources


class EnvironmentTasks(TaskSource):
    """A meta-RL environment as a task source: a "task" is the environment's task
    parameters (a goal, a direction, a velocity), not an episode of data.

    ``sample(key, data, tasks=n)`` draws ``n`` tasks on the device;
    ``eval_episodes(split, episodes=n, seed=s)`` is a fixed seeded set of ``n`` tasks per
    split (validation and test draw from other seeds than each other). The environment
    itself reaches the algorithm through :meth:`supplies` (keyword ``env``) and the
    policy's output width through it too (``action_size``).

    Args:
      horizon: episode length (default: the environment's, 100 for 2D navigation, 200
        for the cheetah).
    """

    classification: ClassVar[bool] = False
    env_name: ClassVar[str]
    needs: ClassVar[str | None] = None  # an optional package the environment needs
    shots = None  # no support/query examples: trajectories are the algorithm's business
    queries = None
    _SPLIT_SEED: ClassVar[dict[str, int]] = {"train": 0, "val": 1_000_003, "test": 2_000_003}

    def __init__(self, *, horizon: int | None = None):
        self.horizon = None if horizon is None else check_option("horizon", horizon, minimum=1)
        if self.needs and importlib.util.find_spec(self.needs) is None:
            raise TaskSourceError(
                "name",
                f"{self.name} needs {self.needs}, which is not installed: "
                "pip install -e '.[rl]' (the optional extra jaxmeta[rl])",
            )

    @functools.cached_property
    def env(self) -> Environment:
        kwargs = {} if self.horizon is None else {"horizon": self.horizon}
        return make_env(self.env_name, **kwargs)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.env.obs_size,)

    def supplies(self) -> dict[str, Any]:
        return {"env": self.env, "action_size": self.env.action_size}

    def train_data(self) -> tuple:
        return ()

    def sample(self, key: PRNGKey, data: Any, *, tasks: int) -> Task:
        del data
        return self.env.sample_tasks(key, tasks)

    def fixed_episodes(self, split: str, *, episodes: int, seed: int, **shape: Any) -> Task:
        del shape  # no ways, shots or queries
        key = jax.random.key(seed + self._SPLIT_SEED[split])
        return jax.device_get(self.env.sample_tasks(key, episodes))

    def example_input(self) -> np.ndarray:
        return np.zeros((1, *self.input_shape), np.float32)

    def describe(self) -> dict[str, Any]:
        return {"horizon": self.env.horizon}

    @classmethod
    def prepare(cls, **options: Any) -> list[str]:
        return [f"{cls.name}: tasks are drawn on the device inside the training step; no data"]


def _source(name: str, needs: str | None = None) -> type[EnvironmentTasks]:
    doc = f"The {name} environment as a task source (:class:`EnvironmentTasks`)."
    attrs = {"name": name, "env_name": name, "needs": needs, "__doc__": doc}
    return type(f"EnvironmentTasks_{name}", (EnvironmentTasks,), attrs)


SOURCES = {
    "navigation2d": _source("navigation2d"),
    "navigation2d_sparse": _source("navigation2d_sparse"),
    "halfcheetah_dir": _source("halfcheetah_dir", needs="brax"),
    "halfcheetah_vel": _source("halfcheetah_vel", needs="brax"),
}


# --------------------------------------------------------------------------- the algorithm

# maml_rl's keywords that the engine decides instead of the config: the policy and the
# environment (from the model and the task source), the meta-batch (train.meta_batch_size),
# the task mapping (execution.task_chunk) and the Adam rate (the config's optimizer).
_ENGINE_DECIDES = ("policy_apply", "env", "meta_batch", "task_chunk", "outer_lr")


def maml_rl_learner(
    apply_fn: Callable[..., Any],
    *,
    env: Environment,
    eval_inner_steps: int = 3,
    eval_inner_lr: float | None = None,
    **options: Any,
) -> MetaLearner:
    """MAML-RL (:func:`jaxmeta.rl.maml_rl`) as a :class:`~jaxmeta.MetaLearner`.

    Args:
      apply_fn: the policy, ``(params, obs [..., O]) -> (mean, log_std)``.
      env: the environment (supplied by the task source).
      eval_inner_steps: evaluation reports the return after 0, 1, ..., this many
        policy-gradient steps (3, the paper's figure).
      eval_inner_lr: rate of the evaluation steps after the first (the first uses
        ``inner_lr``); ``None``: ``inner_lr`` for all. The paper's figure used 0.1 then
        0.05 (cbfinn/maml_rl halves the rate after the first step).
      **options: the keywords of :func:`jaxmeta.rl.maml_rl` but those the engine decides
        (the meta-batch is ``train.meta_batch_size``, the task mapping
        ``execution.task_chunk``; ``outer="adam"``/``"ppo"`` use the config's optimizer).

    Returns:
      A learner with ``update`` (the outer step: rollouts, inner steps, TRPO), ``evaluate``
      (per-task returns ``return_0 ... return_K`` and ``return`` = after
      ``eval_inner_steps``) and ``eval_metric="return"`` (validation keeps the highest).
    """
    eval_steps = check_int("eval_inner_steps", eval_inner_steps, minimum=0)
    for key in _ENGINE_DECIDES:
        if key in options:
            raise TypeError(f"{key} is not an option of the engine's maml_rl")

    @functools.lru_cache(maxsize=8)
    def algorithm(task_chunk: TaskChunk) -> MetaRL:
        return maml_rl(apply_fn, env, task_chunk=task_chunk, **options)

    base = algorithm("auto")  # checks the options now (a bad value is a config error)
    inner_lr = options.get("inner_lr", inspect.signature(maml_rl).parameters["inner_lr"].default)

    def engine_metrics(metrics: Metrics) -> Metrics:
        """Float metrics (the engine fills skipped steps with NaN), plus ``loss`` (minus the
        adapted policies' return: what the NaN guard and progress bar read) and ``return``."""
        out = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        out["return"] = out["return_after"]
        out["loss"] = -out["return_after"]
        return out

    def update(state: TrainState, tasks: Task, key: PRNGKey, *, optimizer, task_chunk="auto"):
        new, metrics = algorithm(task_chunk).update(state, tasks, key, optimizer=optimizer)
        return new, engine_metrics(metrics)

    def meta_grad(params: Params, tasks: Task, key: PRNGKey, *, task_chunk="auto"):
        grads, metrics = algorithm(task_chunk).meta_grad(params, tasks, key)
        return grads, engine_metrics(metrics)

    def evaluate(params: Params, tasks: Task, key: PRNGKey, *, steps: int | None = None):
        """Per-task mean return after 0..``steps`` adaptation steps: ``{"return_k": [tasks]}``
        and ``"return"`` after the last."""
        last = eval_steps if steps is None else check_int("steps", steps, minimum=0)
        lrs = (inner_lr, *([inner_lr if eval_inner_lr is None else eval_inner_lr] * last))
        returns = base.evaluate(params, tasks, key, steps=tuple(range(last + 1)), inner_lr=lrs)
        out = {f"return_{k}": returns[:, k] for k in range(last + 1)}
        return {"return": returns[:, last], **out}

    def predict(params, *args, steps=None, **kwargs) -> Array:
        raise TypeError(
            "a meta-RL learner has no episodes to predict: it is evaluated by the returns of "
            "its adapted policies (MetaLearner.evaluate)"
        )

    return MetaLearner(
        init=identity_init,
        meta_grad=meta_grad,
        predict=predict,
        name=base.name,
        adapt=base.adapt,
        eval_inner_steps=eval_steps,
        update=update,
        evaluate=evaluate,
        eval_metric="return",
    )


def _with_signature(factory, **fixed: Any):
    """``factory`` with an explicit signature: ``apply_fn``, ``env``, every keyword of
    :func:`maml_rl` the config may set, and the evaluation keywords (so that configs are
    checked against it like any algorithm's)."""
    own = inspect.signature(maml_rl_learner).parameters
    rl = inspect.signature(maml_rl).parameters
    params = [own["apply_fn"], own["env"]]
    params += [p for n, p in rl.items() if n not in _ENGINE_DECIDES]
    params += [own["eval_inner_steps"], own["eval_inner_lr"]]
    params = [p.replace(default=fixed[p.name]) if p.name in fixed else p for p in params]

    @functools.wraps(factory)
    def wrapped(apply_fn, **kwargs):
        return factory(apply_fn, **{**fixed, **kwargs})

    wrapped.__signature__ = inspect.Signature(params)
    hints = {**maml_rl.__annotations__, **maml_rl_learner.__annotations__}
    wrapped.__annotations__ = {p.name: hints[p.name] for p in params if p.name in hints}
    return wrapped


ALGORITHMS = {
    "maml_rl": _with_signature(maml_rl_learner),
    "maml_trpo": _with_signature(maml_rl_learner, outer="trpo"),
}


def register() -> None:
    """Register the environments (``data.name``), the policy (``model.name: gaussian_mlp``)
    and MAML-RL (``algorithm.name: maml_trpo`` or ``maml_rl``); idempotent."""
    for name, cls in SOURCES.items():
        register_task_source(name, cls)
    register_model("gaussian_mlp", GaussianMLPPolicy)
    for name, factory in ALGORITHMS.items():
        register_algorithm(name, factory, model="policy")
