"""Model registry: name -> Flax module class (constructed with keyword arguments)."""

from __future__ import annotations

import flax.linen as nn

from jaxmeta.models.conv4 import Conv4
from jaxmeta.models.fce import FullContextEmbedding
from jaxmeta.models.mlp import MLP
from jaxmeta.models.resnet12 import ResNet12
from jaxmeta.models.snail import SNAIL

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "conv4": Conv4,
    "resnet12": ResNet12,
    "snail": SNAIL,
    "fce": FullContextEmbedding,
}


def get_model(name: str) -> type[nn.Module]:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}"
        ) from None
