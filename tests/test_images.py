"""``preprocess`` (decoded files -> the cache's uint8 form) and reading image folders."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from jaxmeta.data import omniglot as om_mod
from jaxmeta.data.images import (
    ImageFolderError,
    preprocess,
    read_image,
    read_query,
    read_support_folder,
    resize_ink,
)


def test_png_through_preprocess_equals_the_cache(omniglot, omniglot_zip_dir):
    # The genuine PNGs, decoded with PIL as a user would, give the cached bytes exactly.
    with zipfile.ZipFile(omniglot_zip_dir / "images_evaluation.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))[::331]  # 40 images
        files = [(n, zf.read(n)) for n in names]
    index = {name: i for i, name in enumerate(omniglot.characters)}
    decoded, want = [], []
    for name, png in files:
        _, alphabet, character, fname = name.split("/")
        decoded.append(read_image(io.BytesIO(png)))
        drawer = int(fname[5:7]) - 1
        want.append(omniglot.images[index[f"{alphabet}/{character}"], drawer])
    assert decoded[0].dtype == bool and decoded[0].shape == (105, 105)
    got = preprocess(decoded)
    assert got.dtype == np.uint8 and got.shape == (len(files), 28, 28)
    np.testing.assert_array_equal(got, np.stack(want))
    # The same as uint8 greyscale (0/255, as OpenCV decodes) and as floats in [0, 1].
    grey = np.stack(decoded).astype(np.uint8) * np.uint8(255)
    np.testing.assert_array_equal(preprocess(grey), got)
    np.testing.assert_array_equal(preprocess(grey[..., None] / 255.0), got)
    np.testing.assert_array_equal(om_mod.preprocess(decoded[0])[0], want[0])


@pytest.mark.parametrize(
    "shape", [(50, 37), (37, 50), (20, 20), (64, 64), (105, 105), (200, 200), (28, 28)]
)
def test_resize_of_grey_levels_is_bit_exact_with_pil(shape):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=shape, dtype=np.uint8)
    ref = np.asarray(Image.fromarray(255 - grey).resize((28, 28), Image.LANCZOS))
    np.testing.assert_array_equal(preprocess(grey)[0], ref)
    mask = rng.random(shape) < 0.2
    ref = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((28, 28), Image.LANCZOS))
    np.testing.assert_array_equal(resize_ink(mask[None], 28)[0], ref)


def test_preprocess_rejects_bad_input():
    with pytest.raises(ValueError, match="greyscale"):
        preprocess([np.zeros((28, 28, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\]"):
        preprocess(np.full((28, 28), 2.0))
    with pytest.raises(ValueError, match="unsupported dtype int64"):
        preprocess(np.zeros((28, 28), np.int64))
    with pytest.raises(ValueError, match="expected"):
        preprocess(np.zeros((2, 3, 28, 28)))


def _save(path, ink: bool, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full((40, 40), 255, np.uint8)
    if ink:
        a[10:30, 18:22] = 0
    Image.fromarray(a).convert(mode).save(path)


def test_read_support_and_query_folders(tmp_path):
    _save(tmp_path / "s" / "b" / "1.png", True)
    _save(tmp_path / "s" / "a" / "2.png", False, "RGB")
    _save(tmp_path / "s" / "a" / "1.jpg", True)
    (tmp_path / "s" / "a" / "notes.txt").write_text("not an image")
    names, images, labels = read_support_folder(tmp_path / "s")
    assert names == ["a", "b"] and labels.tolist() == [0, 0, 1]
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8
    assert images[1].max() == 0 and images[2].max() == 255  # a/2.png is blank paper
    files, q = read_query([tmp_path / "s" / "b", tmp_path / "s" / "a" / "2.png"])
    assert [f.name for f in files] == ["1.png", "2.png"] and q.shape == (2, 28, 28)
    # Transparent pixels are paper, not ink.
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[10:30, 18:22] = (0, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    t = read_image(tmp_path / "t.png")
    assert t[0, 0] == 255 and t[20, 20] == 0


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(ImageFolderError, match="does not exist"):
        read_support_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageFolderError, match="no class subfolders"):
        read_support_folder(tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(ImageFolderError, match="cls has no images"):
        read_support_folder(tmp_path / "empty")
    with pytest.raises(ImageFolderError, match="no query images"):
        read_query([tmp_path / "empty"])
    with pytest.raises(ImageFolderError, match="does not exist"):
        read_query([tmp_path / "missing.png"])
    (tmp_path / "bad.png").write_text("not a png")
    with pytest.raises(ImageFolderError, match="not a readable image"):
        read_query([tmp_path / "bad.png"])
