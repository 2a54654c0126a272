"""Task-axis sharding and multi-process training (jaxmeta.sharding).

JAX reads ``XLA_FLAGS`` once, and this test process already has one CPU device, so
every multi-device case runs ``tests/_sharding_worker.py`` in a subprocess with
``--xla_force_host_platform_device_count`` and compares the JSON it prints.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import RUN_ONCE_ENV, run_once_compiles, xla_flags_with

from jaxmeta import sharding
from jaxmeta.train import config_from_dict
from jaxmeta.train.config import ConfigError

WORKER = Path(__file__).with_name("_sharding_worker.py")
BASE = {
    "data": {"name": "sinusoid"},
    "model": {"name": "mlp"},
    "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1},
}
TIMEOUT = 600  # seconds per subprocess: a hung collective must fail the test, not CI


def _env(tmp_path: Path, devices: int | None, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JAXMETA_COORDINATOR", "JAXMETA_NUM_PROC", "JAXMETA_PROCESS"))
    }
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = xla_flags_with(
        *([f"--xla_force_host_platform_device_count={devices}"] if devices else [])
    )
    # Compiled programs are shared through the suite's persistent cache (tests/conftest.py);
    # they run a few steps on tiny shapes, so XLA's backend optimisations are off.
    env.update(RUN_ONCE_ENV)
    env.update(extra)
    return env


def _run(args: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, str(WORKER), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _params(res: dict) -> list[np.ndarray]:
    return [np.asarray(p, np.float32) for p in res["params"]]


# The two 4-device tests read one worker process (a process start and its imports saved);
# one xdist group, so the fixture is built once.
FOUR_DEVICES = pytest.mark.xdist_group("test_sharding_4_devices")


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory) -> tuple[dict, Path]:
    """The worker's ``step`` and ``resume`` results on 4 simulated devices, and its root."""
    root = tmp_path_factory.mktemp("sharding_4_devices")
    res = _run(["step_resume", "4", str(root / "runs")], _env(root, 4))
    return res, root


@FOUR_DEVICES
def test_sharded_step_equals_single_device(four_devices):
    """3 fused meta-steps on a 4-device mesh == on one device (sinusoid MLP, Conv-4)."""
    res = four_devices[0]["step"]
    assert res["devices"] == 4
    for model in ("sinusoid", "conv4"):
        r = res[model]
        assert r["param_change"] > 1e-3, r  # the steps moved the parameters
        # Same episodes, same per-task gradients; only the order of the mean differs.
        assert r["max_param_diff"] < 1e-6, r
        assert r["max_loss_diff"] < 1e-5, r
        assert r["state_specs"] == ["P()"], r  # state stays replicated
    r = res["sinusoid_sharded_params"]  # parameters and Adam moments sharded (FSDP-style)
    assert r["max_param_diff"] < 1e-6 and r["max_loss_diff"] < 1e-5, r
    assert "P('tasks',)" in r["state_specs"], r  # ... and they stay sharded
    hlo = res["hlo"]
    assert hlo["all_reduce"] >= 1  # the meta-gradient mean crosses devices
    # Each device samples and adapts its own 2 tasks: no [8, ...] image batch exists,
    # and no episode images are gathered.
    assert hlo["full_batch_support"] == 0 and hlo["local_batch_support"] > 0, hlo
    assert not any("28,28" in shape for shape in hlo["all_gather"]), hlo
    err = res["indivisible_error"]
    assert err is not None and "6" in err and "4 devices" in err, err


def test_meta_batch_not_divisible_is_a_clear_error():
    with pytest.raises(ValueError, match=r"meta-batch size 30 is not divisible by the 4 devices"):
        sharding.check_divisible(30, 4)
    sharding.check_divisible(32, 4)
    raw = {**BASE, "train": {"meta_batch_size": 25}, "mesh": {"devices": 2}}
    with pytest.raises(ConfigError, match=r"mesh\.devices.*25 is not divisible by mesh\.devices 2"):
        config_from_dict(raw, source="t.yaml")
    with pytest.raises(ValueError, match="2 devices requested but 1 is available"):
        sharding.make_task_mesh(2)


def test_config_keys_validated():
    base = BASE
    cfg = config_from_dict(
        {
            **base,
            "mesh": {"devices": 0, "sampler": "shard_map"},
            "distributed": {
                "coordinator_address": "host:1234",
                "num_processes": 2,
                "process_id": 1,
            },
        }
    )
    assert cfg.mesh.devices == 0 and cfg.distributed.process_id == 1
    for bad, key in (
        ({"mesh": {"sampler": "x"}}, "mesh.sampler"),
        ({"mesh": {"devices": -1}}, "mesh.devices"),
        ({"mesh": {"gpus": 2}}, "mesh.gpus"),
        ({"distributed": {"num_processes": 2, "process_id": 2}}, "distributed.process_id"),
        ({"distributed": {"coordinator_address": "nohost"}}, "distributed.coordinator_address"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            config_from_dict({**base, **bad})


def test_initialize_distributed_needs_all_three(monkeypatch):
    for name in (sharding.ENV_COORDINATOR, sharding.ENV_NUM_PROCESSES, sharding.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    assert sharding.initialize_distributed() is False  # single process: nothing to do
    with pytest.raises(ValueError, match="without process_id"):
        sharding.initialize_distributed(coordinator_address="localhost:1", num_processes=2)
    monkeypatch.setenv(sharding.ENV_NUM_PROCESSES, "2")
    with pytest.raises(ValueError, match="needs a coordinator address"):
        sharding.initialize_distributed()


@FOUR_DEVICES
def test_sharded_run_resumes_bit_identically(four_devices):
    """4 devices: 6 steps straight == 3 steps, stop, resume to 6 (bit for bit).

    Both runs execute the same compiled programs on the same inputs (the step key is
    ``fold_in(base key, step)``; orbax restores the replicated state exactly), and
    XLA:CPU is deterministic, so equality is exact, not approximate.
    """
    res, tmp_path = four_devices[0]["resume"], four_devices[1]
    full, resumed = res["full"], res["resumed"]
    assert full["mesh"]["devices"] == 4 and resumed["mesh"]["devices"] == 4
    assert res["part_steps"] == 3 and resumed["start_step"] == 3 and resumed["steps"] == 6
    for a, b in zip(_params(full), _params(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert full["test"] == resumed["test"]
    # A 1-device process (this one; e.g. ``jaxmeta evaluate``) reads the 4-device checkpoint.
    import jax

    from jaxmeta.train import Checkpoints, build_experiment, initial_state, load_config

    cfg = load_config(tmp_path / "runs" / "full" / "config.yaml")
    exp = build_experiment(cfg)
    ckpt = Checkpoints(tmp_path / "runs" / "full")
    state, _ = ckpt.restore(jax.eval_shape(lambda: initial_state(cfg, exp)))
    ckpt.close()
    assert int(state.step) == 6
    for a, b in zip(_params(full), jax.tree_util.tree_leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    rows = [json.loads(line) for line in (tmp_path / "runs" / "part" / "metrics.jsonl").open()]
    assert [(r["split"], r["step"]) for r in rows] == [
        ("train", 3),
        ("val", 3),
        ("train", 6),
        ("val", 6),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    """jax.distributed on localhost, 2 processes x 1 CPU device == 1 process, 1 device."""
    # The 1-process run is this process (1 CPU device; no process start), on the worker's
    # own code, with the worker's compile options (RUN_ONCE_ENV).
    from _sharding_worker import train

    with run_once_compiles():
        one = train(str(tmp_path / "one"), "{}")
    assert one["mesh"]["devices"] == 1 and one["processes"] == 1

    port = _free_port()
    procs = []
    for i in range(2):
        env = _env(
            tmp_path,
            None,
            JAXMETA_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAXMETA_NUM_PROCESSES="2",
            JAXMETA_PROCESS_ID=str(i),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), "train", str(tmp_path / "two"), "{}"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT)
            assert p.returncode == 0, err[-4000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, res in enumerate(outs):
        assert res["process"] == i and res["processes"] == 2
        assert res["mesh"] == {
            "devices": 2,
            "processes": 2,
            "process_index": i,
            "local_devices": 1,
            "axis": "tasks",
        }
        assert res["steps"] == 6
        for a, b in zip(_params(one), _params(res), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert res["test"]["mse"] == pytest.approx(one["test"]["mse"], rel=1e-5)
    # Both processes restored the same checkpoint; process 0 alone wrote the logs.
    assert outs[0]["params"] == outs[1]["params"]
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").open()]
    assert [(r["split"], r["step"]) for r in rows] == [
        ("train", 3),
        ("val", 3),
        ("train", 6),
        ("val", 6),
    ]
    assert json.loads((tmp_path / "two" / "eval_test.json").read_text())["episodes"] == 16
