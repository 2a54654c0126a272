"""Learning-rate schedules for the outer optimizer, from a config mapping.

``optimizer.schedule`` in a config is ``null`` (constant ``learning_rate``) or a mapping
with a ``name`` and the keyword arguments of the matching optax schedule. The
optimizer's ``learning_rate`` is the schedule's initial (or, with warm-up, peak) value,
and the step counts default to ``train.steps``, so a schedule follows a shortened
``--set train.steps=...`` run::

    schedule: {name: linear, end_value: 0.0}          # Reptile: anneal to 0 (Nichol et al.)
    schedule: {name: exponential, transition_steps: 2000, decay_rate: 0.5, staircase: true}
                                                       # ProtoNets: halve every 2000 episodes
    schedule: {name: cosine, alpha: 0.0}
    schedule: {name: warmup_cosine, warmup_steps: 500}
    schedule: {name: piecewise, boundaries_and_scales: {20000: 0.1, 40000: 0.1}}

The step a schedule sees is the optimizer's update count, which lives in the optimizer
state and is checkpointed with it, so a resumed run continues the schedule exactly. A
resume that changes ``train.steps`` is refused when a step count of the schedule follows
``train.steps`` (the rates already used would change); give it explicitly to extend a run.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping
from typing import Any

# name -> (optax function, its argument that receives optimizer.learning_rate,
#          arguments that default to train.steps, other defaults we set)
SCHEDULES: dict[str, tuple[str, str, tuple[str, ...], dict[str, Any]]] = {
    "constant": ("constant_schedule", "value", (), {}),
    "linear": ("linear_schedule", "init_value", ("transition_steps",), {}),
    "cosine": ("cosine_decay_schedule", "init_value", ("decay_steps",), {}),
    "exponential": ("exponential_decay", "init_value", (), {}),
    "warmup_cosine": (
        "warmup_cosine_decay_schedule",
        "peak_value",
        ("decay_steps",),
        {"init_value": 0.0},
    ),
    "piecewise": ("piecewise_constant_schedule", "init_value", (), {}),
}

_INT_ARGS = ("transition_steps", "decay_steps", "warmup_steps", "transition_begin")
_BOOL_ARGS = ("staircase",)


class ScheduleError(ValueError):
    """A bad schedule spec; ``key`` names the offending entry (``name``, ``decay_rate``...)."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real | str):
        raise ScheduleError(key, f"expected a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ScheduleError(key, f"expected a number, got {value!r}") from None


def schedule_kwargs(
    spec: Mapping[str, Any], learning_rate: float, total_steps: int
) -> tuple[Callable, dict[str, Any]]:
    """Validate ``spec`` and return ``(optax function, keyword arguments)``.

    Raises:
      ScheduleError: unknown name or argument, a missing one, a wrong type or an
        impossible value (non-positive step counts, a non-positive decay rate).
    """
    import optax

    if not isinstance(spec, Mapping):
        raise ScheduleError("schedule", f"expected a mapping with a name, got {spec!r}")
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in SCHEDULES:
        raise ScheduleError("name", f"unknown schedule {name!r}; available: {', '.join(SCHEDULES)}")
    fn_name, lr_arg, step_args, defaults = SCHEDULES[name]
    fn = getattr(optax, fn_name)
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = dict(defaults)
    kwargs[lr_arg] = float(learning_rate)
    for a in step_args:
        kwargs[a] = int(total_steps)
    for key, value in spec.items():
        if key not in params or key == lr_arg:
            valid = [p for p in params if p != lr_arg]
            hint = f" ({lr_arg} is optimizer.learning_rate)" if key == lr_arg else ""
            raise ScheduleError(
                key, f"unknown argument of the {name!r} schedule{hint}; valid: {', '.join(valid)}"
            )
        if key in _INT_ARGS:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ScheduleError(key, f"expected an integer number of steps, got {value!r}")
            value = int(value)
            if value < 0 or (value == 0 and key != "transition_begin" and key != "warmup_steps"):
                raise ScheduleError(key, f"must be positive, got {value}")
        elif key in _BOOL_ARGS:
            if not isinstance(value, bool):
                raise ScheduleError(key, f"expected true or false, got {value!r}")
        elif key == "boundaries_and_scales":
            if not isinstance(value, Mapping) or not value:
                raise ScheduleError(key, f"expected a mapping step: scale, got {value!r}")
            out = {}
            for b, sc in value.items():
                if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 0:
                    raise ScheduleError(key, f"boundaries must be step numbers >= 0, got {b!r}")
                out[int(b)] = _number(key, sc)
            value = out
        elif value is not None:
            value = _number(key, value)
        kwargs[key] = value
    missing = [
        p.name
        for p in params.values()
        if p.default is inspect.Parameter.empty and p.name not in kwargs
    ]
    if missing:
        raise ScheduleError(", ".join(missing), f"the {name!r} schedule needs {', '.join(missing)}")
    if name == "exponential" and kwargs["decay_rate"] <= 0:
        raise ScheduleError("decay_rate", f"must be positive, got {kwargs['decay_rate']}")
    if name == "warmup_cosine" and kwargs.get("warmup_steps", 0) >= kwargs["decay_steps"]:
        raise ScheduleError(
            "warmup_steps",
            f"must be smaller than decay_steps ({kwargs['decay_steps']}), "
            f"got {kwargs['warmup_steps']}",
        )
    return fn, kwargs


def steps_from_train(spec: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The step-count arguments of ``spec`` that default to ``train.steps`` (not given)."""
    if not isinstance(spec, Mapping) or spec.get("name") not in SCHEDULES:
        return ()
    return tuple(a for a in SCHEDULES[spec["name"]][2] if a not in spec)


def build_schedule(spec: Mapping[str, Any] | None, learning_rate: float, total_steps: int):
    """The optax schedule of ``spec``, or the plain ``learning_rate`` when ``spec`` is None."""
    if spec is None:
        return float(learning_rate)
    fn, kwargs = schedule_kwargs(spec, learning_rate, total_steps)
    return fn(**kwargs)
