"""Algorithm registry: name -> factory ``(apply_fn, **kwargs) -> MetaLearner``.

The engine builds an algorithm from a config by name and passes the remaining keys as
keyword arguments, validated against the factory's signature. Adding an algorithm means
adding its module and one entry here; the engine never changes.
"""

from __future__ import annotations

from collections.abc import Callable

from jaxmeta.algorithms.anil import anil
from jaxmeta.algorithms.base import MetaLearner
from jaxmeta.algorithms.maml import fomaml, maml
from jaxmeta.algorithms.matching import matching
from jaxmeta.algorithms.metasgd import metasgd
from jaxmeta.algorithms.protonets import protonets
from jaxmeta.algorithms.reptile import reptile
from jaxmeta.algorithms.snail import snail

ALGORITHMS: dict[str, Callable[..., MetaLearner]] = {
    "maml": maml,
    "fomaml": fomaml,
    "reptile": reptile,
    "anil": anil,
    "metasgd": metasgd,
    "protonets": protonets,
    "matching": matching,
    "snail": snail,
}


def get_algorithm(name: str) -> Callable[..., MetaLearner]:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(
            f"unknown algorithm {name!r}; available: {', '.join(sorted(ALGORITHMS))}"
        ) from None
