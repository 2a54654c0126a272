"""The training engine in-process: fused step, exactness, divergence, metrics, evaluation.

Fast: the sinusoid MLP compiles in seconds. The Omniglot end-to-end runs (subprocesses,
kill -9 and resume) are in test_train_omniglot.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmeta.train import (
    Checkpoints,
    TrainingDiverged,
    build_experiment,
    config_from_dict,
    initial_state,
    make_train_chunk,
    mean_ci95,
    read_metrics,
    train_and_evaluate,
)

SIN = {
    "name": "sin_test",
    "data": {"name": "sinusoid", "shots": 5, "queries": 5},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1},
    "train": {
        "steps": 30,
        "meta_batch_size": 4,
        "steps_per_call": 4,
        "log_every": 5,
        "eval_every": 10,
        "checkpoint_every": 10,
        "plot": False,
    },
    "eval": {"episodes": 20, "batch_size": 8},
}


def _cfg(**sections):
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SIN.items()}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return config_from_dict(raw, source="test")


def _setup(cfg):
    exp = build_experiment(cfg)
    sample = lambda k, d: exp.source.sample(k, d, tasks=cfg.train.meta_batch_size)
    return exp, sample, exp.source.train_data(), initial_state(cfg, exp)


def _leaves_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )


def test_fused_chunk_compiles_once_and_keeps_state_types():
    cfg = _cfg()
    exp, sample, data, state = _setup(cfg)
    chunk = make_train_chunk(exp.learner, exp.optimizer, sample, length=4)
    types0 = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), state)
    state, m = chunk(state, data, jnp.asarray(4, jnp.int32))
    assert int(state.step) == 4 and m["loss"].shape == (4,)
    # Shorter chunks (log/checkpoint boundaries) reuse the compiled program: n is traced.
    state, m = chunk(state, data, jnp.asarray(2, jnp.int32))
    assert int(state.step) == 6  # only n steps ran; the rest of the scan is skipped
    assert np.all(np.isfinite(m["loss"][:2])) and np.all(np.isnan(m["loss"][2:]))
    state, m = chunk(state, data, jnp.asarray(4, jnp.int32))
    assert chunk._cache_size() == 1
    assert int(state.step) == 10
    assert np.isnan(np.asarray(m["loss"])).sum() == 0
    assert jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), state) == types0


def test_result_independent_of_chunk_boundaries():
    """fold_in(base key, step): 12 steps give bit-identical params whatever the fusion."""
    cfg = _cfg()
    exp, sample, data, state0 = _setup(cfg)
    finals = []
    for length, ns in ((1, [1] * 12), (5, [3, 5, 4])):
        chunk = make_train_chunk(exp.learner, exp.optimizer, sample, length=length, donate=False)
        state = state0
        for n in ns:
            state, _ = chunk(state, data, jnp.asarray(n, jnp.int32))
        assert int(state.step) == 12
        finals.append(state)
    for other in finals[1:]:
        assert _leaves_equal(finals[0], other)


# A learning-rate schedule whose position lives in the optimizer state: resume must
# continue it exactly (the step count is checkpointed with the Adam moments).
SCHEDULED = {
    "name": "adam",
    "learning_rate": 0.01,
    "schedule": {
        "name": "exponential",
        "transition_steps": 7,
        "decay_rate": 0.5,
        "staircase": True,
    },
}


@pytest.mark.slow
def test_train_and_evaluate_sinusoid_and_resume(tmp_path):
    cfg = _cfg(optimizer=SCHEDULED)
    full = train_and_evaluate(cfg, tmp_path / "full", progress=False)
    assert full["steps"] == 30
    # Interrupted at 20 (checkpoint) and resumed with other chunk sizes: identical. The
    # schedule follows train.steps only through explicit step counts, so stopping early
    # with train.steps=20 and resuming to 30 sees the same rates.
    # The interrupted workdir is archived, deleted and unpacked elsewhere before resuming
    # (as when a GPU run's workdir is brought back): workdirs hold no absolute paths.
    origin, part = tmp_path / "origin", tmp_path / "part"
    train_and_evaluate(_cfg(train={"steps": 20}, optimizer=SCHEDULED), origin, progress=False)
    archive = shutil.make_archive(str(tmp_path / "run"), "gztar", root_dir=origin)
    shutil.rmtree(origin)
    shutil.unpack_archive(archive, part)
    first_env = json.loads((part / "environment.json").read_text())
    before = read_metrics(part / "metrics.jsonl")
    resumed = train_and_evaluate(
        _cfg(train={"steps_per_call": 3}, optimizer=SCHEDULED), part, progress=False
    )
    assert resumed["start_step"] == 20 and resumed["steps"] == 30
    # environment.json keeps the first session and appends the resume; config.yaml records
    # the resumable change (train.steps 20 -> 30; steps_per_call 5 -> 3).
    env = json.loads((part / "environment.json").read_text())
    assert {k: v for k, v in env.items() if k != "resumes"} == first_env
    (resume,) = env["resumes"]
    assert resume["resumed_at_step"] == 20 and resume["packages"]["jax"] == jax.__version__
    assert resume["config_changes"] == {"train.steps": [20, 30], "train.steps_per_call": [4, 3]}
    assert "steps: 30" in (part / "config.yaml").read_text()
    # wall_time continues across the resume; session_time restarts.
    rows = [r for r in read_metrics(part / "metrics.jsonl") if r["split"] == "train"]
    t20 = next(r["wall_time"] for r in before if r["split"] == "train" and r["step"] == 20)
    after = [r for r in rows if r["step"] > 20]
    assert all(r["wall_time"] > t20 for r in after)
    assert after[0]["session_time"] < after[0]["wall_time"]
    assert [r["wall_time"] for r in rows] == sorted(r["wall_time"] for r in rows)

    exp = build_experiment(cfg)
    target = jax.eval_shape(lambda: initial_state(cfg, exp))
    a, meta_a = Checkpoints(tmp_path / "full").restore(target)
    b, meta_b = Checkpoints(part).restore(target)
    assert int(a.step) == int(b.step) == 30
    assert _leaves_equal(a, b)
    assert meta_a["best_step"] == meta_b["best_step"]

    for wd in (tmp_path / "full", part):
        rows = read_metrics(wd / "metrics.jsonl")
        train_steps = [r["step"] for r in rows if r["split"] == "train"]
        assert train_steps == list(range(5, 31, 5)), train_steps  # each once, none lost
        assert [r["step"] for r in rows if r["split"] == "val"] == [10, 20, 30]
        res = json.loads((wd / "eval_test.json").read_text())
        assert {"mse", "ci95", "episodes", "step", "checkpoint"} <= set(res)
        assert res["episodes"] == 20 and res["checkpoint"] == "best"
        assert (wd / "config.yaml").exists()
        env = json.loads((wd / "environment.json").read_text())
        assert env["packages"]["jax"] == jax.__version__ and env["devices"]
    losses = lambda wd: [
        r["loss"] for r in read_metrics(wd / "metrics.jsonl") if r["split"] == "train"
    ]
    assert losses(tmp_path / "full") == losses(part)
    assert (
        json.loads((tmp_path / "full" / "eval_test.json").read_text())["mse"]
        == (json.loads((part / "eval_test.json").read_text())["mse"])
    )
    # Running a finished run again says so and where its results are; it tests nothing.
    said, stored = [], (tmp_path / "full" / "eval_test.json").read_text()
    again = train_and_evaluate(cfg, tmp_path / "full", progress=False, log=said.append)
    assert again["complete"] and again["test"] == json.loads(stored)
    assert any("run complete" in s and "eval_test.json" in s for s in said), said
    assert (tmp_path / "full" / "eval_test.json").read_text() == stored
    # A workdir only resumes the same experiment.
    with pytest.raises(ValueError, match="different config.*algorithm.inner_lr"):
        train_and_evaluate(
            _cfg(algorithm={"inner_lr": 0.02}, optimizer=SCHEDULED), part, progress=False
        )


def test_resume_refuses_to_change_a_schedule_tied_to_train_steps(tmp_path):
    """A linear anneal over train.steps: extending the run would rewrite past rates."""
    tied = {"name": "sgd", "learning_rate": 0.01, "schedule": {"name": "linear", "end_value": 0.0}}
    train_and_evaluate(_cfg(train={"steps": 10}, optimizer=tied), tmp_path, progress=False)
    with pytest.raises(ValueError, match="schedule's transition_steps follows train.steps"):
        train_and_evaluate(_cfg(train={"steps": 20}, optimizer=tied), tmp_path, progress=False)
    explicit = {**tied, "schedule": {"name": "linear", "end_value": 0.0, "transition_steps": 10}}
    with pytest.raises(ValueError, match="different config"):  # the schedule itself changed
        train_and_evaluate(_cfg(train={"steps": 20}, optimizer=explicit), tmp_path, progress=False)


@pytest.mark.slow
def test_protonets_trains_wide_and_evaluates_narrow(omniglot, omniglot_data_dir, tmp_path):
    """The paper's ProtoNets protocol: meta-train with more ways (here 10) than the 5 tested."""
    from jaxmeta.train.config import load_config

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(
        repo / "configs" / "omniglot" / "protonets_5w1s.yaml",
        [
            f"data.data_dir={omniglot_data_dir}",
            "data.download=false",
            "data.ways=10",
            "data.queries=2",
            "model.filters=8",
            "model.conv_impl=xla",  # compiles faster on CPU; the same function
            "train.steps=10",
            "train.steps_per_call=5",
            "train.log_every=5",
            "train.eval_every=10",
            "train.checkpoint_every=10",
            "train.plot=false",
            "eval.episodes=4",  # as many as validates: one evaluation program for both
            "eval.val_episodes=4",
            "eval.queries=3",
            "eval.batch_size=5",
        ],
    )
    exp = build_experiment(cfg)
    episodes = exp.source.eval_episodes("test", episodes=2, seed=0, ways=5, queries=3)
    assert episodes.support_x.shape[:2] == (2, 5) and episodes.query_y.shape == (2, 15)
    assert exp.source.sample(jax.random.key(0), exp.source.train_data(), tasks=1).query_y.shape == (
        1,
        20,
    )
    res = train_and_evaluate(cfg, tmp_path / "run", progress=False)
    test = json.loads((tmp_path / "run" / "eval_test.json").read_text())
    assert (test["ways"], test["train_ways"], test["shots"], test["queries"]) == (5, 10, 1, 3)
    assert 0.0 <= test["accuracy"] <= 1.0 and res["steps"] == 10
    val = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "val"]
    assert len(val) == 1 and np.isfinite(val[0]["loss"])


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
    # Adam with lr 1e30: step 1 is computed from the initial params (finite), step 2
    # from params of size ~1e30, whose loss overflows.
    cfg = _cfg(
        optimizer={"learning_rate": 1e30},
        train={"checkpoint_every": 1, "log_every": 1, "eval_every": 0},
    )
    with pytest.raises(TrainingDiverged) as info:
        train_and_evaluate(cfg, tmp_path, progress=False)
    msg = str(info.value)
    assert "step 2" in msg and "'loss'" in msg and "last good checkpoint is step 1" in msg
    ckpt = Checkpoints(tmp_path)
    assert ckpt.latest_step() == 1
    exp = build_experiment(cfg)
    state, _ = ckpt.restore(jax.eval_shape(lambda: initial_state(cfg, exp)))
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state.params))
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert max(steps) == 1


def test_mean_ci95_formula():
    v = np.array([1.0, 0.8, 0.6, 1.0, 0.4, 0.9])
    mean, ci = mean_ci95(v)
    assert mean == pytest.approx(v.mean())
    assert ci == pytest.approx(1.96 * v.std() / np.sqrt(v.size))


def test_evaluate_rejects_inner_steps_for_non_gradient_learners():
    from jaxmeta.algorithms.base import MetaLearner
    from jaxmeta.train.evaluate import make_evaluator

    learner = MetaLearner(
        init=lambda p: p, meta_grad=None, predict=lambda p, sx, sy, qx, key: qx, name="toy"
    )
    with pytest.raises(ValueError, match="'toy' does not take an inner-step override"):
        make_evaluator(learner, classification=True, inner_steps=3)
    make_evaluator(learner, classification=True)  # fine without the override


def test_omniglot_data_is_an_argument_not_a_constant(omniglot, omniglot_data_dir):
    repo = Path(__file__).resolve().parents[1]
    from jaxmeta.train.config import load_config

    cfg = load_config(
        repo / "configs" / "tests" / "tiny.yaml",
        [f"data.data_dir={omniglot_data_dir}", "data.download=false"],
    )
    exp, sample, data, state = _setup(cfg)
    assert data.dtype == jnp.uint8 and data.nbytes > 10_000_000  # ~17 MB of images
    chunk = make_train_chunk(exp.learner, exp.optimizer, sample, length=cfg.train.steps_per_call)
    text = chunk.lower(state, data, jnp.asarray(1, jnp.int32)).as_text()
    assert len(text) < data.nbytes / 4  # the images are not embedded in the program
    assert "1100x20x28x28" in text  # they are a parameter of the program


def test_metrics_log_truncation_and_plot(tmp_path, capsys):
    from jaxmeta.train.metrics import MetricsWriter, plot_learning_curves, truncate_metrics

    w = MetricsWriter(tmp_path)
    for step in (10, 20, 30):
        w.write({"split": "train", "step": step, "loss": 1.0 / step, "accuracy": 0.5})
    w.write({"split": "val", "step": 20, "accuracy": 0.6, "ci95": 0.1, "loss": float("nan")})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "st')  # a line torn by a kill
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [10, 20, 30, 20] and rows[-1]["loss"] == "nan"
    assert truncate_metrics(tmp_path / "metrics.jsonl", max_step=20) == 3
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [10, 20, 20]
    assert plot_learning_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensorboard_is_optional(tmp_path, capsys):
    from jaxmeta.train.metrics import MetricsWriter

    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        w = MetricsWriter(tmp_path, tensorboard=True)
        assert "tensorboardX is not installed" in capsys.readouterr().err
    else:
        w = MetricsWriter(tmp_path, tensorboard=True)
        w.write({"split": "train", "step": 1, "loss": 0.5})
        w.close()
        assert list((tmp_path / "tensorboard").iterdir())
        return
    w.write({"split": "train", "step": 1, "loss": 0.5})
    w.close()
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["loss"] == 0.5


def test_resumed_run_lowers_its_step_like_a_fresh_one(tmp_path, monkeypatch):
    """The persistent compilation cache keys a program by its lowered text: a resumed run
    (restored, committed arrays) must lower the fused step exactly as the fresh run did
    (issue 32: it compiled again because the fresh state was uncommitted)."""
    import jaxmeta.train.session as session

    class Lowered(Exception):
        pass

    texts = []

    def recording(*args, **kwargs):
        fn = loop_make(*args, **kwargs)

        class Recorder:
            def lower(self, *a):
                lowered = fn.lower(*a)
                texts.append(lowered.as_text())
                if len(texts) == 2:  # the resumed run: no need to compile and train
                    raise Lowered
                return lowered

        return Recorder()

    loop_make = session.make_train_chunk
    monkeypatch.setattr(session, "make_train_chunk", recording)
    monkeypatch.setattr(session.Training, "test", lambda self: {})  # not what is tested
    small = {"steps_per_call": 2, "log_every": 2, "eval_every": 0, "checkpoint_every": 2}
    train_and_evaluate(_cfg(train={**small, "steps": 2}), tmp_path, progress=False)
    with pytest.raises(Lowered):
        train_and_evaluate(_cfg(train={**small, "steps": 4}), tmp_path, progress=False)
    assert len(texts) == 2 and texts[0] == texts[1]


def test_train_builds_the_experiment_once(tmp_path, monkeypatch):
    """Loading validates a config by building it; ``train_and_evaluate`` of that config is
    handed the experiment instead of building it again (issue 29), once: another command
    with the same config object builds afresh."""
    import functools

    from jaxmeta.data.sinusoid import SinusoidTasks
    from jaxmeta.train import session

    built = []
    init = SinusoidTasks.__init__

    @functools.wraps(init)  # the builder reads the constructor's signature
    def counting(self, *args, **kwargs):
        built.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(SinusoidTasks, "__init__", counting)
    monkeypatch.setattr(session.Training, "run", lambda self: {})  # nothing is trained
    cfg = _cfg()
    assert len(built) == 1  # the validation
    train_and_evaluate(cfg, tmp_path / "a", progress=False, log=lambda s: None)
    assert len(built) == 1
    train_and_evaluate(cfg, tmp_path / "b", progress=False, log=lambda s: None)
    assert len(built) == 2
