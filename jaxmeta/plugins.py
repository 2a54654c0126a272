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

Importing a plug-in runs its code, so a plug-in is imported only where the user chose it: a
config named with ``-c`` (a config is a script), ``--plugin``, or ``trust_plugins=``. A run
folder received from someone else is data: the plug-ins its ``config.yaml`` or checkpoints
name are imported only when already imported, shipped inside jaxmeta (``jaxmeta.rl``) or
allowed (``allow`` of :func:`load_plugins`); otherwise :class:`UntrustedPluginError` names
the plug-in and how to allow it (docs/security.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

__all__ = ["PluginError", "UntrustedPluginError", "is_builtin", "load_plugins"]


class PluginError(ImportError):
    """A plug-in cannot be found or fails to import (the message names it and why)."""


class UntrustedPluginError(PluginError):
    """A run folder names a plug-in the user has not allowed (nothing was imported)."""


def is_builtin(entry: str) -> bool:
    """A plug-in shipped inside jaxmeta (``jaxmeta.rl``): needs no permission."""
    return not entry.endswith(".py") and (entry == "jaxmeta" or entry.startswith("jaxmeta."))


def _module_name(path: Path) -> str:
    return "jaxmeta_plugin_" + "".join(c if c.isalnum() else "_" for c in str(path))


def _key(entry: str) -> str:
    """How an entry is compared: ``.py`` paths resolved, module names as given."""
    return str(Path(entry).expanduser().resolve()) if entry.endswith(".py") else entry


def _imported(entry: str) -> bool:
    if entry.endswith(".py"):
        return _module_name(Path(_key(entry))) in sys.modules
    return entry in sys.modules


def load_plugins(
    plugins: tuple[str, ...] | list[str], *, allow: tuple[str, ...] | list[str] | None = None
) -> None:
    """Import plug-in modules (names) and files (``.py`` paths), each once per process.

    Args:
      plugins: module names and ``.py`` files.
      allow: ``None`` (a config the user chose): import every entry. Otherwise (a run
        folder's config or a checkpoint's): import only the entries listed here, those
        shipped inside jaxmeta and those already imported; any other is refused before
        anything is imported.

    Raises:
      UntrustedPluginError: an entry not allowed (names it and how to allow it).
      PluginError: a plug-in cannot be found or fails to import.
    """
    if allow is not None:
        allowed = {_key(a) for a in allow}
        for entry in plugins:
            if not (is_builtin(entry) or _imported(entry) or _key(entry) in allowed):
                raise UntrustedPluginError(
                    f"plug-in {entry!r} not imported: a run folder's plug-ins are code, imported "
                    f"only when you allow it (command line: --plugin {entry} or "
                    "--trust-plugins; Python: trust_plugins=True or a list of names)"
                )
    for entry in plugins:
        try:
            if entry.endswith(".py"):
                path = Path(entry).resolve()
                name = _module_name(path)
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
