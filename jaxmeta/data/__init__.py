"""Task sources (datasets as plug-ins) and the on-device episode sampler.

A dataset is one :class:`~jaxmeta.data.source.TaskSource` class plus one registry entry
(:func:`register_task_source`); image datasets stored as one uint8 array per split build on
:class:`~jaxmeta.data.image_tasks.ImageTasks`. Shipped: Omniglot (TFDS builder, uint8 cache,
splits), miniImageNet, tieredImageNet, CIFAR-FS, FC100, your own image folders
(:mod:`jaxmeta.data.prepared_tasks`), sinusoid regression, and fixed feature vectors
(the LEO paper's embeddings, features exported from a trained run). :func:`tasksets` turns a
registered name into train/validation/test task samplers in one call.
"""

from jaxmeta.data.episodes import (
    ROTATIONS,
    ClassImages,
    eval_episode_keys,
    eval_episodes,
    num_classes,
    sample_episodes,
)
from jaxmeta.data.features import ExportedFeatures, FeaturesError, FeatureTasks
from jaxmeta.data.image_tasks import ImageTasks
from jaxmeta.data.leo_embeddings import LEOEmbeddings
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
from jaxmeta.data.registry import TASK_SOURCES, get_task_source, register_task_source
from jaxmeta.data.source import TaskSource, TaskSourceError
from jaxmeta.data.tasksets import TaskSampler, TaskSets, tasksets

__all__ = [
    "DATASET_NAME",
    "ROTATIONS",
    "SCHEMES",
    "TASK_SOURCES",
    "ClassImages",
    "ExportedFeatures",
    "FeatureTasks",
    "FeaturesError",
    "ImageTasks",
    "LEOEmbeddings",
    "Omniglot",
    "OmniglotCorruptError",
    "OmniglotFilesMissingError",
    "TaskSampler",
    "TaskSets",
    "TaskSource",
    "TaskSourceError",
    "character_names",
    "eval_episode_keys",
    "eval_episodes",
    "get_task_source",
    "load_omniglot",
    "num_classes",
    "preprocess",
    "register_task_source",
    "sample_episodes",
    "split_counts",
    "split_images",
    "split_indices",
    "tasksets",
]
