"""BatchNorm running statistics (ProtoNets' ``running_stats``: the reference's ``model.eval()``
at test): PyTorch's update from the joint training batch, prediction with them, and the engine
carrying them from training to evaluation, checkpoints and ``jaxmeta.load``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from conftest import run_once_compiles

import jaxmeta
from jaxmeta.algorithms.protonets import protonets, prototypes, squared_euclidean
from jaxmeta.cli import main
from jaxmeta.models.conv4 import Conv4
from jaxmeta.models.layers import batch_stat_norm, conv3x3
from jaxmeta.types import Episode

TOY = Path(__file__).resolve().with_name("toy_dataset.py")
WAYS, SHOTS, QUERIES, TASKS, SIZE = 3, 2, 2, 2, 12


def test_batch_norm_with_given_statistics_normalises_each_example_alone():
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 5))
    scale, bias = jnp.linspace(0.5, 1.5, 5), jnp.linspace(-1.0, 1.0, 5)
    mean, var = jnp.arange(5.0) / 10, jnp.arange(1.0, 6.0)
    got = batch_stat_norm(x, scale, bias, stats=(mean, var))
    x_, m_, v_, s_, b_ = (np.asarray(a) for a in (x, mean, var, scale, bias))
    want = (x_ - m_) / np.sqrt(v_ + 1e-5) * s_ + b_
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch_stat_norm(x[:1], scale, bias, stats=(mean, var)), got[:1])


def _episodes():
    k1, k2 = jax.random.split(jax.random.key(3))
    y = jnp.tile(jnp.arange(WAYS, dtype=jnp.int32), (TASKS, SHOTS))
    return Episode(
        support_x=jax.random.uniform(k1, (TASKS, WAYS * SHOTS, SIZE, SIZE, 1)),
        support_y=y,
        query_x=jax.random.uniform(k2, (TASKS, WAYS * QUERIES, SIZE, SIZE, 1)),
        query_y=jnp.tile(jnp.arange(WAYS, dtype=jnp.int32), (TASKS, QUERIES)),
    )


def test_protonets_running_statistics_follow_pytorch_and_are_used_to_predict():
    model = Conv4(num_classes=None, filters=4, conv_impl="xla")
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, SIZE, SIZE, 1)))
    learner = protonets(model.apply, joint_batch=True, running_stats=True, bn_momentum=0.1)
    plain = protonets(model.apply, joint_batch=True)
    assert (learner.bn_mode, plain.bn_mode) == ("running", "transductive")
    opt = optax.adam(1e-3)
    with run_once_compiles():
        state = jaxmeta.init_train_state(learner, opt, params, key=jax.random.key(1))
        assert jax.tree_util.tree_map(jnp.shape, state.learner_state) == {
            "mean": {f"bn{i}": (4,) for i in range(4)},
            "var": {f"bn{i}": (4,) for i in range(4)},
        }
        eps = _episodes()
        new, _ = jaxmeta.make_meta_step(learner, opt)(state, eps, jax.random.key(4))
        # Training itself is ProtoNets with joint batches: the same parameters.
        same, _ = jaxmeta.make_meta_step(plain, opt)(
            jaxmeta.init_train_state(plain, opt, params, key=jax.random.key(1)),
            eps,
            jax.random.key(4),
        )
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), new.params, same.params
    )
    # By hand: layer 0 sees the joint batch of each task; PyTorch's update with the mean over
    # the tasks of its mean and unbiased variance (n = examples x positions).
    kernel = params["params"]["conv0"]
    joint = [jnp.concatenate([eps.support_x[t], eps.query_x[t]]) for t in range(TASKS)]
    outs = [
        np.asarray(o)
        for o in jax.jit(lambda xs: [conv3x3(x, kernel, stride=2, impl="xla") for x in xs])(joint)
    ]
    n = outs[0].size // outs[0].shape[-1]
    want_mean = 0.1 * np.mean([o.mean(axis=(0, 1, 2)) for o in outs], axis=0)
    want_var = 0.9 + 0.1 * np.mean([o.var(axis=(0, 1, 2)) * n / (n - 1) for o in outs], axis=0)
    np.testing.assert_allclose(new.learner_state["mean"]["bn0"], want_mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(new.learner_state["var"]["bn0"], want_var, rtol=1e-5)

    # Prediction normalises with them: each query on its own, as computed by hand.
    sx, sy, qx = eps.support_x[0], eps.support_y[0], eps.query_x[0]

    @jax.jit
    def both(p, s, qx, other):
        run = lambda q: learner.predict(p, sx, sy, q, learner_state=s)
        norm = {k: (s["mean"][k], s["var"][k]) for k in s["mean"]}
        zs, zq = (model.apply(p, x, norm_stats=norm) for x in (sx, qx))
        return run(qx), run(other), zs, zq

    logits, other, zs, zq = both(new.params, new.learner_state, qx, qx.at[1:].multiply(3.0))
    protos, _ = prototypes(zs, sy, WAYS * SHOTS)
    want = -squared_euclidean(zq, protos)[:, :WAYS]
    np.testing.assert_allclose(logits[:, :WAYS], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(other[0], logits[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs running statistics"):
        plain.predict(new.params, sx, sy, qx, bn_mode="running")


def test_bad_running_stats_options_are_one_line_errors():
    with pytest.raises(ValueError, match="set joint_batch: true"):
        protonets(lambda p, x: x, running_stats=True)
    with pytest.raises(ValueError, match="bn_momentum must be in"):
        protonets(lambda p, x: x, joint_batch=True, running_stats=True, bn_momentum=2.0)
    mlp = jaxmeta.MLP(hidden=(4,), out=3)
    learner = protonets(mlp.apply, joint_batch=True, running_stats=True)
    with pytest.raises(ValueError, match="needs a model with BatchNorm"):
        learner.init_state(None, mlp.init(jax.random.key(0), jnp.zeros((1, 2))))


@pytest.fixture
def trained(tmp_path, capsys, monkeypatch):
    """A ProtoNets run with running statistics on the toy plug-in dataset (2 meta-steps)."""
    monkeypatch.setenv("JAXMETA_CACHE_DIR", "off")
    raw = {
        "plugins": [os.path.relpath(TOY, tmp_path)],
        "name": "toy_running_stats",
        "data": {"name": "toy", "ways": 3, "shots": 1, "queries": 2},
        "model": {"name": "conv4", "num_classes": None, "filters": 4, "conv_impl": "xla"},
        "algorithm": {"name": "protonets", "joint_batch": True, "running_stats": True},
        "train": {"steps": 2, "meta_batch_size": 2, "steps_per_call": 2, "log_every": 2,
                  "eval_every": 0, "checkpoint_every": 2, "plot": False},
        "eval": {"episodes": 4, "batch_size": 4},
    }  # fmt: skip
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(raw))
    wd = tmp_path / "wd"
    with run_once_compiles():
        args = ["train", "--config", str(config), "--workdir", str(wd), "--no-progress"]
        assert main(args) == 0, capsys.readouterr().err
    return wd


@pytest.mark.slow
def test_the_engine_carries_them_to_evaluation_checkpoints_and_load(trained, capsys):
    res = json.loads((trained / "eval_test.json").read_text())
    assert res["bn_mode"] == "running" and res["algorithm"] == "protonets"
    with run_once_compiles():
        assert main(["evaluate", "--workdir", str(trained), "--checkpoint", "latest"]) == 0
        capsys.readouterr()
        written = json.loads(next(trained.glob("eval_test_latest_*.json")).read_text())
        # the protocol's mode first (the same number as the test after training), then another
        assert written["bn_mode"] == "running" and written["accuracy"] == res["accuracy"]
        assert "accuracy_transductive" in written
        clf = jaxmeta.load(trained, "latest", trust_plugins=True)
        assert clf.bn_mode == "running"
        means = jax.tree_util.tree_leaves(clf.learner_state["mean"])
        assert any(float(jnp.max(jnp.abs(m))) > 0 for m in means)  # restored, not initial
        images = np.random.default_rng(0).uniform(0, 0.4, size=(4, 8, 8, 3)).astype(np.float32)
        labels = np.array([0, 1, 2, 0])
        alone = clf.predict(images, labels, images[:1])
        among = clf.predict(images, labels, images)
    np.testing.assert_allclose(alone[0], among[0], rtol=1e-5, atol=1e-5)  # each query alone
