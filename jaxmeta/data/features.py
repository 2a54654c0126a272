"""N-way K-shot tasks over fixed feature vectors (precomputed embeddings), sampled on the device.

A split is held as ``{"x": float32 [n, d], "index": int32 [C, E_max], "count": int32 [C]}``:
every example's features once, and for class ``c`` the rows of its ``count[c]`` examples
(padded to the largest class). Classes may have different sizes (tieredImageNet's do). A task
draws ``ways`` distinct classes, then ``shots + queries`` distinct examples of each (the top
``k`` of uniforms, examples beyond ``count`` masked out), class-major as
:mod:`jaxmeta.data.episodes`: ``support_y = [0]*shots + [1]*shots + ...``.

Two sources use it: :class:`~jaxmeta.data.leo_embeddings.LEOEmbeddings` (the LEO paper's
pickles) and :class:`ExportedFeatures` (features of a trained jaxmeta run, written by
``jaxmeta export-features``).

References:
  Rusu et al. Meta-Learning with Latent Embedding Optimization. ICLR 2019 (google-deepmind/leo
  ``data.py``: episodes from per-class embedding lists, L2-normalised features).
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta.data.episodes import eval_episode_keys
from jaxmeta.data.source import TaskSource, TaskSourceError, check_option
from jaxmeta.types import Episode, PRNGKey

__all__ = [
    "ExportedFeatures",
    "FeatureTasks",
    "FeaturesError",
    "index_classes",
    "sample_feature_episodes",
]


class FeaturesError(TaskSourceError):
    """Feature files that are absent, corrupt or inconsistent (one line, naming the file);
    ``option`` is the source option that points at them."""

    def __init__(self, message: str, option: str = "path"):
        super().__init__(option, message)


def index_classes(features: np.ndarray, labels: np.ndarray, *, normalize: bool) -> dict:
    """The device form of one split from ``features [n, d]`` and per-example ``labels [n]``.

    Classes are numbered by first appearance. ``normalize``: divide every feature vector by
    its L2 norm (the LEO data pipeline's ``tf.nn.l2_normalize``).
    """
    x = np.asarray(features, np.float32)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # class id by first appearance
    cls = order[inverse.ravel()]
    count = np.bincount(cls, minlength=len(first)).astype(np.int32)
    rows = np.argsort(cls, kind="stable")
    index = np.zeros((len(count), int(count.max())), np.int32)
    starts = np.concatenate([[0], np.cumsum(count)[:-1]])
    for c, (s, k) in enumerate(zip(starts, count, strict=True)):  # once per split, on the host
        index[c, :k] = rows[s : s + k]
    return {"x": x, "index": index, "count": count}


def _one_task(key, data, *, ways: int, shots: int, queries: int) -> Episode:
    index, count = data["index"], data["count"]
    n_cls, e_max = index.shape
    n = shots + queries
    u = jax.random.uniform(key, (n_cls + ways * e_max,))
    classes = jax.lax.top_k(u[:n_cls], ways)[1]  # [ways]
    slots = u[n_cls:].reshape(ways, e_max)
    valid = jnp.arange(e_max)[None, :] < count[classes][:, None]
    picks = jax.lax.top_k(jnp.where(valid, slots, -1.0), n)[1]  # [ways, n]
    x = data["x"][index[classes[:, None], picks]]  # [ways, n, d]
    labels = jnp.arange(ways, dtype=jnp.int32)
    d = x.shape[-1]
    return Episode(
        support_x=x[:, :shots].reshape(ways * shots, d),
        support_y=jnp.repeat(labels, shots),
        query_x=x[:, shots:].reshape(ways * queries, d),
        query_y=jnp.repeat(labels, queries),
    )


@functools.partial(jax.jit, static_argnames=("ways", "shots", "queries"))
def _sample_from_keys(keys, data, *, ways, shots, queries) -> Episode:
    task = functools.partial(_one_task, ways=ways, shots=shots, queries=queries)
    return jax.vmap(task, in_axes=(0, None))(keys, data)


def sample_feature_episodes(
    key: PRNGKey, data: dict, *, tasks: int, ways: int, shots: int, queries: int
) -> Episode:
    """A batch of tasks from one split (:func:`index_classes` form), jittable.

    Returns:
      ``Episode``: ``support_x`` float32 ``[tasks, ways*shots, d]``, ``support_y`` int32
      ``[tasks, ways*shots]``, ``query_x [tasks, ways*queries, d]``, ``query_y``; labels in
      ``[0, ways)``, class-major. Task ``t`` uses ``jax.random.split(key, tasks)[t]``.
    """
    return _sample_from_keys(
        jax.random.split(key, tasks), data, ways=ways, shots=shots, queries=queries
    )


class FeatureTasks(TaskSource):
    """Base of the feature-vector sources: a subclass gives ``load_split(split) -> (features
    [n, d], labels [n])`` (raising :class:`FeaturesError`) and ``input_shape``."""

    classification: ClassVar[bool] = True
    name: ClassVar[str] = "features"
    files_option: ClassVar[str] = "path"  # the option that says where the files are

    def __init__(self, *, ways: int, shots: int, queries: int, normalize: bool = True):
        self.ways = check_option("ways", ways, minimum=2)
        self.shots = check_option("shots", shots, minimum=1)
        self.queries = check_option("queries", queries, minimum=1)
        self.normalize = bool(normalize)
        self._cache: dict[str, dict] = {}

    def load_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def split_data(self, split: str) -> dict:
        """One split in the :func:`index_classes` form (read once)."""
        if split not in self.splits:
            raise ValueError(
                f"split {split!r} does not exist for {self.name} "
                f"(available: {', '.join(self.splits)})"
            )
        if split not in self._cache:
            features, labels = self.load_split(split)
            if features.ndim != 2 or features.shape[0] != labels.shape[0]:
                raise FeaturesError(
                    f"{self.name} {split}: features {features.shape} and labels "
                    f"{labels.shape} do not match ([n, d] and [n])",
                    self.files_option,
                )
            if features.shape[1:] != tuple(self.input_shape):
                raise FeaturesError(
                    f"{self.name} {split}: {features.shape[1:]} features, expected "
                    f"{tuple(self.input_shape)}",
                    self.files_option,
                )
            self._cache[split] = index_classes(features, labels, normalize=self.normalize)
        return self._cache[split]

    def check_loaded(self, split: str, *, ways: int, shots: int, queries: int) -> dict:
        data = self.split_data(split)
        n_cls, smallest = len(data["count"]), int(data["count"].min())
        if ways > n_cls:
            raise TaskSourceError("ways", f"{ways}-way exceeds the {n_cls} classes of {split}")
        if shots + queries > smallest:
            raise TaskSourceError(
                "queries",
                f"shots + queries = {shots + queries} exceeds the {smallest} examples of the "
                f"smallest {split} class",
            )
        return data

    def train_data(self) -> dict:
        data = self.check_loaded("train", ways=self.ways, shots=self.shots, queries=self.queries)
        return jax.device_put(data)

    def sample(self, key: PRNGKey, data: Any, *, tasks: int) -> Episode:
        return sample_feature_episodes(
            key, data, tasks=tasks, ways=self.ways, shots=self.shots, queries=self.queries
        )

    def fixed_episodes(
        self, split: str, *, episodes: int, seed: int, ways: int | None, shots: int, queries: int
    ) -> Episode:
        data = self.check_loaded(split, ways=ways, shots=shots, queries=queries)
        cpu = jax.devices("cpu")[0]
        ep = _sample_from_keys(
            jax.device_put(eval_episode_keys(seed, episodes), cpu),
            jax.device_put(data, cpu),
            ways=ways,
            shots=shots,
            queries=queries,
        )
        return Episode(*(np.asarray(a) for a in ep))

    def describe(self) -> dict[str, Any]:
        return {"normalize": self.normalize}

    def file(self, split: str) -> Path:
        """The file ``split`` is read from."""
        raise NotImplementedError

    @classmethod
    def prepare(cls, **options: Any) -> list[str]:
        """Read and check every split; list its classes, examples and file."""
        source = cls(**options)
        lines = [f"{'split':<8} {'classes':>8} {'examples':>9}  file"]
        for split in source.splits:
            data = source.split_data(split)
            lines.append(
                f"{split:<8} {len(data['count']):>8} {int(data['count'].sum()):>9}  "
                f"{source.file(split)}"
            )
        return lines


def read_npz_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(features, labels)`` of an ``export-features`` file, or a one-line FeaturesError."""
    if not path.is_file():
        raise FeaturesError(
            f"{path} not found; write it with `jaxmeta export-features WORKDIR {path.parent}`"
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            return np.asarray(f["features"]), np.asarray(f["labels"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as err:
        raise FeaturesError(
            f"{path} is not a features file (npz with 'features' [n, d] and 'labels' [n]): "
            f"{type(err).__name__}: {err}"
        ) from None


class ExportedFeatures(FeatureTasks):
    """Feature vectors of a trained jaxmeta run (``jaxmeta export-features WORKDIR OUT``).

    Args:
      path: the folder holding ``{train,val,test}_features.npz`` (``features`` float32
        ``[n, d]``, ``labels`` int ``[n]``).
      dim: ``d``, the feature width; 0 reads it from the train file's header. Giving it lets
        a config be checked (and a trained run be loaded) without the files.
      ways, shots, queries: the episode shape.
      normalize: L2-normalise every feature vector (as the LEO pipeline does).
    """

    name: ClassVar[str] = "features"
    resumable_options: ClassVar[tuple[str, ...]] = ("path",)

    def __init__(
        self,
        *,
        path: str = "",
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        normalize: bool = True,
        dim: int = 0,
    ):
        super().__init__(ways=ways, shots=shots, queries=queries, normalize=normalize)
        if not path:
            raise TaskSourceError("path", "give the folder written by `jaxmeta export-features`")
        self.path = Path(path).expanduser()
        dim = check_option("dim", dim, minimum=0)
        self._input_shape: tuple[int, ...] | None = (dim,) if dim else None

    @property
    def input_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        if self._input_shape is None:
            file = self.path / "train_features.npz"
            try:  # the header only: the feature width, without reading the data
                with np.load(file, allow_pickle=False) as f, f.zip.open("features.npy") as h:
                    fmt = np.lib.format
                    version = fmt.read_magic(h)
                    read = (
                        fmt.read_array_header_1_0
                        if version == (1, 0)
                        else fmt.read_array_header_2_0
                    )
                    shape = read(h)[0]
            except FileNotFoundError:
                raise FeaturesError(
                    f"{file} not found; write it with `jaxmeta export-features WORKDIR {self.path}`"
                ) from None
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
                raise FeaturesError(f"{file} is not a features file: {err}") from None
            self._input_shape = tuple(shape[1:])
        return self._input_shape

    def split_classes(self) -> dict[str, int]:
        out = {}
        for split in self.splits:
            labels = read_npz_split(self.file(split))[1]
            out[split] = len(np.unique(labels))
        return out

    def load_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return read_npz_split(self.file(split))

    def file(self, split: str) -> Path:
        return self.path / f"{split}_features.npz"

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "normalize": self.normalize}
