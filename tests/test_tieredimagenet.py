"""tieredImageNet from small synthetic files in Ren et al.'s published formats (PNG pickle or
the BGR ``.npz``, plus the labels pickle written as Python 2 would): unequal class sizes,
superclasses, and the rejection of missing, HTML, truncated and inconsistent files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from _dataset_files import HTML, write_tiered

from jaxmeta.data.archives import CorruptFileError, FilesMissingError
from jaxmeta.data.prepared import SplitSpec
from jaxmeta.data.tieredimagenet import prepare_tieredimagenet


@pytest.mark.parametrize("npz", [False, True], ids=["png_pkl", "bgr_npz"])
def test_tieredimagenet_unequal_classes(tmp_path, npz):
    counts, groups = [3, 5, 2, 4], [0, 0, 1, 1]
    ref = write_tiered(tmp_path, "train", counts=counts, groups=groups, npz=npz)
    write_tiered(
        tmp_path, "test", counts=[2, 3], groups=[0, 0], seed=1, npz=npz, prefix="tiered-imagenet-"
    )
    spec = {"train": SplitSpec(4, images=14, groups=2), "test": SplitSpec(2, images=5, groups=1)}
    p = prepare_tieredimagenet(tmp_path, splits=("train", "test"), expected=spec)
    data = p.splits["train"]
    assert data.counts.tolist() == counts and data.offsets.tolist() == [0, 3, 8, 10, 14]
    assert data.class_names == tuple(f"n0{i:07d}" for i in range(4))
    assert data.class_groups == ("n10000000", "n10000000", "n10000001", "n10000001")
    for c in range(4):  # RGB, in file order within each class (the .npz is flipped from BGR)
        np.testing.assert_array_equal(data.class_images(c), np.stack(ref[c]))
    assert p.splits["test"].counts.tolist() == [2, 3]
    with pytest.raises(CorruptFileError, match="4 classes, expected 351.*448695"):
        prepare_tieredimagenet(tmp_path, splits=("train",))


def test_tieredimagenet_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FilesMissingError) as err:
        prepare_tieredimagenet(tmp_path)
    for name in ("train_images_png.pkl", "val_labels.pkl", "test_images.npz", "zenodo.org"):
        assert name in str(err.value)
    write_tiered(tmp_path, "val", counts=[2, 2], groups=[0, 1])
    images = tmp_path / "val_images_png.pkl"
    good = images.read_bytes()
    images.write_bytes(HTML)
    with pytest.raises(CorruptFileError, match="val_images_png.pkl is an HTML page"):
        prepare_tieredimagenet(tmp_path, splits=("val",), expected=None)
    images.write_bytes(good[:-100])
    with pytest.raises(CorruptFileError, match="val_images_png.pkl is truncated"):
        prepare_tieredimagenet(tmp_path, splits=("val",), expected=None)
    items = pickle.loads(good)
    items[2] = np.frombuffer(b"GIF89a not a png", np.uint8)
    images.write_bytes(pickle.dumps(items))
    with pytest.raises(CorruptFileError, match=r"val_images_png.pkl\[2\]: not a PNG"):
        prepare_tieredimagenet(tmp_path, splits=("val",), expected=None)
    images.write_bytes(pickle.dumps(items[:3]))
    with pytest.raises(CorruptFileError, match="3 images, but its labels file has 4"):
        prepare_tieredimagenet(tmp_path, splits=("val",), expected=None)
    # A class spread over two superclasses.
    images.write_bytes(good)
    labels = pickle.loads((tmp_path / "val_labels.pkl").read_bytes(), encoding="latin1")
    labels["label_general"] = np.array([0, 1, 0, 1])
    labels["label_specific"] = np.array([0, 0, 1, 1])
    (tmp_path / "val_labels.pkl").write_bytes(pickle.dumps(labels))
    with pytest.raises(CorruptFileError, match="several superclasses"):
        prepare_tieredimagenet(tmp_path, splits=("val",), expected=None)
