"""The on-device sampler on classes of unequal sizes (:class:`ClassImages`): jit without
retracing, and the exact distribution (every example of a class equally likely, nothing
past a class ever drawn)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxmeta.data.episodes import ClassImages, eval_episodes, sample_episodes

COUNTS = (3, 7, 5, 4)  # examples per class


def _data(channels=None):
    """Image ``i`` of class ``c`` has every pixel ``16 * c + i``: its identity."""
    values = np.concatenate([16 * c + np.arange(n) for c, n in enumerate(COUNTS)]).astype(np.uint8)
    shape = (2, 2) if channels is None else (2, 2, channels)
    images = np.broadcast_to(values.reshape(-1, *([1] * len(shape))), (len(values), *shape))
    return ClassImages.from_offsets(np.ascontiguousarray(images), np.cumsum((0, *COUNTS)))


def test_no_retrace_and_shapes():
    data = jax.device_put(_data(channels=3))
    traces = []

    @jax.jit
    def step(key, data):
        traces.append(1)  # runs only while tracing
        return sample_episodes(key, data, tasks=4, ways=2, shots=1, queries=2)

    for i in range(3):
        ep = step(jax.random.key(i), data)
    # Same structure, new contents (another dataset of the same sizes): no retrace either.
    other = _data(channels=3)
    other = ClassImages(other.images[::-1].copy(), other.offsets, other.min_count, other.max_count)
    step(jax.random.key(9), jax.device_put(other))
    assert len(traces) == 1
    assert ep.support_x.shape == (4, 2, 2, 2, 3) and ep.query_x.shape == (4, 4, 2, 2, 3)


def test_distribution_is_uniform_over_each_class_and_never_pads():
    data = _data()
    tasks, n = 4000, 3  # shots + queries = 3 <= the smallest class (3)
    ep = jax.jit(lambda k, d: sample_episodes(k, d, tasks=tasks, ways=2, shots=1, queries=2))(
        jax.random.key(0), data
    )
    ids = np.concatenate(
        [
            np.asarray(ep.support_x[..., 0, 0, 0]).reshape(tasks, 2, 1),
            np.asarray(ep.query_x[..., 0, 0, 0]).reshape(tasks, 2, 2),
        ],
        axis=2,
    )
    ids = np.rint(ids * 255).astype(int)  # [tasks, ways, shots + queries]
    cls, idx = ids // 16, ids % 16
    # A task's examples of one label are one class, distinct, and inside that class.
    assert np.all(cls == cls[:, :, :1])
    assert np.all(np.sort(idx, axis=2)[:, :, 1:] != np.sort(idx, axis=2)[:, :, :-1])
    assert np.all(idx < np.asarray(COUNTS)[cls])
    # Classes equally likely; each example of class c drawn with probability n / count_c.
    per_class = np.bincount(cls[:, :, 0].ravel(), minlength=len(COUNTS))
    expected = tasks * 2 / len(COUNTS)
    assert np.all(np.abs(per_class - expected) < 5 * np.sqrt(expected))
    for c, count in enumerate(COUNTS):
        hits = np.bincount(idx[cls == c], minlength=count)
        want = per_class[c] * n / count
        sd = np.sqrt(per_class[c] * (n / count) * (1 - n / count))
        assert np.all(np.abs(hits - want) < 5 * sd + 1e-9), (c, hits, want)


def test_eval_episodes_and_checks():
    data = _data(channels=1)
    a = eval_episodes(data, episodes=5, ways=3, shots=1, queries=2, rotations=True, seed=1)
    b = eval_episodes(data, episodes=5, ways=3, shots=1, queries=2, rotations=True, seed=1)
    np.testing.assert_array_equal(a.query_x, b.query_x)
    assert a.support_x.shape == (5, 3, 2, 2, 1)
    with pytest.raises(ValueError, match="smallest class's 3 examples"):
        sample_episodes(jax.random.key(0), data, tasks=1, ways=2, shots=2, queries=2)
    with pytest.raises(ValueError, match="exceeds the 4 classes"):
        sample_episodes(jax.random.key(0), data, tasks=1, ways=5, shots=1, queries=1)
