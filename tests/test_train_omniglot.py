"""End to end on the genuine Omniglot data with the tiny config, through the CLI.

One uninterrupted reference run; one run killed with SIGKILL mid-training and resumed:
the resumed run must end with bit-identical parameters, the same best checkpoint and
the same metrics log (every step exactly once). Then ``jaxmeta evaluate`` on it.

Subprocesses share the suite's persistent XLA compilation cache (tests/conftest.py), so only the
first one compiles.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import run_once_compiles

from jaxmeta.train import Checkpoints, build_experiment, initial_state, load_config, read_metrics

REPO = Path(__file__).resolve().parents[1]
# One worker runs this module: its module fixture (a trained run) is built once, not per worker.
pytestmark = pytest.mark.xdist_group("test_train_omniglot")
TINY = REPO / "configs" / "tests" / "tiny.yaml"
STEPS = 120  # 3 validations, the kill at step 50+ with 60+ steps still to go
RUN_SETS = [
    f"train.steps={STEPS}",
    "train.steps_per_call=7",
    "train.log_every=10",
    "train.checkpoint_every=20",
    "train.eval_every=40",
    "eval.episodes=20",
]


@pytest.fixture(scope="module")
def env(omniglot, omniglot_data_dir):
    e = {**os.environ, "JAX_PLATFORMS": "cpu"}  # with the suite's compilation cache (conftest)
    data_sets = [f"data.data_dir={omniglot_data_dir}", "data.download=false"]
    return e, data_sets


def _cmd(*args):
    return [sys.executable, "-m", "jaxmeta.cli", *args]


def _train_cmd(workdir, data_sets):
    sets = [x for s in RUN_SETS + data_sets for x in ("--set", s)]
    return _cmd("train", "--config", str(TINY), "--workdir", str(workdir), "--no-progress", *sets)


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    e, data_sets = env
    wd = tmp_path_factory.mktemp("reference")
    out = subprocess.run(
        _train_cmd(wd, data_sets), env=e, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return wd, out


def _final_state(wd: Path, *, best: bool = False):
    cfg = load_config(wd / "config.yaml")
    exp = build_experiment(cfg)
    target = jax.eval_shape(lambda: initial_state(cfg, exp))
    return Checkpoints(wd).restore(target, best=best)


def test_train_writes_everything(reference):
    wd, out = reference
    for name in ("config.yaml", "environment.json", "metrics.jsonl", "eval_test.json"):
        assert (wd / name).exists(), name
    res = json.loads((wd / "eval_test.json").read_text())
    assert {"accuracy", "ci95", "episodes", "step", "checkpoint"} <= set(res)
    assert res["episodes"] == 20 and res["checkpoint"] == "best"
    assert 0.0 <= res["accuracy"] <= 1.0 and res["ci95"] > 0
    assert "test accuracy:" in out.stderr and "checkpoint: best" in out.stderr
    rows = read_metrics(wd / "metrics.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(10, STEPS + 1, 10))
    assert {"loss", "accuracy", "steps_per_sec", "wall_time"} <= set(train[0])
    assert [r["step"] for r in rows if r["split"] == "val"] == list(range(40, STEPS + 1, 40))
    assert not [r for r in rows if r["split"] == "warning"]  # a healthy run: no divergence
    ckpt = Checkpoints(wd, keep=2)
    assert ckpt.latest_step() == STEPS
    assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir()) == [STEPS - 20, STEPS]
    val = [r for r in rows if r["split"] == "val"]
    best = max(val, key=lambda r: (r["accuracy"], -r["step"]))  # first best wins ties
    assert ckpt.best_step() == best["step"] == res["step"]
    env_json = json.loads((wd / "environment.json").read_text())
    assert env_json["packages"]["orbax-checkpoint"] and env_json["device_kind"]


def test_sigkill_and_resume_is_bit_identical(reference, env, tmp_path):
    ref_wd, _ = reference
    e, data_sets = env
    wd = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(wd, data_sets),
        env=e,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 600
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        rows = read_metrics(wd / "metrics.jsonl")
        steps = [r["step"] for r in rows if r["split"] == "train"]
        if steps and steps[-1] >= 50:
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = steps[-1]
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    interrupted = Checkpoints(wd).latest_step()
    assert interrupted is not None and interrupted < STEPS

    out = subprocess.run(
        _train_cmd(wd, data_sets), env=e, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming from step {interrupted}" in out.stderr

    a, meta_a = _final_state(ref_wd)
    b, meta_b = _final_state(wd)
    assert int(a.step) == int(b.step) == STEPS
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
    assert meta_a["best_step"] == meta_b["best_step"]
    assert meta_a["best_score"] == meta_b["best_score"]

    def log(w):
        return [
            (r["split"], r["step"], r.get("loss"), r.get("accuracy"))
            for r in read_metrics(w / "metrics.jsonl")
        ]

    assert log(wd) == log(ref_wd)  # same rows, none duplicated or lost
    ra = json.loads((ref_wd / "eval_test.json").read_text())
    rb = json.loads((wd / "eval_test.json").read_text())
    assert (ra["accuracy"], ra["step"]) == (rb["accuracy"], rb["step"])


def test_evaluate_cli_writes_json(reference, capsys, monkeypatch):
    from jaxmeta.cli import main

    monkeypatch.setenv("JAXMETA_CACHE_DIR", "off")  # main() would enable one for the process
    wd, _ = reference
    args = ["evaluate", "--workdir", str(wd), "--split", "val", "--episodes", "30"]
    with run_once_compiles():  # each evaluation program runs once
        code = main([*args, "--inner-steps", "3"])
    assert code == 0, capsys.readouterr().err[-3000:]
    printed = capsys.readouterr().out
    res = json.loads((wd / "eval_val_best_30ep_3steps.json").read_text())
    assert res["episodes"] == 30 and res["inner_steps"] == 3 and res["split"] == "val"
    assert res["step"] == Checkpoints(wd).best_step() and res["checkpoint"] == "best"
    assert 0.0 <= res["accuracy"] <= 1.0 and 0.0 <= res["accuracy_inductive"] <= 1.0
    assert res["bn_mode"] == "transductive" and res["ci95_inductive"] > 0
    assert f"{100 * res['accuracy']:.2f}% ± {100 * res['ci95']:.2f}%" in printed
    assert f"{100 * res['accuracy_inductive']:.2f}%" in printed
