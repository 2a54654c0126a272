"""ms per MAML meta-step on the canonical workload (the jaxmeta side of the PyTorch peers).

Workload (fixed, as ``../shared/peers/torch_maml.py``): Conv-4 strided (4 x [3x3 conv 64,
stride 2, padding 1; batch-statistics BatchNorm; ReLU], flatten, linear), Omniglot 5-way
1-shot shapes, ``Q`` query images per class (15 and 1), meta-batch 32, ``K`` inner SGD
steps (1 and 5) at lr 0.4, Adam 1e-3 outer, second and first order. Random inputs are made
once on the device (data loading excluded, like the peers). A meta-step is
``make_meta_step``'s jitted ``(state, episodes, key) -> (state, metrics)``: meta-gradient
over 32 tasks + Adam update.

Protocol (``_common.py``): every configuration runs in its own subprocess (so the peak RSS
is its own); compile ahead of time (``compile_s``), warm up, then the median of the timed
steps (``--repeats`` fixed, else from ``--budget-s``). ``cpu_util`` = process CPU s / wall s
over the timed steps (2.0 = both cores ours on the 2-core machine).

Usage::

    python benchmarks/maml_step.py                       # 8 configs, table + JSON
    python benchmarks/maml_step.py --quick               # Q=1, K=1, both orders, short
    python benchmarks/maml_step.py --orders second --inner-steps 1 --queries 15 \\
        --conv-impl gemm --task-batch-size 4 --json /tmp/x.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    compile_timed,
    csv_list,
    machine,
    markdown_table,
    memory_record,
    peak_rss_since_reset_mb,
    reset_peak_rss,
    run_worker,
    time_state_calls,
    worker_main,
    write_json,
)

# Fastest task_chunk per (order, inner_steps, query_per_class) measured on the 2-core
# EPYC (see benchmarks/README.md, "MAML step"); ``None`` = vmap all 32 tasks.
DEFAULT_TASK_CHUNK = {}


def default_task_chunk(order: str, inner_steps: int, queries: int, backend: str):
    """Tuned on the CPU (see above); elsewhere the library's per-backend ``"auto"``."""
    if backend != "cpu":
        return "auto"
    return DEFAULT_TASK_CHUNK.get((order, inner_steps, queries), 1 if queries >= 15 else None)


def build_meta_step(cfg: dict[str, Any]):
    """``(jitted step, (state, episodes, key), task_chunk used)`` of one configuration."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxmeta.algorithms.maml import maml
    from jaxmeta.models import Conv4
    from jaxmeta.step import init_train_state, make_meta_step
    from jaxmeta.train.build import run_once_jit
    from jaxmeta.types import Episode

    ways, shots, q, tasks = 5, 1, cfg["query_per_class"], cfg["meta_batch"]
    tbs = cfg["task_chunk"]
    if tbs == "default":  # resolved here, where the backend is known
        tbs = default_task_chunk(cfg["order"], cfg["inner_steps"], q, jax.default_backend())
    model = Conv4(num_classes=ways, filters=cfg["filters"], conv_impl=cfg["conv_impl"])
    k = jax.random.split(jax.random.key(0), 4)
    episodes = Episode(
        support_x=jax.random.uniform(k[0], (tasks, ways * shots, 28, 28, 1)),
        support_y=jnp.tile(jnp.arange(ways, dtype=jnp.int32).repeat(shots), (tasks, 1)),
        query_x=jax.random.uniform(k[1], (tasks, ways * q, 28, 28, 1)),
        query_y=jnp.tile(jnp.arange(ways, dtype=jnp.int32).repeat(q), (tasks, 1)),
    )
    params = run_once_jit(model.init)(k[2], episodes.support_x[0])  # one program, not op by op
    learner = maml(
        model.apply,
        inner_lr=0.4,
        inner_steps=cfg["inner_steps"],
        first_order=cfg["order"] == "first",
        remat=cfg.get("remat", False),
    )
    optimizer = optax.adam(1e-3)
    state = init_train_state(learner, optimizer, params, key=jax.random.key(0))
    step = make_meta_step(learner, optimizer, task_chunk=tbs, donate=True)
    return step, (state, episodes, k[3]), tbs


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    """Worker: build, compile and time one configuration; returns its record."""
    import jax

    from jaxmeta.execution import resolve_task_chunk
    from jaxmeta.models.layers import resolve_conv_impl

    tasks = cfg["meta_batch"]
    step, (state, episodes, key), tbs = build_meta_step(cfg)
    compiled, compile_s = compile_timed(step, state, episodes, key)

    reset = reset_peak_rss()  # compiled ahead of time: the peak of the calls alone
    timing = time_state_calls(compiled, state, (episodes, key), cfg)
    rec = dict(cfg)
    rec.update(
        ms_per_step=round(timing["ms_median"], 2),
        ms_min=round(timing["ms_min"], 2),
        ms_max=round(timing["ms_max"], 2),
        n=timing["n"],
        cpu_util=timing["cpu_util"],
        # process CPU time per step (approx.: median x util); less sensitive to other
        # processes taking the cores than wall time, but not immune (caches, spinning).
        cpu_ms_per_step=round(timing["ms_median"] * timing["cpu_util"], 1),
        compile_s=round(compile_s, 2),
        tasks_per_s=round(tasks / (timing["ms_median"] / 1e3), 1),
        device=jax.devices()[0].device_kind,
        backend=jax.default_backend(),
        conv_impl_resolved=resolve_conv_impl(cfg["conv_impl"]),
        task_chunk_used=tbs,
        task_chunk_resolved=resolve_task_chunk(tbs),
        xla_flags=os.environ.get("XLA_FLAGS"),
    )
    rec.update(memory_record(peak_rss_since_reset_mb() if reset else None))
    return rec


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--orders",
        type=csv_list,
        default=["second", "first"],
        help="MAML orders, comma-separated (default second,first)",
    )
    ap.add_argument(
        "--inner-steps",
        type=lambda s: csv_list(s, int),
        default=None,
        help="inner steps, comma-separated (default 1,5; --quick 1)",
    )
    ap.add_argument(
        "--queries",
        type=lambda s: csv_list(s, int),
        default=None,
        help="query images per class (default 15,1)",
    )
    ap.add_argument("--meta-batch", type=int, default=32, help="tasks per meta-step (32)")
    ap.add_argument("--filters", type=int, default=64, help="Conv-4 filters (64)")
    ap.add_argument(
        "--conv-impl",
        default="auto",
        choices=["auto", "xla", "gemm"],
        help="convolution lowering (auto: gemm on CPU, lax.conv on GPU/TPU)",
    )
    ap.add_argument(
        "--task-chunk",
        "--task-batch-size",
        default="default",
        help="'default' (tuned per config on the CPU, 'auto' elsewhere), 'auto' (the "
        "library's per-backend choice), 'none' (vmap all tasks) or an int",
    )
    ap.add_argument(
        "--remat", action="store_true", help="rematerialise inner steps (memory for time)"
    )
    ap.add_argument("--repeats", type=int, default=None, help="timed steps (else from budget)")
    ap.add_argument("--budget-s", type=float, default=None, help="timed seconds (default 6)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps (2)")
    ap.add_argument("--min-repeats", type=int, default=5, help="fewest timed steps (5)")
    ap.add_argument("--max-repeats", type=int, default=40, help="most timed steps (40)")
    ap.add_argument("--quick", action="store_true", help="Q=1, K=1, both orders, short budget")
    ap.add_argument(
        "--timeout-s", type=float, default=1800, help="per-configuration timeout (1800 s)"
    )
    ap.add_argument("--json", default=None, help="write the list of records here")
    args = ap.parse_args(argv)
    args.inner_steps = args.inner_steps or ([1] if args.quick else [1, 5])
    args.queries = args.queries or ([1] if args.quick else [15, 1])
    if args.budget_s is None:
        args.budget_s = 2.0 if args.quick else 6.0
    return args


def _tbs(arg: str) -> int | str | None:
    """``default`` (resolved in the worker), ``auto``, ``none`` or an int."""
    if arg in ("default", "auto"):
        return arg
    if arg.lower() in ("none", "null"):
        return None
    return int(arg)


def main(argv=None) -> int:
    args = parse_args(argv)
    records = []
    for q in args.queries:
        for k in args.inner_steps:
            for order in args.orders:
                cfg = {
                    "order": order,
                    "inner_steps": k,
                    "query_per_class": q,
                    "meta_batch": args.meta_batch,
                    "filters": args.filters,
                    "conv_impl": args.conv_impl,
                    "task_chunk": _tbs(args.task_chunk),
                    "remat": args.remat,
                    "warmup": args.warmup,
                    "budget_s": args.budget_s,
                    "repeats": args.repeats,
                    "min_repeats": args.min_repeats,
                    "max_repeats": args.max_repeats,
                }
                rec = run_worker(__file__, cfg, timeout=args.timeout_s)
                records.append(rec)
                msg = rec.get("error") or (
                    f"{rec['ms_per_step']:.1f} ms/step (compile {rec['compile_s']:.1f} s, "
                    f"cpu util {rec['cpu_util']})"
                )
                print(
                    f"{order:6s} K={k} Q={q} tbs={cfg['task_chunk']}: {msg}",
                    file=sys.stderr,
                    flush=True,
                )
    cols = [
        ("order", "order"),
        ("inner_steps", "K"),
        ("query_per_class", "Q/class"),
        ("meta_batch", "tasks"),
        ("conv_impl_resolved", "conv"),
        ("task_chunk_resolved", "task_chunk"),
        ("ms_per_step", "ms/step (median)"),
        ("ms_min", "min ms"),
        ("compile_s", "compile s"),
        ("tasks_per_s", "tasks/s"),
        ("peak_rss_mb", "peak RSS MB"),
        ("peak_mb", "peak (steps) MB"),
        ("cpu_util", "cpu util"),
        ("error", "error"),
    ]
    print(markdown_table(records, cols))
    if args.json:
        for r in records:
            r.setdefault("machine", None)
        env = machine()
        for r in records:
            r["machine"] = env
        write_json(args.json, records)
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(worker_main(run_one))
    sys.exit(main())
