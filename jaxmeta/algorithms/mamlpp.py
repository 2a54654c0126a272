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

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp

from jaxmeta.algorithms.base import (
    AlgorithmSpec,
    MetaLearner,
    adapting_predict,
    apply_gradients,
    momentum_update,
    query_loss,
    running_moments,
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


@dataclasses.dataclass(frozen=True)
class Options:
    """The checked options of one MAML++ learner (each as in :func:`mamlpp`)."""

    inner_lr: float
    inner_steps: int
    eval_steps: int
    loss_fn: LossFn
    multi_step_loss: bool
    msl_epochs: int
    steps_per_epoch: int
    first_order: bool
    first_order_epochs: int
    per_step_bn: bool
    per_step_bn_stats: bool
    bn_momentum: float
    bn_re: re.Pattern
    lslr: bool
    remat: bool

    @property
    def copies(self) -> int:
        """Per-step copies of the BatchNorm weights, learning rates and statistics."""
        return max(self.inner_steps, 1)


def bn_mask(opts: Options, params: Params) -> Params:
    """Python bools like ``params``: the leaves with per-step copies."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: bool(opts.per_step_bn and opts.bn_re.search(_name(p))), params
    )


def bn_layers(opts: Options, params: Params) -> dict[str, int]:
    """Running-statistics layers and their channels, from the BatchNorm scale leaves."""
    out = {}
    for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = _name(path)
        if opts.bn_re.search(name) and _layer(name) is not None:
            out[_layer(name)] = w.shape[-1]
    return out


def init_meta(opts: Options, key: PRNGKey, params: Params) -> Params:
    """Meta-parameters: ``{"params"}`` with per-step BatchNorm copies, and ``"lr"`` (LSLR)."""
    del key
    mask = bn_mask(opts, params)
    if opts.per_step_bn and not any(jax.tree_util.tree_leaves(mask)):
        raise ValueError(
            f"per_step_bn: no parameter matches bn_params={opts.bn_re.pattern!r}; "
            "set per_step_bn: false for a model without BatchNorm"
        )
    n = opts.copies
    theta = jax.tree_util.tree_map(
        lambda w, b: jnp.repeat(w[None], n, axis=0) if b else w, params, mask
    )
    meta = {"params": theta}
    if opts.lslr:
        meta["lr"] = jax.tree_util.tree_map(
            lambda w: jnp.full((n,), opts.inner_lr, w.dtype), params
        )
    return meta


def init_running_stats(opts: Options, key: PRNGKey, meta: Params) -> dict:
    """The learner state: per-step running ``mean`` (zeros) and ``var`` (ones) per layer."""
    del key
    layers = bn_layers(opts, meta["params"])
    if not layers:
        raise ValueError(
            f"per_step_bn_stats: no BatchNorm scale matches bn_params={opts.bn_re.pattern!r}; "
            "set per_step_bn_stats: false for a model without BatchNorm"
        )
    return running_moments(
        layers, jax.tree_util.tree_leaves(meta["params"])[0].dtype, (opts.copies,)
    )


def update_running_stats(opts: Options, running: dict, moments: dict) -> dict:
    """One momentum update of the running statistics with a meta-batch's per-step moments
    (``moments[layer] = (mean [steps, C], var [steps, C])``, means over the tasks; the
    biased variance, a documented deviation from the reference)."""
    return momentum_update(
        running, moments, opts.bn_momentum, unbiased=False, option="per_step_bn_stats"
    )


def model_at(opts: Options, theta: Params, mask: Params, s) -> Params:
    """The model parameters of inner step ``s``: copy ``s`` of the per-step leaves (the last
    copy past the training steps)."""
    s = jnp.minimum(s, opts.copies - 1)
    return jax.tree_util.tree_map(lambda w, b: w[s] if b else w, theta, mask)


def _forward(apply_fn: ApplyFn, params: Params, x: Array, stats: bool):
    """``(outputs, {layer: (mean, var)} or None)``: the BatchNorm moments when ``stats``."""
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


def inner_loop(opts: Options, apply_fn: ApplyFn, meta, sx, sy, qx, steps: int, fo: bool, *,
               query_steps: bool, stats: bool):  # fmt: skip
    """Adapt on one task's support set. Returns ``(adapted theta, support losses [steps],
    per-step query outputs [steps, n_q, ...] or None, per-step moments or None)``."""
    theta = meta["params"]
    mask = bn_mask(opts, theta)
    if steps == 0:
        return theta, jnp.zeros((0,), jnp.float32), None, None

    def step(p, s):
        def support_loss(q):
            out, moments = _forward(apply_fn, model_at(opts, q, mask, s), sx, stats)
            return opts.loss_fn(out, sy), moments

        (loss, moments), g = jax.value_and_grad(support_loss, has_aux=True)(p)
        if fo:
            g = jax.lax.stop_gradient(g)
        if opts.lslr:
            idx = jnp.minimum(s, opts.copies - 1)
            new = jax.tree_util.tree_map(
                lambda w, gi, a, b: w if b else w - a[idx] * gi, p, g, meta["lr"], mask
            )
        else:
            new = jax.tree_util.tree_map(
                lambda w, gi, b: w if b else w - opts.inner_lr * gi, p, g, mask
            )
        out = (loss, jax.lax.stop_gradient(moments))
        if query_steps:
            out += (apply_fn(model_at(opts, new, mask, s), qx),)
        return new, out

    if opts.remat:
        step = jax.checkpoint(step)
    adapted, ys = jax.lax.scan(step, theta, jnp.arange(steps, dtype=jnp.int32))
    return adapted, ys[0], (ys[2] if query_steps else None), ys[1]


def task_loss(opts: Options, apply_fn: ApplyFn, meta, episode: Episode, step, fo: bool):
    """One task's outer loss (multi-step weighted at ``step``; ``None``: the final step's),
    with ``(metrics, per-step support moments)`` as aux."""
    sx, sy, qx = episode.support_x, episode.support_y, episode.query_x
    n = opts.inner_steps
    use_msl = opts.multi_step_loss and n > 0 and step is not None
    adapted, inner_losses, q_steps, moments = inner_loop(
        opts, apply_fn, meta, sx, sy, qx, n, fo, query_steps=use_msl, stats=opts.per_step_bn_stats
    )
    if use_msl:
        losses = jax.vmap(lambda out: query_loss(opts.loss_fn, out, episode)[0])(q_steps)
        loss_final, metrics = query_loss(opts.loss_fn, q_steps[-1], episode)
        w = msl_weights(
            step, steps=n, msl_epochs=opts.msl_epochs, steps_per_epoch=opts.steps_per_epoch
        )
        loss = jnp.sum(w.astype(losses.dtype) * losses)
        metrics["msl_loss"] = loss
    else:
        final = model_at(opts, adapted, bn_mask(opts, adapted), n - 1)
        loss, metrics = query_loss(opts.loss_fn, apply_fn(final, qx), episode)
    if n:
        metrics["support_loss_before"] = inner_losses[0]
    return loss, (metrics, moments)


def grads_and_moments(opts: Options, apply_fn: ApplyFn, meta, episodes: Episode, key, step,
                      task_chunk):  # fmt: skip
    """The mean meta-gradient over ``episodes`` at meta-step ``step`` (first order while the
    derivative-order annealing says so), its metrics and the mean per-step moments."""

    def with_order(fo: bool):
        g = jax.grad(lambda m, ep: task_loss(opts, apply_fn, m, ep, step, fo), has_aux=True)
        return lambda m: mean_map_tasks(
            lambda ep, k: g(m, ep), episodes, key, task_chunk=task_chunk
        )

    if opts.first_order or opts.first_order_epochs == 0 or step is None:
        grads, (metrics, moments) = with_order(opts.first_order)(meta)
        second = jnp.asarray(0.0 if opts.first_order else 1.0, jnp.float32)
    else:
        is_fo = jnp.asarray(step, jnp.int32) // opts.steps_per_epoch < opts.first_order_epochs
        grads, (metrics, moments) = jax.lax.cond(is_fo, with_order(True), with_order(False), meta)
        second = 1.0 - is_fo.astype(jnp.float32)
    return grads, {**metrics, "second_order": second}, moments


def output_width(opts: Options, apply_fn: ApplyFn, meta, support_x) -> int:
    """The model's output width (what labels must stay below), without computing."""
    mp = jax.eval_shape(lambda m: model_at(opts, m["params"], bn_mask(opts, m["params"]), 0), meta)
    return jax.eval_shape(apply_fn, mp, support_x).shape[-1]


def _without_state(predict):
    """``predict`` taking (and ignoring) the ``learner_state=`` the engine passes to the
    predict of a learner with state: MAML++'s running statistics are tracked, not used."""

    def stateless(*args, learner_state=None, **kwargs):
        del learner_state
        return predict(*args, **kwargs)

    return stateless


def _options(**kw) -> Options:
    """The factory's arguments, checked."""
    inner_steps = check_int("inner_steps", kw["inner_steps"], minimum=0)
    eval_steps = inner_steps if kw["eval_inner_steps"] is None else kw["eval_inner_steps"]
    if not 0.0 <= float(kw["bn_momentum"]) <= 1.0:
        raise ValueError(f"bn_momentum must be in [0, 1], got {kw['bn_momentum']!r}")
    per_step = kw["multi_step_loss"] or kw["per_step_bn"] or kw["per_step_bn_stats"] or kw["lslr"]
    if per_step and inner_steps == 0:
        raise ValueError("inner_steps must be >= 1 when a per-step switch of mamlpp is on")
    try:
        bn_re = re.compile(kw["bn_params"])
    except re.error as e:
        raise ValueError(f"bn_params is not a regular expression: {e}") from None
    return Options(
        inner_lr=check_positive_float("inner_lr", kw["inner_lr"]),
        inner_steps=inner_steps,
        eval_steps=check_int("eval_inner_steps", eval_steps, minimum=0),
        loss_fn=kw["loss_fn"],
        multi_step_loss=kw["multi_step_loss"],
        msl_epochs=check_int("msl_epochs", kw["msl_epochs"], minimum=1),
        steps_per_epoch=check_int("steps_per_epoch", kw["steps_per_epoch"], minimum=1),
        first_order=kw["first_order"],
        first_order_epochs=check_int("first_order_epochs", kw["first_order_epochs"], minimum=0),
        per_step_bn=kw["per_step_bn"],
        per_step_bn_stats=kw["per_step_bn_stats"],
        bn_momentum=float(kw["bn_momentum"]),
        bn_re=bn_re,
        lslr=kw["lslr"],
        remat=kw["remat"],
    )


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
    opts = _options(
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        eval_inner_steps=eval_inner_steps,
        loss_fn=loss_fn,
        multi_step_loss=multi_step_loss,
        msl_epochs=msl_epochs,
        steps_per_epoch=steps_per_epoch,
        first_order=first_order,
        first_order_epochs=first_order_epochs,
        per_step_bn=per_step_bn,
        per_step_bn_stats=per_step_bn_stats,
        bn_momentum=bn_momentum,
        bn_params=bn_params,
        lslr=lslr,
        remat=remat,
    )

    n_out = functools.partial(output_width, opts, apply_fn)

    def outer_loss(meta, episode: Episode, key: PRNGKey | None = None, *, step=None):
        """Query loss of one task after adaptation (multi-step weighted at ``step``)."""
        del key
        check_episode(episode, batched=False, num_classes=lambda: n_out(meta, episode.support_x))
        # Derivative-order annealing is decided per meta-batch, in meta_grad.
        loss, (metrics, _) = task_loss(opts, apply_fn, meta, episode, step, opts.first_order)
        return loss, metrics

    def checked_grads(meta, episodes: Episode, key: PRNGKey, step, task_chunk):
        sx = episodes.support_x
        check_episode(episodes, batched=True, num_classes=lambda: n_out(meta, sx[0]))
        return grads_and_moments(opts, apply_fn, meta, episodes, key, step, task_chunk)

    def meta_grad(meta, episodes: Episode, key: PRNGKey, *, task_chunk="auto", step=None):
        """Mean meta-gradient and metrics over ``episodes`` at meta-step ``step``."""
        grads, metrics, _ = checked_grads(meta, episodes, key, step, task_chunk)
        return grads, metrics

    def update(state, episodes: Episode, key: PRNGKey, *, optimizer, task_chunk="auto"):
        """The outer update: meta-gradient at ``state.step``, optimizer, running statistics."""
        grads, metrics, moments = checked_grads(state.params, episodes, key, state.step, task_chunk)
        new, metrics = apply_gradients(optimizer, state, grads, metrics)
        if opts.per_step_bn_stats:
            running = update_running_stats(opts, state.learner_state, moments)
            new = new.replace(learner_state=running)
        return new, metrics

    def adapt(meta, support_x: Array, support_y: Array, steps=None) -> Params:
        """Adapted model parameters of one task (per-step BatchNorm copy of the last step)."""
        steps = opts.eval_steps if steps is None else check_int("steps", steps, minimum=0)
        check_task(support_x, support_y, num_classes=lambda: n_out(meta, support_x))
        adapted = inner_loop(
            opts, apply_fn, meta, support_x, support_y, None, steps, False,
            query_steps=False, stats=False,
        )[0]  # fmt: skip
        return model_at(opts, adapted, bn_mask(opts, adapted), max(steps - 1, 0))

    return MetaLearner(
        init=functools.partial(init_meta, opts),
        meta_grad=meta_grad,
        predict=_without_state(adapting_predict(apply_fn, adapt, opts.eval_steps)),
        name="mamlpp",
        adapt=adapt,
        outer_loss=outer_loss,
        eval_inner_steps=opts.eval_steps,
        init_state=functools.partial(init_running_stats, opts) if per_step_bn_stats else None,
        update=update,
    )


SPEC = AlgorithmSpec(mamlpp, model="classifier", example={"inner_lr": 0.4, "inner_steps": 1})
