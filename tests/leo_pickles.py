"""Synthetic files in the exact layout and format of the LEO paper's embeddings.

``embeddings/{dataset}/{crop}/{split}_embeddings.pkl``: a pickled dict (protocol 2, as the
Python 2 originals) with ``embeddings`` float32 ``[n, 640]``, ``keys`` ``[n]`` strings
``"<id>-<class>-<class>_<image>.JPEG"`` (google-deepmind/leo ``data.py`` takes the class
from the middle field and checks it against the image name) and ``labels`` ``[n]``. Each
class is a random direction plus noise, so a short run can learn it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def write_leo_embeddings(
    tmp_path: Path,
    *,
    classes: dict[str, int],
    per_class: int | dict[str, list[int]],
    dataset: str = "miniImageNet",
    crop: str = "center",
    dim: int = 640,
    noise: float = 0.6,
    seed: int = 0,
    informative: int | None = None,
) -> Path:
    """Write one synthetic split per entry of ``classes``; returns the ``embeddings`` folder.

    ``per_class``: examples of every class, or per split a list of each class's count
    (classes of different sizes, as tieredImageNet's). The train split's keys are bytes (a
    NumPy ``S`` array, as Python 2 strings load), the others ``str``. ``informative``: the
    classes differ only in that many leading dimensions (centres of scale 3, noise 0.3), the
    others are noise of scale ``noise``: something to meta-learn (where to look).
    """
    rng = np.random.default_rng(seed)
    root = tmp_path / "embeddings"
    folder = root / dataset / crop
    folder.mkdir(parents=True, exist_ok=True)
    for s, (split, n_cls) in enumerate(classes.items()):
        counts = per_class[split] if isinstance(per_class, dict) else [per_class] * n_cls
        emb, keys, labels = [], [], []
        for c, count in enumerate(counts):
            name = f"n{s:02d}{c:06d}"
            if informative is None:
                center, scale = rng.normal(size=dim), np.full(dim, noise)
            else:
                center = np.zeros(dim)
                center[:informative] = 3.0 * rng.normal(size=informative)
                scale = np.where(np.arange(dim) < informative, 0.3, noise)
            emb.append(center + scale * rng.normal(size=(count, dim)))
            keys += [f"{len(keys) + j}-{name}-{name}_{j:08d}.JPEG" for j in range(count)]
            labels += [c] * count
        order = rng.permutation(len(keys))  # examples of a class are not contiguous
        raw = {
            "embeddings": np.concatenate(emb).astype(np.float32)[order],
            "keys": np.asarray(keys, dtype="S" if split == "train" else "U")[order],
            "labels": np.asarray(labels, np.int64)[order],
        }
        with open(folder / f"{split}_embeddings.pkl", "wb") as f:
            pickle.dump(raw, f, protocol=2)
    return root
