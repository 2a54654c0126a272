"""Reptile (Nichol, Achiam, Schulman 2018): first-order meta-learning by moving toward
the task-adapted weights.

References:
  Nichol, Achiam, Schulman. On First-Order Meta-Learning Algorithms. 2018.
  https://arxiv.org/abs/1803.02999
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from jaxmeta.algorithms.base import (
    AlgorithmSpec,
    MetaLearner,
    apply_support_query,
    check_bn_mode,
    identity_init,
    query_loss,
)
from jaxmeta.execution import mean_map_tasks
from jaxmeta.losses import cross_entropy_loss
from jaxmeta.types import ApplyFn, Array, Episode, LossFn, Params, PRNGKey
from jaxmeta.validation import (
    check_apply_fn,
    check_episode,
    check_int,
    check_positive_float,
    check_task,
)


def minibatch_indices(key: PRNGKey, n: int, batch_size: int, steps: int) -> Array:
    """``[steps, batch_size]`` indices into ``n`` examples, epoch by epoch without replacement.

    Consecutive batches walk through fresh random permutations of ``range(n)`` (a batch
    may straddle two epochs), like the reference implementation's mini-batch cycling.
    A ``batch_size`` larger than ``n`` repeats examples within a batch.
    """
    total = steps * batch_size
    epochs = -(-total // n)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, epochs))
    return perms.reshape(-1)[:total].reshape(steps, batch_size).astype(jnp.int32)


def _inner_optimizer(name: str, lr: float, beta1: float, beta2: float):
    if name == "sgd":
        return optax.sgd(lr)
    if name == "adam":
        return optax.adam(lr, b1=beta1, b2=beta2)
    raise ValueError(f"inner_optimizer must be 'sgd' or 'adam', got {name!r}")


def fit_minibatches(apply_fn, loss_fn, opt, params, x, y, steps, batch_size, key):
    """``steps`` steps of the optax optimizer ``opt`` (its state fresh) on mini-batches of
    ``batch_size`` examples of ``(x, y)`` drawn epoch-wise without replacement from ``key``:
    ``(adapted params, the mini-batch losses before each step [steps])``."""
    if steps == 0:
        return params, jnp.zeros((0,), jnp.float32)
    idx = minibatch_indices(key, x.shape[0], batch_size, steps)

    def step(carry, batch_idx):
        p, opt_state = carry
        loss, g = jax.value_and_grad(lambda q: loss_fn(apply_fn(q, x[batch_idx]), y[batch_idx]))(p)
        updates, opt_state = opt.update(g, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), loss

    (adapted, _), losses = jax.lax.scan(step, (params, opt.init(params)), idx)
    return adapted, losses


def predict_adapted(apply_fn, adapted, support_x, query_x, *, bn_mode, transductive):
    """The adapted model's outputs on the queries: in ``bn_mode`` when given, else the whole
    query batch at once (``transductive``) or each query in a batch of the support set plus
    that query."""
    if bn_mode is not None:
        return apply_support_query(apply_fn, adapted, support_x, query_x, bn_mode=bn_mode)[1]
    if transductive:
        return apply_fn(adapted, query_x)
    n_s = support_x.shape[0]

    def one(q):
        return apply_fn(adapted, jnp.concatenate([support_x, q[None]], axis=0))[n_s]

    return jax.vmap(one)(query_x)


def reptile(
    apply_fn: ApplyFn,
    *,
    inner_lr: float = 0.001,
    inner_steps: int = 5,
    inner_batch_size: int = 10,
    inner_optimizer: str = "adam",
    inner_beta1: float = 0.0,
    inner_beta2: float = 0.999,
    train_on_query: bool = False,
    eval_inner_steps: int = 50,
    eval_inner_batch_size: int | None = None,
    transductive: bool = True,
    loss_fn: LossFn = cross_entropy_loss,
) -> MetaLearner:
    """Reptile: ``grads = meta_params - adapted`` averaged over the tasks of a meta-batch.

    Each task runs ``inner_steps`` optimizer steps on mini-batches of ``inner_batch_size``
    examples drawn epoch-wise without replacement from its support set (support and
    query when ``train_on_query``). The outer optimizer consumes the pseudo-gradient
    ``theta - mean_i(theta_i')``; with ``optax.sgd(epsilon)`` the step is
    ``theta <- theta + epsilon * (mean_i theta_i' - theta)``, the paper's batched
    update. The paper anneals epsilon linearly from 1 to 0 over meta-training: use
    ``optax.sgd(optax.linear_schedule(1.0, 0.0, transition_steps=meta_iterations))``
    (``meta_step`` 1.0, ``meta_step_final`` 0.0, 100k iterations for Omniglot).

    Evaluation (``predict``) fine-tunes with ``eval_inner_steps`` steps of
    ``eval_inner_batch_size`` examples and then predicts the queries:

    * ``transductive=True`` (default; the paper's Omniglot numbers): the whole query
      batch goes through the network at once, so BatchNorm uses its statistics.
    * ``transductive=False``: each query is predicted alone, in a batch made of the
      support set plus that one query (vmapped over queries), so no information flows
      between queries.
    * ``predict(..., bn_mode="transductive" | "inductive")`` overrides that per call; inductive
      normalises every query with the support set's statistics
      (:func:`jaxmeta.algorithms.base.apply_support_query`).

    The inner optimizer state (Adam moments) is reset for every task, a pure function
    of the task; the reference code keeps TF's Adam slots across tasks.

    Args:
      apply_fn: ``(params, x[n, ...]) -> logits[n, n_way]``.
      inner_lr: inner learning rate (Omniglot: Adam 1e-3; 5e-4 for 20-way).
      inner_steps: inner steps during meta-training (Omniglot: 5; 10 for 20-way).
      inner_batch_size: mini-batch size of the inner steps (Omniglot: 10; 20 for 20-way).
      inner_optimizer: ``"adam"`` (the paper, with ``beta1=0``) or ``"sgd"``.
      inner_beta1: Adam beta1 of the inner optimizer (the paper uses 0).
      inner_beta2: Adam beta2.
      train_on_query: also fine-tune on the query examples during meta-training (the
        paper meta-trains on 10-shot episodes, ``--train-shots 10``; with a sampler that
        draws ``shots`` support and ``queries`` query examples per class this reproduces
        it with ``queries = 10 - shots``). Metrics are then the post-adaptation query
        loss/accuracy on training data, not a held-out estimate.
      eval_inner_steps: inner steps of ``predict`` (Omniglot: 50).
      eval_inner_batch_size: mini-batch size of ``predict`` (default ``inner_batch_size``;
        Omniglot: 5 for 5w1s, 10 for 5w5s / 20-way).
      transductive: evaluation mode, see above.
      loss_fn: ``(logits, labels) -> scalar``.

    Returns:
      A :class:`MetaLearner` (``init`` is the identity). ``adapt(params, support_x
      [n_s, ...], support_y [n_s], steps=None, *, key=None, batch_size=None)``;
      ``predict(params, support_x, support_y, query_x [n_q, ...], key, *, steps=None,
      bn_mode=None) -> [n_q, n_way]`` (mini-batches drawn from ``key``; ``None`` means
      ``jax.random.key(0)``).

    References:
      Nichol et al. 2018, Algorithm 2 (batched Reptile) and Section 7 / Appendix A
      (Omniglot hyper-parameters, transductive evaluation).
    """
    check_apply_fn(apply_fn)
    inner_lr = check_positive_float("inner_lr", inner_lr)
    inner_steps = check_int("inner_steps", inner_steps, minimum=0)
    inner_batch_size = check_int("inner_batch_size", inner_batch_size, minimum=1)
    eval_inner_steps = check_int("eval_inner_steps", eval_inner_steps, minimum=0)
    eval_bs = inner_batch_size if eval_inner_batch_size is None else eval_inner_batch_size
    eval_bs = check_int("eval_inner_batch_size", eval_bs, minimum=1)
    opt = _inner_optimizer(inner_optimizer, inner_lr, float(inner_beta1), float(inner_beta2))

    _fit = functools.partial(fit_minibatches, apply_fn, loss_fn, opt)

    def n_out(params, x) -> int:
        """The model's output width (what labels must stay below), without computing."""
        return jax.eval_shape(apply_fn, params, x).shape[-1]

    def adapt(params, support_x, support_y, steps=None, *, key=None, batch_size=None):
        steps = inner_steps if steps is None else check_int("steps", steps, minimum=0)
        check_task(support_x, support_y, num_classes=lambda: n_out(params, support_x))
        bs = inner_batch_size if batch_size is None else batch_size
        key = jax.random.key(0) if key is None else key
        return _fit(params, support_x, support_y, steps, bs, key)[0]

    def predict(params, support_x, support_y, query_x, key=None, *, steps=None, bn_mode=None):
        steps = eval_inner_steps if steps is None else check_int("steps", steps, minimum=0)
        check_task(support_x, support_y, query_x, num_classes=lambda: n_out(params, support_x))
        if bn_mode is not None:
            check_bn_mode(bn_mode)
        key = jax.random.key(0) if key is None else key
        adapted = _fit(params, support_x, support_y, steps, eval_bs, key)[0]
        logits = predict_adapted(
            apply_fn, adapted, support_x, query_x, bn_mode=bn_mode, transductive=transductive
        )
        return jax.lax.stop_gradient(logits)

    def task_update(params, episode: Episode, key):
        x, y = episode.support_x, episode.support_y
        if train_on_query:
            x = jnp.concatenate([x, episode.query_x], axis=0)
            y = jnp.concatenate([y, episode.query_y], axis=0)
        adapted, losses = _fit(params, x, y, inner_steps, inner_batch_size, key)
        logits = apply_fn(adapted, episode.query_x)  # transductive, like MAML's outer loss
        loss, metrics = query_loss(loss_fn, logits, episode)
        if inner_steps:
            metrics["support_loss_before"] = losses[0]
        # The update does not use the query labels, but a task whose loss is NaN (e.g. an
        # out-of-range label, see query_loss) must not move the parameters finitely.
        poison = jnp.where(jnp.isfinite(loss), 1.0, jnp.nan).astype(loss.dtype)
        pseudo_grad = jax.tree_util.tree_map(lambda a, b: (a - b) * poison, params, adapted)
        return pseudo_grad, metrics

    def meta_grad(params: Params, episodes: Episode, key: PRNGKey, *, task_chunk="auto"):
        sx = episodes.support_x
        check_episode(episodes, batched=True, num_classes=lambda: n_out(params, sx[0]))
        return mean_map_tasks(
            lambda ep, k: task_update(params, ep, k), episodes, key, task_chunk=task_chunk
        )

    def outer_loss(params, episode: Episode, key=None):
        """Query loss after (non-differentiated) adaptation; Reptile has no outer loss to
        differentiate, this is for evaluation and logging."""
        key = jax.random.key(0) if key is None else key
        sx = episode.support_x
        check_episode(episode, batched=False, num_classes=lambda: n_out(params, sx))
        adapted, _ = _fit(params, sx, episode.support_y, inner_steps, inner_batch_size, key)
        return query_loss(loss_fn, apply_fn(adapted, episode.query_x), episode)

    return MetaLearner(
        init=identity_init,
        meta_grad=meta_grad,
        predict=predict,
        name="reptile",
        adapt=adapt,
        outer_loss=outer_loss,
        eval_inner_steps=eval_inner_steps,
    )


SPEC = AlgorithmSpec(reptile, model="classifier", example={"inner_steps": 1, "inner_batch_size": 3})
