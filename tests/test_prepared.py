"""The pieces the dataset readers share: the prepared form and its .npz cache, HTML and
pickle checks, the checked download, and the RGB image helpers."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import logging
import os
import pickle
import threading

import numpy as np
import pytest
from PIL import Image

from jaxmeta.data.archives import (
    CorruptFileError,
    DownloadError,
    check_not_html,
    download,
    load_pickle,
)
from jaxmeta.data.images import ImageFolderError, load_image, load_images, resize_images
from jaxmeta.data.prepared import Prepared, Split, group_by_class, load_cache, save_cache


def _prepared(seed=0) -> Prepared:
    rng = np.random.default_rng(seed)
    splits = {
        "train": Split(
            images=rng.integers(0, 256, (9, 6, 6, 3), dtype=np.uint8),
            offsets=np.array([0, 2, 7, 9]),
            class_names=("a", "b", "c"),
            class_groups=("x", "x", "y"),
        ),
        "test": Split(
            images=rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8),
            offsets=np.array([0, 1, 4]),
            class_names=("d", "e"),
        ),
    }
    return Prepared(name="toy", splits=splits, image_shape=(6, 6, 3), citation="Someone 2024.")


def test_split_and_group_by_class():
    split = _prepared().splits["train"]
    assert split.counts.tolist() == [2, 5, 2] and split.num_classes == 3
    np.testing.assert_array_equal(split.class_images(1), split.images[2:7])
    order, offsets = group_by_class(np.array([2, 0, 2, 1, 0]), 3)
    assert order.tolist() == [1, 4, 3, 0, 2] and offsets.tolist() == [0, 2, 3, 5]
    images = np.zeros((3, 2, 2, 1), np.uint8)
    with pytest.raises(ValueError, match="every class non-empty"):
        Split(images=images, offsets=np.array([0, 0, 3]), class_names=("a", "b"))
    with pytest.raises(ValueError, match="classes \\+ 1"):
        Split(images=images, offsets=np.array([0, 3]), class_names=("a", "b"))
    with pytest.raises(ValueError, match="uint8"):
        Split(images=images.astype(np.float32), offsets=np.array([0, 3]), class_names=("a",))


def test_cache_round_trip_and_rejections(tmp_path, caplog):
    prepared = _prepared()
    path = save_cache(prepared, tmp_path / "sub" / "toy.npz")
    back = load_cache(path)
    assert back.name == "toy" and back.image_shape == (6, 6, 3) and back.citation == "Someone 2024."
    for s, d in prepared.splits.items():
        np.testing.assert_array_equal(back.splits[s].images, d.images)
        np.testing.assert_array_equal(back.splits[s].offsets, d.offsets)
        assert back.splits[s].class_names == d.class_names
        assert back.splits[s].class_groups == d.class_groups
    only = load_cache(path, splits=["test"])
    assert list(only.splits) == ["test"]
    assert not list(path.parent.glob("*.tmp"))
    with caplog.at_level(logging.WARNING):
        assert load_cache(tmp_path / "absent.npz") is None
        assert load_cache(path, splits=["val"]) is None
        assert "_val is not a file" in caplog.text  # the split the cache lacks
        # Same file layout, one pixel changed: the content hash catches it.
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["images_train"][0, 0, 0, 0] ^= 1
        np.savez(tmp_path / "edited.npz", **arrays)
        assert load_cache(tmp_path / "edited.npz") is None
        assert "stale prepared dataset cache" in caplog.text
        assert load_cache(tmp_path / "edited.npz", verify=False) is not None
        # Truncated and empty files.
        data = path.read_bytes()
        (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
        (tmp_path / "empty.npz").write_bytes(b"")
        assert load_cache(tmp_path / "cut.npz") is None
        assert load_cache(tmp_path / "empty.npz") is None
        assert "unreadable prepared dataset cache" in caplog.text


@pytest.mark.parametrize(
    "head",
    [
        b"<!DOCTYPE html><html>",
        b"\n  <html lang=en>",
        b"\xef\xbb\xbf<!doctype HTML>",
        b"<HTML><HEAD>",
    ],
)
def test_html_pages_are_named(tmp_path, head):
    path = tmp_path / "x.pkl"
    path.write_bytes(head + b"<body>Google Drive can't scan this file for viruses.</body>")
    with pytest.raises(CorruptFileError, match=r"x\.pkl is an HTML page, not a pickle.*from SRC"):
        check_not_html(path, what="a pickle", get_from="SRC")
    with pytest.raises(CorruptFileError, match="is an HTML page"):
        load_pickle(path, what="a pickle", get_from="SRC")


def test_load_pickle_reads_data_and_refuses_code(tmp_path):
    path = tmp_path / "ok.pkl"
    data = {"a": np.arange(5, dtype=np.uint8), "b": [1, 2], "c": {"d": (3.0, "e")}}
    for protocol in (2, 4, 5):
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        back = load_pickle(path, what="a pickle", get_from="SRC")
        np.testing.assert_array_equal(back["a"], data["a"])
        assert back["b"] == [1, 2] and back["c"] == {"d": (3.0, "e")}

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CorruptFileError, match="refusing to load posix.system|refusing"):
        load_pickle(path, what="a pickle", get_from="SRC")
    path.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="is empty"):
        load_pickle(path, what="a pickle", get_from="SRC")
    path.write_bytes(b"PK\x03\x04 a zip, not a pickle")
    with pytest.raises(CorruptFileError, match="truncated or not a pickle"):
        load_pickle(path, what="a pickle", get_from="SRC")


@pytest.fixture
def http_dir(tmp_path):
    """A local HTTP server over ``tmp_path / "srv"``: ``(folder, base url)``."""
    root = tmp_path / "srv"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_checks_the_checksum(http_dir, tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root, base = http_dir
    payload = os.urandom(300_000)
    (root / "file.bin").write_bytes(payload)
    dest = tmp_path / "out" / "file.bin"
    md5 = hashlib.md5(payload).hexdigest()
    assert download(f"{base}/file.bin", dest, md5=md5) == dest
    assert dest.read_bytes() == payload
    dest.unlink()
    with pytest.raises(DownloadError, match="md5 .*expected 0+"):
        download(f"{base}/file.bin", dest, md5="0" * 32)
    with pytest.raises(DownloadError, match="404"):
        download(f"{base}/missing.bin", dest)
    assert not list(dest.parent.iterdir())  # no partial or wrong file left behind


# --------------------------------------------------------------------------------------------
# RGB image helpers.


@pytest.mark.parametrize("shape", [(30, 30), (50, 37), (84, 84), (10, 10)])
@pytest.mark.parametrize("channels", [1, 3])
def test_resize_images_is_pil_lanczos(shape, channels):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, *shape, channels), dtype=np.uint8)
    got = resize_images(images, 21)
    mode = "RGB" if channels == 3 else "L"
    for im, out in zip(images, got, strict=True):
        pil = Image.fromarray(im if channels == 3 else im[..., 0], mode).resize(
            (21, 21), Image.LANCZOS
        )
        np.testing.assert_array_equal(out, np.asarray(pil).reshape(21, 21, channels))
    if shape[0] == shape[1]:
        assert resize_images(images, shape[0]) is images  # already that size: unchanged


def test_load_image_and_load_images(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    png = buf.getvalue()
    got = load_image(png, size=16)
    np.testing.assert_array_equal(
        got, np.asarray(Image.fromarray(rgb).resize((16, 16), Image.LANCZOS))
    )
    grey = load_image(png, size=16, channels=1)
    assert grey.shape == (16, 16, 1)
    (tmp_path / "a.png").write_bytes(png)
    (tmp_path / "b.txt").write_bytes(b"text")
    shas: list[str] = []
    many = load_images([png, tmp_path / "a.png"] * 300, size=16, sha256=shas, workers=2)
    assert many.shape == (600, 16, 16, 3) and (many == got).all()
    assert shas[0] == shas[1] == hashlib.sha256(png).hexdigest()
    with pytest.raises(ImageFolderError, match=r"b\.txt: not a readable image"):
        load_images([png, tmp_path / "b.txt"], size=16)
    with pytest.raises(ImageFolderError, match="item 1: not a readable image"):
        load_images([png, png[:40]], size=16)
    with pytest.raises(ValueError, match="channels must be 1"):
        load_image(png, size=16, channels=2)
