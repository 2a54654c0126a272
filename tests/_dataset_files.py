"""Small synthetic dataset files in the exact published formats, for the reader tests.

None of the real files can be downloaded here, so each writer builds the same structures
(pickle layout, dict keys, member names, CSV header, PNG encoding) with a few classes of
random images. ``Py2Pickler`` writes pickles the way Python 2's cPickle did (strings as
byte strings, NumPy under ``numpy.core``), which is how the CIFAR-100 archive and Ren et
al.'s tieredImageNet labels were written.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from jaxmeta.data.cifar_fs import CIFAR100_SUPERCLASSES


class Py2Pickler(pickle._Pickler):
    """Protocol 2 with Python 2 ``str`` opcodes for both str and bytes."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # NumPy 1 (what Python 2 had) lived under numpy.core; GLOBAL opcodes are text lines.
    return buf.getvalue().replace(b"cnumpy._core.", b"cnumpy.core.")


HTML = b"<!DOCTYPE html>\n<html><head><title>Google Drive - Virus scan warning</title>"


def assert_classes(split, reference):
    """Class c of ``split`` holds exactly ``reference[class_names[c]]``, in order."""
    for c, name in enumerate(split.class_names):
        np.testing.assert_array_equal(split.class_images(c), np.stack(reference[name]))


def random_images(rng, n, h=84, w=84, c=3) -> np.ndarray:
    return rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# CIFAR-100 python archive.

FINE = sorted(c for _, cs in CIFAR100_SUPERCLASSES for c in cs)
COARSE = [s for s, _ in CIFAR100_SUPERCLASSES]
SUPER = {c: COARSE.index(s) for s, cs in CIFAR100_SUPERCLASSES for c in cs}


def write_cifar100(path: Path, *, train_per_class=2, test_per_class=1, seed=0, meta=None):
    """``cifar-100-python.tar.gz`` with all 100 classes; returns ``{class: [images]}`` in
    the order the reader stores them (train images, then test images)."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[np.ndarray]] = {c: [] for c in FINE}
    members = {}
    for member, k in (("train", train_per_class), ("test", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(100), k))
        imgs = random_images(rng, len(labels), 32, 32, 3)
        for lab, im in zip(labels, imgs, strict=True):
            by_class[FINE[lab]].append(im)
        members[member] = py2_pickle(
            {
                "filenames": [f"img_{i}.png" for i in range(len(labels))],
                "batch_label": f"{member} batch 1 of 1",
                "fine_labels": [int(x) for x in labels],
                "coarse_labels": [SUPER[FINE[x]] for x in labels],
                "data": np.ascontiguousarray(imgs.transpose(0, 3, 1, 2)).reshape(len(labels), -1),
            }
        )
    members["meta"] = py2_pickle(meta or {"fine_label_names": FINE, "coarse_label_names": COARSE})
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return by_class


# --------------------------------------------------------------------------------------------
# tieredImageNet (Ren et al.) pickles.


def write_tiered(folder: Path, split: str, *, counts, groups, seed=0, npz=False, prefix=""):
    """``{split}_images_png.pkl`` (or ``_images.npz``, BGR) and ``{split}_labels.pkl``.

    Images are written in a shuffled order; returns ``{class index: [RGB images]}``.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    general = np.asarray(groups)[labels]
    images = random_images(rng, len(labels))
    if npz:
        np.savez(folder / f"{prefix}{split}_images.npz", images=images[..., ::-1])
    else:
        # cv2.imencode returns a uint8 array [n_bytes, 1]; learn2learn wraps it in BytesIO.
        items = [np.frombuffer(png_bytes(im), np.uint8).reshape(-1, 1) for im in images]
        (folder / f"{prefix}{split}_images_png.pkl").write_bytes(pickle.dumps(items, protocol=4))
    n_groups = max(groups) + 1
    (folder / f"{prefix}{split}_labels.pkl").write_bytes(
        py2_pickle(
            {
                "label_specific": labels.astype(np.int32),
                "label_general": general.astype(np.int32),
                "label_specific_str": [f"n0{i:07d}" for i in range(len(counts))],
                "label_general_str": [f"n1{i:07d}" for i in range(n_groups)],
            }
        )
    )
    return {c: [images[i] for i in np.flatnonzero(labels == c)] for c in range(len(counts))}


# --------------------------------------------------------------------------------------------
# miniImageNet: learn2learn pickles, or Ravi's CSVs + JPEGs.


def write_mini_pickle(path: Path, wnids, *, per_class, seed=0):
    """learn2learn's ``mini-imagenet-cache-*.pkl``; images in shuffled order. Returns
    ``{wnid: [images]}`` in class_dict order."""
    rng = np.random.default_rng(seed)
    n = len(wnids) * per_class
    images = random_images(rng, n)
    perm = rng.permutation(n)
    class_dict = {
        w: [int(i) for i in perm[k * per_class : (k + 1) * per_class]] for k, w in enumerate(wnids)
    }
    path.write_bytes(pickle.dumps({"image_data": images, "class_dict": class_dict}, protocol=4))
    return {w: [images[i] for i in idx] for w, idx in class_dict.items()}


def write_mini_csv(folder: Path, split: str, wnids, *, per_class, seed=0, size=(100, 90)):
    """``{split}.csv`` and its JPEGs (of another size than 84x84) in ``images/``."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(exist_ok=True)
    lines = ["filename,label"]
    for w in wnids:
        for k in range(per_class):
            name = f"{w}{k + 1:08d}.jpg"
            lines.append(f"{name},{w}")
            Image.fromarray(random_images(rng, 1, size[1], size[0])[0]).save(
                folder / "images" / name, quality=90
            )
    (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
