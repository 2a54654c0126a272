"""Plug-ins: your own datasets, algorithms and models, without editing the library.

A plug-in is a module (importable by name) or a ``.py`` file that registers what it brings
when imported::

    # my_dataset.py
    from jaxmeta.data import ImageTasks, register_task_source

    class MyTasks(ImageTasks): ...
    register_task_source("mine", MyTasks)

A config names its plug-ins (``plugins: [my_dataset.py]``, relative to the config file; the
resolved config saves absolute paths, so ``jaxmeta evaluate`` and :func:`jaxmeta.load` find
them again); ``jaxmeta data NAME --plugin my_dataset.py`` prepares a plug-in dataset. The
registries are :func:`jaxmeta.data.register_task_source`,
:func:`jaxmeta.algorithms.register_algorithm` and :func:`jaxmeta.models.register_model`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

__all__ = ["PluginError", "load_plugins"]


class PluginError(ImportError):
    """A plug-in cannot be found or fails to import (the message names it and why)."""


def load_plugins(plugins: tuple[str, ...] | list[str]) -> None:
    """Import plug-in modules (names) and files (``.py`` paths), each once per process.

    Raises:
      PluginError: a plug-in cannot be found or fails to import.
    """
    for entry in plugins:
        try:
            if entry.endswith(".py"):
                path = Path(entry).resolve()
                name = "jaxmeta_plugin_" + "".join(c if c.isalnum() else "_" for c in str(path))
                if name in sys.modules:
                    continue
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None or not path.is_file():
                    raise FileNotFoundError(f"no such file {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
            else:
                importlib.import_module(entry)
        except Exception as err:
            raise PluginError(f"cannot import {entry!r}: {type(err).__name__}: {err}") from None
