"""Meta-RL through the engine: ``jaxmeta train`` and ``jaxmeta evaluate`` on a tiny 2D
navigation config (the shipped paper config with small sizes), exact resume after a
checkpoint, the engine's steps equal to the library's ``meta_step``, and config errors."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from conftest import run_once_compiles

from jaxmeta import rl
from jaxmeta.cli import main
from jaxmeta.train import train_and_evaluate
from jaxmeta.train.build import build_experiment, initial_state
from jaxmeta.train.checkpoint import Checkpoints
from jaxmeta.train.config import ConfigError, load_config
from jaxmeta.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
NAV = REPO / "configs" / "rl" / "maml_trpo_nav2d.yaml"
# The paper config made tiny: 10-step episodes, an 8-unit policy, 4 trajectories, 3 tasks.
TINY = [
    "data.horizon=10",
    "model.hidden=[8]",
    "algorithm.num_trajectories=4",
    "train.meta_batch_size=3",
    "train.steps=4",
    "train.steps_per_call=2",
    "train.log_every=1",
    "train.eval_every=2",
    "train.checkpoint_every=2",
    "train.plot=false",
    "eval.episodes=5",
    "eval.val_episodes=5",
]


def tiny(*more: str):
    return load_config(NAV, [*TINY, *more])


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    same = lambda x, y: x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
    return len(la) == len(lb) and all(same(x, y) for x, y in zip(la, lb, strict=True))


def restore(cfg, workdir):
    exp = build_experiment(cfg)
    target = jax.eval_shape(lambda: initial_state(cfg, exp))
    ckpt = Checkpoints(workdir, read_only=True)
    try:
        return ckpt.restore(target)[0]
    finally:
        ckpt.close()


@pytest.mark.slow
def test_train_evaluate_and_exact_resume(tmp_path, capsys):
    """``jaxmeta train`` then ``jaxmeta evaluate`` from the command line (the CLI's
    ``main``, in this process); a run stopped after its step-2 checkpoint and resumed
    (other steps per call) ends bit-identical to the uninterrupted one, metrics and test
    result included. A few iterations on tiny shapes: the programs are compiled with XLA's
    backend optimisations off (conftest)."""
    with run_once_compiles():
        _train_evaluate_and_exact_resume(tmp_path, capsys)


def _train_evaluate_and_exact_resume(tmp_path, capsys):
    full = tmp_path / "full"
    sets = [a for s in TINY for a in ("--set", s)]
    code = main(["train", "--config", str(NAV), "--workdir", str(full), "--no-progress", *sets])
    assert code == 0, capsys.readouterr().err
    test = json.loads((full / "eval_test.json").read_text())
    # Return after 0..3 adaptation steps over the fixed seeded test goals, each with its CI.
    for k in range(4):
        assert np.isfinite(test[f"return_{k}"]) and test[f"return_{k}_ci95"] >= 0
    assert test["return"] == test["return_3"] and test["ci95"] == test["return_3_ci95"]
    assert test["metric"] == "return" and test["episodes"] == 5
    assert test["dataset"] == "navigation2d" and test["algorithm"] == "maml_trpo"
    rows = read_metrics(full / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if r["split"] == "val"] == [2, 4]
    assert all(r["loss"] == -r["return"] for r in rows if r["split"] == "train")

    capsys.readouterr()
    code = main(["evaluate", "--workdir", str(full), "--checkpoint", "latest"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "return_3" in out.out and "95% CI, 5 episodes" in out.out
    (name,) = [p.name for p in full.glob("eval_test_*.json")]
    again = json.loads((full / name).read_text())
    assert again["step"] == 4 and again["checkpoint"] == "latest"
    if test["step"] == 4:  # the best checkpoint is the last: same goals, same key
        assert again["return"] == test["return"]

    part = tmp_path / "part"
    train_and_evaluate(tiny("train.steps=2"), part, progress=False)
    resumed = train_and_evaluate(tiny("train.steps_per_call=3"), part, progress=False)
    assert resumed["start_step"] == 2 and resumed["steps"] == 4
    assert leaves_equal(restore(tiny(), full), restore(tiny(), part))
    # Every train and validation row (timings apart): the same best-checkpoint decisions.
    untimed = lambda wd: [
        {k: v for k, v in r.items() if k not in ("wall_time", "session_time", "steps_per_sec")}
        for r in read_metrics(wd / "metrics.jsonl")
    ]
    assert untimed(full) == untimed(part)
    assert json.loads((part / "eval_test.json").read_text())["return"] == test["return"]

    # The engine's steps are the library's meta_step: rl.train from the same initial
    # state ends in the same state (the source and the outer-update hook split each step
    # key as meta_step does).
    cfg = tiny()
    exp = build_experiment(cfg)
    policy = rl.GaussianMLPPolicy(action_size=2, hidden=(8,))
    learner = rl.maml_trpo(
        policy.apply,
        exp.source.env,
        num_trajectories=4,
        meta_batch=3,
        estimator=cfg.algorithm.kwargs["estimator"],  # the config's: the references' "naive"
    )
    library, _ = rl.train(learner, initial_state(cfg, exp), 4, chunk=4)
    assert leaves_equal(library, restore(cfg, full))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("algorithm.max_kl=-1", "algorithm.max_kl"),
        ("algorithm.meta_batch=4", "algorithm.meta_batch"),
        ("algorithm.fisher=diag", "algorithm.fisher"),
        ("data.horizon=0", "data.horizon"),
        ("algorithm.env=navigation2d", "algorithm.env"),  # supplied by the task source
        ("model.action_size=3", "model.action_size"),
    ],
)
def test_bad_rl_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        tiny(override)


def test_shipped_configs_follow_the_paper():
    """2D navigation: 500 meta-iterations, meta-batch 20, 20 trajectories, inner lr 0.1,
    KL 0.01; the cheetah: meta-batch 40 (read as YAML: building it needs brax)."""
    cfg = load_config(NAV)
    alg = cfg.algorithm.kwargs
    assert (cfg.train.steps, cfg.train.meta_batch_size) == (500, 20)
    assert (alg["num_trajectories"], alg["inner_lr"], alg["max_kl"]) == (20, 0.1, 0.01)
    assert (cfg.algorithm.name, alg["inner_steps"], cfg.eval.episodes) == ("maml_trpo", 1, 40)
    assert load_config(NAV.with_name("maml_trpo_nav2d_sparse.yaml")).data.name == (
        "navigation2d_sparse"
    )
    cheetah = yaml.safe_load(NAV.with_name("maml_trpo_cheetah_dir.yaml").read_text())
    assert cheetah["train"]["meta_batch_size"] == 40 and cheetah["base"] == NAV.name
