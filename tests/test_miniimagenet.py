"""miniImageNet from small synthetic files in both published layouts: learn2learn's
``mini-imagenet-cache-*.pkl`` and Ravi & Larochelle's CSVs + JPEGs (tests/_dataset_files.py).
The reader must reproduce the written images in class order and reject missing, HTML,
truncated, foreign-split and malformed files with a message naming them."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from _dataset_files import HTML, assert_classes, write_mini_csv, write_mini_pickle
from PIL import Image

from jaxmeta.data.archives import CorruptFileError, FilesMissingError
from jaxmeta.data.miniimagenet import RAVI_WNIDS, prepare_miniimagenet
from jaxmeta.data.prepared import SplitSpec

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def mini_pickles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mini_pkl")
    ref = {}
    for split in SPLITS:
        name = "validation" if split == "val" else split  # learn2learn's Zenodo name
        ref[split] = write_mini_pickle(
            folder / f"mini-imagenet-cache-{name}.pkl", RAVI_WNIDS[split][-3:], per_class=4
        )
    return folder, ref


SMALL_MINI = {s: SplitSpec(3, 4, 12) for s in SPLITS}


def test_miniimagenet_pickles(mini_pickles):
    folder, ref = mini_pickles
    p = prepare_miniimagenet(folder, expected=SMALL_MINI)
    assert p.name == "miniimagenet" and p.image_shape == (84, 84, 3)
    assert p.split_counts() == {s: {"classes": 3, "images": 12} for s in SPLITS}
    for split in SPLITS:
        data = p.splits[split]
        assert data.class_names == tuple(sorted(RAVI_WNIDS[split][-3:]))
        assert data.images.dtype == np.uint8 and data.offsets.tolist() == [0, 4, 8, 12]
        assert_classes(data, ref[split])
    assert len(p.files) == 3 and all(len(f.sha256) == 64 for f in p.files)
    assert p.nbytes == 36 * 84 * 84 * 3
    # The published sizes are checked by default: 3 classes of 4 images are not 64 x 600.
    with pytest.raises(CorruptFileError, match=r"cache-train\.pkl: 3 classes, expected 64"):
        prepare_miniimagenet(folder)


def test_miniimagenet_pickles_resized(mini_pickles):
    folder, ref = mini_pickles
    p = prepare_miniimagenet(folder, splits=("val",), image_size=21, expected=SMALL_MINI)
    assert set(p.splits) == {"val"} and p.image_shape == (21, 21, 3)
    wnid = p.splits["val"].class_names[0]
    want = np.asarray(Image.fromarray(ref["val"][wnid][1]).resize((21, 21), Image.LANCZOS))
    np.testing.assert_array_equal(p.splits["val"].class_images(0)[1], want)


def test_miniimagenet_csv_and_jpegs(tmp_path):
    for split in SPLITS:
        write_mini_csv(tmp_path, split, RAVI_WNIDS[split][:2], per_class=3)
    p = prepare_miniimagenet(tmp_path, expected={s: SplitSpec(2, 3) for s in SPLITS})
    assert "LANCZOS" in p.preprocessing
    data = p.splits["test"]
    assert data.class_names == RAVI_WNIDS["test"][:2] and data.images.shape == (6, 84, 84, 3)
    for c, wnid in enumerate(data.class_names):
        for k in range(3):
            with Image.open(tmp_path / "images" / f"{wnid}{k + 1:08d}.jpg") as im:
                want = np.asarray(im.convert("RGB").resize((84, 84), Image.LANCZOS))
            np.testing.assert_array_equal(data.class_images(c)[k], want)
    assert p.files[-1].path.endswith("(18 images)")
    # Both layouts present: the pickles win; source= picks one.
    write_mini_pickle(
        tmp_path / "mini-imagenet-cache-test.pkl", RAVI_WNIDS["test"][:2], per_class=3
    )
    assert prepare_miniimagenet(tmp_path, splits=("test",), expected=None).preprocessing.startswith(
        "learn2learn"
    )
    assert (
        "LANCZOS"
        in prepare_miniimagenet(
            tmp_path, splits=("test",), source="csv", expected=None
        ).preprocessing
    )


def test_miniimagenet_missing_files_are_listed_at_once(tmp_path):
    with pytest.raises(FilesMissingError) as err:
        prepare_miniimagenet(tmp_path)
    msg = str(err.value)
    for name in (
        "mini-imagenet-cache-train.pkl",
        "mini-imagenet-cache-val.pkl",
        "mini-imagenet-cache-test.pkl",
        "train.csv",
        "val.csv",
        "test.csv",
        "images/",
        str(tmp_path),
        "zenodo.org",
        "twitter/meta-learning-lstm",
    ):
        assert name in msg
    # CSVs there, JPEGs not: every missing JPEG counted, before anything is decoded.
    write_mini_csv(tmp_path, "val", RAVI_WNIDS["val"][:2], per_class=2)
    os.remove(tmp_path / "images" / f"{RAVI_WNIDS['val'][1]}00000002.jpg")
    with pytest.raises(FilesMissingError, match=r"1 of the 4 JPEGs.*00000002\.jpg"):
        prepare_miniimagenet(tmp_path, splits=("val",), expected=None)


def test_miniimagenet_rejects_html_truncated_foreign_and_bad_files(tmp_path, mini_pickles):
    folder, _ = mini_pickles
    good = (folder / "mini-imagenet-cache-train.pkl").read_bytes()
    path = tmp_path / "mini-imagenet-cache-train.pkl"
    path.write_bytes(HTML)
    with pytest.raises(CorruptFileError, match=r"mini-imagenet-cache-train\.pkl is an HTML page"):
        prepare_miniimagenet(tmp_path, splits=("train",), expected=None)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptFileError, match=r"mini-imagenet-cache-train\.pkl is truncated"):
        prepare_miniimagenet(tmp_path, splits=("train",), expected=None)
    # The validation file saved under the train name.
    write_mini_pickle(path, RAVI_WNIDS["val"][:2], per_class=2)
    with pytest.raises(CorruptFileError, match="is a val class: is this the val file"):
        prepare_miniimagenet(tmp_path, splits=("train",), expected=None)
    # Wrong image shape; an image in no class.
    for data, match in (
        ({"image_data": np.zeros((2, 32, 32, 3), np.uint8), "class_dict": {}}, "shape"),
        (
            {
                "image_data": np.zeros((3, 84, 84, 3), np.uint8),
                "class_dict": {RAVI_WNIDS["train"][0]: [0, 1]},
            },
            "exactly one class",
        ),
        ({"images": 1}, "expected a dict with 'image_data'"),
    ):
        path.write_bytes(pickle.dumps(data))
        with pytest.raises(CorruptFileError, match=match):
            prepare_miniimagenet(tmp_path, splits=("train",), expected=None)
    # A JPEG that is not one: named.
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    write_mini_csv(csv_dir, "test", RAVI_WNIDS["test"][:2], per_class=2)
    bad = csv_dir / "images" / f"{RAVI_WNIDS['test'][0]}00000002.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(CorruptFileError, match=f"{bad.name}: not a readable image"):
        prepare_miniimagenet(csv_dir, splits=("test",), expected=None)
    # A CSV row of another split.
    (csv_dir / "test.csv").write_text(f"filename,label\nx.jpg,{RAVI_WNIDS['train'][0]}\n")
    with pytest.raises(CorruptFileError, match=r"test\.csv: class .* is a train class"):
        prepare_miniimagenet(csv_dir, splits=("test",), expected=None)
