"""CIFAR-FS and FC100 from a synthetic ``cifar-100-python.tar.gz`` in the official format
(Python 2 pickles ``train``/``test``/``meta``, all 100 class names, a few images per class):
the embedded class lists, the verified archive, the offline failure and corrupt archives."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from _dataset_files import FINE, HTML, assert_classes, write_cifar100
from PIL import Image

from jaxmeta.data.archives import CorruptFileError, FilesMissingError
from jaxmeta.data.cifar_fs import (
    CIFAR_FS_CLASSES,
    FC100_CLASSES,
    FC100_SUPERCLASSES,
    prepare_cifar_fs,
    prepare_fc100,
)
from jaxmeta.data.prepared import SplitSpec

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar")
    return folder, write_cifar100(folder / "cifar-100-python.tar.gz")


def test_embedded_class_lists():
    for lists, sizes in ((CIFAR_FS_CLASSES, (64, 16, 20)), (FC100_CLASSES, (60, 20, 20))):
        assert tuple(len(lists[s]) for s in SPLITS) == sizes
        assert sorted(c for s in SPLITS for c in lists[s]) == FINE  # a partition of the 100
    assert tuple(len(FC100_SUPERCLASSES[s]) for s in SPLITS) == (12, 4, 4)
    assert FC100_SUPERCLASSES["test"] == ("aquatic_mammals", "insects", "medium_mammals", "people")
    assert CIFAR_FS_CLASSES["val"][:3] == ("beaver", "beetle", "butterfly")


def test_cifar_fs_and_fc100_from_the_archive(cifar_dir, caplog):
    folder, ref = cifar_dir
    small = {s: SplitSpec(n, 3, 3 * n) for s, n in zip(SPLITS, (64, 16, 20), strict=True)}
    with caplog.at_level(logging.WARNING):
        p = prepare_cifar_fs(folder, download=False, expected=small)
    assert "not the published eb9058c3" in caplog.text  # our archive is not the official bytes
    assert p.image_shape == (32, 32, 3) and p.split_counts()["train"] == {
        "classes": 64,
        "images": 192,
    }
    for split in SPLITS:
        assert p.splits[split].class_names == CIFAR_FS_CLASSES[split]
        assert_classes(p.splits[split], ref)
    fc = prepare_fc100(folder, download=False, splits=("test",), expected=None)
    test = fc.splits["test"]
    assert test.class_names == FC100_CLASSES["test"] and set(test.class_groups) == set(
        FC100_SUPERCLASSES["test"]
    )
    assert_classes(test, ref)
    # The published sizes are the default check.
    with pytest.raises(CorruptFileError, match="without exactly 600 images"):
        prepare_cifar_fs(folder, download=False)
    with pytest.raises(CorruptFileError, match="without exactly 600 images"):
        prepare_fc100(folder, download=False)
    resized = prepare_fc100(folder, download=False, splits=("val",), image_size=16, expected=None)
    want = np.asarray(
        Image.fromarray(ref[FC100_CLASSES["val"][0]][0]).resize((16, 16), Image.LANCZOS)
    )
    np.testing.assert_array_equal(resized.splits["val"].images[0], want)


def test_cifar_unpacked_folder(cifar_dir, tmp_path):
    import tarfile

    folder, ref = cifar_dir
    with tarfile.open(folder / "cifar-100-python.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    p = prepare_cifar_fs(tmp_path, download=False, splits=("val",), expected=None)
    assert_classes(p.splits["val"], ref)
    assert [f.path.rsplit("/", 1)[1] for f in p.files] == ["train", "test", "meta"]


def test_cifar_missing_offline_corrupt(tmp_path, cifar_dir):
    with pytest.raises(FilesMissingError) as err:
        prepare_cifar_fs(tmp_path, download=False)
    msg = str(err.value)
    assert "cifar-100-python.tar.gz" in msg and str(tmp_path) in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in msg
    # Offline: a closed local port refuses at once (an unroutable host would take `timeout`).
    with pytest.raises(FilesMissingError, match="offline: no connection to 127.0.0.1"):
        prepare_fc100(tmp_path, url=f"http://127.0.0.1:{_closed_port()}/c.tar.gz", timeout=2.0)
    assert not list(tmp_path.iterdir())  # nothing half-written
    archive = tmp_path / "cifar-100-python.tar.gz"
    archive.write_bytes(HTML)
    with pytest.raises(CorruptFileError, match=r"tar\.gz is an HTML page"):
        prepare_cifar_fs(tmp_path, download=False)
    good = (cifar_dir[0] / "cifar-100-python.tar.gz").read_bytes()
    archive.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptFileError, match="not a readable, complete .tar.gz"):
        prepare_cifar_fs(tmp_path, download=False)
    write_cifar100(archive, meta={"fine_label_names": FINE[:99], "coarse_label_names": []})
    with pytest.raises(CorruptFileError, match="99 classes that are not CIFAR-100's"):
        prepare_cifar_fs(tmp_path, download=False)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


def test_bad_arguments_are_value_errors(cifar_dir):
    folder, _ = cifar_dir
    with pytest.raises(ValueError, match="image_size must be >= 1"):
        prepare_cifar_fs(folder, image_size=0, download=False)
    with pytest.raises(ValueError, match="splits must be a non-empty subset"):
        prepare_fc100(folder, splits=("train", "validation"), download=False)
