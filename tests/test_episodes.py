"""On-device N-way K-shot sampler: invariants, randomness, errors, the fixed evaluation set."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmeta import Episode
from jaxmeta.data import (
    eval_episode_keys,
    eval_episodes,
    num_classes,
    sample_episodes,
    split_images,
)
from jaxmeta.data.episodes import to_float

C, D, S = 6, 20, 6


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """uint8 [6, 20, 6, 6]: every image and each of its rotations is unique (traceable)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(C, D, S, S), dtype=np.uint8)


@pytest.fixture(scope="module")
def lookup(images):
    """bytes of an image (and of its rotations) -> (character, drawer, rotation)."""
    table = {}
    for c in range(C):
        for d in range(D):
            for r in range(4):
                table[np.rot90(images[c, d], r).tobytes()] = (c, d, r)
    assert len(table) == C * D * 4
    return table


def _identify(x, lookup):
    u8 = np.rint(np.asarray(x)[..., 0] * 255).astype(np.uint8)
    return [lookup[img.tobytes()] for img in u8]


def _host(ep: Episode) -> Episode:
    return Episode(*(np.asarray(a) for a in ep))


def _check_task(ep, t, lookup, *, ways, shots, queries):
    sy, qy = np.asarray(ep.support_y[t]), np.asarray(ep.query_y[t])
    assert sorted(np.bincount(sy, minlength=ways).tolist()) == [shots] * ways
    assert sorted(np.bincount(qy, minlength=ways).tolist()) == [queries] * ways
    support, query = _identify(ep.support_x[t], lookup), _identify(ep.query_x[t], lookup)
    label_class = {}
    drawers = {}
    for items, ys in ((support, sy), (query, qy)):
        for (c, d, r), y in zip(items, ys, strict=True):
            assert label_class.setdefault(int(y), (c, r)) == (c, r)  # one class per label
            drawers.setdefault(int(y), []).append(d)
    assert len(set(label_class.values())) == ways  # classes distinct
    for y in range(ways):
        # support and query drawers of a class are all distinct, hence disjoint
        assert len(set(drawers[y])) == shots + queries
    return label_class


@pytest.mark.parametrize(
    ("tasks", "ways", "shots", "queries", "rotations"),
    [(8, 5, 1, 15, False), (8, 20, 2, 2, True)],
)
def test_episode_invariants(images, lookup, tasks, ways, shots, queries, rotations):
    ep = sample_episodes(
        jax.random.key(1),
        jnp.asarray(images),
        tasks=tasks,
        ways=ways,
        shots=shots,
        queries=queries,
        rotations=rotations,
    )
    assert (
        ep.support_x.shape == (tasks, ways * shots, S, S, 1) and ep.support_x.dtype == jnp.float32
    )
    assert ep.query_x.shape == (tasks, ways * queries, S, S, 1) and ep.query_x.dtype == jnp.float32
    assert ep.support_y.shape == (tasks, ways * shots) and ep.support_y.dtype == jnp.int32
    assert ep.query_y.shape == (tasks, ways * queries) and ep.query_y.dtype == jnp.int32
    ep = _host(ep)
    assert ep.support_x.min() >= 0.0 and ep.support_x.max() <= 1.0
    rots = set()
    for t in range(tasks):
        classes = _check_task(ep, t, lookup, ways=ways, shots=shots, queries=queries)
        rots |= {r for _, r in classes.values()}
    assert rots == ({0, 1, 2, 3} if rotations else {0})


def test_many_small_tasks_random_labels_and_uniform_classes(images, lookup):
    tasks = 1000
    ep = _host(
        sample_episodes(
            jax.random.key(2),
            jnp.asarray(images),
            tasks=tasks,
            ways=3,
            shots=1,
            queries=1,
            rotations=True,
        )
    )
    sorted_order, first, counts = set(), set(), np.zeros((C, 4), int)
    for t in range(tasks):
        classes = _check_task(ep, t, lookup, ways=3, shots=1, queries=1)
        ids = [classes[y][1] * C + classes[y][0] for y in range(3)]
        sorted_order.add(ids == sorted(ids))
        first.add(ids[0])
        for c, r in classes.values():
            counts[c, r] += 1
    assert sorted_order == {True, False}  # labels are not the class order
    assert first == set(range(4 * C))  # every class gets label 0 sometimes
    expected = 3 * tasks / (4 * C)  # 125 draws per class
    assert np.all(np.abs(counts - expected) < 0.35 * expected), counts  # ~4 sigma


def test_deterministic_for_a_key(images):
    f = functools.partial(sample_episodes, tasks=8, ways=20, shots=2, queries=2, rotations=True)
    a = f(jax.random.key(7), jnp.asarray(images))
    b = f(jax.random.key(7), jnp.asarray(images))
    c = f(jax.random.key(8), jnp.asarray(images))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.query_x, c.query_x)
    # the legacy uint32[2] key form works too
    d = f(jax.random.PRNGKey(7), jnp.asarray(images))
    assert d.support_x.shape == a.support_x.shape


def test_runs_inside_a_jitted_scanned_step(images):
    imgs = jnp.asarray(images)

    @jax.jit
    def run(key):
        def step(carry, k):
            ep = sample_episodes(k, imgs, tasks=4, ways=5, shots=1, queries=2, rotations=True)
            return carry + ep.query_x.mean(), ep.query_y.sum()

        return jax.lax.scan(step, jnp.float32(0.0), jax.random.split(key, 3))

    total, ysum = run(jax.random.key(0))
    assert ysum.shape == (3,) and int(ysum[0]) == 4 * 2 * (0 + 1 + 2 + 3 + 4)
    assert 0.0 < float(total) < 3.0
    assert run._cache_size() == 1
    run(jax.random.key(1))
    assert run._cache_size() == 1  # a new key does not retrace


def test_errors_name_the_numbers(images):
    imgs = jnp.asarray(images)
    f = functools.partial(sample_episodes, jax.random.key(0), imgs, tasks=2, shots=1, queries=1)
    with pytest.raises(ValueError, match=r"ways=7 exceeds the 6 classes"):
        f(ways=7)
    out = jax.eval_shape(lambda: f(ways=7, rotations=True))  # 24 classes with rotations: fine
    assert out.support_x.shape == (2, 7, S, S, 1)
    with pytest.raises(ValueError, match=r"ways=25 exceeds the 24 classes .*rotations"):
        f(ways=25, rotations=True)
    with pytest.raises(
        ValueError, match=r"shots \+ queries = 5 \+ 16 = 21 exceeds the 20 examples"
    ):
        sample_episodes(jax.random.key(0), imgs, tasks=2, ways=2, shots=5, queries=16)
    for name, minimum in (("tasks", 1), ("ways", 2), ("shots", 1), ("queries", 1)):
        kwargs = {"tasks": 2, "ways": 2, "shots": 1, "queries": 1, name: 0}
        with pytest.raises(ValueError, match=f"{name} must be >= {minimum}, got 0"):
            sample_episodes(jax.random.key(0), imgs, **kwargs)
    with pytest.raises(TypeError, match="ways must be an integer"):
        sample_episodes(jax.random.key(0), imgs, tasks=2, ways=2.0, shots=1, queries=1)
    with pytest.raises(ValueError, match="uint8"):
        sample_episodes(
            jax.random.key(0), imgs.astype(jnp.float32), tasks=2, ways=2, shots=1, queries=1
        )
    with pytest.raises(ValueError, match=r"\[classes, examples, H, W\]"):
        sample_episodes(jax.random.key(0), imgs[0], tasks=2, ways=2, shots=1, queries=1)


def test_num_classes(images):
    assert num_classes(images, rotations=False) == C
    assert num_classes(images, rotations=True) == 4 * C


def test_eval_episodes_fixed_and_sliceable(images, lookup):
    kw = dict(episodes=50, ways=4, shots=2, queries=3, rotations=True, seed=123)
    a = eval_episodes(images, **kw)
    b = eval_episodes(jnp.asarray(images), **kw)
    assert isinstance(a.support_x, np.ndarray) and a.support_x.dtype == np.float32
    assert a.support_x.shape == (50, 8, S, S, 1) and a.query_y.shape == (50, 12)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    part = eval_episodes(images, start=10, stop=20, **kw)
    for x, y in zip(a, part, strict=True):
        np.testing.assert_array_equal(x[10:20], y)
    # the set is exactly sample_episodes(jax.random.key(seed), tasks=episodes); its task keys
    # are eval_episode_keys(seed, episodes)
    same = sample_episodes(
        jax.random.key(123),
        jnp.asarray(images),
        tasks=50,
        ways=4,
        shots=2,
        queries=3,
        rotations=True,
    )
    for x, y in zip(a, same, strict=True):
        np.testing.assert_array_equal(x, np.asarray(y))
    keys = eval_episode_keys(123, 50)
    assert keys.shape == (50,)
    np.testing.assert_array_equal(
        jax.random.key_data(keys), jax.random.key_data(jax.random.split(jax.random.key(123), 50))
    )
    for t in range(50):
        _check_task(a, t, lookup, ways=4, shots=2, queries=3)
    other = eval_episodes(images, **{**kw, "seed": 124})
    assert not np.array_equal(other.query_x, a.query_x)
    with pytest.raises(ValueError, match="start < stop"):
        eval_episodes(images, start=20, stop=10, **kw)


def test_episodes_on_genuine_omniglot(omniglot):
    imgs = jnp.asarray(split_images(omniglot, "vinyals", "train"))
    ep = jax.jit(
        functools.partial(sample_episodes, tasks=4, ways=20, shots=5, queries=15, rotations=True)
    )(jax.random.key(0), imgs)
    assert ep.support_x.shape == (4, 100, 28, 28, 1)
    assert ep.query_x.shape == (4, 300, 28, 28, 1)
    ink = float(ep.query_x.mean())
    assert 0.03 < ink < 0.2  # strokes high, paper low
    assert float(ep.query_x.max()) == 1.0 and float(ep.query_x.min()) == 0.0


def test_images_of_any_size_and_channel_count(images):
    """``[C, E, H, W, ch]`` (e.g. RGB, not square) samples like ``[C, E, H, W]`` does; grey
    images are the one-channel case, bit for bit."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 10, 12, 16, 3), dtype=np.uint8)
    key = jax.random.key(3)
    ep = sample_episodes(key, jnp.asarray(rgb), tasks=2, ways=3, shots=2, queries=4)
    assert ep.support_x.shape == (2, 6, 12, 16, 3) and ep.query_x.shape == (2, 12, 12, 16, 3)
    assert ep.support_x.dtype == jnp.float32
    # Every sampled image is one of the dataset's, scaled to [0, 1].
    pool = {img.tobytes() for img in np.asarray(to_float(rgb)).reshape(-1, 12, 16, 3)}
    assert all(x.tobytes() in pool for x in np.asarray(ep.query_x).reshape(-1, 12, 16, 3))
    with pytest.raises(ValueError, match="square"):
        sample_episodes(key, jnp.asarray(rgb), tasks=2, ways=3, shots=1, queries=1, rotations=True)
    grey = jnp.asarray(images)
    one = sample_episodes(key, grey, tasks=2, ways=3, shots=1, queries=2, rotations=True)
    five = sample_episodes(
        key, grey[..., None], tasks=2, ways=3, shots=1, queries=2, rotations=True
    )
    for a, b in zip(one, five, strict=True):
        np.testing.assert_array_equal(a, b)
