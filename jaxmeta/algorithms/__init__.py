"""Algorithm registry: name -> :class:`~jaxmeta.algorithms.base.AlgorithmSpec`.

Each algorithm module defines its ``SPEC``: the factory ``(apply_fn, **options) ->
MetaLearner``, what its model returns, the episode facts it takes, and a small example.
The engine builds an algorithm from a config by name, passing the remaining keys as keyword
arguments (validated against the factory's signature); the suite builds every registered
algorithm from its example. Adding an algorithm means adding its module and one entry here
(or :func:`register_algorithm` from a plug-in module); the engine and the tests never change.

The factories themselves are ``jaxmeta.maml``, ``jaxmeta.protonets``, ... (or
``jaxmeta.algorithms.maml.maml``): the names of this package are its modules.
"""

from __future__ import annotations

from collections.abc import Callable

from jaxmeta.algorithms import anil as _anil
from jaxmeta.algorithms import boil as _boil
from jaxmeta.algorithms import imaml as _imaml
from jaxmeta.algorithms import leo as _leo
from jaxmeta.algorithms import maml as _maml
from jaxmeta.algorithms import mamlpp as _mamlpp
from jaxmeta.algorithms import matching as _matching
from jaxmeta.algorithms import metasgd as _metasgd
from jaxmeta.algorithms import protonets as _protonets
from jaxmeta.algorithms import reptile as _reptile
from jaxmeta.algorithms import snail as _snail
from jaxmeta.algorithms.base import AlgorithmSpec, MetaLearner

ALGORITHMS: dict[str, AlgorithmSpec] = {
    "maml": _maml.SPEC,
    "fomaml": _maml.FOMAML_SPEC,
    "reptile": _reptile.SPEC,
    "anil": _anil.SPEC,
    "boil": _boil.SPEC,
    "metasgd": _metasgd.SPEC,
    "protonets": _protonets.SPEC,
    "matching": _matching.SPEC,
    "snail": _snail.SPEC,
    "leo": _leo.SPEC,
    "mamlpp": _mamlpp.SPEC,
    "imaml": _imaml.SPEC,
}
# The algorithms this package registers itself (not those of plug-ins registered later, e.g.
# jaxmeta.rl's): what "every algorithm" means in the suite and the benchmarks.
SHIPPED: tuple[str, ...] = tuple(ALGORITHMS)


def register_algorithm(
    name: str, factory: AlgorithmSpec | Callable[..., MetaLearner], **spec: object
) -> None:
    """Make an algorithm available to configs as ``algorithm.name: <name>``.

    ``factory``: its :class:`AlgorithmSpec`, or the bare factory with the spec's other
    fields as keywords (``model="embedding"``, ``episode_args=("ways",)``, ``example={...}``).

    Raises:
      ValueError: ``name`` is taken by another algorithm.
    """
    if not isinstance(factory, AlgorithmSpec):
        factory = AlgorithmSpec(factory, **spec)
    elif spec:
        raise TypeError("pass the spec's fields in the AlgorithmSpec, not as keywords")
    taken = ALGORITHMS.get(name)
    if taken is not None and taken.make is not factory.make:
        raise ValueError(f"algorithm {name!r} is already registered")
    ALGORITHMS[name] = factory


def get_algorithm(name: str) -> Callable[..., MetaLearner]:
    """The factory registered under ``name`` (its spec: ``ALGORITHMS[name]``)."""
    try:
        return ALGORITHMS[name].make
    except KeyError:
        raise ValueError(
            f"unknown algorithm {name!r}; available: {', '.join(sorted(ALGORITHMS))}"
        ) from None
