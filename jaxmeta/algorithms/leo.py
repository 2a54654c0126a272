"""LEO: Latent Embedding Optimization (Rusu et al., ICLR 2019).

LEO does not adapt a network's weights directly. An encoder and a relation network map a
task's support embeddings to a Gaussian over a low-dimensional latent code per class; a
decoder maps a code to a Gaussian over that class's linear classifier weights. The inner
loop takes gradient steps on the latent codes (the loss of the decoded classifier on the
support set), then a few steps on the decoded weights themselves (fine-tuning). The outer
loss is the query cross-entropy plus a KL term, an encoder-decoder consistency penalty, an
orthogonality regulariser on the decoder and weight decay.

Inputs are fixed feature vectors (the paper: 640-d WRN-28-10 embeddings): the learner's
``apply_fn`` maps an example to its embedding; with the ``identity`` model (the paper's
setting) it is the feature vector itself.

What follows the paper's reference code (google-deepmind/leo, ``model.py``) and is easy to
miss: the inner-loop gradients are those of the *summed* support cross-entropy (TensorFlow's
``tf.gradients`` of a per-example loss); codes are averaged per class then tiled over the
``K`` shots and sampled once per shot, and so are the decoded weights, whose logits are
averaged over the shots; the standard deviations are ``exp(u) - 1 + offset`` (offset 0 for
codes, Glorot's ``sqrt(2 / (N + d))`` for weights); the KL is a one-sample estimate averaged
over elements; L2 is ``lambda * sum(w^2) / 2`` over the encoder, relation and decoder
weights; the inner and fine-tuning learning rates are meta-learned vectors; meta-gradients
are clipped per tensor, by value then by norm (both 0.1). Evaluation uses the means (no
sampling) and no dropout.

References:
  Rusu, Rao, Sygnowski, Vinyals, Pascanu, Osindero, Hadsell. Meta-Learning with Latent
  Embedding Optimization. ICLR 2019. https://arxiv.org/abs/1807.05960 (Algorithm 1, Eq. 1-7).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxmeta.algorithms.base import AlgorithmSpec, MetaLearner, apply_support_query, task_metrics
from jaxmeta.execution import mean_task_grad
from jaxmeta.losses import label_guard
from jaxmeta.types import ApplyFn, Array, Episode, Params, PRNGKey
from jaxmeta.validation import check_episode, check_int, check_task

__all__ = [
    "LEOWeights",
    "clip_per_tensor",
    "gaussian",
    "kl_divergence",
    "leo",
    "orthogonality_penalty",
    "support_loss",
]


class LEOWeights(NamedTuple):
    """LEO's own networks (no biases, as in the paper).

    encoder: ``[d, L]``; relation: three ``[2L, 2L]`` layers (ReLU between; outputs the
    means and scale parameters ``u`` of the codes); decoder ``[L, 2d]`` (means and ``u`` of
    the weights; see :func:`gaussian`); inner_lr ``[L]``; finetune_lr ``[d]``.
    """

    encoder: Array
    relation: tuple[Array, Array, Array]
    decoder: Array
    inner_lr: Array
    finetune_lr: Array


# --------------------------------------------------------------------------- building blocks


def gaussian(params: Array, key: PRNGKey | None, offset: float = 0.0) -> tuple[Array, Array]:
    """Sample ``N(mean, std)`` from ``params = concat([mean, u], -1)``; one-sample KL to N(0, 1).

    ``std = max(exp(u) - (1 - offset), 1e-10)`` (the reference code's parameterisation).
    ``key=None`` (evaluation): returns the means and a zero KL.

    Returns:
      ``(samples [..., D], kl scalar)``: the KL is ``mean(log q(z) - log p(z))`` over the
      elements of the sample ``z`` (reparameterised, so it is differentiable).
    """
    mean, u = jnp.split(params, 2, axis=-1)
    if key is None:
        return mean, jnp.zeros((), params.dtype)
    std = jnp.maximum(jnp.exp(u) - (1.0 - offset), 1e-10)
    z = mean + std * jax.random.normal(key, mean.shape, mean.dtype)
    return z, kl_divergence(z, mean, std)


def kl_divergence(z: Array, mean: Array, std: Array) -> Array:
    """One-sample estimate ``mean(log N(z; mean, std) - log N(z; 0, 1))`` (Eq. 6's KL term)."""
    log_q = -0.5 * jnp.square((z - mean) / std) - jnp.log(std)
    log_p = -0.5 * jnp.square(z)
    return jnp.mean(log_q - log_p)  # the log(2 pi) terms cancel


def orthogonality_penalty(w: Array) -> Array:
    """Mean squared distance of the row-correlation matrix of ``w [L, D]`` from the identity.

    ``C = (w w^T) / (|w_i| |w_j|)``; returns ``mean((C - I)^2)`` (unweighted; Eq. 7's
    ``Omega(phi_d)``).
    """
    norms = jnp.sqrt(jnp.sum(jnp.square(w), axis=1, keepdims=True)) + 1e-32
    corr = (w @ w.T) / (norms @ norms.T)
    return jnp.mean(jnp.square(corr - jnp.eye(w.shape[0], dtype=w.dtype)))


def _glorot(key: PRNGKey, shape: tuple[int, int], dtype) -> Array:
    limit = math.sqrt(6.0 / (shape[0] + shape[1]))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def _dropout(key: PRNGKey | None, x: Array, rate: float) -> Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _logits(x: Array, w: Array) -> Array:
    """``x [n, d]``, weights ``[N, K, d]`` -> ``[n, N]``: logits averaged over the K shots."""
    return x @ jnp.mean(w, axis=1).T


def support_loss(x: Array, y: Array, w: Array) -> Array:
    """Summed cross-entropy of ``x [n, d]`` (labels ``y [n]``) under weights ``[N, K, d]``.

    The inner loops descend the gradient of the *sum* over examples, as the reference code
    (``tf.gradients`` of a per-example loss) does.
    """
    logp = jax.nn.log_softmax(_logits(x, w), axis=-1)
    return -jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=-1))


def clip_per_tensor(g: Array, *, value: float, norm: float) -> Array:
    """Clip one gradient tensor by value to ``[-value, value]``, then to L2 norm ``<= norm``
    (``tf.clip_by_value`` then ``tf.clip_by_norm``, the reference runner's order; 0 skips)."""
    if value > 0:
        g = jnp.clip(g, -value, value)
    if norm > 0:
        g = g * jnp.minimum(1.0, norm / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(g))), 1e-30))
    return g


def _split(key: PRNGKey | None, n: int):
    return (None,) * n if key is None else tuple(jax.random.split(key, n))


# --------------------------------------------------------------------------- the learner


@dataclasses.dataclass(frozen=True)
class Options:
    """The checked options of one LEO learner (each as in :func:`leo`)."""

    ways: int
    input_shape: tuple[int, ...]
    num_latents: int
    inner_steps: int
    finetune_steps: int
    inner_lr_init: float
    finetune_lr_init: float
    dropout_rate: float
    kl_weight: float
    encoder_penalty_weight: float
    l2_penalty_weight: float
    orthogonality_penalty_weight: float
    grad_clip_value: float
    grad_clip_norm: float
    normalize: bool
    dtype: jnp.dtype


def init_weights(opts: Options, apply_fn: ApplyFn, key: PRNGKey, model_params: Params) -> Params:
    """Meta-parameters ``{"model": model_params, "leo": LEOWeights}`` (Glorot weights, the
    learning-rate vectors at their initial values)."""
    emb = jax.eval_shape(apply_fn, model_params, jnp.zeros((2, *opts.input_shape), opts.dtype))
    if len(emb.shape) != 2:
        raise ValueError(f"leo needs embeddings [n, d] from the model, got {emb.shape}")
    d, lat, dtype = emb.shape[1], opts.num_latents, opts.dtype
    ks = jax.random.split(key, 5)
    weights = LEOWeights(
        encoder=_glorot(ks[0], (d, lat), dtype),
        relation=tuple(_glorot(k, (2 * lat, 2 * lat), dtype) for k in ks[1:4]),
        decoder=_glorot(ks[4], (lat, 2 * d), dtype),
        inner_lr=jnp.full((lat,), opts.inner_lr_init, dtype),
        finetune_lr=jnp.full((d,), opts.finetune_lr_init, dtype),
    )
    return {"model": model_params, "leo": weights}


def shots_of(opts: Options, support_x: Array) -> int:
    """K of a support set of ``N*K`` examples; every class must have as many."""
    n = support_x.shape[0]
    if n % opts.ways:
        raise ValueError(
            f"leo needs the same number of support examples per class: {n} examples "
            f"for {opts.ways} ways"
        )
    return n // opts.ways


def encode(opts: Options, w: LEOWeights, x: Array, y: Array, shots: int, key):
    """Latent codes ``[N, K, L]`` of the support set ``x [N*K, d]`` and their KL."""
    k_drop, k_sample = _split(key, 2)
    lat = opts.num_latents
    codes = _dropout(k_drop, x, opts.dropout_rate) @ w.encoder  # [NK, L]
    n = codes.shape[0]
    pairs = jnp.concatenate(
        [
            jnp.broadcast_to(codes[:, None], (n, n, lat)),
            jnp.broadcast_to(codes[None, :], (n, n, lat)),
        ],
        axis=-1,
    )
    h = jax.nn.relu(pairs @ w.relation[0])
    h = jax.nn.relu(h @ w.relation[1])
    h = jnp.mean(h @ w.relation[2], axis=1)  # [NK, 2L]
    onehot = jax.nn.one_hot(y, opts.ways, dtype=h.dtype)  # [NK, N]
    per_class = (onehot.T @ h) / jnp.maximum(jnp.sum(onehot, axis=0), 1.0)[:, None]
    params = jnp.broadcast_to(per_class[:, None], (opts.ways, shots, 2 * lat))
    return gaussian(params, k_sample)


def decode(opts: Options, w: LEOWeights, z: Array, key) -> tuple[Array, Array]:
    """Classifier weights ``[N, K, d]`` from codes ``[N, K, L]`` (and their KL)."""
    d = w.decoder.shape[1] // 2
    return gaussian(z @ w.decoder, key, offset=math.sqrt(2.0 / (opts.ways + d)))


def adapt_latents(opts: Options, w: LEOWeights, z0: Array, x: Array, y: Array, key, steps: int):
    """``steps`` gradient steps on the codes: ``z <- z - inner_lr * dL_support/dz``."""
    if not steps:
        return z0

    def loss(z, k):
        k_drop, k_dec = _split(k, 2)
        return support_loss(_dropout(k_drop, x, opts.dropout_rate), y, decode(opts, w, z, k_dec)[0])

    def step(z, k):
        return z - w.inner_lr[None, None, :] * jax.grad(loss)(z, k), None

    keys = None if key is None else jax.random.split(key, steps)
    return jax.lax.scan(step, z0, keys, length=steps)[0]


def finetune(opts: Options, w: LEOWeights, weights: Array, x: Array, y: Array, key, steps: int):
    """``steps`` gradient steps on the decoded weights (``finetune_lr`` per feature)."""
    if not steps:
        return weights

    def step(cw, k):
        g = jax.grad(lambda c: support_loss(_dropout(k, x, opts.dropout_rate), y, c))(cw)
        return cw - w.finetune_lr[None, None, :] * g, None

    keys = None if key is None else jax.random.split(key, steps)
    return jax.lax.scan(step, weights, keys, length=steps)[0]


def adapt(opts: Options, w: LEOWeights, x: Array, sy: Array, key):
    """Encode, adapt the codes, decode, fine-tune on support embeddings ``x [N*K, d]``:
    ``(weights [N, K, d], z0, z, kl)``."""
    k_enc, k_lat, k_dec, k_ft = _split(key, 4)
    z0, kl = encode(opts, w, x, sy, shots_of(opts, x), k_enc)
    z = adapt_latents(opts, w, z0, x, sy, k_lat, opts.inner_steps)
    weights = finetune(opts, w, decode(opts, w, z, k_dec)[0], x, sy, k_ft, opts.finetune_steps)
    return weights, z0, z, kl


def regulariser(opts: Options, w: LEOWeights) -> tuple[Array, Array]:
    """The weighted L2 penalty on the networks and the decoder's orthogonality penalty."""
    l2 = sum(jnp.sum(jnp.square(a)) for a in (w.encoder, *w.relation, w.decoder)) / 2.0
    orth = opts.orthogonality_penalty_weight * orthogonality_penalty(w.decoder)
    return opts.l2_penalty_weight * l2, orth


def task_loss(opts: Options, embed, meta_params: Params, episode: Episode, key: PRNGKey):
    """Eq. 7 for one task: query CE + beta KL + gamma penalty + L2 + orthogonality."""
    check_episode(episode, batched=False, num_classes=opts.ways)
    sx, sy = episode.support_x, episode.support_y
    k_run, k_query = jax.random.split(key)
    weights, z0, z, kl = adapt(opts, meta_params["leo"], embed(meta_params["model"], sx), sy, k_run)
    xq = _dropout(k_query, embed(meta_params["model"], episode.query_x), opts.dropout_rate)
    logits = _logits(xq, weights)
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.mean(jnp.take_along_axis(logp, episode.query_y[:, None], axis=-1))
    labels = jnp.concatenate([sy.ravel(), episode.query_y.ravel()])
    ce = ce * label_guard(labels, opts.ways, ce.dtype)
    penalty = jnp.mean(jnp.square(jax.lax.stop_gradient(z) - z0))
    l2, orth = regulariser(opts, meta_params["leo"])
    loss = ce + opts.kl_weight * kl + opts.encoder_penalty_weight * penalty + l2 + orth
    metrics = task_metrics(logits, episode.query_y, loss)
    metrics.update(query_loss=ce, kl=kl, encoder_penalty=penalty, orthogonality=orth)
    return loss, metrics


def guarded_grads(opts: Options, meta_params: Params, grads, metrics, labels: Array):
    """The reference's guard (``LEO.grads_and_vars``): when the loss or a gradient is not
    finite, only decay the network weights (the gradient of ``1e-4 * sum(w^2) / 2``); such a
    step's metrics read 0 and ``nonfinite`` is 1. Labels outside ``[0, ways)`` stay NaN (bad
    input: the engine's NaN guard stops the run). Then clipping per tensor."""
    leaves = jax.tree_util.tree_leaves((grads, metrics["loss"]))
    bad = jnp.logical_not(jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves])))
    w = meta_params["leo"]
    decay = {
        "model": jax.tree_util.tree_map(jnp.zeros_like, meta_params["model"]),
        "leo": LEOWeights(
            encoder=1e-4 * w.encoder,
            relation=tuple(1e-4 * r for r in w.relation),
            decoder=1e-4 * w.decoder,
            inner_lr=jnp.zeros_like(w.inner_lr),
            finetune_lr=jnp.zeros_like(w.finetune_lr),
        ),
    }
    grads = jax.tree_util.tree_map(lambda g, f: jnp.where(bad, f, g), grads, decay)
    metrics = {k: jnp.where(jnp.isfinite(v), v, jnp.zeros_like(v)) for k, v in metrics.items()}
    metrics["nonfinite"] = bad.astype(metrics["loss"].dtype)
    guard = label_guard(labels, opts.ways, metrics["loss"].dtype)
    metrics["loss"] = metrics["loss"] * guard
    clip = functools.partial(clip_per_tensor, value=opts.grad_clip_value, norm=opts.grad_clip_norm)
    return jax.tree_util.tree_map(lambda g: clip(g) * guard.astype(g.dtype), grads), metrics


def _options(**kw) -> Options:
    """The factory's arguments, checked."""
    if not 0.0 <= float(kw["dropout_rate"]) < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {kw['dropout_rate']}")
    nonnegative = (
        "kl_weight", "encoder_penalty_weight", "l2_penalty_weight",
        "orthogonality_penalty_weight", "grad_clip_value", "grad_clip_norm",
    )  # fmt: skip
    for name in nonnegative:
        if not float(kw[name]) >= 0.0:
            raise ValueError(f"{name} must be >= 0, got {kw[name]}")
    return Options(
        ways=check_int("ways", kw["ways"], minimum=2),
        input_shape=tuple(int(s) for s in kw["input_shape"]),
        num_latents=check_int("num_latents", kw["num_latents"], minimum=1),
        inner_steps=check_int("inner_steps", kw["inner_steps"], minimum=0),
        finetune_steps=check_int("finetune_steps", kw["finetune_steps"], minimum=0),
        inner_lr_init=kw["inner_lr_init"],
        finetune_lr_init=kw["finetune_lr_init"],
        dropout_rate=float(kw["dropout_rate"]),
        **{name: float(kw[name]) for name in nonnegative},
        normalize=bool(kw["normalize"]),
        dtype=jnp.dtype(kw["dtype"]),
    )


def leo(
    apply_fn: ApplyFn,
    *,
    ways: int,
    input_shape: Sequence[int] = (640,),
    num_latents: int = 64,
    inner_steps: int = 5,
    finetune_steps: int = 5,
    inner_lr_init: float = 1.0,
    finetune_lr_init: float = 0.001,
    dropout_rate: float = 0.5,
    kl_weight: float = 1e-3,
    encoder_penalty_weight: float = 1e-9,
    l2_penalty_weight: float = 1e-8,
    orthogonality_penalty_weight: float = 1e-3,
    grad_clip_value: float = 0.1,
    grad_clip_norm: float = 0.1,
    normalize: bool = False,
    dtype: str = "float32",
) -> MetaLearner:
    """LEO for N-way K-shot classification of feature vectors.

    Meta-parameters: ``{"model": model_params, "leo": LEOWeights}``; the outer optimizer
    updates both (the ``identity`` model has none).

    Args:
      apply_fn: ``(params, x[n, ...]) -> embeddings [n, d]`` (``identity``: the features).
      ways: N, the classes of a task (the decoder makes one weight vector per class).
      input_shape: one example's shape (supplied by the engine from the task source), used
        by ``init`` to find ``d``.
      num_latents: L, the latent code size (paper: 64).
      inner_steps: latent-space adaptation steps (paper: 5).
      finetune_steps: weight-space fine-tuning steps after them (paper: 5).
      inner_lr_init, finetune_lr_init: initial values of the meta-learned learning-rate
        vectors (paper: 1.0, 0.001).
      dropout_rate: dropout on the embeddings during meta-training.
      kl_weight, encoder_penalty_weight, l2_penalty_weight, orthogonality_penalty_weight:
        beta, gamma, lambda_1, lambda_2 of Eq. 7.
      grad_clip_value, grad_clip_norm: meta-gradient clipping per tensor, by value then by
        L2 norm (0 disables each); the reference code's 0.1 and 0.1.
      normalize: L2-normalise the model's embeddings (what the paper's data pipeline does
        to its features; the feature sources already do it, so this is for learned
        embeddings, e.g. a Conv-4 trained with LEO).
      dtype: dtype of LEO's weights (``float64`` for finite-difference tests).

    Returns:
      A :class:`MetaLearner`; ``predict(meta_params, support_x [N*K, ...], support_y
      [N*K], query_x [n_q, ...], key) -> logits [n_q, N]`` (means, no dropout). Every class
      must have the same number of support examples.

    References:
      Rusu et al., ICLR 2019, Algorithm 1 and Eq. 1-7; google-deepmind/leo ``model.py``.
    """
    opts = _options(
        ways=ways,
        input_shape=input_shape,
        num_latents=num_latents,
        inner_steps=inner_steps,
        finetune_steps=finetune_steps,
        inner_lr_init=inner_lr_init,
        finetune_lr_init=finetune_lr_init,
        dropout_rate=dropout_rate,
        kl_weight=kl_weight,
        encoder_penalty_weight=encoder_penalty_weight,
        l2_penalty_weight=l2_penalty_weight,
        orthogonality_penalty_weight=orthogonality_penalty_weight,
        grad_clip_value=grad_clip_value,
        grad_clip_norm=grad_clip_norm,
        normalize=normalize,
        dtype=dtype,
    )

    def embed(model_params: Params, x: Array, **kwargs) -> Array:
        z = apply_fn(model_params, x, **kwargs)
        if opts.normalize:
            z = z / jnp.sqrt(jnp.sum(jnp.square(z), axis=-1, keepdims=True) + 1e-12)
        return z

    outer_loss = functools.partial(task_loss, opts, embed)

    def meta_grad(meta_params: Params, episodes: Episode, key: PRNGKey, *, task_chunk="auto"):
        """Mean meta-gradient over ``episodes`` (leading task axis), guarded and clipped per
        tensor as the reference code (:func:`guarded_grads`)."""
        check_episode(episodes, batched=True, num_classes=opts.ways)
        shots_of(opts, episodes.support_x[0])
        grads, metrics = mean_task_grad(
            outer_loss, meta_params, episodes, key, task_chunk=task_chunk
        )
        labels = jnp.concatenate([episodes.support_y.ravel(), episodes.query_y.ravel()])
        return guarded_grads(opts, meta_params, grads, metrics, labels)

    def predict(meta_params, support_x, support_y, query_x, key=None, *, bn_mode=None):
        """Logits ``[n_q, N]`` (means, no dropout: the paper's evaluation). ``bn_mode``:
        how a model with batch statistics normalises the queries (:data:`BN_MODES`)."""
        del key
        check_task(support_x, support_y, query_x, num_classes=opts.ways)
        xs, xq = apply_support_query(
            embed, meta_params["model"], support_x, query_x, bn_mode=bn_mode or "transductive"
        )
        return _logits(xq, adapt(opts, meta_params["leo"], xs, support_y, None)[0])

    return MetaLearner(
        init=functools.partial(init_weights, opts, apply_fn),
        meta_grad=meta_grad,
        predict=predict,
        name="leo",
        outer_loss=outer_loss,
    )


SPEC = AlgorithmSpec(
    leo,
    model="embedding",
    episode_args=("ways", "input_shape"),
    example={"num_latents": 4, "inner_steps": 1, "finetune_steps": 1},
)
