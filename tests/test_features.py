"""Feature-vector task sources: the LEO paper's embeddings pickles (synthetic files in the
exact format) and features exported from a run; the on-device sampler; clear failures."""

from __future__ import annotations

import pickle
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import run_once_compiles
from leo_pickles import write_leo_embeddings

from jaxmeta.data import ExportedFeatures, FeaturesError, LEOEmbeddings, TaskSourceError
from jaxmeta.data.features import index_classes, sample_feature_episodes
from jaxmeta.data.leo_embeddings import read_leo_pickle

SPLITS = {"train": 7, "val": 5, "test": 6}


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_leo_embeddings(tmp_path_factory.mktemp("leo"), classes=SPLITS, per_class=12)


def test_reads_the_paper_layout_and_samples_distinct_examples(mini):
    emb, classes = read_leo_pickle(mini / "miniImageNet" / "center" / "train_embeddings.pkl")
    assert emb.shape == (84, 640) and emb.dtype == np.float32
    assert len(set(classes)) == 7 and classes.dtype.kind == "U"  # bytes keys decoded
    # The folder above embeddings/ works too.
    for root in (mini, mini.parent):
        source = LEOEmbeddings(manual_dir=str(root), ways=5, shots=2, queries=3)
        ep = source.sample(jax.random.key(0), source.train_data(), tasks=4)
        assert ep.support_x.shape == (4, 10, 640) and ep.query_x.shape == (4, 15, 640)
    np.testing.assert_array_equal(ep.support_y[0], np.repeat(np.arange(5), 2))
    np.testing.assert_allclose(np.linalg.norm(ep.support_x, axis=-1), 1.0, rtol=1e-5)
    # Every example of a task is a distinct row, each class's from one class.
    data = source.split_data("train")
    rows = {tuple(np.round(r, 5)): c for c in range(7) for r in data["x"][data["index"][c]]}
    for t in range(4):
        x = np.concatenate([ep.support_x[t], ep.query_x[t]])
        y = np.concatenate([ep.support_y[t], ep.query_y[t]])
        keys = [tuple(np.round(r, 5)) for r in np.asarray(x)]
        assert len(set(keys)) == 25
        cls = np.array([rows[k] for k in keys])
        for label in range(5):
            assert len(set(cls[y == label])) == 1
    test = source.eval_episodes("test", episodes=3, seed=1)
    again = source.eval_episodes("test", episodes=3, seed=1)
    np.testing.assert_array_equal(test.query_x, again.query_x)
    assert test.support_x.shape == (3, 10, 640)


def test_classes_of_different_sizes_are_sampled_within_their_size(tmp_path):
    counts = {"train": [3, 9, 4, 6], "val": [4] * 3, "test": [4] * 3}
    root = write_leo_embeddings(
        tmp_path,
        classes={k: len(v) for k, v in counts.items()},
        per_class=counts,
        dataset="tieredImageNet",
        dim=640,
    )
    source = LEOEmbeddings(
        manual_dir=str(root), dataset="tieredImageNet", ways=3, shots=1, queries=2
    )
    data = source.train_data()
    assert sorted(np.asarray(data["count"]).tolist()) == [3, 4, 6, 9]
    ep = sample_feature_episodes(jax.random.key(3), data, tasks=64, ways=3, shots=1, queries=2)
    x = np.asarray(data["x"])
    for t in range(64):  # every drawn row exists (no padding row leaks in) and is distinct
        rows = np.concatenate([ep.support_x[t], ep.query_x[t]])
        d = np.abs(rows[:, None, :] - x[None]).sum(-1).min(-1)
        assert np.all(d < 1e-5) and len({tuple(np.round(r, 5)) for r in rows}) == 9
    with pytest.raises(TaskSourceError, match="smallest train class"):
        LEOEmbeddings(
            manual_dir=str(root), dataset="tieredImageNet", ways=3, shots=2, queries=2
        ).train_data()


def test_index_classes_numbers_classes_by_first_appearance():
    labels = np.array(["b", "a", "b", "c", "a"])
    out = index_classes(np.arange(10.0).reshape(5, 2), labels, normalize=False)
    np.testing.assert_array_equal(out["count"], [2, 2, 1])
    np.testing.assert_array_equal(out["index"], [[0, 2], [1, 4], [3, 0]])


def test_absent_and_corrupt_files_fail_at_once_with_one_line(tmp_path, mini):
    cases = []
    with pytest.raises(FeaturesError, match="data.manual_dir is not set") as e:
        LEOEmbeddings(ways=5).train_data()
    cases.append(e.value)
    with pytest.raises(FeaturesError, match=r"not found: download http") as e:
        LEOEmbeddings(manual_dir=str(tmp_path / "nowhere")).train_data()
    cases.append(e.value)
    folder = tmp_path / "miniImageNet" / "center"
    folder.mkdir(parents=True)
    bad = {
        "html": b"<!DOCTYPE html><html><body>403 Forbidden</body></html>",
        "truncated": (mini / "miniImageNet" / "center" / "val_embeddings.pkl").read_bytes()[:500],
        "foreign": pickle.dumps({"x": 1}, protocol=2),
        "code": b"cos\nsystem\n(S'echo hi'\ntR.",  # never run: the global is refused
    }
    expect = {
        "html": "HTML/XML page",
        "truncated": "not a LEO embeddings pickle",
        "foreign": "expected a dict with 'embeddings' and 'keys'",
        "code": "refusing to load os.system",
    }
    for name, blob in bad.items():
        (folder / "train_embeddings.pkl").write_bytes(blob)
        source = LEOEmbeddings(manual_dir=str(tmp_path), ways=5)
        with pytest.raises(FeaturesError, match=expect[name]) as e:
            source.train_data()
        assert e.value.option == "manual_dir"
        cases.append(e.value)
    raw = {"embeddings": np.zeros((2, 640), np.float32), "keys": np.array(["1-a-b_0", "2-a-a_1"])}
    (folder / "train_embeddings.pkl").write_bytes(pickle.dumps(raw, protocol=2))
    with pytest.raises(FeaturesError, match="is not '<id>-<class>-<class>_<image>'") as e:
        LEOEmbeddings(manual_dir=str(tmp_path)).train_data()
    cases.append(e.value)
    assert all("\n" not in str(err) for err in cases)


def test_options_are_checked_by_name():
    with pytest.raises(TaskSourceError, match="must be one of") as e:
        LEOEmbeddings(dataset="imagenet")
    assert e.value.option == "dataset"
    with pytest.raises(TaskSourceError, match="only for 'center'") as e:
        LEOEmbeddings(dataset="tieredImageNet", crop="multiview")
    assert e.value.option == "crop"
    with pytest.raises(TaskSourceError, match="65-way: the miniImageNet train split has 64"):
        LEOEmbeddings(ways=65)
    with pytest.raises(TaskSourceError) as e:
        LEOEmbeddings(shots=300, queries=301)
    assert e.value.option == "queries"
    with pytest.raises(TaskSourceError) as e:
        ExportedFeatures(path="")
    assert e.value.option == "path"


def test_exported_features_source(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in SPLITS.items():
        np.savez(
            tmp_path / f"{split}_features.npz",
            features=rng.normal(size=(n * 6, 12)).astype(np.float32),
            labels=np.repeat(np.arange(n, dtype=np.int32), 6),
        )
    source = ExportedFeatures(path=str(tmp_path), ways=4, shots=1, queries=3)
    assert source.input_shape == (12,) and source.split_classes() == SPLITS
    ep = source.sample(jax.random.key(0), source.train_data(), tasks=2)
    assert ep.support_x.shape == (2, 4, 12) and ep.query_x.shape == (2, 12, 12)
    (tmp_path / "val_features.npz").write_text("<html>not found</html>")
    with pytest.raises(FeaturesError, match="is not a features file"):
        source.eval_episodes("val", episodes=2, seed=0)
    with pytest.raises(FeaturesError, match="export-features"):
        _ = ExportedFeatures(path=str(tmp_path / "none")).input_shape
    assert ExportedFeatures(path=str(tmp_path / "none"), dim=7).input_shape == (7,)
    with pytest.raises(FeaturesError, match=r"\(12,\) features, expected \(7,\)"):
        ExportedFeatures(path=str(tmp_path), dim=7).train_data()


@pytest.mark.slow
def test_engine_trains_leo_on_exported_features_and_load_predicts(tmp_path):
    """configs/leo/omniglot_5w1s.yaml, shrunk, on small exported-format files: the engine
    trains and tests it; ``jaxmeta.load`` classifies raw (unnormalised, signed) features."""
    import yaml

    import jaxmeta
    from jaxmeta.cli import main
    from jaxmeta.train import train_and_evaluate
    from jaxmeta.train.config import config_from_dict

    rng = np.random.default_rng(1)
    feats = tmp_path / "features"
    feats.mkdir()
    for split, n in SPLITS.items():
        centers = rng.normal(size=(n, 1, 8))
        x = centers + 0.3 * rng.normal(size=(n, 6, 8))
        np.savez(
            feats / f"{split}_features.npz",
            features=x.reshape(-1, 8).astype(np.float32),
            labels=np.repeat(np.arange(n), 6),
        )
    raw = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "configs/leo/omniglot_5w1s.yaml").read_text()
    )
    raw["data"].update(path=str(feats), queries=3, dim=8)
    raw["algorithm"].update(num_latents=4, inner_steps=1, finetune_steps=1)
    raw["train"].update(
        steps=4, steps_per_call=2, log_every=2, eval_every=2, checkpoint_every=2, meta_batch_size=2
    )
    raw["eval"].update(episodes=4, val_episodes=4, queries=3, batch_size=2)
    wd = tmp_path / "run"
    # Every program runs at most a few times on 8-d features: compiled without XLA's backend
    # optimisations (the same computation).
    with run_once_compiles():
        result = train_and_evaluate(config_from_dict(raw), wd, progress=False, log=lambda _: None)
        assert 0.0 <= result["test"]["accuracy"] <= 1.0
        clf = jaxmeta.load(wd)
        assert clf.ways == 5 and clf.input_shape == (8,)
        x = rng.normal(size=(5, 8)).astype(np.float32) * 4.0  # outside [0, 1]: not pixels
        logits = clf.predict(x, np.arange(5), x)
    assert logits.shape == (5, 5) and np.isfinite(np.asarray(logits)).all()
    # export-features on something that is not a run: one line, exit 2.
    assert main(["export-features", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2


def test_feature_model_drops_the_head_and_finds_the_model_parameters():
    import jax.numpy as jnp

    from jaxmeta.feature_export import feature_model
    from jaxmeta.models.conv4 import Conv4

    model = Conv4(num_classes=5, filters=4, head="mean")
    x = jnp.zeros((2, 28, 28, 1))
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    lr = jax.tree_util.tree_map(lambda a: a, params)
    module, candidates = feature_model(model, {"params": params, "lr": lr})  # Meta-SGD's form
    assert module.num_classes is None and model.num_classes == 5
    fits = []
    for cand in candidates:
        try:
            fits.append(jax.eval_shape(module.apply, cand, x).shape)
        except Exception:
            fits.append(None)
    assert fits[0] is None and fits[1] == (2, 4)  # the model's entry gives 4-d features
