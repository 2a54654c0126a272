"""Populations (issue 15): runs vmapped in one program are exactly the runs they stand for.

The proof: a population of 3 seeds x a sweep of the outer and the inner learning rate, and
single ``train_and_evaluate`` runs of some members' configs: same metric rows, same final and
best parameters, same test results (float tolerance: the swept values are traced scalars in
the population and constants in a single run). Then: no retrace, kill -9 and resume
bit-identical, the memory check, the sweep's one-line refusals, load(run=), evaluate.
All on the sinusoid MLP (compiles in seconds).
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
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import RUN_ONCE_ENV, run_once_compiles, xla_flags_with

from jaxmeta.cli import main
from jaxmeta.step import make_population_chunk
from jaxmeta.train import (
    Checkpoints,
    build_experiment,
    config_from_dict,
    initial_state,
    load_config,
    read_metrics,
    train_and_evaluate,
)
from jaxmeta.train import population as pop
from jaxmeta.train.population import (
    PopulationMemoryError,
    member_config,
    members,
    population_builder,
    population_hparams,
    population_state,
    select_run,
)

REPO = Path(__file__).resolve().parents[1]
SIN_YAML = str(REPO / "configs" / "sinusoid" / "maml_k5.yaml")

SIN = {
    "name": "pop",
    "data": {"name": "sinusoid", "shots": 5, "queries": 5},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1},
    "train": {
        "steps": 20,
        "seed": 3,
        "seeds": 3,
        "meta_batch_size": 4,
        "steps_per_call": 4,
        "log_every": 5,
        "eval_every": 10,
        "checkpoint_every": 10,
        "plot": False,
    },
    "eval": {"episodes": 10, "batch_size": 5},
    "sweep": {"optimizer.learning_rate": [0.001, 0.003], "algorithm.inner_lr": [0.01, 0.02]},
}


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    monkeypatch.setenv("JAXMETA_CACHE_DIR", "off")


@pytest.fixture(autouse=True)
def _run_once_compiles():
    # Tiny MLP programs run a few steps: compiled with XLA's backend optimisations off
    # (conftest), in this process and in the ones the tests start.
    with run_once_compiles():
        yield


def _cfg(**sections):
    raw = json.loads(json.dumps(SIN))
    for section, values in sections.items():
        if values is None:
            raw.pop(section, None)
        else:
            raw[section] = {**raw.get(section, {}), **values}
    return config_from_dict(raw, source="test")


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _rows(wd, run=None):
    out = {}
    for r in read_metrics(wd / "metrics.jsonl"):
        if r.get("run") == run and r["split"] in ("train", "val"):
            out[(r["split"], r["step"])] = {
                k: v
                for k, v in r.items()
                if k not in ("steps_per_sec", "wall_time", "session_time", "run")
            }
    return out


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    wd = tmp_path_factory.mktemp("pop") / "wd"
    cfg = _cfg()
    with run_once_compiles():
        result = train_and_evaluate(cfg, wd, progress=False, log=lambda m: None)
    return cfg, wd, result


def test_members_are_seeds_times_the_sweep_product():
    cfg = _cfg()
    every = members(cfg)
    assert len(every) == 2 * 2 * 3
    assert [m["seed"] for m in every[:4]] == [3, 4, 5, 3]
    assert every[11] == {
        "run": 11,
        "seed": 5,
        "optimizer.learning_rate": 0.003,
        "algorithm.inner_lr": 0.02,
    }
    single = member_config(cfg, 11)
    assert single.train.seed == 5 and single.train.seeds is None and single.sweep == ()
    assert single.optimizer.kwargs["learning_rate"] == 0.003
    assert single.algorithm.kwargs["inner_lr"] == 0.02
    # A single run's files are as before: no seeds key, no sweep section.
    assert "seeds" not in single.to_dict()["train"] and "sweep" not in single.to_dict()


@pytest.mark.parametrize("run", [11])
def test_each_member_equals_the_single_run_it_stands_for(population, tmp_path, run):
    cfg, wd, result = population
    single_cfg = member_config(cfg, run)
    single_wd = tmp_path / "single"
    single = train_and_evaluate(single_cfg, single_wd, progress=False, log=lambda m: None)

    # Metric rows: every train and val row of the member, to float tolerance.
    a, b = _rows(wd, run), _rows(single_wd)
    assert a.keys() == b.keys() and len(a) == 4 + 2
    for key in a:
        assert a[key].keys() == b[key].keys(), key
        for name, value in a[key].items():
            if isinstance(value, float):
                np.testing.assert_allclose(value, b[key][name], rtol=2e-5, atol=1e-6)
            else:
                assert value == b[key][name]

    # Final parameters and optimizer state (latest checkpoint) and the best state.
    exp = build_experiment(cfg)
    target = jax.eval_shape(lambda: population_state(cfg, exp))
    both, meta = Checkpoints(wd).restore({"state": target, "best": target})
    s_exp = build_experiment(single_cfg)
    s_target = jax.eval_shape(lambda: initial_state(single_cfg, s_exp))
    final, _ = Checkpoints(single_wd).restore(s_target)
    for x, y in zip(_leaves(select_run(both["state"], run)), _leaves(final), strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)
    best_single, best_meta = Checkpoints(single_wd).restore(s_target, best=True)
    assert meta["best_steps"][run] == best_meta["best_step"] == single["best_step"]
    best_pop, _ = Checkpoints(wd).restore(target, best=True)
    for x, y in zip(_leaves(select_run(best_pop, run)), _leaves(best_single), strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)

    # The test result of the member's best state.
    member = result["test"]["runs"][run]
    np.testing.assert_allclose(member["mse"], single["test"]["mse"], rtol=2e-5)
    np.testing.assert_allclose(member["ci95"], single["test"]["ci95"], rtol=2e-4)


def test_outputs_across_seeds(population):
    cfg, wd, result = population
    test = json.loads((wd / "eval_test.json").read_text())
    assert [r["run"] for r in test["runs"]] == list(range(12))
    groups = test["across_seeds"]
    assert len(groups) == 4 and all(g["seeds"] == [3, 4, 5] for g in groups)
    g = groups[3]
    values = [test["runs"][r]["mse"] for r in g["runs"]]
    assert g["optimizer.learning_rate"] == 0.003 and g["algorithm.inner_lr"] == 0.02
    np.testing.assert_allclose(g["mse"], np.mean(values))
    np.testing.assert_allclose(g["std"], np.std(values, ddof=1))
    np.testing.assert_allclose(g["ci95_across_seeds"], 4.303 * np.std(values, ddof=1) / np.sqrt(3))
    rows = read_metrics(wd / "metrics.jsonl")
    assert {r["run"] for r in rows if r["split"] == "train"} == set(range(12))
    assert result["runs"] == 12 and len(result["best_step"]) == 12


def test_chunk_compiles_once_for_any_number_of_steps():
    cfg = _cfg(train={"seeds": 2}, sweep=None)
    exp = build_experiment(cfg)
    traces = []
    inner = population_builder(cfg, exp)

    def build(hparams):
        traces.append(1)
        return inner(hparams)

    sample = lambda k, d: exp.source.sample(k, d, tasks=4)
    # The program of the memory check's 2-run population (the persistent cache compiles it
    # once): the state is donated.
    chunk = make_population_chunk(build, sample, length=4)
    state, hp, data = population_state(cfg, exp), population_hparams(cfg), exp.source.train_data()
    for n in (4, 2, 1, 3):
        state, metrics = chunk(state, hp, data, jnp.asarray(n, jnp.int32))
        assert metrics["loss"].shape == (2, 4)
    assert len(traces) == 1 and chunk._cache_size() == 1
    # Steps past n leave the state alone.
    before = _leaves(state)
    after, _ = chunk(state, hp, data, jnp.asarray(0, jnp.int32))
    for x, y in zip(_leaves(after), before, strict=True):
        assert np.array_equal(x, y)


def test_load_and_evaluate_one_member_or_all(population, capsys):
    import jaxmeta

    cfg, wd, result = population
    with pytest.raises(ValueError, match="population of 12 runs: pick one with run=I"):
        jaxmeta.train.restore_run(wd)
    clf = jaxmeta.load(wd, run=7)
    best, _ = Checkpoints(wd).restore(
        jax.eval_shape(lambda: population_state(cfg, build_experiment(cfg))), best=True
    )
    for x, y in zip(_leaves(clf.params), _leaves(select_run(best, 7).params), strict=True):
        assert np.array_equal(x, y)
    assert clf.config.algorithm.kwargs["inner_lr"] == members(cfg)[7]["algorithm.inner_lr"]
    assert main(["evaluate", "-w", str(wd), "--run", "7"]) == 0
    out = capsys.readouterr().out
    assert f"{result['test']['runs'][7]['mse']:.4f}" in out
    assert main(["evaluate", "-w", str(wd)]) == 0
    out = capsys.readouterr().out
    assert "test mse over 3 seeds (optimizer.learning_rate=0.003, algorithm.inner_lr=0.02)" in out
    saved = json.loads((wd / "eval_test_best_10ep.json").read_text())
    for a, b in zip(saved["runs"], result["test"]["runs"], strict=True):
        np.testing.assert_allclose(a["mse"], b["mse"], rtol=1e-6)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("sweep.algorithm.inner_steps", "[1,2]", "cannot vary inside one program"),
        ("sweep.model.hidden", "[8,16]", "cannot vary inside one program"),
        ("sweep.optimizer.learning_rate", "[]", "expected a non-empty list"),
        ("sweep.algorithm.inner_lr", "[0.1,-1]", "learning rates must be positive"),
        ("train.seeds", "0", "must be positive"),
    ],
)
def test_bad_population_configs_are_one_line(tmp_path, capsys, key, value, message):
    args = ["train", "--config", SIN_YAML, "--workdir", str(tmp_path / "wd"), "--no-progress"]
    assert main([*args, "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("jaxmeta: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert key in lines[0] and message in lines[0]
    assert not (tmp_path / "wd").exists()


def test_outer_lr_sweep_with_a_schedule_is_refused(tmp_path, capsys):
    args = ["train", "--config", SIN_YAML, "--workdir", str(tmp_path / "wd"), "--no-progress"]
    sets = ["optimizer.schedule={name: cosine}", "sweep.optimizer.learning_rate=[0.1,0.2]"]
    assert main([*args, "--set", sets[0], "--set", sets[1]]) == 2
    err = capsys.readouterr().err
    assert "sweep.optimizer.learning_rate: cannot be swept together with optimizer.schedule" in err
    assert "Traceback" not in err and not (tmp_path / "wd").exists()


def test_seeds_flag_sets_train_seeds(tmp_path, capsys):
    args = ["train", "--config", SIN_YAML, "--workdir", str(tmp_path / "wd"), "--no-progress"]
    assert main([*args, "--seeds", "0"]) == 2
    assert "--set: train.seeds: must be positive, got 0" in capsys.readouterr().err


def test_memory_check_refuses_with_the_largest_population_that_fits(tmp_path, monkeypatch):
    cfg = _cfg(sweep=None, train={"seeds": 4, "eval_every": 0})
    limit = 30_000  # bytes: 1 run needs ~14 kB, 2 runs ~24 kB, 4 runs ~45 kB (jax 0.10, CPU)
    monkeypatch.setattr(pop, "device_memory_limit", lambda: limit)
    with pytest.raises(PopulationMemoryError) as err:
        train_and_evaluate(cfg, tmp_path / "wd", progress=False, log=lambda m: None)
    msg = str(err.value)
    assert "a population of 4 runs needs" in msg and "lower train.seeds" in msg
    need = float(msg.split("needs ")[1].split(" MiB")[0]) * 2**20
    fits = int(msg.split("at most ")[1].split(" runs fit")[0])
    assert need > limit and 1 <= fits < 4
    assert not (tmp_path / "wd" / "checkpoints").exists() or not any(
        (tmp_path / "wd" / "checkpoints").iterdir()
    )
    # The estimate is honest: that many runs fit (their own program's memory analysis).
    smaller = _cfg(sweep=None, train={"seeds": fits, "eval_every": 0})
    exp = build_experiment(smaller)
    chunk = make_population_chunk(
        population_builder(smaller, exp), lambda k, d: exp.source.sample(k, d, tasks=4), length=4
    )
    args = (population_state(smaller, exp), population_hparams(smaller))
    compiled = chunk.lower(*args, exp.source.train_data(), jnp.asarray(1, jnp.int32)).compile()
    assert pop.program_bytes(compiled) <= limit


# --------------------------------------------------------------------------- kill -9


SETS = [
    "model.hidden=[8]",
    "train.seeds=2",
    "train.steps=100",
    "train.steps_per_call=5",
    "train.log_every=5",
    "train.checkpoint_every=10",
    "train.eval_every=20",
    "eval.episodes=10",
    "train.plot=false",
    "sweep.algorithm.inner_lr=[0.01,0.02]",
]


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path):
    # Three processes share the suite's compilation cache (conftest): only the first compiles.
    # All three are processes. Run in a pytest worker, the reference and the resumed run
    # differed from the killed process's in the 8th digit of the validation MSE when an
    # earlier test of that worker (test_cli's test_evaluate_regression_json) had compiled the
    # same sinusoid programs at XLA's default optimisation level: JAX's in-memory cache reused
    # them inside run_once_compiles(), while the processes compiled with optimisations off.
    # Two optimisation levels, two programs, different rounding; with one level everywhere
    # (JAX_DISABLE_MOST_OPTIMIZATIONS=1 for the whole pytest run) it was bit-identical.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **RUN_ONCE_ENV}

    def command(wd):
        args = ["train", "--config", SIN_YAML, "--workdir", str(wd), "--no-progress"]
        for s in SETS:
            args += ["--set", s]
        return [sys.executable, "-m", "jaxmeta", *args]

    ref, wd = tmp_path / "ref", tmp_path / "killed"
    out = subprocess.run(command(ref), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    proc = subprocess.Popen(
        command(wd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline, killed = time.time() + 300, False
    while time.time() < deadline and proc.poll() is None:
        steps = [r["step"] for r in read_metrics(wd / "metrics.jsonl") if r["split"] == "train"]
        if steps and steps[-1] >= 45:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed and proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    stopped = Checkpoints(wd).latest_step()
    assert stopped is not None and stopped < 100
    out = subprocess.run(command(wd), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming from step {stopped}" in out.stderr

    cfg = load_config(SIN_YAML, SETS)
    exp = build_experiment(cfg)
    target = jax.eval_shape(lambda: population_state(cfg, exp))
    a, meta_a = Checkpoints(ref).restore({"state": target, "best": target})
    b, meta_b = Checkpoints(wd).restore({"state": target, "best": target})
    assert int(meta_a["step"]) == int(meta_b["step"]) == 100
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    assert meta_a["best_steps"] == meta_b["best_steps"]
    assert meta_a["best_scores"] == meta_b["best_scores"]
    for r in range(4):  # the metrics log holds each step of each run exactly once
        assert _rows(ref, r) == _rows(wd, r), r
    test_a = json.loads((ref / "eval_test.json").read_text())
    assert test_a == json.loads((wd / "eval_test.json").read_text())


@pytest.mark.slow
def test_runs_x_tasks_mesh_of_4_devices_equals_one_device(tmp_path):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags_with("--xla_force_host_platform_device_count=4"),
        **RUN_ONCE_ENV,
    }
    worker = Path(__file__).with_name("_population_sharding_worker.py")
    proc = subprocess.run(
        [sys.executable, str(worker), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["devices"] == 4
    one, mesh = res["one"], res["mesh"]
    assert mesh["mesh"]["shape"] == {"runs": 2, "tasks": 2}, mesh["mesh"]
    for a, b in zip(one["leaves"], mesh["leaves"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one["test"], mesh["test"], rtol=1e-5)
    assert one["best_steps"] == mesh["best_steps"]


def test_tensorboard_tags_are_per_run(tmp_path):
    from jaxmeta.train.population_loop import PopulationMetricsWriter

    class FakeTB:  # tensorboardX's SummaryWriter, as far as the writer uses it
        def __init__(self):
            self.tags = []

        def add_scalar(self, tag, value, step):
            self.tags.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            pass

    w = PopulationMetricsWriter(tmp_path)
    w._tb = FakeTB()
    w.write({"split": "train", "step": 5, "run": 2, "loss": 1.5})
    w.write({"split": "val", "step": 10, "run": 0, "mse": 0.5})
    tags = w._tb.tags
    w.close()
    assert tags == [("train/run2/loss", 1.5, 5), ("val/run0/mse", 0.5, 10)]
    assert [r["run"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [2, 0]
