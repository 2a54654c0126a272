"""Config validation: every shipped config loads; bad keys/types/values name key and source."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml

from jaxmeta.train.build import algorithm_kwargs, build_optimizer, model_kwargs
from jaxmeta.train.config import ConfigError, config_from_dict, find_config, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
# The half-cheetah configs build brax's environment: the optional extra jaxmeta[rl].
NEEDS_BRAX = pytest.mark.skipif(
    importlib.util.find_spec("brax") is None,
    reason="the half-cheetah configs need the optional extra jaxmeta[rl] (brax)",
)
LOADABLE = [pytest.param(p, marks=NEEDS_BRAX) if "cheetah" in p.name else p for p in CONFIGS]
TINY = REPO / "configs" / "tests" / "tiny.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def _tiny_with(tmp_path: Path, section: str, **values) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw.setdefault(section, {}).update(values)
    return _write(tmp_path, yaml.safe_dump(raw))


def test_expected_configs_exist():
    names = {str(p.relative_to(REPO / "configs")) for p in CONFIGS}
    for algo in ("maml", "fomaml"):
        for setting in ("5w1s", "5w5s", "20w1s", "20w5s"):
            assert f"omniglot/{algo}_{setting}.yaml" in names
    for k in (5, 10, 20):
        assert f"sinusoid/maml_k{k}.yaml" in names
    assert "tests/tiny.yaml" in names
    for rl in ("nav2d", "nav2d_sparse", "cheetah_dir", "cheetah_vel"):
        assert f"rl/maml_trpo_{rl}.yaml" in names


@pytest.mark.parametrize("path", LOADABLE, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.train.steps > 0
    # Round trip: the resolved config written to a workdir loads back identically.
    assert config_from_dict(yaml.safe_load(cfg.to_yaml()), source="x") == cfg


@pytest.mark.parametrize(
    ("name", "ways", "shots", "inner_lr", "inner_steps", "meta_batch"),
    [
        ("maml_5w1s_paper", 5, 1, 0.4, 1, 32),
        ("maml_5w5s", 5, 5, 0.4, 1, 32),
        ("maml_20w1s", 20, 1, 0.1, 5, 16),
        ("fomaml_20w5s", 20, 5, 0.1, 5, 16),
    ],
)
def test_paper_hyperparameters(name, ways, shots, inner_lr, inner_steps, meta_batch):
    cfg = load_config(REPO / "configs" / "omniglot" / f"{name}.yaml")
    kw = cfg.algorithm.kwargs
    assert (cfg.data.ways, cfg.data.shots) == (ways, shots)
    assert (kw["inner_lr"], kw["inner_steps"], kw["eval_inner_steps"]) == (
        inner_lr,
        inner_steps,
        10,
    )
    assert cfg.train.meta_batch_size == meta_batch and cfg.train.steps == 60000
    assert cfg.eval.episodes == 600 and cfg.data.scheme == "maml" and cfg.data.rotations
    assert cfg.optimizer.name == "adam" and cfg.optimizer.kwargs["learning_rate"] == 0.001


def test_find_config_relative_to_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repo root
    assert find_config("configs/omniglot/maml_5w1s.yaml").resolve() == (
        REPO / "jaxmeta" / "configs" / "omniglot" / "maml_5w1s.yaml"
    )
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        find_config("configs/nope.yaml")


def test_configs_ship_inside_the_package():
    """configs/ is a link to jaxmeta/configs, which the wheel's package-data includes."""
    pkg = REPO / "jaxmeta" / "configs"
    assert pkg.is_dir() and not pkg.is_symlink()
    assert (REPO / "configs").resolve() == pkg.resolve()
    assert sorted(p.relative_to(pkg) for p in pkg.rglob("*.yaml")) == sorted(
        p.relative_to(REPO / "configs") for p in CONFIGS
    )
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "configs/**/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["jaxmeta"]


def test_config_is_frozen():
    cfg = load_config(TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 5


@pytest.mark.parametrize(
    ("section", "values", "key", "needle"),
    [
        ("train", {"stepz": 5}, "train.stepz", "unknown key"),
        ("train", {"steps": "ten"}, "train.steps", "expected int"),
        ("train", {"steps": 0}, "train.steps", "positive"),
        ("train", {"steps": -3}, "train.steps", "positive"),
        ("train", {"plot": "yes"}, "train.plot", "expected bool"),
        ("data", {"ways": 101, "rotations": False}, "data.ways", "100 classes"),
        ("data", {"ways": 1700}, "data.ways", "larger than"),
        ("data", {"shots": 5, "queries": 16}, "data.queries", "> 20"),
        ("eval", {"queries": 20}, "eval.queries", "> 20"),
        ("data", {"scheme": "random"}, "data.scheme", "unknown split scheme"),
        ("data", {"name": "mnist"}, "data.name", "unknown dataset"),
        ("algorithm", {"inner_lrr": 0.4}, "algorithm.inner_lrr", "unknown key for algorithm"),
        ("algorithm", {"inner_steps": 1.5}, "algorithm.inner_steps", "expected int"),
        ("algorithm", {"inner_lr": -1.0}, "algorithm.inner_lr", "positive"),
        ("algorithm", {"name": "mamal"}, "algorithm.name", "unknown algorithm"),
        ("execution", {"task_chunk": "fast"}, "execution.task_chunk", "'auto', null"),
        ("execution", {"task_chunk": 0}, "execution.task_chunk", ">= 1"),
        ("model", {"filterz": 8}, "model.filterz", "unknown key for model"),
        ("model", {"filters": "many"}, "model.filters", "expected int"),
        ("optimizer", {"learning_rate": 0}, "optimizer.learning_rate", "positive"),
        ("optimizer", {"betas": 1}, "optimizer.betas", "unknown key for optax.adam"),
        ("train", {"checkpoint_every": 7}, "train.checkpoint_every", "multiple of train.log_every"),
        ("eval", {"ways": 1}, "eval.ways", ">= 2"),
        ("eval", {"ways": 2000}, "eval.ways", "larger than"),
        ("eval", {"shots": 0}, "eval.shots", "positive"),
        ("eval", {"shots": 18}, "eval.queries", "18 \\+ 5 = 23 > 20"),
        # MAML's Conv-4 has a data.ways-wide head: it cannot test other ways.
        ("eval", {"ways": 20}, "eval.ways", "5-way output head"),
        ("optimizer", {"schedule": {"name": "step"}}, "optimizer.schedule.name", "unknown"),
        ("optimizer", {"schedule": {"name": "linear"}}, "optimizer.schedule.end_value", "needs"),
        ("optimizer", {"schedule": 0.5}, "optimizer.schedule", "mapping"),
        (
            "optimizer",
            {"schedule": {"name": "exponential", "transition_steps": 0, "decay_rate": 0.5}},
            "optimizer.schedule.transition_steps",
            "positive",
        ),
        (
            "optimizer",
            {"schedule": {"name": "cosine", "decay_steps": 1.5}},
            "optimizer.schedule.decay_steps",
            "integer",
        ),
        (
            "optimizer",
            {"schedule": {"name": "linear", "end_value": 0, "init_value": 1}},
            "optimizer.schedule.init_value",
            "optimizer.learning_rate",
        ),
    ],
)
def test_bad_value_names_key_and_file(tmp_path, section, values, key, needle):
    path = _tiny_with(tmp_path, section, **values)
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {key}:"), msg
    assert info.value.key == key


def test_unknown_section(tmp_path):
    path = _write(tmp_path, TINY.read_text() + "\ntrainer: {steps: 3}\n")
    with pytest.raises(ConfigError, match="trainer: unknown section") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_override_named_as_source():
    with pytest.raises(ConfigError) as info:
        load_config(TINY, ["train.steps=0"])
    assert str(info.value).startswith("--set: train.steps:")
    with pytest.raises(ConfigError, match=r"--set: data.ways: .*larger than"):
        load_config(TINY, ["data.ways=2000"])
    with pytest.raises(ConfigError, match="--set: nonsense.key: unknown key"):
        load_config(TINY, ["nonsense.key=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(TINY, ["train.steps"])
    # Every overridden key is attributed to --set.
    with pytest.raises(ConfigError, match=r"^--set: eval.episodes"):
        load_config(TINY, ["eval.episodes=0"])


def test_documented_overrides_apply():
    cfg = load_config(
        TINY,
        [
            "train.steps=60000",
            "train.seed=3",
            "eval.episodes=600",
            "data.manual_dir=/zips",
            "algorithm.inner_lr=0.1",
            "optimizer.learning_rate=1e-3",
        ],
    )
    assert cfg.train.steps == 60000 and cfg.train.seed == 3
    assert cfg.eval.episodes == 600 and cfg.data.manual_dir == "/zips"
    assert cfg.algorithm.kwargs["inner_lr"] == 0.1
    # YAML 1.1 reads 1e-3 as a string: a float field accepts it as the number.
    build_optimizer(cfg)


def test_engine_fills_outputs_and_loss():
    cfg = load_config(TINY, ["data.ways=20"])
    assert model_kwargs(cfg)["num_classes"] == 20
    sin = load_config(REPO / "configs" / "sinusoid" / "maml_k10.yaml")
    assert "out" not in model_kwargs(sin) or model_kwargs(sin)["out"] == 1
    from jaxmeta.losses import mse_loss

    assert algorithm_kwargs(sin)["loss_fn"] is mse_loss
    assert "loss_fn" not in algorithm_kwargs(cfg)


def test_every_registered_algorithm_accepts_a_config():
    """Factories are built from config keys checked against their signatures."""
    from jaxmeta.algorithms import ALGORITHMS
    from jaxmeta.train.build import algorithm_parameters

    for name, spec in ALGORITHMS.items():
        params = algorithm_parameters(spec.make)
        assert params, name
        raw = yaml.safe_load(TINY.read_text())
        raw["algorithm"] = {"name": name, "bogus_key": 1}
        with pytest.raises(
            ConfigError, match=f"algorithm.bogus_key: unknown key for algorithm '{name}'"
        ):
            config_from_dict(raw, source="f.yaml")


def test_eval_ways_needs_a_head_free_learner():
    """ProtoNets (embedding model) trains 60-way and tests 5-way; fixed-shape learners refuse."""
    proto = REPO / "configs" / "omniglot" / "protonets_5w1s.yaml"
    cfg = load_config(proto)
    assert (cfg.data.ways, cfg.eval_ways, cfg.eval_shots, cfg.eval_queries) == (60, 5, 1, 15)
    assert "ways" not in algorithm_kwargs(cfg)  # shape-derived logits, any N
    same = load_config(proto, ["eval.ways=60"])
    assert algorithm_kwargs(same)["ways"] == 60  # exact [n_q, N] logits when N is fixed
    with pytest.raises(ConfigError, match=r"--set: eval.ways: algorithm 'snail' is built for"):
        load_config(REPO / "configs" / "omniglot" / "snail_5w1s.yaml", ["eval.ways=20"])
    with pytest.raises(ConfigError, match=r"eval.shots: algorithm 'snail' is built for shots=1"):
        load_config(REPO / "configs" / "omniglot" / "snail_5w1s.yaml", ["eval.shots=5"])
    with pytest.raises(ConfigError, match="5-way output head"):
        load_config(proto, ["model.num_classes=5", "eval.ways=20"])
    with pytest.raises(ConfigError, match="sinusoid is regression"):
        load_config(REPO / "configs" / "sinusoid" / "maml_k10.yaml", ["eval.ways=5"])
    # Other shots at test time are fine for MAML (the head does not depend on K).
    assert load_config(TINY, ["eval.shots=5"]).eval_shots == 5


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, lambda t: 0.5),
        ({"name": "linear", "end_value": 0.0}, lambda t: 0.5 * max(1 - t / 20, 0.0)),
        (
            {"name": "exponential", "transition_steps": 4, "decay_rate": 0.5, "staircase": True},
            lambda t: 0.5 * 0.5 ** (t // 4),
        ),
        ({"name": "cosine"}, lambda t: 0.25 * (1 + np.cos(np.pi * min(t, 20) / 20))),
        (
            {"name": "piecewise", "boundaries_and_scales": {5: 0.1, 10: 0.5}},
            lambda t: 0.5 * (0.1 if t >= 5 else 1) * (0.5 if t >= 10 else 1),
        ),
    ],
)
def test_schedule_follows_the_formula_and_train_steps(spec, expected):
    """SGD updates with a configured schedule are -lr(t) * g; step counts default to train.steps."""
    import jax.numpy as jnp

    sets = ["train.steps=20", "optimizer.learning_rate=0.5"]
    raw = yaml.safe_load(TINY.read_text())
    raw["optimizer"] = {"name": "sgd", "learning_rate": 0.5, "schedule": spec}
    cfg = config_from_dict(raw, source="x", overrides=sets)
    opt = build_optimizer(cfg)
    params = {"w": jnp.zeros(())}
    state = opt.init(params)
    for t in range(25):
        update, state = opt.update({"w": jnp.ones(())}, state, params)
        np.testing.assert_allclose(-float(update["w"]), expected(t), atol=1e-6)


def test_task_batch_size_moved_to_execution(tmp_path):
    """``algorithm.task_batch_size`` (before issue 14) is read as ``execution.task_chunk``."""
    path = _tiny_with(tmp_path, "algorithm", task_batch_size=2)
    with pytest.warns(FutureWarning, match="algorithm.task_batch_size is now execution.task_chunk"):
        cfg = load_config(path)
    assert cfg.execution.task_chunk == 2 and "task_batch_size" not in cfg.algorithm.kwargs
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match="execution.task_chunk"):
        load_config(TINY, ["algorithm.task_batch_size=0"])


def test_base_files_extend_and_name_the_file_of_each_key(tmp_path):
    """A config extends its base section by section; errors name the file that set the key."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text(TINY.read_text())
    (tmp_path / "sub" / "mid.yaml").write_text(
        "base: ../base.yaml\nname: mid\ntrain: {steps: 40}\nalgorithm: {inner_lr: 0.2}\n"
    )
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("base: mid.yaml\ndata: {shots: 2}\n")
    cfg = load_config(child)
    assert cfg.name == "child"  # a name is never inherited
    assert (cfg.train.steps, cfg.train.log_every, cfg.data.shots, cfg.data.ways) == (40, 5, 2, 5)
    assert cfg.algorithm.kwargs == {"inner_lr": 0.2, "inner_steps": 1, "eval_inner_steps": 2}
    assert "base" not in cfg.to_dict()  # the resolved config spells everything out
    assert config_from_dict(yaml.safe_load(cfg.to_yaml()), source="x") == cfg
    # Another algorithm replaces the section instead of merging MAML's keys into it.
    child.write_text("base: mid.yaml\nalgorithm: {name: protonets}\nmodel: {num_classes: null}\n")
    assert load_config(child).algorithm.kwargs == {}
    # Errors name the file that set the bad key, base or child.
    child.write_text("base: mid.yaml\ntrain: {stepz: 1}\n")
    with pytest.raises(ConfigError, match=rf"^{child}: train.stepz: unknown key"):
        load_config(child)
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../base.yaml\ntrain: {steps: -1}\n")
    child.write_text("base: mid.yaml\n")
    with pytest.raises(ConfigError, match=r"mid.yaml: train.steps: must be positive"):
        load_config(child)


def test_base_file_cycles_and_missing_bases_are_refused(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\n")
    b.write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="a cycle of base files"):
        load_config(a)
    a.write_text("base: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"base: base file .*nope.yaml not found"):
        load_config(a)
