"""Task sources: Omniglot (TFDS builder, uint8 cache, splits) and the on-device episode sampler."""

from jaxmeta.data.episodes import (
    ROTATIONS,
    eval_episode_keys,
    eval_episodes,
    num_classes,
    sample_episodes,
)
from jaxmeta.data.omniglot import (
    DATASET_NAME,
    SCHEMES,
    Omniglot,
    OmniglotCorruptError,
    OmniglotFilesMissingError,
    character_names,
    load_omniglot,
    preprocess,
    split_counts,
    split_images,
    split_indices,
)

__all__ = [
    "DATASET_NAME",
    "ROTATIONS",
    "SCHEMES",
    "Omniglot",
    "OmniglotCorruptError",
    "OmniglotFilesMissingError",
    "character_names",
    "eval_episode_keys",
    "eval_episodes",
    "load_omniglot",
    "num_classes",
    "preprocess",
    "sample_episodes",
    "split_counts",
    "split_images",
    "split_indices",
]
