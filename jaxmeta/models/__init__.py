"""Model registry: name -> Flax module class (constructed with keyword arguments).

Adding a model: its module and one entry here (or :func:`register_model` from a plug-in).
"""

from __future__ import annotations

import flax.linen as nn

from jaxmeta.models.conv4 import Conv4
from jaxmeta.models.fce import FullContextEmbedding
from jaxmeta.models.identity import Identity
from jaxmeta.models.mlp import MLP
from jaxmeta.models.resnet12 import ResNet12
from jaxmeta.models.snail import SNAIL

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "conv4": Conv4,
    "resnet12": ResNet12,
    "snail": SNAIL,
    "fce": FullContextEmbedding,
    "identity": Identity,
}


def register_model(name: str, cls: type[nn.Module]) -> None:
    """Make a Flax module available to configs as ``model.name: <name>`` (its fields are the
    config's keys). A plug-in module calls this when imported.

    Raises:
      ValueError: ``name`` is taken by another class.
    """
    if MODELS.get(name, cls) is not cls:
        raise ValueError(f"model {name!r} is already registered")
    MODELS[name] = cls


def get_model(name: str) -> type[nn.Module]:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}"
        ) from None
