"""Algorithm registry: name -> factory ``(apply_fn, **kwargs) -> MetaLearner``.

The engine builds an algorithm from a config by name and passes the remaining keys as
keyword arguments, validated against the factory's signature. Adding an algorithm means
adding its module and one entry here (or :func:`register_algorithm` from a plug-in module);
the engine never changes.

The factories themselves are ``jaxmeta.maml``, ``jaxmeta.protonets``, ... (or
``jaxmeta.algorithms.maml.maml``): the names of this package are its modules.
"""

from __future__ import annotations

from collections.abc import Callable

from jaxmeta.algorithms import anil as _anil
from jaxmeta.algorithms import imaml as _imaml
from jaxmeta.algorithms import leo as _leo
from jaxmeta.algorithms import maml as _maml
from jaxmeta.algorithms import mamlpp as _mamlpp
from jaxmeta.algorithms import matching as _matching
from jaxmeta.algorithms import metasgd as _metasgd
from jaxmeta.algorithms import protonets as _protonets
from jaxmeta.algorithms import reptile as _reptile
from jaxmeta.algorithms import snail as _snail
from jaxmeta.algorithms.base import MetaLearner

ALGORITHMS: dict[str, Callable[..., MetaLearner]] = {
    "maml": _maml.maml,
    "fomaml": _maml.fomaml,
    "reptile": _reptile.reptile,
    "anil": _anil.anil,
    "metasgd": _metasgd.metasgd,
    "protonets": _protonets.protonets,
    "matching": _matching.matching,
    "snail": _snail.snail,
    "leo": _leo.leo,
    "mamlpp": _mamlpp.mamlpp,
    "imaml": _imaml.imaml,
}


def register_algorithm(name: str, factory: Callable[..., MetaLearner]) -> None:
    """Make ``factory`` available to configs as ``algorithm.name: <name>``.

    Raises:
      ValueError: ``name`` is taken by another factory.
    """
    if ALGORITHMS.get(name, factory) is not factory:
        raise ValueError(f"algorithm {name!r} is already registered")
    ALGORITHMS[name] = factory


def get_algorithm(name: str) -> Callable[..., MetaLearner]:
    """The factory registered under ``name``."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(
            f"unknown algorithm {name!r}; available: {', '.join(sorted(ALGORITHMS))}"
        ) from None
