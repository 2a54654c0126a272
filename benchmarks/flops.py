"""Every registered algorithm's paper-config training step against the machine's GEMM peak.

For each algorithm of ``jaxmeta.algorithms.ALGORITHMS`` its 5-way 1-shot paper config
(``configs/omniglot/<name>_5w1s.yaml``, else the first ``configs/*/<name>_5w1s.yaml``) is
loaded and built through the config pipeline (``--set`` overrides apply to every config);
its training step (``jaxmeta.make_meta_step``: meta-gradient + the config's optimizer, the
learner's own outer update where it has one) runs on fixed synthetic episodes of the
config's shape (data loading excluded: no dataset is needed). Recorded per algorithm:

* ``ms_per_step``: median of timed steps (``_common.time_state_calls``);
* ``gflop_per_step``: the matrix-multiply and convolution work of one step, counted from its
  traced program (:func:`matmul_flops`: every ``dot_general`` 2 x batch x M x N x K, every
  convolution 2 x outputs x kernel inputs, a ``scan`` body times its length, the costlier
  ``cond`` branch; a ``while_loop`` body once, as it has no static trip count): the
  work the GEMM peak is about, analytic, not measured (XLA's own cost analysis counts a
  loop body once whatever its length, so it undercounts inner loops);
* ``gflops`` and ``pct_of_peak``: that work per second, and as a percentage of the GEMM
  peak measured in the same process (a float32 ``n x n @ n x n`` matmul, ``--gemm-n``);
* ``compile_s``, ``program_mb`` (XLA's memory analysis) and the peak RSS of the steps.

Each algorithm runs in a fresh subprocess (its own peak memory; ``--in-process`` for
tests). Algorithms registered by plug-ins (meta-RL) are not included.

Examples::

    python benchmarks/flops.py --json flops.json
    python benchmarks/flops.py --algorithms maml,protonets --budget-s 2
    python benchmarks/flops.py --tiny --in-process        # the plumbing, seconds
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    compile_timed,
    csv_list,
    machine,
    markdown_table,
    memory_record,
    peak_rss_since_reset_mb,
    program_memory_mb,
    reset_peak_rss,
    run_worker,
    time_state_calls,
    worker_main,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]
# --tiny: the plumbing on small shapes (tests); every config keeps its algorithm section.
TINY_SETS = ("train.meta_batch_size=2",)
TINY_MODEL_SETS = {"conv4": ("model.filters=4",)}
COLUMNS = [
    ("algorithm", "algorithm"),
    ("config", "paper config"),
    ("meta_batch", "tasks"),
    ("ms_per_step", "ms / step"),
    ("gflop_per_step", "GFLOP / step"),
    ("gflops", "GFLOP/s"),
    ("pct_of_peak", "% of GEMM peak"),
    ("compile_s", "compile s"),
    ("program_mb", "program MB"),
    ("peak_mb", "peak RSS MB"),
]


def shipped_algorithms() -> list[str]:
    """The algorithms ``jaxmeta.algorithms`` itself registers (not plug-ins)."""
    from jaxmeta.algorithms import SHIPPED

    return sorted(SHIPPED)


def paper_config(name: str) -> Path | None:
    """The algorithm's 5-way 1-shot config: Omniglot's when there is one, else another
    dataset's ``<name>_5w1s.yaml``, else the first ``5w1s`` of its own folder (LEO's
    ``configs/leo/mini_5w1s.yaml``)."""
    root = REPO / "configs"
    first = root / "omniglot" / f"{name}_5w1s.yaml"
    found = [first] if first.exists() else sorted(root.glob(f"*/{name}_5w1s.yaml"))
    return next(iter(found or sorted((root / name).glob("*5w1s.yaml"))), None)


def _subjaxprs(eqn):
    """The jaxprs inside an equation's parameters (pjit, remat, custom rules, loops)."""
    for value in eqn.params.values():
        for x in value if isinstance(value, tuple | list) else (value,):
            if hasattr(x, "eqns"):
                yield x
            elif hasattr(getattr(x, "jaxpr", None), "eqns"):
                yield x.jaxpr


def matmul_flops(jaxpr) -> float:
    """FLOPs of the ``dot_general`` and convolution equations of ``jaxpr``, recursively."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lc, _), (lb, _) = eqn.params["dimension_numbers"]
            lhs, rhs = (math.prod(v.aval.shape) for v in eqn.invars[:2])
            shape = eqn.invars[0].aval.shape
            batch = math.prod(shape[i] for i in lb)
            k = math.prod(shape[i] for i in lc)
            total += 2.0 * (lhs / (batch * k)) * (rhs / (batch * k)) * k * batch
        elif name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
            per_output = kernel[spec[1]] * math.prod(kernel[d] for d in spec[2:])
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
        inner = [matmul_flops(j) for j in _subjaxprs(eqn)]
        if not inner:
            continue
        if name == "cond":
            total += max(inner)
        elif name == "scan":
            total += eqn.params["length"] * sum(inner)
        else:
            total += sum(inner)
    return total


def gemm_gflops(n: int, budget_s: float) -> float:
    """Float32 ``n x n @ n x n`` matmul throughput of this process's backend, GFLOP/s."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    times = []
    end = time.perf_counter() + budget_s
    while len(times) < 3 or time.perf_counter() < end:
        t = time.perf_counter()
        jax.block_until_ready(f(a))
        times.append(time.perf_counter() - t)
    return 2 * n**3 / sorted(times)[len(times) // 2] / 1e9


def _episodes(cfg, input_shape, key):
    """Fixed synthetic episodes of the config's training shape (class-major labels)."""
    import jax
    import jax.numpy as jnp

    from jaxmeta.types import Episode

    tasks, ways = cfg.train.meta_batch_size, cfg.data.ways
    shots, queries = cfg.data.shots, cfg.data.queries
    ks, kq = jax.random.split(key)
    label = lambda k: jnp.tile(jnp.repeat(jnp.arange(ways, dtype=jnp.int32), k), (tasks, 1))
    return Episode(
        support_x=jax.random.uniform(ks, (tasks, ways * shots, *input_shape)),
        support_y=label(shots),
        query_x=jax.random.uniform(kq, (tasks, ways * queries, *input_shape)),
        query_y=label(queries),
    )


def measure(cfg_in: dict[str, Any]) -> dict[str, Any]:
    """One algorithm's record (runs in a worker process unless ``--in-process``)."""
    import jax

    import jaxmeta
    from jaxmeta.train import load_config
    from jaxmeta.train.build import build_experiment

    cfg = load_config(cfg_in["config"], list(cfg_in["sets"]))
    if cfg_in.get("tiny"):
        tiny = [*TINY_SETS, *TINY_MODEL_SETS.get(cfg.model.name, ())]
        cfg = load_config(cfg_in["config"], [*cfg_in["sets"], *tiny])
    exp = build_experiment(cfg)
    shape = tuple(exp.source.input_shape)
    params = jax.jit(exp.model.init)(jax.random.key(0), jax.numpy.zeros((2, *shape)))
    state = jaxmeta.init_train_state(exp.learner, exp.optimizer, params, key=jax.random.key(1))
    eps = _episodes(cfg, shape, jax.random.key(2))
    step = jaxmeta.make_meta_step(exp.learner, exp.optimizer)
    compiled, compile_s = compile_timed(step, state, eps, jax.random.key(3))
    flops = matmul_flops(jax.make_jaxpr(step)(state, eps, jax.random.key(3)).jaxpr)
    reset = reset_peak_rss()
    timing = time_state_calls(compiled, state, (eps, jax.random.key(3)), cfg_in)
    timing.pop("call")
    peak = gemm_gflops(cfg_in["gemm_n"], cfg_in["gemm_budget_s"])
    ms = timing["ms_median"]
    gflops = flops / 1e9 / (ms / 1e3) if flops else None
    return {
        "algorithm": cfg_in["algorithm"],
        "config": str(Path(cfg_in["config"]).relative_to(REPO)),
        "meta_batch": cfg.train.meta_batch_size,
        "ms_per_step": round(ms, 2),
        "gflop_per_step": round(flops / 1e9, 6) if flops else None,
        "gflops": None if gflops is None else round(gflops, 3),
        "gemm_peak_gflops": round(peak, 1),
        "pct_of_peak": None if gflops is None else round(100 * gflops / peak, 3),
        "compile_s": round(compile_s, 2),
        "program_mb": program_memory_mb(compiled),
        "timing": {k: v for k, v in timing.items() if k != "ms_median"},
        **memory_record(peak_rss_since_reset_mb() if reset else None),
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--algorithms",
        type=csv_list,
        default=None,
        help="comma-separated registered algorithms (default: every shipped one)",
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override applied to every algorithm's config (repeatable)",
    )
    p.add_argument("--tiny", action="store_true", help="small shapes: the plumbing only")
    p.add_argument("--budget-s", type=float, default=5.0, help="timed seconds per algorithm")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--min-repeats", type=int, default=3, help="fewest timed steps")
    p.add_argument("--max-repeats", type=int, default=50, help="most timed steps")
    p.add_argument("--gemm-n", type=int, default=1024, help="side of the peak matmul")
    p.add_argument("--gemm-budget-s", type=float, default=2.0, help="timed seconds of it")
    p.add_argument("--in-process", action="store_true", help="no worker processes (tests)")
    p.add_argument("--timeout-s", type=float, default=900.0, help="per-algorithm limit")
    p.add_argument("--json", default=None, help="write the records and the machine here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    if "--worker" in sys.argv:
        return worker_main(measure)
    args = parse_args(argv)
    names = args.algorithms or shipped_algorithms()
    sets = list(args.sets)
    rows = []
    for name in names:
        config = paper_config(name)
        if config is None:
            rows.append({"algorithm": name, "error": "no <name>_5w1s.yaml config"})
            continue
        cfg = {
            "algorithm": name,
            "config": str(config),
            "sets": sets,
            "tiny": args.tiny,
            "warmup": args.warmup,
            "budget_s": args.budget_s,
            "min_repeats": args.min_repeats,
            "max_repeats": args.max_repeats,
            "gemm_n": 128 if args.tiny else args.gemm_n,
            "gemm_budget_s": 0.1 if args.tiny else args.gemm_budget_s,
        }
        row = measure(cfg) if args.in_process else run_worker(__file__, cfg, timeout=args.timeout_s)
        rows.append(row)
        print(f"{name}: {row.get('ms_per_step', row.get('error'))}", file=sys.stderr, flush=True)
    print(markdown_table([r for r in rows if "error" not in r], COLUMNS))
    for r in rows:
        if "error" in r:
            print(f"{r['algorithm']}: {r['error']}")
    if args.json:
        write_json(
            args.json, {"machine": machine(), "sets": sets, "tiny": args.tiny, "records": rows}
        )
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
