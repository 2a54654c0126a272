"""Helpers shared by the metric-based learners (Prototypical and Matching Networks).

Their logits have one column per class *slot*: ``ways`` when the learner is built for a fixed
N, else one per support example (an upper bound), with the columns of absent classes set to
:data:`ABSENT_LOGIT`. Everything is derived from shapes, so one learner trains 60-way and
tests 5-way.
"""

from __future__ import annotations

import jax

from jaxmeta.types import Array

# Logit given to class slots that have no support example: finite (so softmax,
# cross-entropy and their gradients stay NaN-free) yet far below any real logit.
ABSENT_LOGIT = -1e9


def class_slots(support_y: Array, ways: int | None) -> int:
    """Number of logit columns: ``ways`` if given, else ``n_support`` (an upper bound).

    With ``ways=None`` the columns of classes absent from the support set get
    :data:`ABSENT_LOGIT`; argmax, accuracy and cross-entropy are then identical to
    those of the ``[n_query, n_way]`` logits.
    """
    return support_y.shape[0] if ways is None else ways


def one_hot_support(support_y: Array, n_slots: int, dtype) -> Array:
    """``[n_support, n_slots]`` one-hot labels (labels outside the range give zero rows)."""
    return jax.nn.one_hot(support_y, n_slots, dtype=dtype)
