"""Meta-training throughput of every algorithm: meta-steps/s, tasks/s, compile time, memory.

Each configuration is one jit-compiled meta-step (``jaxmeta.make_meta_step``: meta-gradient
of a batch of tasks + Adam update) on fixed synthetic Omniglot-shaped episodes (uniform
images ``[tasks, N*K, 28, 28, 1]``, class-major labels) generated once on the device, so
data loading is excluded and no dataset is needed. Each configuration runs in a fresh
subprocess (peak memory is its own): compile ahead of time, warm up, then the median of
repeated steps (``benchmarks/_common.py``).

Sweeps (``--sweeps``, comma-separated):

* ``algorithms``: every registered algorithm (``jaxmeta.algorithms.ALGORITHMS``); the
  gradient-based ones (maml, fomaml, anil, metasgd, reptile, mamlpp, imaml) at each of
  ``--inner-steps``
  (default 1, 5, 10): how step time and memory grow with inner steps.
* ``shape``: second- and first-order MAML with 1 inner step while one of ways (5, 20),
  shots (1, 5), queries per class (1, 15) or meta-batch (1/4, 1/2, 1 x ``--meta-batch``)
  varies from the base configuration.
* ``memory``: second-order MAML at the largest ``--inner-steps``, plain and with each
  memory-saving option, to show its cost: ``remat=True`` (inner steps recomputed in the
  backward pass) and ``task_chunk=b`` (tasks processed in chunks of ``b`` with
  ``lax.map``) for b in ``--task-batch-sizes`` (default 8, 1).

Presets: ``--preset canonical`` is the PyTorch-peer workload (Conv-4 strided, flatten
head, 5-way 1-shot, 15 and 1 queries per class, meta-batch 32, 1 and 5 inner steps at lr
0.4, Adam 1e-3, second and first order) with a projection of a 60k-iteration run
(``--project-steps``); ``benchmarks/gpu.sh`` uses it. ``--preset miniimagenet`` is the
miniImageNet shape (5-way 1-shot, 84x84x3 episodes, 15 queries per class, meta-batch 4):
MAML and first-order MAML with 5 inner steps at lr 0.01 and ProtoNets, each on Conv-4-32
(max-pool, flatten: MAML's miniImageNet net) and on ResNet-12 (64-160-320-640; ``--models``
picks them).

Examples::

    python benchmarks/throughput.py --quick                  # small grid, minutes
    python benchmarks/throughput.py                          # everything (long on a CPU)
    python benchmarks/throughput.py --preset canonical --json out.json
    python benchmarks/throughput.py --tiny --sweeps algorithms --inner-steps 1 --in-process
    python benchmarks/throughput.py --preset miniimagenet --json mini.json
"""

from __future__ import annotations

import argparse
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
    reset_peak_rss,
    rss_mb,
    run_worker,
    scratch,
    time_calls,
    worker_main,
    write_json,
)

GRADIENT_BASED = ("maml", "fomaml", "anil", "metasgd", "reptile", "mamlpp", "imaml")
OTHERS = ("protonets", "matching", "snail")
# On fixed 640-d feature vectors (the LEO paper's WRN-28-10 embeddings), not images: the
# paper's 5 latent + 5 fine-tuning steps, 64 latents.
FEATURE_BASED = ("leo",)
FEATURES = 640
ALL = GRADIENT_BASED + OTHERS + FEATURE_BASED
SWEEPS = ("algorithms", "shape", "memory")


# ------------------------------------------------------------------------------ worker


def build(cfg: dict[str, Any]):
    """``(learner, model)`` for a configuration (the Omniglot setting of each paper)."""
    from jaxmeta.algorithms import get_algorithm
    from jaxmeta.models.conv4 import Conv4
    from jaxmeta.models.resnet12 import ResNet12

    alg, ways, shots, k = cfg["algorithm"], cfg["ways"], cfg["shots"], cfg["inner_steps"]
    if alg in FEATURE_BASED:
        from jaxmeta.models.identity import Identity

        learner = get_algorithm(alg)(
            Identity().apply, ways=ways, input_shape=(FEATURES,), inner_steps=k, finetune_steps=k
        )
        return learner, Identity()
    embed = alg in OTHERS
    if cfg.get("model", "conv4") == "resnet12":
        model = ResNet12(num_classes=None if embed else ways)
    else:
        model = Conv4(
            num_classes=None if embed else ways,
            filters=cfg["filters"],
            head=cfg["head"],
            pool=bool(cfg.get("pool")) or alg == "snail",
        )
    kw: dict[str, Any] = {}
    if alg in ("maml", "fomaml"):
        kw.update(inner_lr=cfg["inner_lr"], inner_steps=k, remat=bool(cfg.get("remat")))
    elif alg == "anil":
        kw.update(inner_lr=cfg["inner_lr"], inner_steps=k)
    elif alg == "metasgd":
        kw.update(inner_lr_init=cfg["inner_lr"], inner_steps=k)
    elif alg == "reptile":
        # Reptile's inner Adam on the whole support set (Nichol et al.: lr 1e-3).
        kw.update(inner_lr=1e-3, inner_steps=k, inner_batch_size=ways * shots)
    elif alg == "mamlpp":
        # every MAML++ switch on (the paper's Omniglot setting), at this inner-step count
        kw.update(inner_lr=cfg["inner_lr"], inner_steps=k)
    elif alg == "imaml":
        # iMAML-GD, the authors' Omniglot lam / CG settings, this many inner GD steps
        kw.update(inner_lr=0.1, inner_steps=k, lam=2.0, cg_steps=5)
    elif alg in ("protonets", "matching"):
        kw.update(ways=ways)
    elif alg == "snail":
        kw.update(ways=ways, shots=shots)
    if cfg.get("first_order") and alg in ("maml", "anil", "metasgd"):
        kw["first_order"] = True
    return get_algorithm(alg)(model.apply, **kw), model


def synthetic_episodes(
    key,
    *,
    tasks: int,
    ways: int,
    shots: int,
    queries: int,
    size: int = 28,
    channels: int = 1,
    features: int = 0,
):
    """Random episodes of ``size x size x channels`` images (Omniglot: 28x28x1,
    miniImageNet: 84x84x3; values in [0, 1), class-major labels); ``features``:
    feature vectors ``[tasks, n, features]`` instead."""
    import jax
    import jax.numpy as jnp

    from jaxmeta.types import Episode

    ks, kq = jax.random.split(key)
    sy = jnp.broadcast_to(
        jnp.repeat(jnp.arange(ways, dtype=jnp.int32), shots), (tasks, ways * shots)
    )
    qy = jnp.broadcast_to(
        jnp.repeat(jnp.arange(ways, dtype=jnp.int32), queries), (tasks, ways * queries)
    )
    item = (features,) if features else (size, size, channels)
    return Episode(
        jax.random.uniform(ks, (tasks, ways * shots, *item), jnp.float32),
        sy,
        jax.random.uniform(kq, (tasks, ways * queries, *item), jnp.float32),
        qy,
    )


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    """Compile and time one configuration; a JSON record."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxmeta.step import init_train_state, make_meta_step
    from jaxmeta.train.build import run_once_jit

    rss_start = rss_mb()
    learner, model = build(cfg)
    key = jax.random.key(cfg.get("seed", 0))
    k_init, k_data, k_step = jax.random.split(key, 3)
    eps = synthetic_episodes(
        k_data,
        tasks=cfg["meta_batch"],
        ways=cfg["ways"],
        shots=cfg["shots"],
        queries=cfg["queries"],
        features=FEATURES if cfg["algorithm"] in FEATURE_BASED else 0,
        size=cfg.get("size", 28),
        channels=cfg.get("channels", 1),
    )
    params = run_once_jit(model.init)(k_init, eps.support_x[0])
    optimizer = optax.adam(cfg["outer_lr"])
    state = init_train_state(learner, optimizer, params, key=k_init)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    step = make_meta_step(learner, optimizer, task_chunk=cfg.get("task_chunk"), donate=True)
    compiled, compile_s = compile_timed(step, state, eps, k_step)
    holder = [state]
    metrics_out: dict[str, Any] = {}

    def one():
        holder[0], m = compiled(holder[0], eps, k_step)
        metrics_out["loss"] = float(jax.block_until_ready(m["loss"]))

    one()  # first call: allocations, before the peak-memory reset
    reset_peak_rss()
    timing = time_calls(
        one,
        warmup=cfg["warmup"],
        budget_s=cfg["budget_s"],
        min_repeats=cfg["min_repeats"],
        max_repeats=cfg["max_repeats"],
    )
    ms = timing.pop("ms_median")
    rec = {
        **{
            k: cfg.get(k)
            for k in (
                "sweep",
                "algorithm",
                "first_order",
                "inner_steps",
                "ways",
                "shots",
                "queries",
                "meta_batch",
                "remat",
                "task_chunk",
                "filters",
                "head",
                "model",
                "size",
                "channels",
            )
        },
        "order": _order(cfg),
        "ms_per_step": ms,
        "steps_per_s": 1e3 / ms,
        "tasks_per_s": cfg["meta_batch"] * 1e3 / ms,
        **timing,
        "compile_s": compile_s,
        "n_params": int(n_params),
        "rss_before_steps_mb": rss_start,
        "last_loss": metrics_out.get("loss"),
        **memory_record(peak_rss_since_reset_mb()),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
    }
    if cfg.get("project_steps"):
        rec["project_steps"] = cfg["project_steps"]
        rec["projected_h"] = ms * cfg["project_steps"] / 3.6e6
    del jnp
    return rec


def _order(cfg):
    alg = cfg["algorithm"]
    if alg == "fomaml" or (cfg.get("first_order") and alg in ("maml", "anil", "metasgd")):
        return "first"
    if alg == "imaml":
        return "implicit"
    return "second" if alg in ("maml", "anil", "metasgd", "mamlpp", "leo") else "-"


# ------------------------------------------------------------------------------ grids


def grid(args) -> list[dict[str, Any]]:
    base = {
        "algorithm": "maml",
        "first_order": False,
        "inner_steps": 1,
        "ways": args.ways,
        "shots": args.shots,
        "queries": args.queries,
        "meta_batch": args.meta_batch,
        "remat": False,
        "task_chunk": None,
        "filters": args.filters,
        "head": args.head,
        "inner_lr": 0.4,
        "outer_lr": 1e-3,
        "warmup": args.warmup,
        "budget_s": args.budget_s,
        "min_repeats": args.min_repeats,
        "max_repeats": args.max_repeats,
        "project_steps": args.project_steps,
    }
    cfgs: list[dict[str, Any]] = []

    def add(sweep, **kw):
        c = {**base, "sweep": sweep, **kw}
        if c not in cfgs:
            cfgs.append(c)

    if args.preset == "canonical":
        base.update(ways=5, shots=1, meta_batch=32, filters=64, head="flatten")
        for q in args.canonical_queries:
            for k in args.canonical_inner_steps:
                for fo in (False, True):
                    add("canonical", queries=q, inner_steps=k, first_order=fo)
        return cfgs
    if args.preset == "miniimagenet":
        # MAML's miniImageNet setting (Finn et al. 2017): 5-way 1-shot, 15 queries, 4 tasks,
        # 5 inner steps at lr 0.01, 84x84x3 images.
        base.update(
            ways=5,
            shots=1,
            size=84,
            channels=3,
            filters=32,
            head="flatten",
            pool=True,
            inner_lr=0.01,
        )
        if args.meta_batch_given is None:
            base["meta_batch"] = 4
        if args.queries_given is None:
            base["queries"] = 15
        k = 5 if args.inner_steps_given is None else max(args.inner_steps)
        for model in args.models:
            add("miniimagenet", model=model, algorithm="maml", inner_steps=k)
            add("miniimagenet", model=model, algorithm="maml", inner_steps=k, first_order=True)
            add("miniimagenet", model=model, algorithm="protonets", inner_steps=0)
        return cfgs
    for sweep in args.sweeps:
        if sweep == "algorithms":
            for alg in args.algorithms:
                steps = args.inner_steps if alg in GRADIENT_BASED else [0]
                for k in [5] if alg in FEATURE_BASED else steps:
                    add("algorithms", algorithm=alg, inner_steps=k)
        elif sweep == "shape":
            for fo in (False, True):
                add("shape", first_order=fo)
                for ways in args.shape_ways:
                    add("shape", first_order=fo, ways=ways)
                for shots in args.shape_shots:
                    add("shape", first_order=fo, shots=shots)
                for q in args.shape_queries:
                    add("shape", first_order=fo, queries=q)
                for mb in sorted({max(1, args.meta_batch // 4), max(1, args.meta_batch // 2)}):
                    add("shape", first_order=fo, meta_batch=mb)
        elif sweep == "memory":
            k = max(args.inner_steps)
            add("memory", inner_steps=k)
            add("memory", inner_steps=k, remat=True)
            for tbs in args.task_chunks:
                add("memory", inner_steps=k, task_chunk=tbs)
    return cfgs


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sweeps",
        type=csv_list,
        default=None,
        help=f"comma-separated from {', '.join(SWEEPS)} (default: all)",
    )
    ap.add_argument(
        "--preset",
        choices=["canonical", "miniimagenet"],
        default=None,
        help="canonical: the PyTorch-peer workload; miniimagenet: 84x84x3 episodes on "
        "Conv-4-32 and ResNet-12 (both ignore --sweeps)",
    )
    ap.add_argument(
        "--models",
        type=csv_list,
        default=["conv4", "resnet12"],
        help="models of --preset miniimagenet (conv4,resnet12)",
    )
    ap.add_argument(
        "--algorithms",
        type=csv_list,
        default=list(ALL),
        help=f"algorithms of the algorithms sweep (default all: {','.join(ALL)})",
    )
    ap.add_argument(
        "--inner-steps",
        type=lambda s: csv_list(s, int),
        default=None,
        help="inner steps of the gradient-based algorithms (default 1,5,10; --quick 1,5)",
    )
    ap.add_argument("--ways", type=int, default=5, help="N-way (5)")
    ap.add_argument("--shots", type=int, default=1, help="K-shot (1)")
    ap.add_argument(
        "--queries",
        type=int,
        default=None,
        help="query images per class (default 15; --quick/--tiny 1)",
    )
    ap.add_argument("--meta-batch", type=int, default=None, help="tasks per meta-step (32)")
    ap.add_argument("--filters", type=int, default=None, help="Conv-4 filters (64; --tiny 8)")
    ap.add_argument(
        "--head", choices=["flatten", "mean"], default="flatten", help="Conv-4 head (flatten)"
    )
    ap.add_argument(
        "--shape-ways",
        type=lambda s: csv_list(s, int),
        default=[20],
        help="N-way values of the shape sweep (20)",
    )
    ap.add_argument(
        "--shape-shots",
        type=lambda s: csv_list(s, int),
        default=[5],
        help="K-shot values of the shape sweep (5)",
    )
    ap.add_argument(
        "--shape-queries",
        type=lambda s: csv_list(s, int),
        default=None,
        help="queries per class tried in the shape sweep (default 1,15)",
    )
    ap.add_argument(
        "--task-chunks",
        "--task-batch-sizes",
        type=lambda s: csv_list(s, int),
        default=[8, 1],
        help="task_chunk values of the memory sweep (8,1)",
    )
    ap.add_argument(
        "--canonical-queries",
        type=lambda s: csv_list(s, int),
        default=[15, 1],
        help="queries per class of --preset canonical (15,1)",
    )
    ap.add_argument(
        "--canonical-inner-steps",
        type=lambda s: csv_list(s, int),
        default=[1, 5],
        help="inner steps of --preset canonical (1,5)",
    )
    ap.add_argument(
        "--project-steps",
        type=int,
        default=60000,
        help="report the projected hours of a run of this many meta-steps",
    )
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per configuration (2)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="timed seconds per configuration (default 5; --quick 2)",
    )
    ap.add_argument("--min-repeats", type=int, default=3, help="fewest timed calls (3)")
    ap.add_argument("--max-repeats", type=int, default=30, help="most timed calls (30)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small grid (inner steps 1,5; 1 query/class; meta-batch 16; "
        "algorithms + memory sweeps): minutes on a laptop CPU",
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="tiny net and batch (smoke tests only; numbers meaningless)",
    )
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="no subprocess per configuration (memory numbers then not per config)",
    )
    ap.add_argument("--timeout-s", type=float, default=None, help="per-configuration timeout")
    ap.add_argument(
        "--json",
        default=None,
        help="output JSON (default bench-out/throughput/throughput.json, git-ignored)",
    )
    ap.add_argument("--no-plots", action="store_true", help="write the JSON only, no PNG")
    args = ap.parse_args(argv)
    args.meta_batch_given, args.queries_given = args.meta_batch, args.queries
    args.inner_steps_given = args.inner_steps
    if args.sweeps is None:
        args.sweeps = ["algorithms", "memory"] if (args.quick or args.tiny) else list(SWEEPS)
    bad = [s for s in args.sweeps if s not in SWEEPS] + [a for a in args.algorithms if a not in ALL]
    if bad:
        ap.error(f"unknown sweep/algorithm {bad}")
    if args.inner_steps is None:
        args.inner_steps = [1] if args.tiny else ([1, 5] if args.quick else [1, 5, 10])
    if args.queries is None:
        args.queries = 1 if (args.quick or args.tiny) else 15
    if args.meta_batch is None:
        args.meta_batch = 2 if args.tiny else (16 if args.quick else 32)
    if args.filters is None:
        args.filters = 8 if args.tiny else 64
    if args.budget_s is None:
        args.budget_s = 0.2 if args.tiny else (2.0 if args.quick else 5.0)
    if args.tiny:
        args.warmup, args.min_repeats, args.max_repeats = 1, 2, 3
        args.task_chunks = [1]
    if args.shape_queries is None:
        args.shape_queries = [1, 15]
    return args


COLUMNS = [
    ("sweep", "sweep"),
    ("model", "model"),
    ("algorithm", "algorithm"),
    ("order", "order"),
    ("inner_steps", "K"),
    ("ways", "N"),
    ("shots", "shots"),
    ("queries", "Q"),
    ("meta_batch", "tasks"),
    ("remat", "remat"),
    ("task_chunk", "task_chunk"),
    ("ms_per_step", "ms/step"),
    ("steps_per_s", "steps/s"),
    ("tasks_per_s", "tasks/s"),
    ("compile_s", "compile s"),
    ("peak_mb", "peak MiB"),
    ("cpu_util", "cpu util"),
]


def plot(results: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in results["results"] if r.get("sweep") == "algorithms" and "error" not in r]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for alg in dict.fromkeys(r["algorithm"] for r in rows):
        rs = sorted((r for r in rows if r["algorithm"] == alg), key=lambda r: r["inner_steps"])
        ks = [r["inner_steps"] for r in rs]
        for ax, key in zip(axes, ("ms_per_step", "peak_mb"), strict=True):
            ax.plot(ks, [r[key] for r in rs], marker="o", label=alg)
    for ax, yl in zip(
        axes, ("ms per meta-step (median)", f"peak MiB ({rows[0]['memory_kind']})"), strict=True
    ):
        ax.set_xlabel("inner steps (0 = no inner loop)")
        ax.set_ylabel(yl)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    r0 = rows[0]
    fig.suptitle(
        f"{r0['ways']}-way {r0['shots']}-shot, {r0['queries']} queries/class, "
        f"{r0['meta_batch']} tasks ({r0['device_kind']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.json) if args.json else scratch("throughput") / "throughput.json"
    cfgs = grid(args)
    results = []
    for i, cfg in enumerate(cfgs, 1):
        desc = (
            f"{cfg['sweep']}: {cfg['algorithm']} K={cfg['inner_steps']} "
            f"fo={cfg['first_order']} N={cfg['ways']} K_shot={cfg['shots']} "
            f"Q={cfg['queries']} tasks={cfg['meta_batch']} remat={cfg['remat']} "
            f"task_chunk={cfg['task_chunk']}"
        )
        print(f"[{time.strftime('%H:%M:%S')}] {i}/{len(cfgs)} {desc}", file=sys.stderr, flush=True)
        res = run_one(cfg) if args.in_process else run_worker(__file__, cfg, timeout=args.timeout_s)
        if "error" in res:
            print(f"  FAILED: {res['error']}", file=sys.stderr, flush=True)
        else:
            print(
                f"  {res['ms_per_step']:.1f} ms/step, {res['tasks_per_s']:.1f} tasks/s, "
                f"compile {res['compile_s']:.1f} s, peak {res['peak_mb']:.0f} MiB, "
                f"cpu util {res['cpu_util']}",
                file=sys.stderr,
                flush=True,
            )
        results.append(res)
        # Partial results survive an interrupted sweep.
        write_json(out, {"benchmark": "throughput", "settings": vars(args), "results": results})
    doc = {
        "benchmark": "throughput",
        "machine": machine(),
        "settings": vars(args),
        "results": results,
    }
    if not args.no_plots:
        p = plot(doc, out.with_suffix(".png"))
        if p:
            doc["plot"] = p
    write_json(out, doc)
    ok = [r for r in results if "error" not in r]
    cols = COLUMNS + (
        [("projected_h", f"{args.project_steps} steps (h)")] if args.preset == "canonical" else []
    )
    print(markdown_table(ok, cols))
    print(f"\nwrote {out}", file=sys.stderr)
    return 1 if len(ok) < len(results) else 0


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(worker_main(run_one))
    sys.exit(main())
