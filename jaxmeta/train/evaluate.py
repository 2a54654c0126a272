"""Few-shot evaluation over a fixed set of episodes, with a 95% confidence interval.

``predict`` (one task) is vmapped over chunks of episodes with
``lax.map(..., batch_size=...)`` inside a single jitted call, so the whole evaluation is
one XLA program whose memory is bounded by the chunk size.

The interval is the one of the MAML paper: ``1.96 * std / sqrt(episodes)`` with the
population standard deviation (``np.std``) of the per-episode accuracies (or MSEs).

A learner may bring its own evaluation (``MetaLearner.evaluate``, e.g. the returns of
meta-RL policies after 0-3 adaptation steps): it is then jitted as given, and every metric
it returns is summarised the same way, its ``eval_metric`` first (:func:`main_metric`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxmeta.algorithms.base import MetaLearner, check_bn_mode, state_kwargs
from jaxmeta.losses import accuracy, cross_entropy_loss, mse_loss
from jaxmeta.types import Array, Episode, Params, PRNGKey


def accepts_keyword(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes the keyword argument ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def accepts_steps(predict: Callable[..., Any]) -> bool:
    """Whether ``predict`` takes a ``steps=`` override of its inner steps."""
    return accepts_keyword(predict, "steps")


def mean_ci95(values: Array | np.ndarray) -> tuple[float, float]:
    """``(mean, 1.96 * std / sqrt(n))`` of per-episode values."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(1.96 * v.std() / np.sqrt(v.size))


def make_evaluator(
    learner: MetaLearner,
    *,
    classification: bool,
    batch_size: int = 50,
    inner_steps: int | None = None,
    bn_mode: str | None = None,
) -> Callable[..., dict[str, Array]]:
    """A jitted ``(params, episodes, key, learner_state=None) -> per-episode metrics``.

    ``learner_state`` (the train state's) reaches ``predict`` of a learner that keeps one
    (``init_state``): ProtoNets' running statistics.

    A learner with its own ``evaluate`` (the evaluation hook) is jitted as it is, with
    ``steps=inner_steps`` when given; it maps its tasks itself (``batch_size`` unused).

    Args:
      learner: the algorithm; its ``predict`` handles one task.
      classification: report ``accuracy`` and ``loss`` (cross-entropy) per episode;
        otherwise ``mse``.
      batch_size: episodes vmapped together inside ``lax.map``.
      inner_steps: override the inner steps of ``predict`` (MAML: ``eval_inner_steps``).
      bn_mode: ``"transductive"``, ``"inductive"`` or ``"running"``: how ``predict``
        normalises the queries (:func:`jaxmeta.algorithms.base.apply_support_query`);
        ``None``: the learner's default (``MetaLearner.bn_mode``).

    Returns:
      ``evaluate(params, episodes, key, learner_state=None)`` with ``episodes`` carrying a leading
      ``[episodes]`` axis; the result maps metric names to ``[episodes]`` arrays.

    Raises:
      ValueError: ``inner_steps`` given but the algorithm's ``predict`` has no
        ``steps`` argument (it does not adapt by gradient steps).
    """
    if learner.evaluate is not None:
        if bn_mode is not None:
            raise ValueError(f"algorithm {learner.name!r} has no BatchNorm mode")
        steps = {} if inner_steps is None else {"steps": int(inner_steps)}
        return jax.jit(
            lambda params, eps, key, learner_state=None: learner.evaluate(params, eps, key, **steps)
        )
    kwargs = {}
    if inner_steps is not None:
        if not accepts_steps(learner.predict):
            raise ValueError(
                f"algorithm {learner.name!r} does not take an inner-step override "
                "(its predict has no steps= argument); leave --inner-steps / "
                "eval.inner_steps unset"
            )
        kwargs["steps"] = int(inner_steps)
    if bn_mode is not None:
        if not accepts_keyword(learner.predict, "bn_mode"):
            raise ValueError(
                f"algorithm {learner.name!r} has no BatchNorm mode (its predict has no "
                "bn_mode= argument)"
            )
        kwargs["bn_mode"] = check_bn_mode(bn_mode)

    def one(params: Params, episode: Episode, key: PRNGKey, state) -> dict[str, Array]:
        extra = state_kwargs(learner, state)
        out = learner.predict(
            params, episode.support_x, episode.support_y, episode.query_x, key, **kwargs, **extra
        )
        if classification:
            return {
                "accuracy": accuracy(out, episode.query_y),
                "loss": cross_entropy_loss(out, episode.query_y),
            }
        return {"mse": mse_loss(out, episode.query_y)}

    @jax.jit
    def evaluate(params: Params, episodes: Episode, key: PRNGKey, learner_state=None):
        n = episodes.support_x.shape[0]
        keys = jax.random.split(key, n)
        return jax.lax.map(
            lambda a: one(params, *a, learner_state),
            (episodes, keys),
            batch_size=min(batch_size, n),
        )

    return evaluate


def compared_bn_modes(learner: MetaLearner) -> list[str]:
    """The BatchNorm modes ``--bn-mode both`` reports: the learner's own (its protocol,
    ``MetaLearner.bn_mode``) first, then inductive (transductive after any other protocol)."""
    protocol = learner.bn_mode
    return [protocol, "inductive" if protocol == "transductive" else "transductive"]


def evaluate(
    learner: MetaLearner,
    params: Params,
    episodes: Episode,
    *,
    classification: bool | None = None,
    key: PRNGKey | None = None,
    batch_size: int = 50,
    inner_steps: int | None = None,
    bn_mode: str | None = None,
    learner_state: Any = None,
) -> dict[str, Any]:
    """Evaluate ``params`` on fixed episodes; returns the summary dict (``jaxmeta.evaluate``).

    Args:
      learner: the :class:`~jaxmeta.MetaLearner` (its ``predict`` adapts to each task).
      params: its meta-parameters.
      episodes: a batch of fixed episodes (leading ``[episodes]`` axis), e.g.
        ``jaxmeta.data.tasksets(...).test.fixed(episodes=600)``.
      classification: accuracy (``True``) or MSE; default: ``True`` for integer labels.
      key: for learners that draw randomness at test time.
      batch_size: episodes evaluated together.
      inner_steps: adaptation steps (default: the learner's ``eval_inner_steps``).
      bn_mode: ``"transductive"``, ``"inductive"`` or ``"running"`` BatchNorm for the queries.
      learner_state: the state of a learner that keeps one (``TrainState.learner_state``).

    Returns:
      ``{"accuracy", "ci95", "loss", "episodes"}`` for classification (accuracy as a
      fraction in [0, 1]) or ``{"mse", "ci95", "episodes"}`` for regression, plus
      ``"per_episode"`` (a NumPy array of the main metric).
    """
    if classification is None:
        classification = bool(np.issubdtype(np.dtype(episodes.support_y.dtype), np.integer))
    key = jax.random.key(0) if key is None else key
    fn = make_evaluator(
        learner,
        classification=classification,
        batch_size=batch_size,
        inner_steps=inner_steps,
        bn_mode=bn_mode,
    )
    per = jax.device_get(fn(params, episodes, key, learner_state))
    return summarize(per, classification=classification, metric=learner.eval_metric)


def main_metric(learner: MetaLearner, *, classification: bool) -> tuple[str, bool]:
    """``(name, higher is better)`` of the metric validation selects the best checkpoint
    by: the learner's ``eval_metric`` (maximised), else accuracy or MSE."""
    if learner.eval_metric is not None:
        return learner.eval_metric, True
    return ("accuracy", True) if classification else ("mse", False)


def summarize(
    per: dict[str, Any], *, classification: bool, metric: str | None = None
) -> dict[str, Any]:
    """Summary (mean, ci95) of the per-episode metrics of :func:`make_evaluator`.

    ``metric`` (a learner's ``eval_metric``): the main metric is this one, reported with
    ``ci95``, and every other metric ``k`` with ``k_ci95`` next to it.
    """
    main = metric or ("accuracy" if classification else "mse")
    values = np.asarray(per[main])
    mean, ci = mean_ci95(values)
    out: dict[str, Any] = {main: mean, "ci95": ci, "episodes": int(values.size)}
    if metric is not None:
        for name in per:
            if name != main:
                out[name], out[f"{name}_ci95"] = mean_ci95(per[name])
    elif classification:
        out["loss"] = float(np.mean(np.asarray(per["loss"], np.float64)))
    out["per_episode"] = values
    return out
