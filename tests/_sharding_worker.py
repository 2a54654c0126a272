"""Subprocess side of tests/test_sharding.py (JAX must see XLA_FLAGS before it starts).

Usage::

    python tests/_sharding_worker.py step DEVICES            # sharded vs 1-device chunks
    python tests/_sharding_worker.py resume ROOT              # 6 steps == 3, stop, resume
    python tests/_sharding_worker.py step_resume DEVICES ROOT # both, one process
    python tests/_sharding_worker.py train WORKDIR JSON_CFG   # train_and_evaluate, dump params

Run as a script, ``train`` joins a ``jax.distributed`` run first when
``$JAXMETA_COORDINATOR_ADDRESS`` is set (with ``$JAXMETA_NUM_PROCESSES`` and
``$JAXMETA_PROCESS_ID``); tests/test_sharding.py also imports ``train`` to run it in its
own process. The last stdout line is one JSON object.
"""

from __future__ import annotations

import json
import sys

from jaxmeta import sharding

if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "train":
    # Before anything touches a JAX backend.
    sharding.initialize_distributed(initialization_timeout=60)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

SIN = {
    "name": "sin_shard",
    "data": {"name": "sinusoid", "shots": 5, "queries": 5},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1},
    "train": {
        "steps": 6,
        "meta_batch_size": 8,
        "steps_per_call": 3,
        "log_every": 3,
        "eval_every": 3,
        "checkpoint_every": 3,
        "plot": False,
    },
    "eval": {"episodes": 16, "batch_size": 4},
}


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def step(devices: int) -> dict:
    """Params after 3 fused meta-steps: 1 device vs a ``devices`` mesh, two models."""
    import optax

    from jaxmeta import maml
    from jaxmeta.data.episodes import sample_episodes
    from jaxmeta.models.conv4 import Conv4
    from jaxmeta.train import build_experiment, config_from_dict, initial_state, make_train_chunk
    from jaxmeta.train.state import init_train_state

    out: dict = {"devices": len(jax.devices())}
    mesh = sharding.make_task_mesh(devices)
    n = jnp.asarray(3, jnp.int32)

    def run(learner, opt, sample, data, state, sharded: bool, shard_params: bool = False):
        if sharded:
            sample = sharding.sharded_sampler(sample, mesh, tasks=8)
            data = sharding.replicate(data, mesh)
            state = sharding.place_state(state, mesh, shard_params=shard_params, min_size=64)
        else:
            sample = (lambda s: lambda k, d: s(k, d, 8))(sample)
        chunk = make_train_chunk(learner, opt, sample, length=3, donate=False)
        compiled = chunk.lower(state, data, n).compile()
        state, metrics = compiled(state, data, n)
        specs = {str(getattr(x.sharding, "spec", None)) for x in jax.tree_util.tree_leaves(state)}
        run.hlo = compiled.as_text()
        return _leaves(state.params), np.asarray(metrics["loss"]), specs

    # Sinusoid MLP through the engine's own builders.
    cfg = config_from_dict(SIN, source="worker")
    exp = build_experiment(cfg)
    sample = lambda k, d, t: exp.source.sample(k, d, tasks=t)
    p1, l1, _ = run(
        exp.learner, exp.optimizer, sample, exp.source.train_data(), initial_state(cfg, exp), False
    )
    pn, ln, specs = run(
        exp.learner, exp.optimizer, sample, exp.source.train_data(), initial_state(cfg, exp), True
    )
    out["sinusoid"] = {
        "max_param_diff": _max_diff(p1, pn),
        "max_loss_diff": float(np.max(np.abs(l1 - ln))),
        "param_change": _max_diff(p1, _leaves(initial_state(cfg, exp).params)),
        "state_specs": sorted(specs),
    }
    # FSDP-style: the 16x16 weight and its Adam moments split over the devices.
    pf, lf, specs = run(
        exp.learner,
        exp.optimizer,
        sample,
        exp.source.train_data(),
        initial_state(cfg, exp),
        True,
        shard_params=True,
    )
    out["sinusoid_sharded_params"] = {
        "max_param_diff": _max_diff(p1, pf),
        "max_loss_diff": float(np.max(np.abs(l1 - lf))),
        "state_specs": sorted(specs),
    }

    # Tiny Conv-4 (8 filters) on random "characters", 5-way 1-shot, second order.
    images = jax.random.randint(jax.random.key(1), (40, 20, 28, 28), 0, 256).astype(jnp.uint8)
    model = Conv4(num_classes=5, filters=8)
    learner = maml(model.apply, inner_lr=0.4, inner_steps=1)
    opt = optax.adam(1e-3)
    samp = lambda k, d, t: sample_episodes(
        k, d, tasks=t, ways=5, shots=1, queries=2, rotations=True
    )
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((5, 28, 28, 1), jnp.float32))
    mk = lambda: init_train_state(learner, opt, params, key=jax.random.key(2))
    p1, l1, _ = run(learner, opt, samp, images, mk(), False)
    pn, ln, specs = run(learner, opt, samp, images, mk(), True)
    out["conv4"] = {
        "max_param_diff": _max_diff(p1, pn),
        "max_loss_diff": float(np.max(np.abs(l1 - ln))),
        "param_change": _max_diff(p1, _leaves(mk().params)),
        "state_specs": sorted(specs),
    }

    # Each device samples only its own tasks: no all-gather, no full-batch episode arrays.
    hlo = run.hlo
    gathers = [
        ln.split("=")[1].split("all-gather")[0].strip()
        for ln in hlo.splitlines()
        if " all-gather(" in ln or " all-gather-start(" in ln
    ]
    out["hlo"] = {
        "all_gather": gathers,
        "all_reduce": hlo.count("all-reduce("),
        "full_batch_support": hlo.count("f32[8,5,28,28,1]"),
        "local_batch_support": hlo.count(f"f32[{8 // devices},5,28,28,1]"),
    }
    # The engine refuses a meta-batch that does not split over the mesh.
    from jaxmeta.train import task_mesh

    bad = config_from_dict(
        {**SIN, "train": {**SIN["train"], "meta_batch_size": 6}, "mesh": {"devices": 0}},
        source="worker",
    )
    try:
        task_mesh(bad)
        out["indivisible_error"] = None
    except ValueError as err:
        out["indivisible_error"] = str(err)
    return out


def resume(root: str) -> dict:
    """Sharded run of 6 steps vs the same run stopped at step 3 and resumed."""
    from pathlib import Path

    full = train(str(Path(root) / "full"), '{"mesh": {"devices": 0}}')
    part = train(str(Path(root) / "part"), '{"mesh": {"devices": 0}, "train": {"steps": 3}}')
    resumed = train(str(Path(root) / "part"), '{"mesh": {"devices": 0}}')
    return {"full": full, "part_steps": part["steps"], "resumed": resumed}


def train(workdir: str, overrides: str) -> dict:
    from jaxmeta.train import (
        Checkpoints,
        build_experiment,
        config_from_dict,
        initial_state,
        task_mesh,
        train_and_evaluate,
    )

    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SIN.items()}
    for section, values in json.loads(overrides).items():
        raw[section] = {**raw.get(section, {}), **values}
    cfg = config_from_dict(raw, source="worker")
    result = train_and_evaluate(cfg, workdir, progress=False, log=lambda m: None)
    # Read the final checkpoint back, on every process, into the run's shardings.
    exp = build_experiment(cfg)
    target = initial_state(cfg, exp)
    mesh = task_mesh(cfg)
    if mesh is not None:
        target = sharding.replicate(target, mesh)
    ckpt = Checkpoints(workdir, keep=cfg.train.keep_checkpoints)
    state, _ = ckpt.restore(target)
    ckpt.close()
    return {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": len(jax.devices()),
        "mesh": sharding.describe(mesh),
        "start_step": result["start_step"],
        "steps": int(state.step),
        "test": {
            k: v for k, v in (result.get("test") or {}).items() if k in ("mse", "ci95", "episodes")
        },
        "params": [x.tolist() for x in _leaves(state.params)],
    }


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "step":
        res = step(int(sys.argv[2]))
    elif mode == "resume":
        res = resume(sys.argv[2])
    elif mode == "step_resume":  # one process (one start, one import) for both
        res = {"step": step(int(sys.argv[2])), "resume": resume(sys.argv[3])}
    elif mode == "train":
        res = train(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(res))
