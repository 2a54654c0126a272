"""The registry of datasets: name -> :class:`~jaxmeta.data.source.TaskSource` class.

Configs name a dataset with ``data.name``; ``jaxmeta data NAME`` prepares any registered one.
A dataset of your own is registered by a plug-in module (a file or module named in the
config's ``plugins:``) calling :func:`register_task_source`; nothing in the library changes.
"""

from __future__ import annotations

from collections.abc import Callable

from jaxmeta.data.cifar_fs import CifarFSTasks, FC100Tasks
from jaxmeta.data.features import ExportedFeatures
from jaxmeta.data.folder import FolderTasks
from jaxmeta.data.leo_embeddings import LEOEmbeddings
from jaxmeta.data.miniimagenet import MiniImageNetTasks
from jaxmeta.data.omniglot.source import OmniglotTasks
from jaxmeta.data.sinusoid import SinusoidTasks
from jaxmeta.data.source import TaskSource, TaskSourceError
from jaxmeta.data.tieredimagenet import TieredImageNetTasks

__all__ = [
    "TASK_SOURCES",
    "ExportedFeatures",
    "LEOEmbeddings",
    "CifarFSTasks",
    "FC100Tasks",
    "FolderTasks",
    "MiniImageNetTasks",
    "OmniglotTasks",
    "SinusoidTasks",
    "TaskSource",
    "TaskSourceError",
    "TieredImageNetTasks",
    "get_task_source",
    "register_task_source",
]

TASK_SOURCES: dict[str, Callable[..., TaskSource]] = {
    "omniglot": OmniglotTasks,
    "sinusoid": SinusoidTasks,
    "leo_embeddings": LEOEmbeddings,
    "features": ExportedFeatures,
    "miniimagenet": MiniImageNetTasks,
    "tieredimagenet": TieredImageNetTasks,
    "cifar_fs": CifarFSTasks,
    "fc100": FC100Tasks,
    "folder": FolderTasks,
}


def register_task_source(name: str, cls: Callable[..., TaskSource]) -> None:
    """Make ``cls`` available to configs as ``data.name: <name>`` (and ``jaxmeta data NAME``).

    A plug-in module (a file or module named in the config's ``plugins:``) calls this when it
    is imported. Registering the same class again is a no-op.

    Raises:
      ValueError: ``name`` is taken by another class.
    """
    if TASK_SOURCES.get(name, cls) is not cls:
        raise ValueError(f"dataset {name!r} is already registered ({TASK_SOURCES[name]})")
    TASK_SOURCES[name] = cls


def get_task_source(name: str) -> Callable[..., TaskSource]:
    """The task-source class registered under ``name``."""
    try:
        return TASK_SOURCES[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; available: {', '.join(sorted(TASK_SOURCES))} "
            "(a dataset of your own: register_task_source in a module named by the config's "
            "plugins: key)"
        ) from None
