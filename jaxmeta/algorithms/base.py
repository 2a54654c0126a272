"""The contract every meta-learning algorithm implements.

An algorithm is a lowercase factory returning a :class:`MetaLearner` of pure
functions (the optax pattern: ``optax.adam(...)`` returns ``(init, update)``). It says
only how to get the meta-gradient for a batch of episodes; applying it with an optax
optimizer (:func:`jaxmeta.step.meta_update`), sampling, checkpointing and evaluation are
shared and never change when an algorithm is added. How the tasks of a batch are mapped
(``task_chunk``) is an execution setting (:mod:`jaxmeta.execution`), passed to ``meta_grad``.

Adding an algorithm: one module with its factory, one entry in
:data:`jaxmeta.algorithms.ALGORITHMS` (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmeta.execution import (  # noqa: F401 -- re-exported: the algorithms' toolbox
    TaskChunk,
    map_tasks,
    mean_map_tasks,
    mean_task_grad,
    sum_over_tasks,
)
from jaxmeta.losses import accuracy, is_classification, label_guard
from jaxmeta.types import ApplyFn, Array, Episode, LossFn, Metrics, Params, PRNGKey, PyTree
from jaxmeta.validation import check_apply_fn, check_episode, check_int, check_task

if TYPE_CHECKING:
    from jaxmeta.step import TrainState


class MetaLearner(NamedTuple):
    """Pure functions that define a meta-learning algorithm.

    Attributes:
      init: ``(key, model_params) -> meta_params``. Most algorithms return the model
        parameters unchanged; Meta-SGD adds learned inner learning rates, Matching Nets (FCE)
        and SNAIL add the parameters of their own networks, drawn from ``key``.
      meta_grad: ``(meta_params, episodes, key, *, task_chunk="auto") -> (grads, metrics)``
        for a batch of episodes (leading task axis on every field). ``grads`` has the
        structure of ``meta_params`` and is what the optax optimizer consumes (for Reptile,
        the pseudo-gradient ``meta_params - adapted``). ``metrics`` holds scalar means, at
        least ``loss`` and, for classification, ``accuracy``. ``task_chunk``: how the tasks
        are mapped (:mod:`jaxmeta.execution`).
      predict: ``(meta_params, support_x, support_y, query_x, key) -> predictions``
        for ONE task (no task axis): logits ``[n_query, n_way]`` or regression
        outputs. Evaluation vmaps it.
      name: short algorithm name used in logs and checkpoints.
      adapt: for gradient-based learners, ``(meta_params, support_x, support_y,
        steps=None) -> adapted model params`` of one task; ``None`` otherwise.
      outer_loss: for gradient-based learners, ``(meta_params, episode, key) ->
        (loss, metrics)`` of one task after adaptation; ``None`` otherwise.
      eval_inner_steps: the inner steps ``predict`` adapts with by default (what an
        evaluation reports); ``None`` for learners that do not adapt by gradient steps.
      init_state: optional ``(key, meta_params) -> learner_state``: state the learner
        carries from step to step that is not optimised by the outer optimizer (e.g.
        running statistics: ``mamlpp``'s per-step BatchNorm statistics). ``None`` (every other
        shipped learner): no state; the train state's
        ``learner_state`` slot stays ``None`` and checkpoints hold no such entry.
      update: optional outer update replacing the shared one (the *outer-update hook*):
        ``(state, episodes, key, *, optimizer, task_chunk) -> (state, metrics)`` with
        ``state`` a :class:`jaxmeta.step.TrainState`. ``None`` (every shipped learner but
        ``mamlpp``, whose update passes ``state.step`` to its annealing and threads its state):
        :func:`jaxmeta.step.meta_update` applies ``optimizer`` to ``meta_grad``'s gradients.
        A learner whose outer step is not an optax update (e.g. TRPO) or that must thread
        ``learner_state`` supplies it; it may reuse :func:`jaxmeta.step.apply_gradients`.
        The step counter and the run key are advanced by the caller, whatever it returns.
      evaluate: optional evaluation replacing the one built on ``predict`` (the
        *evaluation hook*): ``(meta_params, episodes, key, *, steps=None) -> {metric:
        [episodes]}``, per-episode metrics of the task source's fixed evaluation
        episodes (``steps`` overrides the evaluation's inner steps). A learner whose
        tasks have no query labels to score (meta-RL: the returns of the adapted
        policies) supplies it with ``eval_metric``. ``None`` (every classifier and
        regressor): accuracy or MSE of ``predict``.
      eval_metric: the key of ``evaluate``'s result that validation maximises (best
        checkpoint) and results report first with its ``ci95``.
      bn_mode: the BatchNorm mode ``predict`` uses by default (what an evaluation reports):
        ``"transductive"`` for every shipped learner but ProtoNets with running statistics
        (``"running"``).

    Every shipped learner's ``predict`` also takes ``bn_mode=`` (:data:`BN_MODES`): how a
    model with batch statistics normalises the queries (see :func:`apply_support_query`).
    A learner with ``init_state`` takes ``learner_state=`` too: the engine passes the train
    state's ``learner_state`` to it at evaluation and in :func:`jaxmeta.load` (ProtoNets
    normalises with the running statistics kept there).
    """

    init: Callable[[PRNGKey, Params], Params]
    meta_grad: Callable[..., tuple[Params, Metrics]]
    predict: Callable[..., Array]
    name: str = "metalearner"
    adapt: Callable[..., Params] | None = None
    outer_loss: Callable[..., tuple[Array, Metrics]] | None = None
    eval_inner_steps: int | None = None
    init_state: Callable[[PRNGKey, Params], PyTree] | None = None
    update: Callable[..., tuple[Any, Metrics]] | None = None
    evaluate: Callable[..., dict[str, Array]] | None = None
    eval_metric: str | None = None
    bn_mode: str = "transductive"


# What a learner's ``apply_fn`` returns (:attr:`AlgorithmSpec.model`).
MODEL_KINDS = ("classifier", "embedding", "policy")
# Facts of an episode a factory may take as keyword arguments (:attr:`AlgorithmSpec.episode_args`).
EPISODE_ARGS = ("ways", "shots", "input_shape")


@dataclasses.dataclass(frozen=True, eq=False)  # compared by identity, like the factory
class AlgorithmSpec:
    """A registered algorithm: its factory and what the engine and the tests know about it.

    The registry (:data:`jaxmeta.algorithms.ALGORITHMS`) maps a name to one of these; each
    algorithm module defines its own (``SPEC``), so adding an algorithm is its module plus one
    registry line.

    Attributes:
      make: the factory ``(apply_fn, **options) -> MetaLearner``.
      model: what ``apply_fn`` must return (:data:`MODEL_KINDS`): ``"classifier"`` (one logit
        per class, or the regression output), ``"embedding"`` (features; the algorithm scores
        the classes itself) or ``"policy"`` (meta-RL).
      episode_args: the facts of the episode ``make`` needs as keyword arguments
        (:data:`EPISODE_ARGS`; SNAIL's sequence length comes from ``ways`` and ``shots``).
        ``jaxmeta train`` fills them in from the ``data:`` section.
      example: the options of a small learner of this algorithm (one inner step, small
        sub-networks) that compiles and trains quickly; the suite builds every registered
        algorithm from it. Keys are the factory's keywords, as in a config's ``algorithm:``
        section, without ``episode_args``.
    """

    make: Callable[..., MetaLearner]
    model: str = "classifier"
    episode_args: tuple[str, ...] = ()
    example: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.model not in MODEL_KINDS:
            raise ValueError(f"model must be one of {MODEL_KINDS}, got {self.model!r}")
        unknown = set(self.episode_args) - set(EPISODE_ARGS)
        if unknown:
            raise ValueError(f"episode_args must be among {EPISODE_ARGS}, got {sorted(unknown)}")

    def example_learner(self, apply_fn: ApplyFn, **episode_and_options: Any) -> MetaLearner:
        """The learner of :attr:`example` for ``apply_fn``: ``episode_and_options`` holds the
        :attr:`episode_args` (e.g. ``ways=5``) and any options that override the example's;
        episode facts this algorithm does not take are dropped."""
        kwargs = {
            k: v
            for k, v in episode_and_options.items()
            if k not in EPISODE_ARGS or k in self.episode_args
        }
        missing = [k for k in self.episode_args if k not in kwargs]
        if missing:
            raise TypeError(f"this algorithm needs the episode's {', '.join(missing)}")
        return self.make(apply_fn, **{**self.example, **kwargs})


# How queries are normalised at prediction time by models with batch statistics (Conv-4);
# "running": with running statistics kept in the learner state (ProtoNets' running_stats).
BN_MODES = ("transductive", "inductive", "running")


def check_bn_mode(bn_mode: str) -> str:
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    return bn_mode


def state_kwargs(learner: MetaLearner, learner_state: Any) -> dict[str, Any]:
    """The keyword that hands the train state's ``learner_state`` to ``learner.predict``:
    ``{"learner_state": ...}`` for a learner that keeps state (``init_state``), else ``{}``
    (what every evaluation and :func:`jaxmeta.load` pass)."""
    return {} if learner.init_state is None else {"learner_state": learner_state}


def running_moments(layers: Mapping[str, int], dtype, copies: tuple[int, ...] = ()) -> dict:
    """BatchNorm running statistics as PyTorch starts them: ``{"mean": zeros, "var": ones}``,
    ``[*copies, C]`` for each layer of ``layers`` (name -> channels C)."""
    return {
        "mean": {k: jnp.zeros((*copies, c), dtype) for k, c in layers.items()},
        "var": {k: jnp.ones((*copies, c), dtype) for k, c in layers.items()},
    }


def momentum_update(running: dict, moments: dict, momentum: float, *, unbiased: bool, option: str):
    """``(1 - m) * running + m * batch`` of every layer's mean and variance, the
    :func:`running_moments` structure, with ``moments[layer] = (mean, biased var[, n])`` (what
    a Conv-4 reports, :func:`jaxmeta.models.layers.batch_moments`). ``unbiased``: the batch
    variance times ``n / (n - 1)``, as PyTorch's ``BatchNorm2d`` keeps it.

    Raises:
      ValueError: the model reported other layers than ``running`` holds (``option`` names
        the switch that keeps them).
    """
    if set(moments) != set(running["mean"]):
        raise ValueError(
            f"{option}: the model reported batch statistics for "
            f"{sorted(moments)}, the learner state holds {sorted(running['mean'])}"
        )

    def batch_var(k):
        var = moments[k][1]
        if not unbiased:
            return var
        n = moments[k][2]
        return var * n / jnp.maximum(n - 1, 1)

    m = momentum
    return {
        "mean": {
            k: (1 - m) * v + m * moments[k][0].astype(v.dtype) for k, v in running["mean"].items()
        },
        "var": {
            k: (1 - m) * v + m * batch_var(k).astype(v.dtype) for k, v in running["var"].items()
        },
    }


def apply_support_query(
    apply_fn: ApplyFn,
    params: Params,
    support_x: Array,
    query_x: Array,
    *,
    bn_mode: str = "transductive",
    norm_stats: Any = None,
) -> tuple[Array, Array]:
    """A model's outputs on one task's support and query sets, in a BatchNorm mode.

    ``"transductive"``: ``apply_fn(params, support_x)`` and ``apply_fn(params, query_x)``,
    each set normalised with its own batch statistics (the MAML paper's protocol; how every
    learner trains). A query's output depends on the other queries of the batch, and a single
    query is normalised with its own statistics (predictions collapse towards chance).

    ``"inductive"``: one pass over ``concat([support_x, query_x])`` with
    ``apply_fn(..., stats_rows=n_support)``: every normalisation layer takes its statistics
    from the support set, so the support outputs equal the transductive ones and each query
    is normalised with the support's statistics, independently of the other queries (one
    query alone gives the same output as in a batch). ``apply_fn`` must accept
    ``stats_rows=`` (:class:`~jaxmeta.models.conv4.Conv4` and
    :class:`~jaxmeta.models.mlp.MLP` do; models without batch statistics ignore it).

    Args:
      apply_fn: ``(params, x[n, ...]) -> [n, ...]``.
      params: model parameters.
      support_x: ``[n_s, ...]``.
      query_x: ``[n_q, ...]``.
      bn_mode: one of :data:`BN_MODES`.
      norm_stats: for ``"running"``: the statistics every normalisation layer uses
        (``apply_fn(..., norm_stats=...)``: each example independently of the others).

    Returns:
      ``(support_out [n_s, ...], query_out [n_q, ...])``.
    """
    mode = check_bn_mode(bn_mode)
    if mode == "transductive":
        return apply_fn(params, support_x), apply_fn(params, query_x)
    n_s = support_x.shape[0]
    both = jnp.concatenate([support_x, query_x], axis=0)
    if mode == "running":
        if norm_stats is None:
            raise ValueError(
                "bn_mode='running' needs running statistics, which only a learner that keeps "
                "them has (protonets with running_stats=True); use 'transductive' or 'inductive'"
            )
        out = apply_fn(params, both, norm_stats=norm_stats)
    else:
        out = apply_fn(params, both, stats_rows=n_s)
    return out[:n_s], out[n_s:]


def query_outputs(
    apply_fn: ApplyFn, adapted: Params, support_x: Array, query_x: Array, *, bn_mode=None
) -> Array:
    """The adapted model's outputs on one task's queries in a BatchNorm mode (``None`` =
    transductive: the queries alone; see :func:`apply_support_query`)."""
    if bn_mode in (None, "transductive"):
        return apply_fn(adapted, query_x)
    return apply_support_query(apply_fn, adapted, support_x, query_x, bn_mode=bn_mode)[1]


def task_metrics(predictions: Array, targets: Array, loss: Array) -> Metrics:
    """``loss`` plus ``accuracy`` for classification targets."""
    out = {"loss": loss}
    if is_classification(targets):
        out["accuracy"] = accuracy(predictions, targets)
    return out


def query_loss(loss_fn: LossFn, predictions: Array, episode: Episode) -> tuple[Array, Metrics]:
    """One task's query loss and metrics, every learner's outer objective.

    For classification, any support or query label outside ``[0, C)`` (``C`` =
    ``predictions.shape[-1]``, the classes the learner can output) makes the loss and its
    gradients NaN (:func:`jaxmeta.losses.label_guard`): support labels reach the loss
    only through the adaptation or a one-hot (prototypes, SNAIL's label channel), where
    a bad value would otherwise just be ignored.
    """
    loss = loss_fn(predictions, episode.query_y)
    if is_classification(episode.query_y):
        labels = jnp.concatenate([episode.support_y.ravel(), episode.query_y.ravel()])
        loss = loss * label_guard(labels, predictions.shape[-1], loss.dtype)
    return loss, task_metrics(predictions, episode.query_y, loss)


def gradient_learner(
    *,
    name: str,
    apply_fn: ApplyFn,
    loss_fn: LossFn,
    adapt_fn: Callable[[Params, Array, Array, int], tuple[Params, Array]],
    init: Callable[[PRNGKey, Params], Params],
    inner_steps: int,
    eval_steps: int,
) -> MetaLearner:
    """The learner of the MAML family, given how one task adapts.

    ``adapt_fn(meta_params, support_x, support_y, steps) -> (adapted_model_params,
    support_losses[steps])`` is the only thing MAML, ANIL and Meta-SGD differ in; the
    outer loss (query loss after ``inner_steps``), the meta-gradient (its mean over
    tasks) and ``predict`` (after ``eval_steps``, or ``steps=``) are shared, and so are
    the input checks of all four (shapes always; label values when concrete, against the
    model's output width, found abstractly with ``jax.eval_shape``).
    """
    check_apply_fn(apply_fn)

    def n_out(meta_params: Params, support_x: Array, support_y: Array) -> int:
        """The model's output width (what labels must stay below), without computing."""
        model = jax.eval_shape(lambda p: adapt_fn(p, support_x, support_y, 0)[0], meta_params)
        return jax.eval_shape(apply_fn, model, support_x).shape[-1]

    def adapt(meta_params: Params, support_x: Array, support_y: Array, steps=None) -> Params:
        """Adapted model parameters for one task (``support_x: [n_support, ...]``)."""
        steps = inner_steps if steps is None else check_int("steps", steps, minimum=0)
        check_task(
            support_x, support_y, num_classes=lambda: n_out(meta_params, support_x, support_y)
        )
        return adapt_fn(meta_params, support_x, support_y, steps)[0]

    def outer_loss(meta_params: Params, episode: Episode, key: PRNGKey | None = None):
        """Query loss of one task after adaptation on its support set, with metrics."""
        del key
        sx, sy = episode.support_x, episode.support_y
        check_episode(episode, batched=False, num_classes=lambda: n_out(meta_params, sx, sy))
        adapted, inner_losses = adapt_fn(meta_params, sx, sy, inner_steps)
        loss, metrics = query_loss(loss_fn, apply_fn(adapted, episode.query_x), episode)
        if inner_steps:
            metrics["support_loss_before"] = inner_losses[0]
        return loss, metrics

    def meta_grad(meta_params: Params, episodes: Episode, key: PRNGKey, *, task_chunk="auto"):
        """Mean meta-gradient and metrics over ``episodes`` (leading task axis)."""
        sx, sy = episodes.support_x, episodes.support_y
        check_episode(episodes, batched=True, num_classes=lambda: n_out(meta_params, sx[0], sy[0]))
        return mean_task_grad(outer_loss, meta_params, episodes, key, task_chunk=task_chunk)

    return MetaLearner(
        init=init,
        meta_grad=meta_grad,
        predict=adapting_predict(apply_fn, adapt, eval_steps),
        name=name,
        adapt=adapt,
        outer_loss=outer_loss,
        eval_inner_steps=eval_steps,
    )


def adapting_predict(apply_fn: ApplyFn, adapt: Callable[..., Params], eval_steps: int):
    """The ``predict`` of a learner that adapts by inner steps: ``adapt(meta_params,
    support_x, support_y, steps)`` (which checks the labels), then the adapted model's outputs
    on the queries."""

    def predict(meta_params, support_x, support_y, query_x, key=None, *, steps=None, bn_mode=None):
        """Adapt on one task's support set and predict its queries (``eval_steps``).

        ``bn_mode`` (:data:`BN_MODES`, default transductive) normalises the queries with
        their own batch statistics or with the support set's (:func:`apply_support_query`).
        """
        del key
        check_task(support_x, support_y, query_x)  # adapt checks the labels
        adapted = adapt(meta_params, support_x, support_y, eval_steps if steps is None else steps)
        return query_outputs(apply_fn, adapted, support_x, query_x, bn_mode=bn_mode)

    return predict


def identity_init(key: PRNGKey, params: Params) -> Params:
    """The ``init`` of learners whose meta-parameters are the model parameters."""
    del key
    return params


def apply_gradients(
    optimizer: optax.GradientTransformation,
    state: TrainState,
    grads: Params,
    metrics: Metrics,
) -> tuple[TrainState, Metrics]:
    """The shared outer update: ``optimizer`` applied to ``grads``; adds ``grad_norm``.

    ``state`` is any state with ``params``, ``opt_state`` and ``replace`` (the engine's
    :class:`jaxmeta.step.TrainState`); it lives here, not in :mod:`jaxmeta.step`, so that
    an algorithm's own outer update (``MetaLearner.update``, e.g. MAML++) can use it
    without importing the engine. Importable from :mod:`jaxmeta.step` and ``jaxmeta`` too.

    Returns the state with new ``params`` and ``opt_state`` (the step counter unchanged:
    :func:`jaxmeta.step.meta_update` advances it) and the metrics.
    """
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
    return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state), (
        metrics
    )
