"""N-way K-shot episodes sampled on the device, inside the jitted meta-step.

The dataset is one split as a device-resident ``uint8`` array ``[C, E, H, W]`` (grey images,
e.g. Omniglot: ``E`` = 20 drawers, strokes = 255) or ``[C, E, H, W, ch]`` (``ch`` channels,
e.g. RGB): ``C`` classes of ``E`` examples each. A task draws ``ways`` distinct classes, then
``shots + queries`` distinct examples of each class: the first ``shots`` form the support set,
the rest the query set, so support and query never share an image. With ``rotations`` (square
images) every class gives four classes (0/90/180/270 degrees), class ``r * C + c`` being class
``c`` rotated by ``r * 90`` degrees counter-clockwise; the rotation is applied on the device.
Episodes hold float32 images ``[..., H, W, ch]`` (``ch = 1`` for grey).

Classes of unequal sizes (tieredImageNet, your own folders) come as :class:`ClassImages`:
all images of a split in one array ``[n, H, W(, ch)]``, class ``c`` being
``images[offsets[c]:offsets[c + 1]]``, nothing padded. A class's examples are drawn as the
top ``shots + queries`` of i.i.d. uniforms over a static ``[max_count]`` row whose entries
past the class's count are set to -1, so every example of the class is equally likely and
no index past the class is ever drawn; the row length (the largest class) is static pytree
metadata, so the jitted step traces once per dataset.

Label ``i`` of a task is the ``i``-th class drawn; the classes come in random order (the top
``ways`` of i.i.d. uniforms), so a character's label is random in every task. Examples are class-
major: ``support_y = [0]*shots + [1]*shots + ...``, ``query_y = [0]*queries + [1]*queries + ...``.

Everything is static-shaped ``jax.random`` + gathers (no Python loop, no host work, no global
RNG), so the sampler can sit inside a ``jit``/``lax.scan`` meta-step.

References:
  Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016 (episodes, rotations);
  Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning", ICML 2017 (Omniglot protocol, 600 tasks).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta.types import Episode
from jaxmeta.validation import check_int

__all__ = [
    "ROTATIONS",
    "ClassImages",
    "eval_episode_keys",
    "eval_episodes",
    "num_classes",
    "sample_episodes",
    "to_float",
]

ROTATIONS = 4  # 0, 90, 180, 270 degrees


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["images", "offsets"],
    meta_fields=["min_count", "max_count"],
)
@dataclasses.dataclass(frozen=True)
class ClassImages:
    """One split whose classes may have different numbers of examples (a pytree).

    Attributes:
      images: uint8 ``[n, H, W]`` or ``[n, H, W, ch]``, the images of each class contiguous.
      offsets: int32 ``[classes + 1]``, rising from 0 to ``n``; class ``c`` is
        ``images[offsets[c]:offsets[c + 1]]``.
      min_count, max_count: the smallest and largest class (static: part of the tree
        structure, so a jitted function sees them as Python ints).
    """

    images: Any
    offsets: Any
    min_count: int
    max_count: int

    @classmethod
    def from_offsets(cls, images, offsets) -> ClassImages:
        """From host arrays (counts computed here); ``offsets`` as in the attributes."""
        offsets = np.asarray(offsets)
        counts = np.diff(offsets)
        if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or np.any(counts < 1):
            raise ValueError("offsets must rise strictly from 0 (every class non-empty)")
        if offsets[-1] != images.shape[0]:
            raise ValueError(f"offsets end at {offsets[-1]}, images has {images.shape[0]}")
        return cls(images, offsets.astype(np.int32), int(counts.min()), int(counts.max()))

    @property
    def shape(self) -> tuple[int, ...]:
        """``(classes, max_count, H, W(, ch))``: the shape of the padded array it stands for."""
        return (int(self.offsets.shape[0]) - 1, self.max_count, *self.images.shape[1:])

    @property
    def dtype(self):
        return self.images.dtype

    @property
    def ndim(self) -> int:
        return self.images.ndim + 1

    def counts(self) -> np.ndarray:
        """Examples per class (host)."""
        return np.diff(np.asarray(self.offsets))


def num_classes(images, rotations: bool) -> int:
    """Classes a split offers: ``C``, or ``4 C`` with rotations.

    Args:
      images: ``[C, E, H, W(, ch)]`` one split's images (any array with a shape).
      rotations: whether rotated characters count as new classes.
    """
    return int(images.shape[0]) * (ROTATIONS if rotations else 1)


def _check(images, *, tasks: int, ways: int, shots: int, queries: int, rotations: bool) -> None:
    """Static checks: shapes, dtype and the N/K/Q numbers (run at trace time, so also under jit)."""
    check_int("tasks", tasks, minimum=1)
    # As data.ways / eval.ways in configs: a 1-way task has nothing to classify (every
    # prediction is right), so its accuracy would be a silent 100%.
    check_int("ways", ways, minimum=2)
    check_int("shots", shots, minimum=1)
    check_int("queries", queries, minimum=1)
    if not isinstance(rotations, bool):
        raise TypeError(f"rotations must be a bool, got {rotations!r}")
    shape = tuple(images.shape)
    if len(shape) not in (4, 5):
        raise ValueError(
            f"images must be [classes, examples, H, W] or [classes, examples, H, W, channels], "
            f"got shape {shape}"
        )
    if images.dtype != jnp.uint8:
        raise ValueError(f"images must be uint8 (0-255), got {images.dtype}")
    if rotations and shape[2] != shape[3]:
        raise ValueError(f"rotations need square images, got {shape[2]}x{shape[3]}")
    available = num_classes(images, rotations)
    if ways > available:
        raise ValueError(
            f"ways={ways} exceeds the {available} classes available ({shape[0]} characters"
            f"{' x 4 rotations' if rotations else ''}); classes are drawn without replacement"
        )
    fewest = images.min_count if isinstance(images, ClassImages) else shape[1]
    if shots + queries > fewest:
        smallest = "the smallest class's" if isinstance(images, ClassImages) else "the"
        raise ValueError(
            f"shots + queries = {shots} + {queries} = {shots + queries} exceeds {smallest} "
            f"{fewest} examples per class; support and query images are distinct examples"
        )


def _check_distinct(images, ways: int, rotations: bool, distinct_characters: bool) -> None:
    if not isinstance(distinct_characters, bool):
        raise TypeError(f"distinct_characters must be a bool, got {distinct_characters!r}")
    if rotations and distinct_characters and ways > int(images.shape[0]):
        raise ValueError(
            f"ways={ways} exceeds the {images.shape[0]} characters (distinct_characters: "
            "one rotation of each character per task)"
        )


def to_float(images: jax.Array) -> jax.Array:
    """The model input of cached uint8 images: ``float32(u8) * (1 / 255)``, strokes 1.0.

    The one conversion used by training, evaluation and :func:`jaxmeta.load` (same shape
    as ``images``).
    """
    return jnp.asarray(images).astype(jnp.float32) * (1.0 / 255.0)


def _rotate(x: jax.Array, k: jax.Array) -> jax.Array:
    """Rotate ``x [ways, n, S, S(, ch)]`` by ``k [ways] * 90`` degrees counter-clockwise, per class.

    Three whole-array rotations and a select: on XLA:CPU this is much faster than a gather
    (benchmarks/README.md, "Measured design choices").
    """
    kk = k.reshape(k.shape + (1,) * (x.ndim - 1))
    return jnp.select(
        [kk == 1, kk == 2, kk == 3],
        [jnp.rot90(x, 1, axes=(2, 3)), jnp.rot90(x, 2, axes=(2, 3)), jnp.rot90(x, 3, axes=(2, 3))],
        x,
    )


def _top_k_indices(u: jax.Array, k: int) -> jax.Array:
    """``k`` distinct indices in ``[0, u.shape[-1])`` per row, in random order: int32 ``[..., k]``.

    ``u`` holds i.i.d. uniforms, so its top ``k`` is a uniformly random ordered subset.
    ``lax.top_k`` on float32 is much faster on XLA:CPU than the sort in
    ``jax.random.choice(replace=False)`` (benchmarks/README.md, "Measured design choices").
    Uniforms have 2^23 levels, so a tie at the cut-off (probability ~ n / 2^23 per draw,
    n = row length) goes to the lower index: a negligible bias; the indices are always distinct.
    """
    return jax.lax.top_k(u, k)[1]


def _one_task(
    key: jax.Array,
    images: jax.Array,
    *,
    ways: int,
    shots: int,
    queries: int,
    rotations: bool,
    distinct_characters: bool = False,
) -> Episode:
    n_char, n_drawers = images.shape[:2]  # ClassImages: n_drawers = its largest class
    n = shots + queries
    if rotations and distinct_characters:
        # ``ways`` distinct characters, then a rotation for each (cbfinn/maml data_generator.py).
        u = jax.random.uniform(key, (n_char + ways + ways * n_drawers,))
        char = _top_k_indices(u[:n_char], ways)  # [ways]
        rot = jnp.minimum((u[n_char : n_char + ways] * ROTATIONS).astype(jnp.int32), ROTATIONS - 1)
        classes = rot * n_char + char
        v = u[n_char + ways :].reshape(ways, n_drawers)
    else:
        n_cls = num_classes(images, rotations)
        # One draw of uniforms for classes and examples (one threefry call: half the compile time).
        u = jax.random.uniform(key, (n_cls + ways * n_drawers,))
        classes = _top_k_indices(u[:n_cls], ways)  # [ways]
        char = classes % n_char
        v = u[n_cls:].reshape(ways, n_drawers)
    if isinstance(images, ClassImages):
        start = images.offsets[char]  # [ways]
        count = images.offsets[char + 1] - start
        # Entries past a class's count can never reach its top n (n <= its count, uniforms
        # are >= 0): the draw is a uniform subset of that class's examples.
        v = jnp.where(jnp.arange(n_drawers)[None, :] < count[:, None], v, -1.0)
        x = images.images[start[:, None] + _top_k_indices(v, n)]  # [ways, n, H, W(, ch)] u8
    else:
        drawers = _top_k_indices(v, n)  # [ways, n]
        x = images[jnp.broadcast_to(char[:, None], (ways, n)), drawers]  # [ways, n, H, W(, ch)]
    if rotations:
        x = _rotate(x, classes // n_char)
    x = to_float(x)
    if images.ndim == 4:  # grey: one channel
        x = x[..., None]
    image = x.shape[2:]  # (H, W, ch)
    labels = jnp.arange(ways, dtype=jnp.int32)
    return Episode(
        support_x=x[:, :shots].reshape(ways * shots, *image),
        support_y=jnp.repeat(labels, shots),
        query_x=x[:, shots:].reshape(ways * queries, *image),
        query_y=jnp.repeat(labels, queries),
    )


@functools.partial(
    jax.jit, static_argnames=("ways", "shots", "queries", "rotations", "distinct_characters")
)
def _sample_from_keys(
    keys, images, *, ways, shots, queries, rotations, distinct_characters=False
) -> Episode:
    # jit: one compiled program when called eagerly; simply inlined inside an outer jit.
    task = functools.partial(
        _one_task,
        ways=ways,
        shots=shots,
        queries=queries,
        rotations=rotations,
        distinct_characters=distinct_characters,
    )
    return jax.vmap(task, in_axes=(0, None))(keys, images)


def sample_episodes(
    key: jax.Array,
    images: jax.Array,
    *,
    tasks: int,
    ways: int,
    shots: int,
    queries: int,
    rotations: bool = False,
    distinct_characters: bool = False,
) -> Episode:
    """Sample a batch of N-way K-shot tasks from one split, on the device.

    Jittable: call it inside the jitted meta-step with ``images`` as an argument (or closed over)
    and the ints static. Task ``t`` uses ``jax.random.split(key, tasks)[t]``.

    Args:
      key: a PRNG key (``jax.random.key`` or legacy ``uint32[2]``).
      images: uint8 ``[C, E, H, W]`` or ``[C, E, H, W, ch]``, one split's images, e.g. from
        :func:`jaxmeta.data.omniglot.split_images` put on the device once; or a
        :class:`ClassImages` (classes of unequal sizes, ``E`` = the smallest class).
      tasks: number of tasks (meta-batch size).
      ways: classes per task (N >= 2), drawn without replacement from ``C`` (or ``4 C``) classes.
      shots: support images per class (K).
      queries: query images per class (Q); ``shots + queries <= D``.
      rotations: draw from the ``4 C`` classes made by rotating every character by 0/90/180/270
        degrees.
      distinct_characters: with ``rotations``, draw ``ways`` distinct characters and then a
        rotation for each, so a task never holds two rotations of one character (cbfinn/maml).
        ``False`` (default) draws ``ways`` of the ``4 C`` classes: two rotations of a character
        can share a task (about 1.8% of 5-way and 29% of 20-way tasks on the 423 test
        characters). Needs ``ways <= C``.

    Returns:
      ``Episode`` with ``support_x`` float32 ``[tasks, ways*shots, H, W, ch]`` in [0, 1],
      ``support_y`` int32 ``[tasks, ways*shots]``, ``query_x`` float32
      ``[tasks, ways*queries, H, W, ch]``, ``query_y`` int32 ``[tasks, ways*queries]``; labels in
      ``[0, ways)``, class-major.

    Raises:
      ValueError: non-positive numbers, ``ways`` above the available classes, ``shots + queries``
        above the examples per class, images not uint8 ``[C, E, H, W(, ch)]``.
      TypeError: non-integer numbers.

    References:
      Vinyals et al. 2016; Finn et al. 2017.
    """
    _check(images, tasks=tasks, ways=ways, shots=shots, queries=queries, rotations=rotations)
    _check_distinct(images, ways, rotations, distinct_characters)
    return _sample_from_keys(
        jax.random.split(key, tasks),
        images,
        ways=ways,
        shots=shots,
        queries=queries,
        rotations=rotations,
        distinct_characters=distinct_characters,
    )


def eval_episode_keys(seed: int, episodes: int) -> jax.Array:
    """Keys of the fixed evaluation set: ``jax.random.split(jax.random.key(seed), episodes)``."""
    check_int("seed", seed, minimum=0)
    check_int("episodes", episodes, minimum=1)
    with jax.default_device(jax.devices("cpu")[0]):
        return jax.random.split(jax.random.key(seed), episodes)


def eval_episodes(
    images,
    *,
    episodes: int = 600,
    ways: int,
    shots: int,
    queries: int,
    rotations: bool,
    seed: int,
    start: int = 0,
    stop: int | None = None,
    distinct_characters: bool = False,
) -> Episode:
    """A fixed, seeded set of evaluation tasks, identical across runs and algorithms.

    Generated with ``jax.random`` on the CPU from ``seed`` alone: the set equals
    ``sample_episodes(jax.random.key(seed), images, tasks=episodes, ...)``, whose task ``i`` uses
    key ``eval_episode_keys(seed, episodes)[i]``. The whole set
    needs ``4 * episodes * ways * (shots + queries) * H * W * ch`` bytes (e.g. 150 MB for 600 5-way
    1-shot tasks with 15 queries, 28x28); ``start``/``stop`` return a slice of the same set, so an
    evaluator can walk through it in chunks.

    Args:
      images: uint8 ``[C, E, H, W(, ch)]`` (NumPy or JAX), one split's images.
      episodes: size of the set (MAML: 600).
      ways: classes per task (N >= 2).
      shots: support images per class (K).
      queries: query images per class (Q).
      rotations: draw from the ``4 C`` rotated classes.
      distinct_characters: never two rotations of one character in a task
        (:func:`sample_episodes`).
      seed: non-negative int; with ``episodes`` and the task shape, all the set depends on.
      start: first episode of the set to return.
      stop: one past the last episode to return (default ``episodes``).

    Returns:
      ``Episode`` of host NumPy arrays with a leading ``[stop - start]`` axis: ``support_x``
      float32 ``[episodes, ways*shots, H, W, ch]``, ``support_y`` int32 ``[episodes, ways*shots]``,
      ``query_x`` float32 ``[episodes, ways*queries, H, W, ch]``, ``query_y`` int32
      ``[episodes, ways*queries]``.

    Raises:
      ValueError: as :func:`sample_episodes`, or ``0 <= start < stop <= episodes`` violated.

    References:
      Finn et al. 2017 (600 test tasks, 95% CI = 1.96 std / sqrt(600)).
    """
    check_int("episodes", episodes, minimum=1)
    stop = episodes if stop is None else stop
    check_int("start", start, minimum=0)
    check_int("stop", stop, minimum=1)
    if not start < stop <= episodes:
        raise ValueError(
            f"need 0 <= start < stop <= episodes, got start={start}, stop={stop}, "
            f"episodes={episodes}"
        )
    _check(images, tasks=episodes, ways=ways, shots=shots, queries=queries, rotations=rotations)
    _check_distinct(images, ways, rotations, distinct_characters)
    cpu = jax.devices("cpu")[0]
    keys = eval_episode_keys(seed, episodes)[start:stop]
    if not isinstance(images, ClassImages):
        images = np.asarray(images)
    ep = _sample_from_keys(
        jax.device_put(keys, cpu),
        jax.device_put(images, cpu),
        ways=ways,
        shots=shots,
        queries=queries,
        rotations=rotations,
        distinct_characters=distinct_characters,
    )
    return Episode(*(np.asarray(a) for a in ep))
