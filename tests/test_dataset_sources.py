"""The dataset readers as task sources (registry entry, options, describe, the per-split
uint8 cache, episodes under jit, ``jaxmeta data NAME``), each on small synthetic files in
its exact published format (the files are written by tests/_dataset_files.py)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from _dataset_files import write_cifar100, write_mini_pickle, write_tiered
from PIL import Image

from jaxmeta.cli import main
from jaxmeta.data.episodes import ClassImages
from jaxmeta.data.miniimagenet import RAVI_WNIDS
from jaxmeta.data.registry import get_task_source
from jaxmeta.data.source import TaskSourceError

SPLITS = ("train", "val", "test")


def _mini(folder):
    for s in SPLITS:
        write_mini_pickle(folder / f"mini-imagenet-cache-{s}.pkl", RAVI_WNIDS[s][:3], per_class=4)
    return {}


def _tiered(folder):
    for i, s in enumerate(SPLITS):
        write_tiered(folder, s, counts=[3, 5, 4], groups=[0, 0, 1], seed=i)
    return {}


def _cifar(folder):
    write_cifar100(folder / "cifar-100-python.tar.gz", train_per_class=3, test_per_class=1)
    return {"download": False}


def _folder(folder):
    rng = np.random.default_rng(0)
    for s in SPLITS:
        for c in range(3):
            d = folder / s / f"{s}_{c}"
            d.mkdir(parents=True)
            for i in range(3 + c):  # unequal classes
                im = rng.integers(0, 256, (20 + i, 17, 3), dtype=np.uint8)
                Image.fromarray(im).save(d / f"{i}.png")
    return {"root": str(folder), "image_size": 12}


CASES = {
    # name: (writer, shape of one image, classes per split, unequal class sizes)
    "miniimagenet": (_mini, (84, 84, 3), 3, False),
    "tieredimagenet": (_tiered, (84, 84, 3), 3, True),
    "cifar_fs": (_cifar, (32, 32, 3), None, False),
    "fc100": (_cifar, (32, 32, 3), None, False),
    "folder": (_folder, (12, 12, 3), 3, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_source_on_published_format(name, tmp_path):
    writer, shape, classes, unequal = CASES[name]
    files = tmp_path / "files"
    files.mkdir()
    options = writer(files)
    if name != "folder":
        options.update(manual_dir=str(files), data_dir=str(tmp_path / "cache"))
        options["published_counts"] = False
    cls = get_task_source(name)
    source = cls(ways=2, shots=1, queries=2, **options)
    assert source.input_shape == shape and source.splits == SPLITS
    json.dumps(source.describe())  # recorded in the evaluation JSON
    data = source.train_data()
    assert isinstance(data, ClassImages) == unequal
    if classes is not None:
        assert data.shape[0] == classes
    traces = []

    @jax.jit
    def step(key, data):
        traces.append(1)
        return source.sample(key, data, tasks=3)

    for i in range(2):
        ep = step(jax.random.key(i), data)
    assert len(traces) == 1 and ep.support_x.shape == (3, 2, *shape)
    assert ep.query_x.shape == (3, 4, *shape) and float(ep.query_x.max()) <= 1.0
    test = source.eval_episodes("test", episodes=4, seed=0)
    np.testing.assert_array_equal(
        test.query_x, source.eval_episodes("test", episodes=4, seed=0).query_x
    )
    assert source.eval_episodes("val", episodes=2, seed=0).support_x.shape == (2, 2, *shape)
    if name != "folder":  # the per-split cache: a new source reads it without the files
        assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
            f"jaxmeta_{name}_{shape[0]}px_{s}.npz" for s in SPLITS
        )
        for f in files.iterdir():
            f.unlink()
        again = cls(ways=2, shots=1, queries=2, **options).train_data()
        for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(data), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    lines = cls.prepare(ways=2, shots=1, queries=2, **options)
    assert any(line.startswith("train") for line in lines), lines


@pytest.mark.parametrize("name", ["miniimagenet", "tieredimagenet", "cifar_fs", "fc100"])
def test_jaxmeta_data_names_the_missing_files(name, tmp_path, capsys):
    args = ["data", name, "--manual-dir", str(tmp_path / "empty")]
    if name in ("cifar_fs", "fc100"):
        args.append("--no-download")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "empty") in err and "Where to get them" in err


def test_options_are_checked_by_name(tmp_path):
    with pytest.raises(TaskSourceError) as e:
        get_task_source("miniimagenet")(ways=65)
    assert e.value.option == "ways" and "64 classes" in str(e.value)
    with pytest.raises(TaskSourceError) as e:
        get_task_source("cifar_fs")(shots=600, queries=1)
    assert e.value.option == "queries"
    with pytest.raises(TaskSourceError) as e:
        get_task_source("miniimagenet")(source="zip")
    assert e.value.option == "source"
    with pytest.raises(TaskSourceError) as e:
        get_task_source("folder")(root=str(tmp_path / "absent"))
    assert e.value.option == "root" and "absent" in str(e.value)
    _folder(tmp_path / "imgs")
    with pytest.raises(TaskSourceError) as e:
        get_task_source("folder")(root=str(tmp_path / "imgs"), ways=2, shots=2, queries=2)
    assert e.value.option == "queries" and "train_0" in str(e.value)
