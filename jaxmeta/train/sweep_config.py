"""The ``sweep:`` section of a config: per-run values of numeric hyperparameters.

::

    train: {seed: 0, seeds: 3}           # runs with seeds 0, 1, 2
    sweep:
      optimizer.learning_rate: [0.001, 0.003]
      algorithm.inner_lr: [0.1, 0.4]     # 2 x 2 x 3 = 12 runs in one program

Only the form is checked here (dotted keys, non-empty lists of finite numbers); which keys
may vary inside one program (values traced, shapes unchanged) is
:func:`jaxmeta.train.population.check_sweep`'s registry check.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from jaxmeta.train.schema import ConfigError

__all__ = ["parse_sweep"]


def _flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def parse_sweep(raw: Any, src: Callable[[str], str]) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """``sweep:`` (flat dotted keys or nested sections) -> ``((key, values), ...)``.

    Raises:
      ConfigError: not a mapping, a key without a section, an empty list or a value that
        is not a finite number.
    """
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise ConfigError(src("sweep"), "sweep", f"must be a mapping key: [values], got {raw!r}")
    out = []
    for key, values in _flatten(raw).items():
        dotted = f"sweep.{key}"
        if "." not in key:
            raise ConfigError(
                src("sweep"), dotted, "expected section.key, e.g. sweep.algorithm.inner_lr"
            )
        if not isinstance(values, list | tuple) or not values:
            raise ConfigError(src("sweep"), dotted, f"expected a non-empty list, got {values!r}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ConfigError(
                    src("sweep"), dotted, f"expected finite numbers, got {v!r} in {values!r}"
                )
        out.append((key, tuple(float(v) for v in values)))
    return tuple(out)
