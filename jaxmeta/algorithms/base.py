"""The contract every meta-learning algorithm implements, and the shared meta-update.

An algorithm is a lowercase factory returning a :class:`MetaLearner` of pure
functions (the optax pattern: ``optax.adam(...)`` returns ``(init, update)``). It says
only how to get the meta-gradient for a batch of episodes; applying it with an optax
optimizer, sampling, checkpointing and evaluation are shared and never change when an
algorithm is added.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmeta.losses import accuracy, is_classification, label_guard
from jaxmeta.types import Array, Episode, Params, PRNGKey
from jaxmeta.validation import check_episode, check_int, check_task

Metrics = dict[str, Array]
TaskBatchSize = int | str | None  # None: vmap all tasks; b: chunks of b; "auto": per backend


def check_task_batch_size(value: TaskBatchSize) -> TaskBatchSize:
    """Validate a ``task_batch_size`` argument: ``None``, ``"auto"`` or an int >= 1."""
    if value is None or value == "auto":
        return value
    if isinstance(value, str):
        raise ValueError(f"task_batch_size must be 'auto', null or an integer >= 1, got {value!r}")
    return check_int("task_batch_size", value, minimum=1)


def resolve_task_batch_size(value: TaskBatchSize, backend: str | None = None) -> int | None:
    """``"auto"`` -> how tasks are mapped fastest on ``backend`` (JAX's default, read at
    trace time): one task at a time (``1``) on a single CPU device, all tasks in one
    ``vmap`` (``None``) elsewhere.

    Measured (benchmarks/README.md): on the 2-core CPU, ``lax.map`` over single tasks ran
    the MAML training step in 0.60 s against 1.37 s vmapped (XLA:CPU runs a batched GEMM
    no faster than 32 small ones and the vmapped working set spills the caches); on a GPU
    the vmapped program is the fast one (one kernel per layer for all tasks). With several
    devices the task axis must stay vmapped so that it can be sharded.
    """
    if value != "auto":
        return value
    backend = backend or jax.default_backend()
    return 1 if backend == "cpu" and jax.device_count() == 1 else None


class MetaLearner(NamedTuple):
    """Pure functions that define a meta-learning algorithm.

    Attributes:
      init: ``(model_params) -> meta_params``. Most algorithms return the model
        parameters unchanged; Meta-SGD adds learned inner learning rates.
      meta_grad: ``(meta_params, episodes, key) -> (grads, metrics)`` for a batch of
        episodes (leading task axis on every field). ``grads`` has the structure of
        ``meta_params`` and is what the optax optimizer consumes (for Reptile, the
        pseudo-gradient ``meta_params - adapted``). ``metrics`` holds scalar means,
        at least ``loss`` and, for classification, ``accuracy``.
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

    Every shipped learner's ``predict`` also takes ``bn_mode=`` (:data:`BN_MODES`): how a
    model with batch statistics normalises the queries (see :func:`apply_support_query`).
    """

    init: Callable[[Params], Params]
    meta_grad: Callable[[Params, Episode, PRNGKey], tuple[Params, Metrics]]
    predict: Callable[..., Array]
    name: str = "metalearner"
    adapt: Callable[..., Params] | None = None
    outer_loss: Callable[..., tuple[Array, Metrics]] | None = None
    eval_inner_steps: int | None = None


# How queries are normalised at prediction time by models with batch statistics (Conv-4).
BN_MODES = ("transductive", "inductive")


def check_bn_mode(bn_mode: str) -> str:
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    return bn_mode


def apply_support_query(
    apply_fn: Callable[..., Array],
    params: Params,
    support_x: Array,
    query_x: Array,
    *,
    bn_mode: str = "transductive",
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

    Returns:
      ``(support_out [n_s, ...], query_out [n_q, ...])``.
    """
    if check_bn_mode(bn_mode) == "transductive":
        return apply_fn(params, support_x), apply_fn(params, query_x)
    n_s = support_x.shape[0]
    out = apply_fn(params, jnp.concatenate([support_x, query_x], axis=0), stats_rows=n_s)
    return out[:n_s], out[n_s:]


def task_metrics(predictions: Array, targets: Array, loss: Array) -> Metrics:
    """``loss`` plus ``accuracy`` for classification targets."""
    out = {"loss": loss}
    if is_classification(targets):
        out["accuracy"] = accuracy(predictions, targets)
    return out


def query_loss(
    loss_fn: Callable[[Array, Array], Array], predictions: Array, episode: Episode
) -> tuple[Array, Metrics]:
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


def map_tasks(
    fn: Callable[[Episode, PRNGKey], Any],
    episodes: Episode,
    key: PRNGKey,
    *,
    task_batch_size: TaskBatchSize = "auto",
) -> Any:
    """Apply a per-task function over the task axis.

    ``task_batch_size=None`` vmaps all tasks at once (one big batched program);
    an integer ``b`` runs ``lax.map`` over chunks of ``b`` vmapped tasks, which bounds
    memory and keeps each chunk's working set in cache (``b=1``: one task at a time);
    ``"auto"`` picks per backend (:func:`resolve_task_batch_size`).
    """
    task_batch_size = resolve_task_batch_size(task_batch_size)
    tasks = episodes.support_x.shape[0]
    keys = jax.random.split(key, tasks)
    if task_batch_size is None or task_batch_size >= tasks:
        return jax.vmap(fn)(episodes, keys)
    return jax.lax.map(lambda a: fn(*a), (episodes, keys), batch_size=task_batch_size)


def sum_over_tasks(x: Array) -> Array:
    """Sum over the leading (task) axis by pairwise halving: ``x[:h] + x[h:2h]``, repeated.

    Same value as ``jnp.sum(x, axis=0)`` up to summation order (pairwise summation, if
    anything more accurate). Why not ``jnp.sum``: on XLA:CPU (jaxlib 0.10.2) a reduction
    over the leading axis is emitted as a YNNPACK library fusion that ran ~25x slower
    than these element-wise adds (``[32, 576, 64]``: 22-29 ms vs 0.8-1.0 ms, measured
    on the project's 2-core CPU); the per-task meta-gradients of a Conv-4 are exactly
    such arrays.
    """
    n = x.shape[0]
    if n == 0:
        return jnp.zeros(x.shape[1:], x.dtype)
    rest = None
    while n > 1:
        h = n // 2
        if n % 2:
            rest = x[n - 1] if rest is None else rest + x[n - 1]
        x = x[:h] + x[h : 2 * h]
        n = h
    return x[0] if rest is None else x[0] + rest


def mean_map_tasks(
    fn: Callable[[Episode, PRNGKey], Any],
    episodes: Episode,
    key: PRNGKey,
    *,
    task_batch_size: TaskBatchSize = "auto",
) -> Any:
    """Mean over the task axis of ``fn(episode, key)`` (any pytree of arrays).

    The mean of ``map_tasks(fn, ...)`` over its task axis (same per-task keys), but with
    ``task_batch_size=b`` the per-task results are summed into a running total inside the
    ``lax.scan`` over chunks instead of being stacked ``[tasks, ...]`` and reduced after
    the loop: no per-task copy of every gradient is kept, and the separate reduction
    (measured at 64 ms of a 920 ms canonical second-order step on XLA:CPU, where a
    ``[32, 1, 3, 3, 64, 64]`` sum ran as a slow library fusion) disappears; the step got
    13-24% faster (SO K=1 Q=15, ``task_batch_size=1``, benchmarks/README.md). Sums within
    a chunk use :func:`sum_over_tasks`. ``task_batch_size="auto"``: see
    :func:`resolve_task_batch_size`.
    """
    task_batch_size = resolve_task_batch_size(task_batch_size)
    tasks = episodes.support_x.shape[0]
    keys = jax.random.split(key, tasks)
    total = lambda out: jax.tree_util.tree_map(sum_over_tasks, out)
    if task_batch_size is None or task_batch_size >= tasks:
        # All tasks in one vmap: XLA fuses this mean into the producers of the per-task
        # gradients; a pairwise sum measured 3-4% slower here (SO K=1 Q=1, idle CPU).
        out = jax.vmap(fn)(episodes, keys)
        return jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), out)
    b = task_batch_size
    full = tasks // b * b
    chunked = jax.tree_util.tree_map(
        lambda x: x[:full].reshape(full // b, b, *x.shape[1:]), (episodes, keys)
    )
    zeros = jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape, s.dtype),
        jax.eval_shape(fn, *jax.tree_util.tree_map(lambda x: x[0], (episodes, keys))),
    )

    def body(acc, chunk):
        part = total(jax.vmap(fn)(*chunk))
        return jax.tree_util.tree_map(jnp.add, acc, part), None

    acc, _ = jax.lax.scan(body, zeros, chunked)
    if full < tasks:
        rest = jax.tree_util.tree_map(lambda x: x[full:], (episodes, keys))
        acc = jax.tree_util.tree_map(jnp.add, acc, total(jax.vmap(fn)(*rest)))
    return jax.tree_util.tree_map(lambda x: x / tasks, acc)


def mean_task_grad(
    task_loss: Callable[[Params, Episode, PRNGKey], tuple[Array, Metrics]],
    params: Params,
    episodes: Episode,
    key: PRNGKey,
    *,
    task_batch_size: TaskBatchSize = "auto",
) -> tuple[Params, Metrics]:
    """Mean over the task axis of ``grad(task_loss)(params, episode, key)`` and its metrics.

    ``task_loss(params, episode, key) -> (loss, metrics)`` is one task's loss; this is the
    meta-gradient of every learner whose meta-objective is a mean of per-task losses.
    """
    grad = jax.grad(task_loss, has_aux=True)
    return mean_map_tasks(
        lambda ep, k: grad(params, ep, k), episodes, key, task_batch_size=task_batch_size
    )


def gradient_learner(
    *,
    name: str,
    apply_fn: Callable[[Params, Array], Array],
    loss_fn: Callable[[Array, Array], Array],
    adapt_fn: Callable[[Params, Array, Array, int], tuple[Params, Array]],
    init: Callable[[Params], Params],
    inner_steps: int,
    eval_steps: int,
    task_batch_size: TaskBatchSize,
) -> MetaLearner:
    """The learner of the MAML family, given how one task adapts.

    ``adapt_fn(meta_params, support_x, support_y, steps) -> (adapted_model_params,
    support_losses[steps])`` is the only thing MAML, ANIL and Meta-SGD differ in; the
    outer loss (query loss after ``inner_steps``), the meta-gradient (its mean over
    tasks) and ``predict`` (after ``eval_steps``, or ``steps=``) are shared, and so are
    the input checks of all four (shapes always; label values when concrete, against the
    model's output width, found abstractly with ``jax.eval_shape``).
    """

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

    def meta_grad(meta_params: Params, episodes: Episode, key: PRNGKey):
        """Mean meta-gradient and metrics over ``episodes`` (leading task axis)."""
        sx, sy = episodes.support_x, episodes.support_y
        check_episode(episodes, batched=True, num_classes=lambda: n_out(meta_params, sx[0], sy[0]))
        return mean_task_grad(
            outer_loss, meta_params, episodes, key, task_batch_size=task_batch_size
        )

    def predict(meta_params, support_x, support_y, query_x, key=None, *, steps=None, bn_mode=None):
        """Adapt on one task's support set and predict its queries (``eval_steps``).

        ``bn_mode`` (:data:`BN_MODES`, default transductive) normalises the queries with
        their own batch statistics or with the support set's (:func:`apply_support_query`).
        """
        del key
        check_task(support_x, support_y, query_x)  # adapt checks the labels
        adapted = adapt(meta_params, support_x, support_y, eval_steps if steps is None else steps)
        if bn_mode in (None, "transductive"):
            return apply_fn(adapted, query_x)
        return apply_support_query(apply_fn, adapted, support_x, query_x, bn_mode=bn_mode)[1]

    return MetaLearner(
        init=init,
        meta_grad=meta_grad,
        predict=predict,
        name=name,
        adapt=adapt,
        outer_loss=outer_loss,
        eval_inner_steps=eval_steps,
    )


class MetaTrainState(NamedTuple):
    """Everything one meta-training step reads and writes; arrays only (jit never retraces)."""

    params: Params
    opt_state: optax.OptState
    step: Array  # int32 scalar


def init_meta_train_state(
    learner: MetaLearner, optimizer: optax.GradientTransformation, model_params: Params
) -> MetaTrainState:
    meta_params = learner.init(model_params)
    return MetaTrainState(
        params=meta_params,
        opt_state=optimizer.init(meta_params),
        step=jnp.zeros((), jnp.int32),
    )


def meta_update(
    learner: MetaLearner,
    optimizer: optax.GradientTransformation,
    state: MetaTrainState,
    episodes: Episode,
    key: PRNGKey,
) -> tuple[MetaTrainState, Metrics]:
    """One meta-training step (not jitted: compose it, or use :func:`make_meta_step`)."""
    grads, metrics = learner.meta_grad(state.params, episodes, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return MetaTrainState(params, opt_state, state.step + 1), metrics


def make_meta_step(
    learner: MetaLearner, optimizer: optax.GradientTransformation, *, donate: bool = False
) -> Callable[[MetaTrainState, Episode, PRNGKey], tuple[MetaTrainState, Metrics]]:
    """The jit-compiled meta-training step ``(state, episodes, key) -> (state, metrics)``.

    Compiled once per episode shape; the learner and optimizer are captured statically.
    """

    def step(state, episodes, key):
        return meta_update(learner, optimizer, state, episodes, key)

    return jax.jit(step, donate_argnums=(0,) if donate else ())
