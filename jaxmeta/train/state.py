"""The train state and the fused training step live in :mod:`jaxmeta.step` (one state and
one step for the library API, the engine and the benchmarks); this module keeps their import
path."""

from jaxmeta.step import (
    TrainState,
    init_train_state,
    make_train_chunk,
    step_key,
    train_step,
)

__all__ = ["TrainState", "init_train_state", "make_train_chunk", "step_key", "train_step"]
