"""``jaxmeta.load``: a trained workdir as a few-shot classifier, for every algorithm.

One tiny MAML run is trained briefly (once per module) to show that the inductive BatchNorm
mode classifies single images (transductive single-image prediction collapses to chance);
every other algorithm gets a step-0 workdir written with the real engine's pieces.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from conftest import algorithm_spec, run_once_compiles, shipped_algorithms

import jaxmeta
from jaxmeta.train import Checkpoints, build_experiment, train_and_evaluate
from jaxmeta.train.config import config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tests" / "tiny.yaml"
EMBEDDING = {"name": "conv4", "num_classes": None, "filters": 8, "pool": True, "conv_impl": "xla"}


def _raw(data_dir) -> dict:
    raw = yaml.safe_load(TINY.read_text())
    raw["data"].update(data_dir=str(data_dir), download=False)
    raw["model"]["conv_impl"] = "xla"  # compiles faster on CPU; the same function
    return raw


def _train(omniglot_data_dir, wd: Path) -> Path:
    """A tiny MAML 5-way 1-shot run, trained briefly (120 steps; no validation)."""
    sets = [
        "train.steps=120",
        "train.steps_per_call=10",
        "train.log_every=10",
        "train.eval_every=0",
        "train.checkpoint_every=60",
        "optimizer.learning_rate=0.003",
        "data.queries=3",
        f"data.data_dir={omniglot_data_dir}",
        "data.download=false",
        "model.conv_impl=xla",  # compiles faster on CPU; the same function
    ]
    train_and_evaluate(load_config(TINY, sets), wd, progress=False, log=lambda _: None)
    return wd


def _initialised(omniglot_data_dir, root: Path) -> dict[str, Path]:
    """A step-0 workdir (config.yaml + checkpoint) for every registered algorithm.

    The state is made like ``initial_state`` makes it, but the model parameters are
    initialised once per model and shared (compiling ``model.init`` is the slow part), and
    each algorithm's state is initialised by one program (op by op it dispatches and
    compiles many small ones: about 2x the CPU time).
    """
    from jaxmeta.train.state import init_train_state

    out, model_params = {}, {}
    for name in sorted(shipped_algorithms()):  # each as its registered example
        spec = algorithm_spec(name)
        kwargs, model = spec.example, (EMBEDDING if spec.model == "embedding" else None)
        raw = copy.deepcopy(_raw(omniglot_data_dir))
        raw["name"] = f"tiny_{name}"
        raw["algorithm"] = {"name": name, **kwargs}
        if model is not None:
            raw["model"] = dict(model)
        cfg = config_from_dict(raw)
        exp = build_experiment(cfg)
        wd = root / name
        wd.mkdir()
        (wd / "config.yaml").write_text(cfg.to_yaml())
        key = str(cfg.model.to_dict())
        if key not in model_params:
            example = exp.source.example_input()
            model_params[key] = jax.jit(exp.model.init)(jax.random.key(0), example)
        init = jax.jit(lambda p, k, exp=exp: init_train_state(exp.learner, exp.optimizer, p, key=k))
        state = init(model_params[key], jax.random.key(0))
        ckpt = Checkpoints(wd)
        ckpt.save(0, state, meta={"step": 0})
        ckpt.close()
        out[name] = wd
    return out


def _test_task(omniglot, *, ways=5, shots=1, queries=4, episodes=1, seed=3):
    from jaxmeta.data.episodes import eval_episodes
    from jaxmeta.data.omniglot import split_images

    eps = eval_episodes(
        split_images(omniglot, "maml", "test"),
        episodes=episodes,
        ways=ways,
        shots=shots,
        queries=queries,
        rotations=False,
        seed=seed,
    )
    return eps


def _check_algorithm(algorithm: str, workdir: Path, omniglot):
    clf = jaxmeta.load(workdir, "latest")
    assert clf.step == 0 and clf.checkpoint == "latest" and clf.bn_mode == "inductive"
    assert clf.learner.name == algorithm
    spec = algorithm_spec(algorithm)  # a metric learner without a fixed N takes any N
    any_ways = spec.model == "embedding" and "ways" not in spec.episode_args
    assert clf.ways == (None if any_ways else 5)
    ep = _test_task(omniglot)
    sx, sy, qx, _ = (np.asarray(a[0]) for a in ep)
    u8 = np.rint(sx[..., 0] * 255).astype(np.uint8)  # the cached form, no channel axis
    batch = clf.predict(u8, sy, qx)
    assert batch.shape == (20, 5) and bool(np.isfinite(batch).all())
    # Inductive: a query's logits do not depend on the other queries of the batch (the same
    # query among other images; one compiled program, where a 1-image batch would need a
    # second: the trained-run test predicts single images).
    others = np.concatenate([qx[10:], qx[:10]])  # query 7 now at 17, among other neighbours
    adapted = clf.adapt(sx, sy)  # float input with the channel axis: the same model input
    np.testing.assert_allclose(adapted(others)[17], batch[7], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(clf.classify(sx, sy, qx), np.argmax(batch, axis=-1))
    np.testing.assert_allclose(clf.probabilities(u8, sy, qx).sum(-1), 1.0, rtol=1e-5)
    assert clf._traces == 1  # one program per shape, reused by every method and call
    return clf


def _check_metric_learners_take_any_number_of_classes(workdir: Path, omniglot):
    clf = jaxmeta.load(workdir)
    ep = _test_task(omniglot, ways=3, shots=2, queries=2)
    sx, sy, qx, _ = (np.asarray(a[0]) for a in ep)
    assert clf.predict(sx, sy, qx).shape == (6, 3)


def _check_single_image_prediction_is_inductive(trained: Path, omniglot):
    clf = jaxmeta.load(trained)  # best -> latest (no validation), inductive
    assert clf.checkpoint == "latest" and clf.step == 120 and clf.inner_steps == 2
    ep = _test_task(omniglot, queries=5, episodes=40)
    acc = {"inductive": [], "transductive": [], "single_t": []}
    for e in range(40):
        sx, sy, qx, qy = (np.asarray(a[e]) for a in ep)
        adapted = clf.adapt(sx, sy)
        batch = np.asarray(adapted(qx))
        acc["inductive"].append(np.argmax(batch, -1) == qy)
        acc["transductive"].append(clf.classify(sx, sy, qx, bn_mode="transductive") == qy)
        if e < 5:  # one image per call (125 queries: chance 0.2 +- 0.04 when collapsed)
            ones = [np.asarray(adapted(qx[i : i + 1]))[0] for i in range(len(qy))]
            np.testing.assert_allclose(np.stack(ones), batch, rtol=1e-4, atol=1e-4)
            with pytest.warns(UserWarning, match="'transductive' with a single query"):
                single_t = [
                    clf.classify(sx, sy, qx[i : i + 1], bn_mode="transductive")[0]
                    for i in range(len(qy))
                ]
            acc["single_t"].append(np.asarray(single_t) == qy)
    acc = {k: float(np.mean(np.concatenate(v))) for k, v in acc.items()}
    # Chance is 0.2. Batched, both modes learned something; one query alone collapses
    # transductively (normalised with its own statistics) but not inductively.
    assert acc["inductive"] > 0.3 and acc["transductive"] > 0.3, acc
    assert acc["single_t"] < acc["inductive"] - 0.1, acc
    assert clf._traces == 4  # adapt batch + single (inductive), classify batch + single


def _check_clear_errors(clf, initialised: dict[str, Path], omniglot, tmp_path: Path):
    sx, sy, qx, _ = (np.asarray(a[0]) for a in _test_task(omniglot))
    with pytest.raises(ValueError, match=r"trained 5-way .* give exactly 5 classes"):
        clf.predict(sx[:3], sy[:3], qx)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        clf.predict(sx, np.array([0, 1, 2, 3, 7]), qx)
    with pytest.raises(ValueError, match="negative label"):
        clf.predict(sx, np.array([0, 1, 2, 3, -1]), qx)
    with pytest.raises(ValueError, match=r"no example of class\(es\) \[2\]"):
        clf.predict(sx, np.array([0, 1, 1, 3, 4]), qx)
    with pytest.raises(ValueError, match=r"support_y must have shape \[5\]"):
        clf.predict(sx, sy[:4], qx)
    with pytest.raises(ValueError, match=r"leading axis \(query_x\[None\]\)"):
        clf.predict(sx, sy, qx[0])
    with pytest.raises(ValueError, match="preprocess"):
        clf.predict(sx, sy, np.zeros((2, 105, 105), np.uint8))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        clf.predict(sx, sy, qx * 255.0)
    with pytest.raises(ValueError, match="dtype int64 not supported"):
        clf.predict(sx, sy, np.zeros((2, 28, 28), np.int64))
    with pytest.warns(UserWarning, match="strokes high"):
        clf.predict(sx, sy, 1.0 - qx)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 7 .*steps there: 0"):
        jaxmeta.load(initialised["maml"], 7)
    with pytest.raises(FileNotFoundError, match="not a 'jaxmeta train' workdir"):
        jaxmeta.load(tmp_path)
    with pytest.raises(ValueError, match="bn_mode must be one of"):
        jaxmeta.load(initialised["maml"], bn_mode="batch")
    with pytest.raises(ValueError, match="needs running statistics, which this maml run"):
        jaxmeta.load(initialised["maml"], bn_mode="running")
    with pytest.raises(ValueError, match="does not adapt by inner steps"):
        jaxmeta.load(initialised["protonets"], inner_steps=3)
    assert jax.tree_util.tree_leaves(clf.params)[0].dtype == np.float32


# ------------------------------------------------------------------------------------------
# The commands around a trained run: predict, evaluate (both BatchNorm modes), plot.


def _check_predict_command(trained, omniglot_data_dir, tmp_path, capsys, cli):
    export = tmp_path / "try"
    data = ["data", "omniglot", "--data-dir", str(omniglot_data_dir), "--no-download"]
    assert cli([*data, "--export-test", str(export), "--per-class", "4"]) == 0
    assert "never seen in training" in capsys.readouterr().out
    assert "test split" in (export / "README.txt").read_text()
    support, query = export / "support", export / "query"
    assert len(list(support.iterdir())) == 5 and len(list(query.rglob("*.png"))) == 15
    out_csv, out_json = tmp_path / "p.csv", tmp_path / "p.json"
    args = ["predict", "-w", str(trained), "--support", str(support), "--query", str(query)]
    assert cli([*args, "--out", str(out_csv)]) == 0
    printed = capsys.readouterr()
    assert "inductive BatchNorm" in printed.err and "accuracy:" in printed.out
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15 and {r["true"] for r in rows} == {p.name for p in support.iterdir()}
    assert all(0.0 < float(r["probability"]) <= 1.0 for r in rows)
    one = next(query.rglob("*.png"))
    assert cli([*args[:-1], str(one), "--out", str(out_json)]) == 0
    res = json.loads(out_json.read_text())
    assert len(res["predictions"]) == 1 and "accuracy" not in res  # a file: no label
    assert res["predictions"][0]["predicted"] in res["classes"]
    capsys.readouterr()
    # Clear one-line errors.
    assert cli([*args[:4], str(tmp_path / "nope"), *args[5:]]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli([*args[:6], str(tmp_path / "empty")]) == 2
    assert "no query images" in capsys.readouterr().err
    shutil.rmtree(next(support.iterdir()))
    assert cli(args) == 2
    assert "has 4 class folders" in capsys.readouterr().err


def _check_evaluate_reports_both_modes(trained, capsys, cli):
    args = ["evaluate", "-w", str(trained), "--episodes", "10"]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "transductive BatchNorm" in out and "inductive BatchNorm" in out
    path = trained / "eval_test_latest_10ep.json"  # no validation: best is the latest
    res = json.loads(path.read_text())
    assert res["inner_steps"] == 2 and res["bn_mode"] == "transductive"
    assert res["step"] == 120 and res["checkpoint"] == "latest"
    assert {"accuracy_inductive", "ci95_inductive", "loss_inductive"} <= set(res)


def test_result_files_are_never_silently_replaced(tmp_path):
    from jaxmeta.commands import eval_result_name, write_new_json

    name = eval_result_name(split="test", checkpoint="best", episodes=600)
    assert name == "eval_test_best_600ep.json"
    assert eval_result_name(
        split="val", checkpoint="step40", episodes=30, inner_steps=3, bn_mode="inductive"
    ) == ("eval_val_step40_30ep_3steps_inductive.json")
    path = tmp_path / name
    assert write_new_json(path, {"accuracy": 0.5}) == (path, "new")
    assert write_new_json(path, {"accuracy": 0.5}) == (path, "unchanged")
    other = tmp_path / "eval_test_best_600ep-2.json"
    assert write_new_json(path, {"accuracy": 0.6}) == (other, "kept")
    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    assert json.loads(other.read_text()) == {"accuracy": 0.6}
    assert write_new_json(path, {"accuracy": 0.6}) == (other, "unchanged")


def _check_plot_command(trained, tmp_path, capsys, cli):
    assert cli(["plot", "-w", str(trained)]) == 0
    assert (trained / "learning_curves.png").stat().st_size > 0
    assert cli(["plot", "-w", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def _check_fewshot_example(trained, omniglot_data_dir):
    import os
    import subprocess
    import sys

    p = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "fewshot_my_images.py"),
            "--workdir",
            str(trained),
            "--data-dir",
            str(omniglot_data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "FewShotClassifier(maml, step 120" in p.stdout
    assert p.stdout.count(" -> ") == 15 and "of 15 right (chance: 1 in 5)" in p.stdout


# ------------------------------------------------------------------------------------------
# Two tests, each building its workdirs once: xdist would run a module fixture once per
# worker that gets one of its tests, and the training/initialisation is the slow part.


@pytest.mark.slow
def test_every_algorithm_loads_and_predicts_each_query_on_its_own(
    omniglot, omniglot_data_dir, tmp_path
):
    # Every program here (the step-0 states, each classifier's) runs a few times on one task:
    # compiled without XLA's backend optimisations, the same computation. With the loop
    # emitters the classifiers compile about as fast either way, but the model and state
    # initialisation compile about 3x faster (CPU s, 2026-12-07: the initialisation 26 -> 5
    # with one state program per algorithm, the test 40 -> 19).
    with run_once_compiles():
        workdirs = _initialised(omniglot_data_dir, tmp_path)
        clfs = {name: _check_algorithm(name, wd, omniglot) for name, wd in sorted(workdirs.items())}
        _check_metric_learners_take_any_number_of_classes(workdirs["protonets"], omniglot)
        _check_clear_errors(clfs["maml"], workdirs, omniglot, tmp_path / "not_a_run")


@pytest.mark.slow
def test_a_trained_run_classifies_images(
    omniglot, omniglot_data_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("JAXMETA_CACHE_DIR", "off")  # main() would enable a persistent cache
    from jaxmeta.cli import main as cli

    trained = _train(omniglot_data_dir, tmp_path / "maml_run")
    _check_single_image_prediction_is_inductive(trained, omniglot)
    _check_evaluate_reports_both_modes(trained, capsys, cli)
    _check_predict_command(trained, omniglot_data_dir, tmp_path, capsys, cli)
    _check_plot_command(trained, tmp_path, capsys, cli)
    _check_fewshot_example(trained, omniglot_data_dir)
