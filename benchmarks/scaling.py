"""Step time of the task-sharded meta-step vs the number of (simulated) devices.

Each configuration runs in its own process with
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` (JAX reads the flag once), builds
the engine's fused training chunk (``steps_per_call`` meta-steps in one ``lax.scan``,
the episode sampler inside it) with ``jaxmeta.sharding`` on a ``D``-device mesh, and
times it with the protocol of ``benchmarks/_common.py`` (AOT compile, warm-up, median).
``D = 1`` is the plain single-device program (no mesh), exactly what ``jaxmeta train``
runs by default.

Workloads: ``conv4`` = second-order MAML, Conv-4 (``--filters``), 5-way 1-shot,
``--queries`` queries per class, 1 inner step, on random uint8 "characters" (the
sampler's cost does not depend on the pixels); ``sinusoid`` = MAML on the MLP 40-40.
Scaling modes: ``strong`` keeps the meta-batch (``--meta-batch``) fixed, ``weak`` gives
every device ``--tasks-per-device`` tasks.

On a CPU the simulated devices share the same cores, so this measures the overhead of
partitioning (collectives, per-device dispatch, lost intra-op parallelism) and the
per-device efficiency, not a speed-up; on N real GPUs the same program runs each
device's share in parallel.

Usage::

    python benchmarks/scaling.py                       # default sweep, Markdown table
    python benchmarks/scaling.py --devices 1,2,4,8 --workloads conv4 --out results.json
    python benchmarks/scaling.py --quick                # smoke run (about a minute)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DEFAULT_OUT = C.scratch("scaling") / "scaling.json"  # curated: benchmarks/results/scaling


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import optax

    from jaxmeta import maml, sharding
    from jaxmeta.data.episodes import sample_episodes
    from jaxmeta.data.sinusoid import sample_sinusoid_tasks
    from jaxmeta.losses import mse_loss
    from jaxmeta.models import get_model
    from jaxmeta.step import init_train_state, make_train_chunk

    d, tasks, length = cfg["devices"], cfg["meta_batch"], cfg["steps_per_call"]
    if cfg["workload"] == "conv4":
        from jaxmeta.models.conv4 import Conv4

        model = Conv4(num_classes=5, filters=cfg["filters"])
        learner = maml(model.apply, inner_lr=0.4, inner_steps=1)
        data = jax.random.randint(jax.random.key(1), (400, 20, 28, 28), 0, 256).astype(jnp.uint8)
        q = cfg["queries"]
        sample = lambda k, x, n: sample_episodes(
            k, x, tasks=n, ways=5, shots=1, queries=q, rotations=True
        )
        example = jnp.zeros((5, 28, 28, 1), jnp.float32)
    else:
        model = get_model("mlp")(hidden=(40, 40), out=1)
        learner = maml(model.apply, inner_lr=0.01, inner_steps=1, loss_fn=mse_loss)
        data = ()
        sample = lambda k, x, n: sample_sinusoid_tasks(k, tasks=n, shots=10, queries=10)
        example = jnp.zeros((10, 1), jnp.float32)
    opt = optax.adam(1e-3)
    params = jax.jit(model.init)(jax.random.key(0), example)
    state = init_train_state(learner, opt, params, key=jax.random.key(2))
    if cfg["mesh"]:
        mesh = sharding.make_task_mesh(d)
        step_sample = sharding.sharded_sampler(sample, mesh, tasks=tasks, sampler=cfg["sampler"])
        state, data = sharding.replicate(state, mesh), sharding.replicate(data, mesh)
    else:
        step_sample = lambda k, x: sample(k, x, tasks)
    chunk = make_train_chunk(learner, opt, step_sample, length=length, donate=False)
    n = jnp.asarray(length, jnp.int32)
    compiled, compile_s = C.compile_timed(chunk, state, data, n)
    timing = C.time_calls(
        lambda: jax.block_until_ready(compiled(state, data, n)),
        budget_s=cfg["budget_s"],
        warmup=2,
        min_repeats=3,
        max_repeats=20,
    )
    ms_step = timing["ms_median"] / length
    return {
        **cfg,
        "jax_devices": len(jax.devices()),
        "compile_s": round(compile_s, 2),
        "ms_per_step": ms_step,
        "ms_per_task": ms_step / tasks,
        # CPU seconds per step: the work done, far less sensitive than wall time to other
        # processes competing for the cores.
        "cpu_ms_per_step": ms_step * timing["cpu_util"],
        "timing": timing,
        "loadavg": C.machine()["loadavg"],
    }


def main() -> int:
    if "--worker" in sys.argv:
        return C.worker_main(worker)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--devices",
        type=lambda s: C.csv_list(s, int),
        default=[1, 2, 4],
        help="device counts, comma-separated (default 1,2,4; simulated CPU devices)",
    )
    p.add_argument(
        "--workloads",
        type=C.csv_list,
        default=["conv4", "sinusoid"],
        help="conv4 and/or sinusoid (default both)",
    )
    p.add_argument(
        "--modes",
        type=C.csv_list,
        default=["strong", "weak"],
        help="strong (fixed meta-batch) and/or weak (fixed tasks per device) scaling",
    )
    p.add_argument(
        "--samplers",
        type=C.csv_list,
        default=["constraint", "shard_map"],
        help="mesh.sampler values (default constraint,shard_map)",
    )
    p.add_argument("--meta-batch", type=int, default=16, help="strong scaling meta-batch (16)")
    p.add_argument("--tasks-per-device", type=int, default=4, help="weak scaling tasks (4)")
    p.add_argument("--filters", type=int, default=32, help="Conv-4 filters (32)")
    p.add_argument("--queries", type=int, default=5, help="query images per class (5)")
    p.add_argument("--steps-per-call", type=int, default=5, help="fused meta-steps (5)")
    p.add_argument("--budget-s", type=float, default=4.0, help="timed seconds per run (4)")
    p.add_argument("--timeout", type=float, default=900, help="per-run timeout in s (900)")
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output JSON (default bench-out/scaling/scaling.json, git-ignored)",
    )
    p.add_argument(
        "--table",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="print the table of earlier result files and exit",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: sinusoid, strong scaling, 1 and 2 devices, short timing",
    )
    args = p.parse_args()
    if args.quick:
        args.workloads, args.modes, args.devices = ["sinusoid"], ["strong"], [1, 2]
        args.samplers, args.budget_s = ["constraint"], 0.5
    if args.table:
        print(_table([r for f in args.table for r in json.loads(f.read_text())["results"]]))
        return 0

    rows = []
    for workload in args.workloads:
        for mode in args.modes:
            for d in args.devices:
                tasks = args.meta_batch if mode == "strong" else args.tasks_per_device * d
                for sampler in ["-"] if d == 1 else args.samplers:
                    if (
                        mode == "weak"
                        and d == 1
                        and any(
                            r["workload"] == workload
                            and r["devices"] == 1
                            and r["meta_batch"] == tasks
                            for r in rows
                        )
                    ):
                        continue  # same configuration already measured
                    cfg = {
                        "workload": workload,
                        "mode": mode,
                        "devices": d,
                        "meta_batch": tasks,
                        "sampler": sampler,
                        "mesh": d > 1,
                        "filters": args.filters,
                        "queries": args.queries,
                        "steps_per_call": args.steps_per_call,
                        "budget_s": args.budget_s,
                    }
                    env = {
                        "XLA_FLAGS": f"--xla_force_host_platform_device_count={d}",
                        "JAX_PLATFORMS": "cpu",
                    }
                    res = C.run_worker(__file__, cfg, timeout=args.timeout, env=env)
                    rows.append(res)
                    print(
                        f"{workload:8s} {mode:6s} D={d} tasks={tasks:3d} {sampler:10s} "
                        + (
                            f"{res['ms_per_step']:8.1f} ms/step (compile {res['compile_s']} s, "
                            f"cpu_util {res['timing']['cpu_util']})"
                            if "error" not in res
                            else res["error"]
                        ),
                        file=sys.stderr,
                        flush=True,
                    )
    for r in rows:
        if "error" in r:
            continue
        base = next(
            (
                b
                for b in rows
                if "error" not in b
                and b["workload"] == r["workload"]
                and b["devices"] == 1
                and b["meta_batch"]
                == (r["meta_batch"] if r["mode"] == "strong" else args.tasks_per_device)
            ),
            None,
        )
        if base is not None:
            # strong: t(1) / t(D); weak: t(1 device, its share) / t(D devices, D shares).
            r["vs_1_device"] = base["ms_per_step"] / r["ms_per_step"]
            r["tasks_per_s"] = 1e3 * r["meta_batch"] / r["ms_per_step"]
    C.write_json(args.out, {"machine": C.machine(), "args": vars(args), "results": rows})
    print(_table(rows))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


def _table(rows: list[dict[str, Any]]) -> str:
    for r in rows:
        if "cpu_ms_per_step" not in r and "timing" in r:
            r["cpu_ms_per_step"] = r["ms_per_step"] * r["timing"]["cpu_util"]
    return C.markdown_table(
        [r for r in rows if "error" not in r],
        [
            ("workload", "workload"),
            ("mode", "scaling"),
            ("devices", "devices"),
            ("meta_batch", "meta-batch"),
            ("sampler", "sampler"),
            ("ms_per_step", "ms/step"),
            ("cpu_ms_per_step", "CPU ms/step"),
            ("tasks_per_s", "tasks/s"),
            ("vs_1_device", "t(1)/t(D)"),
            ("compile_s", "compile s"),
        ],
    )


if __name__ == "__main__":
    sys.exit(main())
