"""The LEO paper's precomputed embeddings as a task source (``data.name: leo_embeddings``).

Layout (``embeddings.zip`` of google-deepmind/leo, unpacked into ``manual_dir``)::

    {manual_dir}/{miniImageNet,tieredImageNet}/{center,multiview}/{train,val,test}_embeddings.pkl

(``manual_dir`` may also be the folder above ``embeddings/``). Each pickle is a dict with
``"embeddings"`` (float ``[n, 640]``, WRN-28-10 features), ``"keys"`` (``[n]`` strings
``"<id>-<class>-<class>_<image>"``) and ``"labels"``; as in the reference ``data.py``, the
class of an example is the middle field of its key. tieredImageNet has only ``center``
crops. Nothing is downloaded: the files are read from ``manual_dir``; absent, truncated or
non-pickle files (an HTML error page saved by a failed download) fail at once with one line.

The pickles are read with an unpickler that only builds NumPy arrays, lists, dicts and
strings, so a file that is not what it claims cannot run code.

References:
  Rusu et al. Meta-Learning with Latent Embedding Optimization. ICLR 2019;
  google-deepmind/leo ``data.py`` (``DataProvider``), README (download link).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from jaxmeta.data.features import FeaturesError, FeatureTasks
from jaxmeta.data.source import TaskSourceError

__all__ = ["LEOEmbeddings", "read_leo_pickle"]

# The leo README links it over plain http; the same bucket serves https. No checksum is
# published and jaxmeta never downloads it (you do, and unzip it): the pickles are read with
# the restricted unpickler (no code runs) and their shapes and counts are checked.
URL = "https://storage.googleapis.com/leo-embeddings/embeddings.zip"
DATASETS = ("miniImageNet", "tieredImageNet")
CROPS = ("center", "multiview")
FEATURES = 640
# Published split sizes (classes), known without reading the files.
CLASSES = {
    "miniImageNet": {"train": 64, "val": 16, "test": 20},
    "tieredImageNet": {"train": 351, "val": 97, "test": 160},
}
MINI_EXAMPLES = 600  # images per miniImageNet class

_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core."):  # NumPy 2 moved numpy.core to numpy._core
            module = "numpy._core." + module.split(".", 2)[2]
        return super().find_class(module, name)


def _text(k: Any) -> str:
    return k.decode("latin1") if isinstance(k, bytes) else str(k)


def read_leo_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings float32 [n, d], class names [n])`` of one LEO pickle.

    Raises:
      FeaturesError: absent, not a pickle (e.g. an HTML page), missing keys, bad shapes, or
        keys not of the ``<id>-<class>-<class>_<image>`` form (one line, naming the file).
    """

    def bad(why: str) -> FeaturesError:
        return FeaturesError(f"{path}: {why}; re-download {URL} and unzip it", "manual_dir")

    if not path.is_file():
        raise FeaturesError(
            f"{path} not found: download {URL}, unzip it and set data.manual_dir to the "
            "folder holding miniImageNet/ and tieredImageNet/",
            "manual_dir",
        )
    with open(path, "rb") as f:
        head = f.read(64)
        if head.lstrip().startswith(b"<"):
            raise bad("an HTML/XML page, not a pickle (a failed download?)")
        f.seek(0)
        try:
            raw = _ArraysOnly(f, encoding="latin1").load()
        except Exception as err:  # any unpickling failure: a corrupt or foreign file
            raise bad(f"not a LEO embeddings pickle ({type(err).__name__}: {err})") from None
    if not isinstance(raw, dict) or not {"embeddings", "keys"} <= set(raw):
        keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise bad(f"expected a dict with 'embeddings' and 'keys', got {keys}")
    emb, keys = np.asarray(raw["embeddings"]), np.asarray(raw["keys"])
    if emb.ndim != 2 or keys.ndim != 1 or emb.shape[0] != keys.shape[0]:
        raise bad(f"embeddings {emb.shape} and keys {keys.shape} do not match ([n, d], [n])")
    if not np.issubdtype(emb.dtype, np.floating):
        raise bad(f"embeddings of dtype {emb.dtype}, expected floats")
    classes = []
    for k in keys:  # once per split, on the host (as the reference's index)
        parts = _text(k).split("-")
        if len(parts) != 3 or parts[2].split("_")[0] != parts[1]:
            raise bad(f"key {_text(k)!r} is not '<id>-<class>-<class>_<image>'")
        classes.append(parts[1])
    return emb.astype(np.float32), np.asarray(classes)


class LEOEmbeddings(FeatureTasks):
    """Few-shot tasks over the LEO paper's 640-d WRN-28-10 embeddings.

    Args:
      manual_dir: folder holding ``miniImageNet/`` and ``tieredImageNet/`` (or ``embeddings/``).
      dataset: ``miniImageNet`` or ``tieredImageNet``.
      crop: ``center`` or ``multiview`` (miniImageNet only).
      ways, shots, queries: the episode shape (the paper: 5-way, 1 or 5 shots, 15 queries).
      normalize: L2-normalise the embeddings (the reference pipeline does).

    Raises:
      TaskSourceError: an unknown dataset or crop, naming the option.
    """

    name: ClassVar[str] = "leo_embeddings"
    files_option: ClassVar[str] = "manual_dir"
    resumable_options: ClassVar[tuple[str, ...]] = ("manual_dir",)
    input_shape = (FEATURES,)

    def __init__(
        self,
        *,
        manual_dir: str = "",
        dataset: str = "miniImageNet",
        crop: str = "center",
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        normalize: bool = True,
    ):
        super().__init__(ways=ways, shots=shots, queries=queries, normalize=normalize)
        if dataset not in DATASETS:
            raise TaskSourceError("dataset", f"must be one of {DATASETS}, got {dataset!r}")
        if crop not in CROPS:
            raise TaskSourceError("crop", f"must be one of {CROPS}, got {crop!r}")
        if dataset == "tieredImageNet" and crop != "center":
            raise TaskSourceError("crop", "tieredImageNet embeddings exist only for 'center'")
        self.manual_dir = Path(manual_dir).expanduser() if manual_dir else None
        self.dataset, self.crop = dataset, crop
        self.check_episodes("train", ways=self.ways, shots=self.shots, queries=self.queries)

    def split_classes(self) -> dict[str, int]:
        return dict(CLASSES[self.dataset])

    def check_episodes(self, split: str, *, ways: int | None, shots: int, queries: int) -> None:
        n = CLASSES[self.dataset][split]
        if ways is None or ways > n:
            raise TaskSourceError("ways", f"{ways}-way: the {self.dataset} {split} split has {n}")
        if self.dataset == "miniImageNet" and shots + queries > MINI_EXAMPLES:
            raise TaskSourceError(
                "queries", f"shots + queries = {shots + queries} > {MINI_EXAMPLES} images"
            )

    def file(self, split: str) -> Path:
        if self.manual_dir is None:
            raise FeaturesError(
                f"data.manual_dir is not set: download {URL}, unzip it and set it to the "
                "folder holding miniImageNet/ and tieredImageNet/",
                "manual_dir",
            )
        root = self.manual_dir
        if not (root / self.dataset).is_dir() and (root / "embeddings" / self.dataset).is_dir():
            root = root / "embeddings"
        return root / self.dataset / self.crop / f"{split}_embeddings.pkl"

    def load_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return read_leo_pickle(self.file(split))

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "crop": self.crop, "normalize": self.normalize}
