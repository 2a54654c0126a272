"""Full context embeddings of Matching Networks (Vinyals et al. 2016, Appendix A.2)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmeta.types import Array


class FullContextEmbedding(nn.Module):
    """Support embeddings ``g`` (bidirectional LSTM) and query embeddings ``f`` (attention LSTM).

    ``g(x_i) = h_fwd_i + h_bwd_i + g'(x_i)`` where the LSTMs run over the support
    embeddings ``g'`` in the order given; ``f(x) = h_K`` after ``steps`` processing
    steps ``h_k = LSTM([f'(x), r_{k-1}], (h_{k-1}, c_{k-1})) + f'(x)`` with the read-out
    ``r_{k-1} = sum_i softmax_i(h_{k-1} . g(x_i)) g(x_i)`` (dot-product attention).
    Feeding ``r`` as LSTM input next to ``f'(x)`` instead of concatenating it to the
    hidden state gives the same gates (both are one affine map of ``[f', h, r]``).

    Attributes:
      features: embedding width ``d`` (the LSTM hidden size, so the skip connections add).
      steps: number of processing steps ``K`` of the attention LSTM (static).

    Call: ``(support [n_s, d], query [n_q, d]) -> (g [n_s, d], f [n_q, d])``.

    References:
      Vinyals et al., NeurIPS 2016, Appendix A.2 (Eq. 3-7).
    """

    features: int
    steps: int = 5
    dtype: jax.typing.DTypeLike = "float32"

    @nn.compact
    def __call__(self, support: Array, query: Array) -> tuple[Array, Array]:
        d = self.features
        cell = lambda name: nn.LSTMCell(d, dtype=self.dtype, param_dtype=self.dtype, name=name)
        bi = nn.Bidirectional(
            nn.RNN(cell("g_forward")),
            nn.RNN(cell("g_backward")),
            merge_fn=lambda a, b: a + b,
        )
        g = bi(support[None])[0] + support  # [n_s, d]

        f_cell = cell("f_attention")
        zeros = jnp.zeros_like(query)
        c, h = zeros, zeros
        for _ in range(self.steps):
            attn = jax.nn.softmax(h @ g.T, axis=-1)  # [n_q, n_s]
            r = attn @ g  # [n_q, d]
            (c, h_hat), _ = f_cell((c, h), jnp.concatenate([query, r], axis=-1))
            h = h_hat + query
        return g, h
