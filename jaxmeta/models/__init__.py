"""Model registry: name -> Flax module class (constructed with keyword arguments)."""

from __future__ import annotations

import flax.linen as nn

from jaxmeta.models.mlp import MLP

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
}


def get_model(name: str) -> type[nn.Module]:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}") from None
