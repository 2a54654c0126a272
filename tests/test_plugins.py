"""A dataset from one file outside the package (tests/toy_dataset.py), named by a config's
``plugins:``, trains every classification algorithm through ``jaxmeta train``: no library file
knows it. The run then evaluates, loads, and ``jaxmeta data toy`` prepares it."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from conftest import algorithm_spec, run_once_compiles, shipped_algorithms

import jaxmeta
from jaxmeta.cli import main
from jaxmeta.train import build_experiment, initial_state, load_config

TOY = Path(__file__).resolve().with_name("toy_dataset.py")
EMBEDDING = {"name": "conv4", "num_classes": None, "filters": 4, "head": "mean", "conv_impl": "xla"}
# Every classification algorithm as its registered example (conv_impl xla: compiles faster on
# CPU), an embedding model for the metric learners.


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("JAXMETA_CACHE_DIR", "off")  # main() would enable one for the process


@pytest.fixture
def run_once_programs():
    """Every program here runs once or twice on 8x8 images: compiled without XLA's backend
    optimisations (``run_once_compiles``) they compile about 2x faster and compute the same."""
    with run_once_compiles():
        yield


def _config(tmp_path: Path, algorithm: str, **train) -> Path:
    spec = algorithm_spec(algorithm)
    kwargs, model = dict(spec.example), (EMBEDDING if spec.model == "embedding" else None)
    raw = {
        "plugins": [os.path.relpath(TOY, tmp_path)],  # relative to the config file
        "name": f"toy_{algorithm}",
        "data": {"name": "toy", "ways": 3, "shots": 1, "queries": 2},
        "model": model or {"name": "conv4", "filters": 4, "head": "mean", "conv_impl": "xla"},
        "algorithm": {"name": algorithm, **kwargs},
        "train": {
            "steps": 2,
            "meta_batch_size": 2,
            "steps_per_call": 2,
            "log_every": 2,
            "eval_every": 2,
            "checkpoint_every": 2,
            "plot": False,
            **train,
        },
        "eval": {"episodes": 4, "batch_size": 4},
    }
    path = tmp_path / f"{algorithm}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(shipped_algorithms()))
def test_every_classification_algorithm_trains_on_a_plugin_dataset(
    tmp_path, capsys, run_once_programs, algorithm
):
    wd = tmp_path / algorithm
    # Validation (the plug-in's val split, the best checkpoint) is the evaluator that the
    # test split runs: checked once, on the run that is then evaluated and loaded.
    config = _config(tmp_path, algorithm, **({} if algorithm == "maml" else {"eval_every": 0}))
    args = ["train", "--config", str(config), "--workdir", str(wd)]
    assert main([*args, "--no-progress"]) == 0, capsys.readouterr().err
    res = json.loads((wd / "eval_test.json").read_text())
    assert (res["dataset"], res["algorithm"], res["ways"], res["step"]) == ("toy", algorithm, 3, 2)
    assert 0.0 <= res["accuracy"] <= 1.0 and res["episodes"] == 4
    saved = yaml.safe_load((wd / "config.yaml").read_text())
    assert saved["plugins"] == [str(TOY)]  # absolute: found again from the workdir
    assert saved["data"] == {
        "name": "toy",
        "ways": 3,
        "shots": 1,
        "queries": 2,
        "image_size": 8,
        "channels": 3,
        "seed": 0,
    }
    if algorithm != "maml":
        return
    assert res["checkpoint"] == "best"  # validated on the plug-in's val split
    # The workdir alone is enough to evaluate and to load the run (its plug-in is recorded).
    capsys.readouterr()
    assert main(["evaluate", "--workdir", str(wd), "--episodes", "4"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    clf = jaxmeta.load(wd)
    assert clf.input_shape == (8, 8, 3) and clf.ways == 3
    support = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    with warnings.catch_warnings():  # random pixels: about half of them "ink"
        warnings.simplefilter("ignore", UserWarning)
        assert clf.classify(support, [0, 1, 2], support).shape == (3,)


def test_data_command_prepares_a_plugin_dataset(capsys):
    assert main(["data", "--plugin", str(TOY), "toy", "--image-size", "6"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "6x6x3 uint8" in out
    assert main(["data", "toy", "--image-size", "2"]) == 2  # the source's own check
    assert "--image-size: must be >= 4, got 2" in capsys.readouterr().err


def test_bad_plugin_is_a_config_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("plugins: [no_such_module_xyz]\ndata: {name: toy}\n")
    args = ["train", "--config", str(path), "--workdir", str(tmp_path / "wd")]
    assert main(args) == 2
    assert "plugins: cannot import 'no_such_module_xyz'" in capsys.readouterr().err


def test_train_seed_changes_fce_and_snail_initial_parameters(tmp_path):
    """Their networks are drawn from the run's seed (``learner.init(key, ...)``), not key(0)."""

    def init(algorithm: str, seed: int):
        cfg = load_config(_config(tmp_path, algorithm, seed=seed))
        params = initial_state(cfg, build_experiment(cfg)).params
        extra = "fce" if algorithm == "matching" else "snail"
        return jax.tree_util.tree_leaves(params[extra])

    for algorithm in ("matching", "snail"):
        a, b, again = init(algorithm, 0), init(algorithm, 1), init(algorithm, 0)
        assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True)), algorithm
        assert all(np.array_equal(x, y) for x, y in zip(a, again, strict=True)), algorithm
