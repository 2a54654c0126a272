"""Input checks that turn bad input into clear errors before it reaches XLA.

Shape checks run at trace time (shapes are static, so they also fire inside ``jit``);
label-range checks need concrete values and run whenever the labels are not traced.
"""

from __future__ import annotations

import numbers

import jax
import numpy as np

from jaxmeta.types import Episode


def check_int(name: str, value, *, minimum: int) -> int:
    """``value`` must be a Python/NumPy integer (not bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return float(value)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_episode(ep: Episode, *, batched: bool, num_classes: int | None = None) -> None:
    """Validate an episode (or a batch of episodes when ``batched``).

    Raises:
      ValueError: mismatched support/query feature shapes, x/y length mismatch, a
        missing task axis, or (when concrete) labels outside ``[0, num_classes)``.
    """
    lead = 2 if batched else 1
    names = ("support", "query")
    xs = (ep.support_x, ep.query_x)
    ys = (ep.support_y, ep.query_y)
    for name, x, y in zip(names, xs, ys, strict=True):
        if x.ndim < lead or y.ndim < lead:
            raise ValueError(
                f"{name}_x {x.shape} / {name}_y {y.shape}: expected at least {lead} leading axes "
                f"({'[tasks, n, ...]' if batched else '[n, ...]'})"
            )
        if x.shape[:lead] != y.shape[:lead]:
            raise ValueError(
                f"{name}_x has leading shape {x.shape[:lead]} but {name}_y has {y.shape[:lead]}: "
                "every example needs exactly one target"
            )
    if ep.support_x.shape[lead:] != ep.query_x.shape[lead:]:
        raise ValueError(
            f"support_x examples have shape {ep.support_x.shape[lead:]} but query_x examples have "
            f"{ep.query_x.shape[lead:]}: support and query must come from the same input space"
        )
    if ep.support_y.shape[lead:] != ep.query_y.shape[lead:] or (
        ep.support_y.dtype != ep.query_y.dtype
    ):
        raise ValueError(
            f"support_y ({ep.support_y.shape[lead:]}, {ep.support_y.dtype}) and query_y "
            f"({ep.query_y.shape[lead:]}, {ep.query_y.dtype}) differ in per-example shape or dtype"
        )
    if batched and ep.support_x.shape[0] != ep.query_x.shape[0]:
        raise ValueError(
            f"support has {ep.support_x.shape[0]} tasks but query has {ep.query_x.shape[0]}"
        )
    if num_classes is not None and np.issubdtype(ep.support_y.dtype, np.integer):
        for name, y in zip(names, ys, strict=True):
            if _is_concrete(y):
                arr = np.asarray(y)
                if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
                    raise ValueError(
                        f"{name}_y has labels in [{arr.min()}, {arr.max()}] but the model predicts "
                        f"{num_classes} classes: labels must lie in [0, {num_classes})"
                    )
