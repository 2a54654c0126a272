"""MAML++ (Antoniou et al. 2019): MAML with the six changes of "How to train your MAML",
each a switch so that ablations can be run.

1. ``multi_step_loss``: the outer loss is a weighted sum of the query losses after every inner
   step; the weights start uniform and are annealed towards the last step over
   ``msl_epochs`` epochs, after which only the last step counts (the reference's
   ``get_per_step_loss_importance_vector``).
2. ``first_order_epochs``: derivative-order annealing, first-order meta-gradients for the
   first epochs, then second order. The meta-step counter is traced: the switch is a
   ``lax.cond`` inside the one compiled step (no retrace when it flips).
3. ``per_step_bn``: every BatchNorm scale and bias has one copy per inner step (a leading
   ``[inner_steps]`` axis on those meta-parameters); inner step ``s`` and the queries after it
   use copy ``s``. They are meta-learned, not adapted in the inner loop (the reference's
   ``enable_inner_loop_optimizable_bn_params: false``).
4. ``per_step_bn_stats``: per-step running means and variances (momentum ``bn_momentum``) of the
   support batches, kept in ``TrainState.learner_state`` (``init_state``), updated by the
   learner's outer update (``update``) and checkpointed with the state. As in the reference
   (whose BatchNorm always runs with ``training=True``), normalisation itself always uses the
   statistics of the current batch; the running statistics are tracked, not used.
5. ``lslr``: learned per-layer, per-step inner learning rates: one ``[inner_steps]`` vector per
   parameter array (meta-parameters ``{"params", "lr"}``, ``lr`` shaped like the model's
   parameters), initialised to ``inner_lr``. With ``per_step_bn`` the BatchNorm leaves are not
   adapted and their vectors stay unused (zero gradient).
6. Cosine annealing of the outer learning rate: the optimizer's schedule
   (``optimizer.schedule: {name: cosine}`` in a config), not this module.

With every switch off this is :func:`jaxmeta.maml` exactly (tests/test_mamlpp.py).

Deviations from the reference code (HowToTrainYourMAMLPytorch): running statistics are the
mean over the meta-batch of each task's support-set moments, one momentum update per
meta-step and inner step (the reference updates them task after task, also on query
batches), and the running variance is the biased one; one learning-rate vector per parameter
array has ``inner_steps`` entries (the reference keeps ``inner_steps + 1``, the last unused).
Steps are counted in meta-steps: epoch = ``step // steps_per_epoch`` (500 in the reference).

References:
  Antoniou, Edwards, Storkey. How to train your MAML. ICLR 2019.
  https://arxiv.org/abs/1810.09502
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from jaxmeta.algorithms.base import (
    AlgorithmSpec,
    MetaLearner,
    adapting_predict,
    apply_gradients,
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

# BatchNorm scale/bias leaves: Conv-4's ``bn{i}_scale``/``bn{i}_bias`` and Flax's ``BatchNorm``.
DEFAULT_BN_PARAMS = r"(^|/)(bn\d*_(scale|bias)|BatchNorm[^/]*/(scale|bias))$"


def _name(path) -> str:
    parts = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
    return "/".join(str(p) for p in parts)


def _layer(name: str) -> str | None:
    """The running-statistics key of a BatchNorm scale leaf (``.../bn0_scale`` -> ``bn0``)."""
    last = name.split("/")
    if last[-1].endswith("_scale"):
        return last[-1][: -len("_scale")]
    if last[-1] == "scale" and len(last) > 1:
        return last[-2]
    return None


def msl_weights(step: Array, *, steps: int, msl_epochs: int, steps_per_epoch: int) -> Array:
    """The per-step weights of the multi-step loss at meta-step ``step``: ``[steps]``.

    Uniform ``1/steps`` at epoch 0; each non-final weight falls by ``1/steps/msl_epochs`` per
    epoch down to ``0.03/steps``, the final one rises by what they lose (capped); from epoch
    ``msl_epochs`` on, only the final step counts (``[0, ..., 0, 1]``).
    """
    epoch = (jnp.asarray(step, jnp.int32) // steps_per_epoch).astype(jnp.float32)
    decay = 1.0 / steps / msl_epochs
    floor = 0.03 / steps
    early = jnp.maximum(1.0 / steps - epoch * decay, floor) * jnp.ones((steps - 1,), jnp.float32)
    last = jnp.minimum(1.0 / steps + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    annealing = jnp.concatenate([early, last[None]])
    final_only = jnp.zeros((steps,), jnp.float32).at[-1].set(1.0)
    return jnp.where(epoch < msl_epochs, annealing, final_only)


def mamlpp(
    apply_fn: ApplyFn,
    *,
    inner_lr: float = 0.1,
    inner_steps: int = 5,
    eval_inner_steps: int | None = None,
    loss_fn: LossFn = cross_entropy_loss,
    multi_step_loss: bool = True,
    msl_epochs: int = 10,
    steps_per_epoch: int = 500,
    first_order: bool = False,
    first_order_epochs: int = 0,
    per_step_bn: bool = True,
    per_step_bn_stats: bool = True,
    bn_momentum: float = 0.1,
    bn_params: str = DEFAULT_BN_PARAMS,
    lslr: bool = True,
    remat: bool = False,
) -> MetaLearner:
    """MAML++ as pure functions; every change of the paper is a switch.

    Args:
      apply_fn: ``(params, x[n, ...]) -> predictions[n, ...]``; with ``per_step_bn_stats`` it
        must also take ``mutable=["batch_stats"]`` and report the moments each BatchNorm used
        (a Flax ``apply`` of :class:`~jaxmeta.models.conv4.Conv4` does).
      inner_lr: inner SGD learning rate (initial value of the LSLR rates).
      inner_steps: inner steps during meta-training (``>= 1`` with a per-step switch on).
      eval_inner_steps: inner steps of ``predict`` (default ``inner_steps``); steps past
        ``inner_steps`` reuse the last per-step BatchNorm copy and learning rate.
      loss_fn: ``(predictions, targets) -> scalar`` for inner and outer loss.
      multi_step_loss: the annealed multi-step loss (change 1).
      msl_epochs: epochs over which the multi-step weights are annealed.
      steps_per_epoch: meta-steps per epoch (the unit of ``msl_epochs`` and
        ``first_order_epochs``).
      first_order: always first order (FOMAML-like); overrides ``first_order_epochs``.
      first_order_epochs: derivative-order annealing (change 2): first order while
        ``step // steps_per_epoch < first_order_epochs``; ``0``: second order throughout.
      per_step_bn: per-step BatchNorm scales and biases (change 3).
      per_step_bn_stats: per-step running statistics in the learner state (change 4).
      bn_momentum: momentum of the running statistics (0.1, as PyTorch).
      bn_params: regular expression on ``/``-joined parameter paths naming the BatchNorm
        scale and bias leaves.
      lslr: learned per-layer per-step inner learning rates (change 5).
      remat: rematerialise each inner step in the backward pass (memory for time).

    Returns:
      A :class:`MetaLearner`. ``meta_grad`` and ``outer_loss`` take ``step=`` (the meta-step,
      traced); ``step=None`` means annealing is over (final-step loss, second order).
      ``update`` is the outer update the engine calls: it passes ``state.step`` and threads
      the running statistics.

    References:
      Antoniou et al., ICLR 2019, Section 4 (the six changes); code
      github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch.
    """
    check_apply_fn(apply_fn)
    steps_train = check_int("inner_steps", inner_steps, minimum=0)
    inner_lr = check_positive_float("inner_lr", inner_lr)
    eval_steps = steps_train if eval_inner_steps is None else eval_inner_steps
    eval_steps = check_int("eval_inner_steps", eval_steps, minimum=0)
    msl_epochs = check_int("msl_epochs", msl_epochs, minimum=1)
    steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch, minimum=1)
    first_order_epochs = check_int("first_order_epochs", first_order_epochs, minimum=0)
    if not 0.0 <= float(bn_momentum) <= 1.0:
        raise ValueError(f"bn_momentum must be in [0, 1], got {bn_momentum!r}")
    bn_momentum = float(bn_momentum)
    per_step = multi_step_loss or per_step_bn or per_step_bn_stats or lslr
    if per_step and steps_train == 0:
        raise ValueError("inner_steps must be >= 1 when a per-step switch of mamlpp is on")
    try:
        bn_re = re.compile(bn_params)
    except re.error as e:
        raise ValueError(f"bn_params is not a regular expression: {e}") from None
    n_idx = max(steps_train, 1)

    def bn_mask(params: Params) -> Params:
        """Python bools like ``params``: the leaves with per-step copies."""
        return jax.tree_util.tree_map_with_path(
            lambda p, _: bool(per_step_bn and bn_re.search(_name(p))), params
        )

    def bn_layers(params: Params) -> dict[str, int]:
        """Running-statistics layers and their channels, from the BatchNorm scale leaves."""
        out = {}
        for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
            name = _name(path)
            if bn_re.search(name) and _layer(name) is not None:
                out[_layer(name)] = w.shape[-1]
        return out

    def init(key: PRNGKey, params: Params) -> Params:
        del key
        mask = bn_mask(params)
        if per_step_bn and not any(jax.tree_util.tree_leaves(mask)):
            raise ValueError(
                f"per_step_bn: no parameter matches bn_params={bn_params!r}; "
                "set per_step_bn: false for a model without BatchNorm"
            )
        theta = jax.tree_util.tree_map(
            lambda w, b: jnp.repeat(w[None], n_idx, axis=0) if b else w, params, mask
        )
        meta = {"params": theta}
        if lslr:
            meta["lr"] = jax.tree_util.tree_map(
                lambda w: jnp.full((n_idx,), inner_lr, w.dtype), params
            )
        return meta

    def init_state(key: PRNGKey, meta: Params):
        del key
        if not per_step_bn_stats:
            return None
        layers = bn_layers(meta["params"])
        if not layers:
            raise ValueError(
                f"per_step_bn_stats: no BatchNorm scale matches bn_params={bn_params!r}; "
                "set per_step_bn_stats: false for a model without BatchNorm"
            )
        dtype = jax.tree_util.tree_leaves(meta["params"])[0].dtype
        return {
            "mean": {k: jnp.zeros((n_idx, c), dtype) for k, c in layers.items()},
            "var": {k: jnp.ones((n_idx, c), dtype) for k, c in layers.items()},
        }

    def model_at(theta: Params, mask: Params, s) -> Params:
        s = jnp.minimum(s, n_idx - 1)
        return jax.tree_util.tree_map(lambda w, b: w[s] if b else w, theta, mask)

    def forward(params: Params, x: Array, stats: bool):
        if not stats:
            return apply_fn(params, x), None
        try:
            out, col = apply_fn(params, x, mutable=["batch_stats"])
        except TypeError as e:
            raise ValueError(
                "per_step_bn_stats needs apply_fn(params, x, mutable=['batch_stats']) "
                f"(a Flax apply); it failed: {e}"
            ) from None
        return out, {k: v[0] for k, v in col.get("batch_stats", {}).items()}

    def run_inner(meta, sx, sy, qx, steps: int, fo: bool, *, query_steps: bool, stats: bool):
        """Adapt on one task's support set. Returns ``(adapted theta, support losses
        [steps], per-step query outputs [steps, n_q, ...] or None, per-step moments)``."""
        theta = meta["params"]
        mask = bn_mask(theta)
        if steps == 0:
            return theta, jnp.zeros((0,), jnp.float32), None, None

        def step(p, s):
            def support_loss(q):
                out, moments = forward(model_at(q, mask, s), sx, stats)
                return loss_fn(out, sy), moments

            (loss, moments), g = jax.value_and_grad(support_loss, has_aux=True)(p)
            if fo:
                g = jax.lax.stop_gradient(g)
            if lslr:
                idx = jnp.minimum(s, n_idx - 1)
                new = jax.tree_util.tree_map(
                    lambda w, gi, a, b: w if b else w - a[idx] * gi, p, g, meta["lr"], mask
                )
            else:
                new = jax.tree_util.tree_map(
                    lambda w, gi, b: w if b else w - inner_lr * gi, p, g, mask
                )
            out = (loss, jax.lax.stop_gradient(moments))
            if query_steps:
                out += (apply_fn(model_at(new, mask, s), qx),)
            return new, out

        if remat:
            step = jax.checkpoint(step)
        adapted, ys = jax.lax.scan(step, theta, jnp.arange(steps, dtype=jnp.int32))
        return adapted, ys[0], (ys[2] if query_steps else None), ys[1]

    def n_out(meta, support_x) -> int:
        mp = jax.eval_shape(lambda m: model_at(m["params"], bn_mask(m["params"]), 0), meta)
        return jax.eval_shape(apply_fn, mp, support_x).shape[-1]

    def task_loss(meta, episode: Episode, step, fo: bool):
        """One task's outer loss, with ``(metrics, per-step support moments)`` as aux."""
        sx, sy, qx = episode.support_x, episode.support_y, episode.query_x
        use_msl = multi_step_loss and steps_train > 0 and step is not None
        adapted, inner_losses, q_steps, moments = run_inner(
            meta, sx, sy, qx, steps_train, fo, query_steps=use_msl, stats=per_step_bn_stats
        )
        if use_msl:
            losses = jax.vmap(lambda out: query_loss(loss_fn, out, episode)[0])(q_steps)
            loss_final, metrics = query_loss(loss_fn, q_steps[-1], episode)
            w = msl_weights(
                step, steps=steps_train, msl_epochs=msl_epochs, steps_per_epoch=steps_per_epoch
            )
            loss = jnp.sum(w.astype(losses.dtype) * losses)
            metrics["msl_loss"] = loss
        else:
            final = model_at(adapted, bn_mask(adapted), steps_train - 1)
            loss, metrics = query_loss(loss_fn, apply_fn(final, qx), episode)
        if steps_train:
            metrics["support_loss_before"] = inner_losses[0]
        return loss, (metrics, moments)

    def outer_loss(meta, episode: Episode, key: PRNGKey | None = None, *, step=None):
        """Query loss of one task after adaptation (multi-step weighted at ``step``)."""
        del key
        check_episode(episode, batched=False, num_classes=lambda: n_out(meta, episode.support_x))
        # Derivative-order annealing is decided per meta-batch, in meta_grad.
        loss, (metrics, _) = task_loss(meta, episode, step, first_order)
        return loss, metrics

    def grads_and_moments(meta, episodes: Episode, key: PRNGKey, step, task_chunk):
        sx = episodes.support_x
        check_episode(episodes, batched=True, num_classes=lambda: n_out(meta, sx[0]))

        def with_order(fo: bool):
            g = jax.grad(lambda m, ep: task_loss(m, ep, step, fo), has_aux=True)
            return lambda m: mean_map_tasks(
                lambda ep, k: g(m, ep), episodes, key, task_chunk=task_chunk
            )

        if first_order or first_order_epochs == 0 or step is None:
            grads, (metrics, moments) = with_order(first_order)(meta)
            second = jnp.asarray(0.0 if first_order else 1.0, jnp.float32)
        else:
            is_fo = jnp.asarray(step, jnp.int32) // steps_per_epoch < first_order_epochs
            grads, (metrics, moments) = jax.lax.cond(
                is_fo, with_order(True), with_order(False), meta
            )
            second = 1.0 - is_fo.astype(jnp.float32)
        metrics = {**metrics, "second_order": second}
        return grads, metrics, moments

    def meta_grad(meta, episodes: Episode, key: PRNGKey, *, task_chunk="auto", step=None):
        """Mean meta-gradient and metrics over ``episodes`` at meta-step ``step``."""
        grads, metrics, _ = grads_and_moments(meta, episodes, key, step, task_chunk)
        return grads, metrics

    def update(state, episodes: Episode, key: PRNGKey, *, optimizer, task_chunk="auto"):
        """The outer update: meta-gradient at ``state.step``, optimizer, running statistics."""
        grads, metrics, moments = grads_and_moments(
            state.params, episodes, key, state.step, task_chunk
        )
        new, metrics = apply_gradients(optimizer, state, grads, metrics)
        if per_step_bn_stats:
            running = state.learner_state
            if set(moments) != set(running["mean"]):
                raise ValueError(
                    f"per_step_bn_stats: the model reported batch statistics for "
                    f"{sorted(moments)}, the learner state holds {sorted(running['mean'])}"
                )
            m = bn_momentum
            new = new.replace(
                learner_state={
                    "mean": {
                        k: (1 - m) * v + m * moments[k][0].astype(v.dtype)
                        for k, v in running["mean"].items()
                    },
                    "var": {
                        k: (1 - m) * v + m * moments[k][1].astype(v.dtype)
                        for k, v in running["var"].items()
                    },
                }
            )
        return new, metrics

    def adapt(meta, support_x: Array, support_y: Array, steps=None) -> Params:
        """Adapted model parameters of one task (per-step BatchNorm copy of the last step)."""
        steps = eval_steps if steps is None else check_int("steps", steps, minimum=0)
        check_task(support_x, support_y, num_classes=lambda: n_out(meta, support_x))
        adapted = run_inner(
            meta, support_x, support_y, None, steps, False, query_steps=False, stats=False
        )[0]
        return model_at(adapted, bn_mask(adapted), max(steps - 1, 0))

    return MetaLearner(
        init=init,
        meta_grad=meta_grad,
        predict=adapting_predict(apply_fn, adapt, eval_steps),
        name="mamlpp",
        adapt=adapt,
        outer_loss=outer_loss,
        eval_inner_steps=eval_steps,
        init_state=init_state if per_step_bn_stats else None,
        update=update,
    )


SPEC = AlgorithmSpec(mamlpp, model="classifier", example={"inner_lr": 0.4, "inner_steps": 1})
