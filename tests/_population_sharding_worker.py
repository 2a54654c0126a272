"""Subprocess side of tests/test_population.py's mesh test (XLA_FLAGS must be set before
JAX starts): a population trained on a 2-D runs x tasks mesh of the simulated CPU devices
and on one device. The last stdout line is one JSON object.

Usage::

    python tests/_population_sharding_worker.py ROOT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np

from jaxmeta.train import Checkpoints, build_experiment, config_from_dict, train_and_evaluate
from jaxmeta.train.population import population_state

SIN = {
    "name": "pop_mesh",
    "data": {"name": "sinusoid", "shots": 5, "queries": 5},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "algorithm": {"name": "maml", "inner_lr": 0.01, "inner_steps": 1},
    "train": {
        "steps": 6,
        "seeds": 2,
        "meta_batch_size": 4,
        "steps_per_call": 3,
        "log_every": 3,
        "eval_every": 3,
        "checkpoint_every": 3,
        "plot": False,
    },
    "eval": {"episodes": 8, "batch_size": 4},
    "sweep": {"optimizer.learning_rate": [0.002]},
}


def main(root: Path) -> None:
    out = {"devices": len(jax.devices())}
    for name, devices in (("one", None), ("mesh", 4)):
        raw = json.loads(json.dumps(SIN))
        raw["mesh"] = {"devices": devices}
        cfg = config_from_dict(raw, source="worker")
        wd = root / name
        res = train_and_evaluate(cfg, wd, progress=False, log=lambda m: None)
        exp = build_experiment(cfg)
        target = jax.eval_shape(lambda cfg=cfg, exp=exp: population_state(cfg, exp))
        both, meta = Checkpoints(wd).restore({"state": target, "best": target})
        env = json.loads((wd / "environment.json").read_text())
        out[name] = {
            "leaves": [np.asarray(x, np.float64).ravel().tolist() for x in jax.tree.leaves(both)],
            "test": [r["mse"] for r in res["test"]["runs"]],
            "best_steps": meta["best_steps"],
            "mesh": env.get("mesh") or env.get("sessions", [{}])[-1].get("mesh"),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
