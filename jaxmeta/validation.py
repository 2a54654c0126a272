"""Input checks that turn bad input into clear errors before it reaches XLA.

Shape checks run at trace time (shapes are static, so they also fire inside ``jit``);
label-range checks need concrete values and run whenever the labels are not traced.
Under ``jit`` an out-of-range label instead makes the loss NaN
(:func:`jaxmeta.losses.label_guard`), which the training loop's NaN guard stops.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import jax
import numpy as np

from jaxmeta.types import Episode

NumClasses = int | Callable[[], int] | None


def check_apply_fn(apply_fn, *, name: str = "apply_fn") -> None:
    """``apply_fn`` must be ``apply(params, x)``, not a Flax module (a common slip: calling
    an unbound module with ``(params, x)`` ends deep in Flax with
    ``CallCompactUnboundModuleError``)."""
    try:
        from flax import linen as nn
    except ImportError:  # pragma: no cover - flax is a dependency
        nn = None
    if nn is not None and isinstance(apply_fn, nn.Module):
        kind = type(apply_fn).__name__
        raise TypeError(
            f"{name} is a Flax module ({kind}); pass its apply method, e.g. "
            f"jaxmeta.maml(model.apply, ...) with params = model.init(key, x)"
        )
    if not callable(apply_fn):
        raise TypeError(f"{name} must be a function (params, x) -> outputs, got {apply_fn!r}")


def check_int(name: str, value, *, minimum: int) -> int:
    """``value`` must be a Python/NumPy integer (not bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_positive_float(name: str, value) -> float:
    if isinstance(value, jax.core.Tracer):
        return value  # a traced per-run value (a population sweep): checked by the config
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return float(value)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_sets(sets, *, lead: int, num_classes: NumClasses) -> None:
    """``sets``: ``(name, x, y)`` triples, support first; ``y`` may be ``None`` (queries to
    predict). ``lead`` leading axes (``[n]`` or ``[tasks, n]``) must agree within a pair."""
    for name, x, y in sets:
        for what, a in (("x", x), ("y", y)):
            if a is not None and a.ndim < lead:
                raise ValueError(
                    f"{name}_{what} {a.shape}: expected at least {lead} leading axes "
                    f"({'[tasks, n, ...]' if lead == 2 else '[n, ...]'})"
                )
        if y is not None and x.shape[:lead] != y.shape[:lead]:
            raise ValueError(
                f"{name}_x has leading shape {x.shape[:lead]} but {name}_y has {y.shape[:lead]}: "
                "every example needs exactly one target"
            )
    (first, fx, fy), rest = sets[0], sets[1:]
    for name, x, y in rest:
        if fx.shape[lead:] != x.shape[lead:]:
            raise ValueError(
                f"{first}_x examples have shape {fx.shape[lead:]} but {name}_x examples have "
                f"{x.shape[lead:]}: support and query must come from the same input space"
            )
        if y is not None and (fy.shape[lead:] != y.shape[lead:] or fy.dtype != y.dtype):
            raise ValueError(
                f"{first}_y ({fy.shape[lead:]}, {fy.dtype}) and {name}_y "
                f"({y.shape[lead:]}, {y.dtype}) differ in per-example shape or dtype"
            )
        if lead == 2 and fx.shape[0] != x.shape[0]:
            raise ValueError(f"{first} has {fx.shape[0]} tasks but {name} has {x.shape[0]}")
    if num_classes is None or not np.issubdtype(fy.dtype, np.integer):
        return
    labelled = [(name, y) for name, _, y in sets if y is not None and _is_concrete(y)]
    if not labelled:
        return
    n = num_classes() if callable(num_classes) else num_classes
    for name, y in labelled:
        arr = np.asarray(y)
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise ValueError(
                f"{name}_y has labels in [{arr.min()}, {arr.max()}] but the model predicts "
                f"{n} classes: labels must lie in [0, {n})"
            )


def check_episode(ep: Episode, *, batched: bool, num_classes: NumClasses = None) -> None:
    """Validate an episode (or a batch of episodes when ``batched``).

    Args:
      ep: the episode.
      batched: a leading task axis on every field.
      num_classes: ``N`` (or a function returning it, called only when labels are
        concrete): labels must lie in ``[0, N)``.

    Raises:
      ValueError: mismatched support/query feature shapes, x/y length mismatch, a
        missing task axis, or (when concrete) labels outside ``[0, num_classes)``.
    """
    sets = [("support", ep.support_x, ep.support_y), ("query", ep.query_x, ep.query_y)]
    _check_sets(sets, lead=2 if batched else 1, num_classes=num_classes)


def check_task(
    support_x, support_y, query_x=None, *, num_classes: NumClasses = None, query_y=None
) -> None:
    """Validate one task's arrays (no task axis), as ``adapt``/``predict`` receive them.

    Raises:
      ValueError: as :func:`check_episode`.
    """
    _check_not_batched(support_x, support_y, query_x)
    sets = [("support", support_x, support_y)]
    if query_x is not None:
        sets.append(("query", query_x, query_y))
    _check_sets(sets, lead=1, num_classes=num_classes)


BATCH_HINT = (
    "predict takes one task (support_x: [n_support, ...], query_x: [n_query, ...]); vmap it "
    "over tasks, jax.vmap(lambda sx, sy, qx: learner.predict(params, sx, sy, qx)), or use "
    "jaxmeta.evaluate(learner, params, episodes, ...) for accuracy over a batch of episodes"
)


def _check_not_batched(support_x, support_y, query_x) -> None:
    """A batch of tasks given where one task is expected: say so, not a shape mismatch.

    Seen as integer labels with two axes matching ``support_x``'s first two ([tasks, n]
    labels of [tasks, n, ...] inputs), or support and query inputs whose shapes differ
    only in their second axis (the examples per task) with the same first (the tasks).
    """
    sx, sy, qx = (getattr(a, "shape", None) for a in (support_x, support_y, query_x))
    if sx is None or sy is None:
        return
    int_labels = np.issubdtype(np.dtype(getattr(support_y, "dtype", np.float32)), np.integer)
    labels_2d = int_labels and len(sy) == 2 and len(sx) > 2 and sx[:2] == sy
    inputs = (
        qx is not None
        and len(sx) == len(qx) > 2
        and sx[0] == qx[0]
        and sx[1] != qx[1]
        and sx[2:] == qx[2:]
    )
    if labels_2d or inputs:
        shapes = f"support_x {tuple(sx)}, support_y {tuple(sy)}" + (
            f", query_x {tuple(qx)}" if qx is not None else ""
        )
        raise ValueError(f"{shapes} look like a batch of {sx[0]} tasks: {BATCH_HINT}")
