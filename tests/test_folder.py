"""Your own images as a dataset: class folders split by ratio and seed, or train/val/test
folders; any size and mode; and the errors that name the folder or file."""

from __future__ import annotations

import numpy as np
import pytest
from _dataset_files import random_images
from conftest import run_once_compiles
from PIL import Image

from jaxmeta.data.folder import prepare_folder, split_classes
from jaxmeta.data.images import ImageFolderError

SPLITS = ("train", "val", "test")


def _write_class(folder, n, *, seed, size=(40, 30), mode="RGB", suffix=".png"):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        im = Image.fromarray(random_images(rng, 1, size[1], size[0], 4)[0], "RGBA").convert(mode)
        im.save(folder / f"{i:02d}{suffix}")


def test_folder_of_classes_split_by_ratio(tmp_path):
    names = [f"class_{i}" for i in range(10)]
    for i, name in enumerate(names):
        _write_class(tmp_path / name, 2 + i % 3, seed=i, mode=("RGB", "L", "RGBA", "P")[i % 4])
    (tmp_path / "class_0" / "notes.txt").write_text("not an image")
    (tmp_path / "class_0" / "._00.png").write_bytes(b"macOS resource fork")
    (tmp_path / "README.md").write_text("top-level files that are not images are ignored")
    ratios = {"train": 0.6, "val": 0.2, "test": 0.2}
    p = prepare_folder(tmp_path, image_size=12, split_ratios=ratios, seed=3)
    assert [p.splits[s].num_classes for s in SPLITS] == [6, 2, 2]
    assert sorted(c for s in SPLITS for c in p.splits[s].class_names) == names
    assert p.image_shape == (12, 12, 3)
    train = p.splits["train"]
    assert train.counts.tolist() == [2 + int(n[-1]) % 3 for n in train.class_names]  # unequal
    # An RGBA class: composited onto white, then LANCZOS.
    split = next(p.splits[s] for s in SPLITS if "class_2" in p.splits[s].class_names)
    with Image.open(tmp_path / "class_2" / "00.png") as im:
        rgba = im.convert("RGBA")
    white = Image.alpha_composite(Image.new("RGBA", rgba.size, (255,) * 4), rgba)
    want = np.asarray(white.convert("RGB").resize((12, 12), Image.LANCZOS))
    np.testing.assert_array_equal(split.class_images(split.class_names.index("class_2"))[0], want)
    # Deterministic: the same seed gives the same split; the split is a function of the seed.
    again = prepare_folder(tmp_path, image_size=12, split_ratios=ratios, seed=3)
    for s in SPLITS:
        assert again.splits[s].class_names == p.splits[s].class_names
        np.testing.assert_array_equal(again.splits[s].images, p.splits[s].images)
    assert split_classes(names, ratios, seed=3) == {
        s: list(p.splits[s].class_names) for s in SPLITS
    }
    assert any(
        split_classes(names, ratios, seed=k) != split_classes(names, ratios, seed=3)
        for k in range(4, 8)
    )
    grey = prepare_folder(tmp_path, image_size=8, channels=1)
    assert set(grey.splits) == {"all"} and grey.image_shape == (8, 8, 1)
    assert grey.splits["all"].num_classes == 10


def test_folder_with_split_subfolders(tmp_path):
    for split, k in (("train", 3), ("test", 2)):
        for j in range(k):
            _write_class(tmp_path / split / f"{split}{j}", 2, seed=j, suffix=".jpg")
    p = prepare_folder(tmp_path, image_size=10)
    assert list(p.splits) == ["train", "test"]
    assert p.splits["test"].class_names == ("test0", "test1")
    with pytest.raises(ValueError, match="split_ratios applies only"):
        prepare_folder(tmp_path, image_size=10, split_ratios={"train": 1.0})
    _write_class(tmp_path / "stray_class", 2, seed=0)
    with pytest.raises(ImageFolderError, match="mixes split folders"):
        prepare_folder(tmp_path, image_size=10)


def test_folder_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(ImageFolderError, match="does not exist"):
        prepare_folder(tmp_path / "nope", image_size=8)
    with pytest.raises(ImageFolderError, match="no class sub-folders"):
        prepare_folder(tmp_path, image_size=8)
    _write_class(tmp_path / "a", 3, seed=0)
    _write_class(tmp_path / "b", 1, seed=1)
    with pytest.raises(ImageFolderError, match="has 1 class"):
        prepare_folder(tmp_path, image_size=8, split_ratios={"train": 0.5, "test": 0.5})
    with pytest.raises(ImageFolderError, match=r"class folder .*b has 1 images; at least 2"):
        prepare_folder(tmp_path, image_size=8, min_images=2)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.txt").write_text("no images here")
    with pytest.raises(ImageFolderError, match=r"class folder .*c has no images"):
        prepare_folder(tmp_path, image_size=8)
    (tmp_path / "c" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    with pytest.raises(ImageFolderError, match=r"broken\.jpg: not a readable image"):
        prepare_folder(tmp_path, image_size=8)
    with pytest.raises(ImageFolderError, match="has 3 class.*at least 5"):
        prepare_folder(tmp_path / "c" / "..", image_size=8, min_classes=5)
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(ImageFolderError, match="holds images directly"):
        prepare_folder(tmp_path, image_size=8)


@pytest.mark.slow
def test_folder_trains_end_to_end_through_jaxmeta_train(tmp_path, capsys):
    """``data.name: folder`` on images written here (unequal classes, a seeded class split,
    RGB of mixed sizes), a tiny Conv-4, a few MAML steps, through the ``jaxmeta`` command."""
    import json

    import yaml

    from jaxmeta.cli import main

    images = tmp_path / "images"
    for i in range(9):
        _write_class(images / f"class_{i}", 3 + i % 3, seed=i, size=(20 + i, 16))
    config = {
        "name": "folder_tiny",
        "data": {
            "name": "folder",
            "root": str(images),
            "ways": 2,
            "shots": 1,
            "queries": 2,
            "image_size": 16,
            "split_ratios": [0.6, 0.2, 0.2],
            "seed": 0,
        },
        # conv_impl xla: compiles faster on CPU (the same function).
        "model": {
            "name": "conv4",
            "filters": 4,
            "pool": True,
            "head": "flatten",
            "conv_impl": "xla",
        },
        "algorithm": {"name": "maml", "inner_lr": 0.1, "inner_steps": 1},
        "optimizer": {"name": "adam", "learning_rate": 0.001},
        "train": {
            "steps": 4,
            "meta_batch_size": 2,
            "steps_per_call": 2,
            "log_every": 2,
            "eval_every": 2,
            "checkpoint_every": 4,
            "plot": False,
        },
        # As many validation as test episodes: one evaluation program serves both.
        "eval": {"episodes": 4, "val_episodes": 4, "queries": 1, "batch_size": 2},
    }
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(config))
    workdir = tmp_path / "wd"
    with run_once_compiles():  # 2 chunks, 3 evaluations of tiny shapes: compile time dominates
        code = main(["train", "--config", str(path), "--workdir", str(workdir)])
    assert code == 0, capsys.readouterr().err
    result = json.loads((workdir / "eval_test.json").read_text())
    text = json.dumps(result)
    assert str(images) in text and "split_ratios" in text  # the source's describe()
    assert result["dataset"] == "folder" and 0.0 <= result["accuracy"] <= 1.0
    assert (result["ways"], result["image_size"], result["channels"]) == (2, 16, 3)
