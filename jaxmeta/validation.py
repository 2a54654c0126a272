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
    sets = [("support", support_x, support_y)]
    if query_x is not None:
        sets.append(("query", query_x, query_y))
    _check_sets(sets, lead=1, num_classes=num_classes)
