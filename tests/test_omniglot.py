"""Omniglot acquisition, verification, cache and splits on the genuine data (prepared once)."""

from __future__ import annotations

import shutil
import socket
import sys
import zipfile

import numpy as np
import pytest

from jaxmeta.data import (
    SCHEMES,
    OmniglotCorruptError,
    OmniglotFilesMissingError,
    archives,
    character_names,
    load_omniglot,
    split_counts,
    split_images,
    split_indices,
)
from jaxmeta.data import omniglot as om_mod
from jaxmeta.data.omniglot import acquire, dataset, splits, tfds_builder


def _pngs(zip_path, prefix="", limit=None):
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png") and prefix in n)[:limit]
        return [zf.read(n) for n in names]


# ------------------------------------------------------------------------------------------
# The prepared dataset.


def test_shapes_counts_and_metadata(omniglot):
    assert omniglot.images.shape == (1623, 20, 28, 28)
    assert omniglot.images.dtype == np.uint8
    assert omniglot.image_size == 28
    assert omniglot.characters == character_names()
    origin = np.array(omniglot.origin)
    assert (origin == "background").sum() == 964
    assert (origin == "evaluation").sum() == 659
    assert len(set(omniglot.alphabets)) == 50
    assert (
        len({a for a, o in zip(omniglot.alphabets, origin, strict=True) if o == "background"}) == 30
    )
    # File ids NNNN: 1..964 background, 965..1623 evaluation, each exactly once.
    ids = omniglot.character_ids
    assert sorted(ids.tolist()) == list(range(1, 1624))
    assert ids[origin == "background"].max() == 964
    assert ids[origin == "evaluation"].min() == 965


def test_lake_split_image_counts(omniglot):
    bg = split_images(omniglot, "lake", "background")
    ev = split_images(omniglot, "lake", "evaluation")
    assert bg.shape[0] * bg.shape[1] == 19_280
    assert ev.shape[0] * ev.shape[1] == 13_180
    assert bg.flags.c_contiguous and bg.dtype == np.uint8
    np.testing.assert_array_equal(split_images(omniglot, "lake", "train"), bg)  # alias


def test_pixel_statistics_of_a_known_character(omniglot):
    # Latin/character01, drawer 01 (file images_background/Latin/character01/0683_01.png):
    # values pinned from the genuine data. 559 ink pixels at 105x105.
    c = omniglot.characters.index("Latin/character01")
    assert omniglot.character_ids[c] == 683
    img = omniglot.images[c, 0]
    assert int(img.sum(dtype=np.int64)) == 10_436
    assert int((img > 0).sum()) == 125
    assert img.max() == 255 and img[0, 0] == 0  # strokes high, paper 0 (inverted)
    assert img.mean() / 255 == pytest.approx(0.0522009, abs=1e-6)
    # Ink is sparse over the whole set: inverted, not paper-high.
    assert 0.05 < omniglot.images.mean() / 255 < 0.15


def test_fast_decode_is_bit_exact_with_pil(omniglot_zip_dir):
    pngs = _pngs(omniglot_zip_dir / "images_evaluation.zip", limit=None)[::53]  # ~250 images
    raw = om_mod.decode_png(pngs[0])
    assert raw.shape == (105, 105) and raw.dtype == bool
    for size in (28, 14, 105):
        fast = om_mod.decode_and_resize(pngs, size)
        ref = om_mod.decode_and_resize(pngs, size, use_pil=True)
        assert fast.shape == (len(pngs), size, size)
        np.testing.assert_array_equal(fast, ref)


def test_tfds_data_source_reads_prepared_data_without_tensorflow(omniglot, omniglot_data_dir):
    import tensorflow_datasets as tfds

    sources = tfds.data_source(om_mod.DATASET_NAME, data_dir=omniglot_data_dir, download=False)
    assert len(sources["background"]) == 19_280
    assert len(sources["evaluation"]) == 13_180
    ex = sources["evaluation"][0]
    assert ex["image"].shape == (105, 105, 1)
    assert set(np.unique(ex["image"]).tolist()) <= {0, 1}
    assert 1 <= ex["drawer"] <= 20
    assert "tensorflow" not in sys.modules


def test_second_load_uses_the_cache(omniglot, omniglot_data_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("PNG decoding / TFDS reading must not run when the cache exists")

    monkeypatch.setattr(tfds_builder, "decode_and_resize", fail)
    monkeypatch.setattr(dataset, "_build_from_tfds", fail)
    again = load_omniglot(data_dir=omniglot_data_dir, download=False)
    np.testing.assert_array_equal(again.images, omniglot.images)
    assert again.characters == omniglot.characters
    assert again.origin == omniglot.origin
    np.testing.assert_array_equal(again.character_ids, omniglot.character_ids)
    assert again.cache_path is not None and again.cache_path.is_file()


def _decode_stub(monkeypatch):
    """Replace decoding by a constant image (the session fixture ran the real one)."""
    decoded = []

    def stub(pngs, image_size, **kwargs):
        decoded.append(len(pngs))
        return np.full((len(pngs), image_size, image_size), 7, np.uint8)

    monkeypatch.setattr(tfds_builder, "decode_and_resize", stub)
    return decoded


@pytest.mark.parametrize("content", [b"not an npz", b""], ids=["garbage", "0 bytes"])
def test_stale_cache_is_rebuilt_from_prepared_tfds_data(
    omniglot, omniglot_data_dir, tmp_path, monkeypatch, content
):
    # Copy the prepared TFDS data and damage the copied cache: load must rebuild it from the
    # array_record files, without the zips (empty manual dir, download=False).
    shutil.copytree(omniglot_data_dir / om_mod.DATASET_NAME, tmp_path / om_mod.DATASET_NAME)
    cache = tmp_path / om_mod.DATASET_NAME / om_mod.DATASET_VERSION / omniglot.cache_path.name
    cache.write_bytes(content)
    decoded = _decode_stub(monkeypatch)
    again = load_omniglot(data_dir=tmp_path, manual_dir=tmp_path / "empty", download=False)
    assert decoded == [32_460]
    assert again.images.shape == (1623, 20, 28, 28) and (again.images == 7).all()
    np.testing.assert_array_equal(again.character_ids, omniglot.character_ids)
    with np.load(cache) as z:  # and the rebuilt cache was written
        assert (z["images"] == 7).all()


def test_corrupt_prepared_tfds_data_is_named_and_rebuilt_from_the_zips(
    omniglot, omniglot_data_dir, omniglot_zip_dir, tmp_path, monkeypatch, caplog
):
    shutil.copytree(omniglot_data_dir / om_mod.DATASET_NAME, tmp_path / om_mod.DATASET_NAME)
    folder = tmp_path / om_mod.DATASET_NAME / om_mod.DATASET_VERSION
    for cache in folder.glob("*.npz"):
        cache.unlink()
    record = next(folder.glob(f"{om_mod.DATASET_NAME}-background.array_record*"))
    data = bytearray(record.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(b ^ 0xFF for b in data[middle : middle + 4096])
    record.write_bytes(bytes(data))
    # Without the zips: say which file is corrupt and how to rebuild it; delete nothing.
    with pytest.raises(OmniglotCorruptError) as info:
        load_omniglot(data_dir=tmp_path, manual_dir=tmp_path / "empty", download=False)
    msg = str(info.value)
    assert f"{record} is corrupt" in msg and "to rebuild it, put images_background.zip" in msg
    assert "\n" not in msg and record.exists()
    # With them: rebuilt (a warning names the file), and the load succeeds.
    decoded = _decode_stub(monkeypatch)
    with caplog.at_level("WARNING", logger=dataset.log.name):
        again = load_omniglot(data_dir=tmp_path, manual_dir=omniglot_zip_dir, download=False)
    assert decoded == [32_460] and again.images.shape == (1623, 20, 28, 28)
    assert any(f"{record} is corrupt" in r.getMessage() for r in caplog.records)
    assert record.read_bytes() != bytes(data)  # prepared again


# ------------------------------------------------------------------------------------------
# Verification and failures.


def test_offline_without_files_fails_fast_with_instructions(tmp_path, monkeypatch):
    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    manual = tmp_path / "manual"
    with pytest.raises(OmniglotFilesMissingError) as err:
        load_omniglot(data_dir=tmp_path / "data", manual_dir=manual, download=False)
    msg = str(err.value)
    assert "images_background.zip" in msg and "images_evaluation.zip" in msg
    assert str(manual) in msg and "download=False" in msg
    assert calls == []  # download=False never touches the network
    assert not (tmp_path / "data" / om_mod.DATASET_NAME).exists()


def test_download_mode_offline_fails_fast_without_tfds_download(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    calls = []

    def no_network(address, timeout=None, *args, **kwargs):
        calls.append((address, timeout))
        raise OSError("network disabled in this test")

    def no_download(*args, **kwargs):
        raise AssertionError("TFDS must not try to download when offline")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", no_download)
    with pytest.raises(OmniglotFilesMissingError, match="offline"):
        load_omniglot(data_dir=tmp_path / "data", download=True)
    assert len(calls) == 1  # one short probe, no retries
    assert calls[0] == (archives.probe_address(acquire.DOWNLOAD_HOST), archives.NETWORK_TIMEOUT_S)


def test_truncated_zip_is_rejected_naming_the_file(omniglot_zip_dir, tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    data = (omniglot_zip_dir / "images_background.zip").read_bytes()
    (manual / "images_background.zip").write_bytes(data[: len(data) // 2])
    shutil.copy(omniglot_zip_dir / "images_evaluation.zip", manual)
    with pytest.raises(OmniglotCorruptError, match="images_background.zip"):
        load_omniglot(data_dir=tmp_path / "data", manual_dir=manual, download=False)


def _rewrite(src, dst, *, drop=lambda name: False, replace=None):
    dropped = 0
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            if drop(name):
                dropped += 1
                continue
            data = zin.read(name)
            if replace is not None and name in replace:
                data = replace[name]
            zout.writestr(name, data)
    return dropped


def test_missing_alphabet_is_rejected(omniglot_zip_dir, tmp_path):
    bad = tmp_path / "images_evaluation.zip"
    assert (
        _rewrite(omniglot_zip_dir / "images_evaluation.zip", bad, drop=lambda n: "/Angelic/" in n)
        > 400
    )
    with pytest.raises(OmniglotCorruptError, match=r"images_evaluation\.zip.*Angelic"):
        om_mod.read_verified_zip(bad, "evaluation")


def test_wrong_image_count_is_rejected(omniglot_zip_dir, tmp_path):
    bad = tmp_path / "images_evaluation.zip"
    dropped = _rewrite(
        omniglot_zip_dir / "images_evaluation.zip",
        bad,
        drop=lambda n: n.endswith("Keble/character03/1248_07.png"),
    )
    assert dropped == 1
    with pytest.raises(
        OmniglotCorruptError, match=r"images_evaluation\.zip.*Keble/character03 has 19 images"
    ):
        om_mod.read_verified_zip(bad, "evaluation")


def test_altered_image_content_is_rejected(omniglot_zip_dir, tmp_path):
    src = omniglot_zip_dir / "images_evaluation.zip"
    with zipfile.ZipFile(src) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        other = zf.read(names[1])
    bad = tmp_path / "images_evaluation.zip"
    _rewrite(src, bad, replace={names[0]: other})  # same structure, one image swapped
    with pytest.raises(OmniglotCorruptError, match=r"images_evaluation\.zip.*content differs"):
        om_mod.read_verified_zip(bad, "evaluation")


def test_genuine_zips_verify_and_match_the_published_manifest(omniglot_zip_dir):
    import hashlib

    lines = []
    for origin in om_mod.ORIGINS:
        files = om_mod.read_verified_zip(omniglot_zip_dir / f"images_{origin}.zip", origin)
        assert len(files) == {"background": 19_280, "evaluation": 13_180}[origin]
        lines += [f"{hashlib.sha256(b).hexdigest()}  {n}\n" for n, b in files]
    lines.sort(key=lambda line: line.split("  ", 1)[1])
    assert hashlib.sha256("".join(lines).encode()).hexdigest() == acquire.FULL_MANIFEST_SHA256


def test_bad_image_size():
    with pytest.raises(ValueError, match="image_size"):
        load_omniglot(image_size=0)


# ------------------------------------------------------------------------------------------
# Splits (pure metadata).


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        ("lake", {"background": 964, "evaluation": 659}),
        ("maml", {"train": 1100, "val": 100, "test": 423}),
        ("vinyals", {"train": 1028, "val": 172, "test": 423}),
    ],
)
def test_split_sizes_disjoint_and_complete(scheme, expected):
    assert split_counts()[scheme] == expected
    assert split_counts(rotations=True)[scheme] == {k: 4 * v for k, v in expected.items()}
    parts = [split_indices(scheme, s) for s in SCHEMES[scheme]]
    assert [len(p) for p in parts] == list(expected.values())
    union = np.concatenate(parts)
    assert len(np.unique(union)) == len(union) == 1623  # no character in two splits, none left out


def test_vinyals_split_content():
    names = np.array(character_names())
    val_alphabets = {n.split("/")[0] for n in names[split_indices("vinyals", "val")]}
    assert val_alphabets == {
        "Hebrew",
        "Mkhedruli_(Georgian)",
        "Armenian",
        "Early_Aramaic",
        "Bengali",
    }
    test = set(names[split_indices("vinyals", "test")])
    train = set(names[split_indices("vinyals", "train")])
    assert {f"Gurmukhi/character{i}" for i in (42, 43, 44, 45)} <= test
    assert "Gurmukhi/character41" in train
    assert {n.split("/")[0] for n in test} == {
        "Gurmukhi", "Kannada", "Keble", "Malayalam", "Manipuri", "Mongolian",
        "Old_Church_Slavonic_(Cyrillic)", "Oriya", "Sylheti", "Syriac_(Serto)", "Tengwar",
        "Tibetan", "ULOG",
    }  # fmt: skip


def test_maml_split_is_the_seeded_shuffle_of_sorted_names():
    names = np.array(character_names())
    # Pinned: random.Random(1).shuffle(sorted(names)) puts these first / at 1100 / at 1200.
    assert "Gurmukhi/character23" in names[split_indices("maml", "train")]
    assert "Tifinagh/character11" in names[split_indices("maml", "val")]
    assert "Keble/character04" in names[split_indices("maml", "test")]
    # Mixes background and evaluation characters in every split.
    for split in SCHEMES["maml"]:
        origins = {
            o
            for o, _, _ in np.array(splits.character_table(), dtype=object)[
                split_indices("maml", split)
            ]
        }
        assert origins == {"background", "evaluation"}


def test_split_errors():
    with pytest.raises(ValueError, match="unknown Omniglot split scheme"):
        split_indices("imagenet", "train")
    with pytest.raises(ValueError, match="no validation split"):
        split_indices("lake", "val")
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        split_indices("maml", "valid")
    np.testing.assert_array_equal(
        split_indices("lake", "test"), split_indices("lake", "evaluation")
    )


def test_download_branch_checks_the_official_sha256(omniglot_zip_dir, tmp_path, monkeypatch):
    # Simulated online run: the probe succeeds and TFDS's DownloadManager "downloads" our
    # re-zipped copy, whose zip bytes differ from the official file: rejected, naming it.
    import contextlib

    import tensorflow_datasets as tfds

    fetched = []

    def fake_download(self, url):
        fetched.append(url)
        return omniglot_zip_dir / url.rsplit("/", 1)[1]

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
    with pytest.raises(OmniglotCorruptError, match=r"images_background\.zip has sha256 4c4a7dd4"):
        load_omniglot(data_dir=tmp_path / "data", download=True)
    assert fetched == [acquire.ZIPS["background"].url]


def test_offline_preparation_says_what_it_does_and_nothing_misleading(
    omniglot_zip_dir, tmp_path, monkeypatch, capfd
):
    # A fresh data dir prepared from the local zips (decoding stubbed: the session fixture
    # ran the real one): no TFDS "Downloading ... Unknown size", no absl warnings.
    monkeypatch.setattr(
        tfds_builder,
        "decode_and_resize",
        lambda pngs, size, **kw: np.zeros((len(pngs), size, size), np.uint8),
    )
    load_omniglot(data_dir=tmp_path / "data", manual_dir=omniglot_zip_dir, download=False)
    out, err = capfd.readouterr()
    text = out + err
    assert f"from the local zips in {omniglot_zip_dir} (no download)" in text
    for noise in ("Downloading", "Unknown size", "absl", "dataset_info.json", "Shuffling"):
        assert noise not in text, (noise, text)
