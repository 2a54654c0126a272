"""Convolution lowering per backend: ``lax.conv`` (``xla``) against im2col + GEMM (``gemm``).

``Conv4(conv_impl="auto")`` takes the lowering listed for the backend in
``jaxmeta.models.layers.FASTEST_CONV_IMPL``. This script measures both lowerings, side by
side in one run, so that table can be checked (and revisited when jax changes):

* **meta-step** rows: the canonical MAML workload (``maml_step.py``: Conv-4 strided,
  5-way 1-shot, meta-batch 32, lr 0.4, Adam; second and first order, 1 and 5 inner steps,
  15 and 1 query images per class; random inputs made once), one jitted
  ``(state, episodes, key)`` call per meta-step.
* **train-step** rows: the paper-protocol MAML training step exactly as ``jaxmeta train``
  runs it (``make_train_chunk``: episodes sampled on the device from a uint8
  ``[1100, 20, 28, 28]`` split with rotations, second order, K=1, 1 query per class,
  meta-batch 32, mean head, Adam; ``--steps-per-call`` steps fused in one ``lax.scan``),
  also under ``jax_default_matmul_precision="highest"`` (full float32) next to the
  backend's default precision. The image array is random (the cost of sampling does not
  depend on the pixels).

Task mapping is ``task_chunk="auto"`` in both (one task at a time on one CPU
device, all tasks vmapped on a GPU), so each row is what a user of the defaults gets;
``--task-batch-size`` overrides it. The rows are timed one after another in one worker
process (ms: median over repeats; memory: the compiled program's own need from XLA's
memory analysis, ``program_mb``, so rows do not share an allocator peak).
``--precompile N`` first compiles every row in N parallel processes into a persistent
compilation cache that the timed pass then loads (compilation dominates a GPU run's
wall time; ``compile_s`` is still each row's own). ``--profile DIR`` also writes a
``jax.profiler`` trace of the default train step (summarise it with
``benchmarks/profile_summary.py``) and its optimised HLO.

    python benchmarks/lowering.py --quick                 # CPU: Q=1 K=1 both orders
    python benchmarks/lowering.py --precompile 8 --json out/lowering.json --profile out/prof
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    compile_timed,
    csv_list,
    machine,
    markdown_table,
    program_memory_mb,
    run_worker,
    time_state_calls,
    worker_main,
    write_json,
)

IMPLS = ("xla", "gemm")


def _task_chunk(text: str) -> int | str | None:
    if text.lower() in ("none", "null"):
        return None
    return text if text == "auto" else int(text)


def build_train_step(cfg: dict[str, Any]):
    """``(jitted chunk, (state, images, n), steps per call)``: the engine's fused MAML
    training chunk (``make_train_chunk``) with on-device episode sampling."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxmeta.algorithms.maml import maml
    from jaxmeta.data.episodes import sample_episodes
    from jaxmeta.models import Conv4
    from jaxmeta.step import init_train_state, make_train_chunk
    from jaxmeta.train.build import run_once_jit

    tasks, length = cfg["meta_batch"], cfg["steps_per_call"]
    # Made on the host: jax.random's 17M draws cost seconds of CPU, and only the shape counts.
    images = np.random.default_rng(0).integers(0, 256, (1100, 20, 28, 28), dtype=np.uint8)
    images = jax.device_put(images)
    sample = lambda k, d: sample_episodes(
        k, d, tasks=tasks, ways=5, shots=1, queries=cfg["query_per_class"], rotations=True
    )
    model = Conv4(num_classes=5, filters=cfg["filters"], head="mean", conv_impl=cfg["conv_impl"])
    params = run_once_jit(model.init)(jax.random.key(1), jnp.zeros((5, 28, 28, 1)))
    learner = maml(
        model.apply,
        inner_lr=0.4,
        inner_steps=cfg["inner_steps"],
        first_order=cfg["order"] == "first",
    )
    optimizer = optax.adam(1e-3)
    state = init_train_state(learner, optimizer, params, key=jax.random.key(2))
    chunk = make_train_chunk(
        learner, optimizer, sample, length=length, task_chunk=cfg["task_chunk"]
    )
    return chunk, (state, images, jnp.asarray(length, jnp.int32)), length


def _build(cfg: dict[str, Any]):
    """``(jitted, args, steps per call)`` of one row; ``args[0]`` is the (donated) state."""
    if cfg["kind"] == "train_step":
        return build_train_step(cfg)
    from maml_step import build_meta_step

    step, args, _ = build_meta_step(cfg)
    return step, args, 1


def _compile(cfg: dict[str, Any]):
    import contextlib

    import jax

    jitted, args, length = _build(cfg)
    precision = cfg.get("precision")
    ctx = jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()
    with ctx:
        compiled, compile_s = compile_timed(jitted, *args)
    return compiled, args, length, compile_s


def measure(cfg: dict[str, Any], keep: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compile (a persistent-cache hit after ``--precompile``) and time one row; ``keep``
    receives the compiled program (``"compiled"``) and one more call of it (``"call"``)."""
    import jax

    from jaxmeta.execution import resolve_task_chunk
    from jaxmeta.models.layers import resolve_conv_impl

    compiled, args, length, compile_s = _compile(cfg)
    timing = time_state_calls(compiled, args[0], args[1:], cfg)
    if keep is not None:
        keep.update(compiled=compiled, call=timing["call"])
    rec = dict(cfg)
    rec.update(
        ms_per_step=round(timing["ms_median"] / length, 4),
        ms_min=round(timing["ms_min"] / length, 4),
        ms_max=round(timing["ms_max"] / length, 4),
        n=timing["n"],
        cpu_util=timing["cpu_util"],
        load_or_compile_s=round(compile_s, 2),
        program_mb=program_memory_mb(compiled),
        device=jax.devices()[0].device_kind,
        backend=jax.default_backend(),
        conv_impl_resolved=resolve_conv_impl(cfg["conv_impl"]),
        task_chunk_resolved=resolve_task_chunk(cfg["task_chunk"]),
    )
    if cfg["kind"] == "train_step":
        rec["projected_60k_s"] = round(timing["ms_median"] / length * 60, 1)
    return rec


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """``{"compile": row}``: compile one row (fills the persistent compilation cache);
    ``{"rows": [...], "jsonl": PATH}``: time the rows one after another in this process,
    appending each record to ``PATH`` as soon as it is measured."""
    if "compile" in job:
        *_, compile_s = _compile(job["compile"])
        return {"compile_s": round(compile_s, 2)}
    import json

    def append(rec):
        with open(job["jsonl"], "a") as f:
            f.write(json.dumps(rec) + "\n")

    # The default train step, profiled last (so that a slow or failing profiler costs no
    # timing row) with the program and state its timing left.
    from jaxmeta.models.layers import resolve_conv_impl

    auto = resolve_conv_impl("auto")
    target = next(
        (
            c
            for c in job["rows"]
            if c.get("profile_dir") and c["conv_impl"] in ("auto", auto) and not c.get("precision")
        ),
        None,
    )
    kept: dict[str, Any] = {}
    for cfg in job["rows"]:
        try:
            rec = measure(cfg, kept if cfg is target else None)
        except Exception as e:  # noqa: BLE001 - one failing row must not lose the others
            rec = {**cfg, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        append(rec)
        msg = rec.get("error") or f"{rec['ms_per_step']:.3f} ms/step"
        print(
            f"{cfg['kind']:10s} {cfg['order']:6s} K={cfg['inner_steps']} "
            f"Q={cfg['query_per_class']} {cfg['conv_impl']:4s} "
            f"precision={cfg.get('precision') or 'default'}: {msg}",
            file=sys.stderr,
            flush=True,
        )
    if target is not None:
        try:
            if not kept:  # its timing failed: build and compile it again
                compiled, args, _, _ = _compile(target)
                timing = time_state_calls(compiled, args[0], args[1:], {**target, "budget_s": 0})
                kept.update(compiled=compiled, call=timing["call"])
            append(
                {
                    "kind": "profile",
                    **_profile(kept["compiled"], kept["call"], target["profile_dir"]),
                }
            )
        except Exception as e:  # noqa: BLE001
            append({"kind": "profile", "error": f"{type(e).__name__}: {str(e)[:300]}"})
    return {"done": len(job["rows"])}


def _profile(compiled, one, out: str) -> dict[str, Any]:
    """A ``jax.profiler`` trace of 5 calls and the optimised HLO of ``compiled``."""
    import jax

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    hlo = compiled.as_text()
    (out_dir / "train_step.hlo.txt").write_text(hlo)
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0  # device kernels and XLA ops, not every Python call
    t = time.perf_counter()
    with jax.profiler.trace(str(out_dir / "trace"), profiler_options=options):
        for _ in range(5):
            one()
    return {
        "profile_dir": str(out_dir),
        "profile_wall_s": round(time.perf_counter() - t, 2),
        "hlo_fusions": hlo.count(" fusion("),
        "hlo_custom_calls": hlo.count("custom-call("),
    }


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impls", type=csv_list, default=list(IMPLS), help="lowerings to compare")
    ap.add_argument("--orders", type=csv_list, default=["second", "first"], help="MAML orders")
    ap.add_argument(
        "--inner-steps", type=lambda s: csv_list(s, int), default=None, help="default 1,5"
    )
    ap.add_argument(
        "--queries",
        type=lambda s: csv_list(s, int),
        default=None,
        help="meta-step query images per class, default 15,1",
    )
    ap.add_argument(
        "--task-chunk",
        "--task-batch-size",
        type=_task_chunk,
        default="auto",
        help="'auto' (default: per backend), 'none' (vmap all tasks) or an int",
    )
    ap.add_argument(
        "--precisions",
        type=csv_list,
        default=["default", "highest"],
        help="jax_default_matmul_precision values of the train-step rows (highest: the "
        "default lowering only)",
    )
    ap.add_argument(
        "--both-impls-for",
        type=csv_list,
        default=None,
        help="meta-step configs ORDER:K:Q (e.g. second:1:15) measured with every --impls "
        "lowering; the others with the backend's auto lowering only (default: all with all)",
    )
    ap.add_argument("--filters", type=int, default=64, help="Conv-4 filters (64: canonical)")
    ap.add_argument("--meta-batch", type=int, default=32, help="tasks per meta-step")
    ap.add_argument("--steps-per-call", type=int, default=10, help="train-step scan length")
    ap.add_argument("--no-meta-step", action="store_true", help="train-step rows only")
    ap.add_argument("--no-train-step", action="store_true", help="meta-step rows only")
    ap.add_argument("--budget-s", type=float, default=None, help="timed s per row (default 3)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    ap.add_argument("--min-repeats", type=int, default=5, help="fewest timed calls")
    ap.add_argument("--max-repeats", type=int, default=200, help="most timed calls")
    ap.add_argument(
        "--precompile",
        type=int,
        default=0,
        help="compile the rows first in N parallel processes into a persistent compilation "
        "cache, so the timed pass loads them (0: compile in the timed pass)",
    )
    ap.add_argument("--quick", action="store_true", help="Q=1, K=1 only, 1 s per row")
    ap.add_argument("--timeout-s", type=float, default=1200, help="timed-pass timeout")
    ap.add_argument("--profile", default=None, help="folder for a trace of the default train step")
    ap.add_argument("--json", default=None, help="write all records here")
    args = ap.parse_args(argv)
    args.inner_steps = args.inner_steps or ([1] if args.quick else [1, 5])
    args.queries = args.queries or ([1] if args.quick else [15, 1])
    args.budget_s = args.budget_s if args.budget_s is not None else (1.0 if args.quick else 3.0)
    return args


def rows(args) -> list[dict[str, Any]]:
    """Every row to measure, the lowerings of one configuration adjacent; the train-step
    rows first (the step-time target and the profile, if time runs out)."""
    common = {
        "meta_batch": args.meta_batch,
        "filters": args.filters,
        "task_chunk": args.task_chunk,
        "warmup": args.warmup,
        "budget_s": args.budget_s,
        "repeats": None,
        "min_repeats": args.min_repeats,
        "max_repeats": args.max_repeats,
    }
    out = []
    if not args.no_train_step:
        for precision in args.precisions:
            # Full float32 only where it decides speed and accuracy: the default lowering.
            impls = args.impls if precision == "default" else ["auto"]
            for impl in impls:
                out.append(
                    {
                        "kind": "train_step",
                        "order": "second",
                        "inner_steps": 1,
                        "query_per_class": 1,
                        "steps_per_call": args.steps_per_call,
                        "conv_impl": impl,
                        "precision": None if precision == "default" else precision,
                        "profile_dir": args.profile,
                        **common,
                    }
                )
    if not args.no_meta_step:
        for q in args.queries:
            for k in args.inner_steps:
                for order in args.orders:
                    both = args.both_impls_for is None or f"{order}:{k}:{q}" in args.both_impls_for
                    for impl in args.impls if both else ["auto"]:
                        out.append(
                            {
                                "kind": "meta_step",
                                "order": order,
                                "inner_steps": k,
                                "query_per_class": q,
                                "conv_impl": impl,
                                **common,
                            }
                        )
    return out


def precompile(jobs: list[dict[str, Any]], n: int, env: dict[str, str]) -> dict[int, float]:
    """Compile every row in ``n`` parallel processes; ``{row index: compile seconds}``."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i):
        return i, run_worker(__file__, {"compile": jobs[i]}, env=env)

    out = {}
    with ThreadPoolExecutor(max_workers=n) as pool:
        for i, r in pool.map(one, range(len(jobs))):
            if "error" in r:
                print(f"precompile of row {i} failed: {r['error']}", file=sys.stderr)
            else:
                out[i] = r["compile_s"]
    return out


def compare(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration: xla and gemm ms side by side, and which is faster."""
    table: dict[tuple, dict[str, Any]] = {}
    names = ("kind", "order", "inner_steps", "query_per_class", "precision")
    for r in records:
        key = (
            r["kind"],
            r["order"],
            r["inner_steps"],
            r["query_per_class"],
            r.get("precision") or "default",
        )
        row = table.setdefault(key, dict(zip(names, key, strict=True)))
        impl = r.get("conv_impl_resolved") or r["conv_impl"]
        row[f"{impl}_ms"] = r.get("ms_per_step")
        row[f"{impl}_program_mb"] = r.get("program_mb")
        row[f"{impl}_compile_s"] = r.get("compile_s")
        if "error" in r:
            row[f"{impl}_error"] = r["error"][-120:]
        row["task_chunk"] = r.get("task_chunk_resolved")
    for row in table.values():
        times = {i: row.get(f"{i}_ms") for i in IMPLS if row.get(f"{i}_ms")}
        if len(times) == 2:
            row["fastest"] = min(times, key=times.get)
            row["xla_over_gemm"] = round(times["xla"] / times["gemm"], 2)
    return list(table.values())


COLUMNS = [
    ("kind", "step"),
    ("order", "order"),
    ("inner_steps", "K"),
    ("query_per_class", "Q/class"),
    ("precision", "matmul precision"),
    ("task_chunk", "task_chunk"),
    ("xla_ms", "xla ms/step"),
    ("gemm_ms", "gemm ms/step"),
    ("xla_over_gemm", "xla / gemm"),
    ("fastest", "fastest"),
    ("xla_program_mb", "xla program MB"),
    ("gemm_program_mb", "gemm program MB"),
    ("xla_compile_s", "xla compile s"),
    ("gemm_compile_s", "gemm compile s"),
]


def main(argv=None) -> int:
    # No JAX backend in this process: on a GPU it would hold device memory the workers need.
    import json
    import tempfile

    args = parse_args(argv)
    from jaxmeta.models.layers import resolve_conv_impl

    jobs = rows(args)
    with tempfile.TemporaryDirectory() as tmp:
        env = {}
        if args.precompile:
            env = {
                "JAX_COMPILATION_CACHE_DIR": str(Path(tmp) / "xla"),
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
            }
            t = time.perf_counter()
            compile_s = precompile(jobs, args.precompile, env)
            print(
                f"precompiled {len(compile_s)}/{len(jobs)} rows in "
                f"{time.perf_counter() - t:.1f} s ({args.precompile} processes)",
                file=sys.stderr,
                flush=True,
            )
        # Next to --json when given, so that rows measured before a timeout are kept.
        jsonl = Path(args.json).with_suffix(".jsonl") if args.json else Path(tmp) / "rows.jsonl"
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        jsonl.unlink(missing_ok=True)
        done = run_worker(
            __file__, {"rows": jobs, "jsonl": str(jsonl)}, timeout=args.timeout_s, env=env
        )
        if "error" in done:
            print(f"timed pass: {done['error']}", file=sys.stderr)
        text = jsonl.read_text() if jsonl.exists() else ""
        records = [json.loads(ln) for ln in text.splitlines() if ln]
    profile = next((r for r in records if r["kind"] == "profile"), None)
    records = [r for r in records if r["kind"] != "profile"]
    for r in records:  # the compile time of the row itself, not of its cache hit
        i = next(i for i, j in enumerate(jobs) if all(r.get(k) == v for k, v in j.items()))
        r["compile_s"] = compile_s.get(i) if args.precompile else r["load_or_compile_s"]
    missing = len(jobs) - len(records)
    table = compare(records)
    print(markdown_table(table, COLUMNS))
    backend = next((r["backend"] for r in records if "backend" in r), None)
    auto = resolve_conv_impl("auto", backend) if backend else None
    print(f"\nbackend {backend}: auto picks {auto!r} (jaxmeta.models.layers.FASTEST_CONV_IMPL)")
    if missing:
        print(f"{missing} of {len(jobs)} rows were not measured", file=sys.stderr)
    if profile:
        print(f"profile: {profile}", file=sys.stderr)
    if args.json:
        doc = {
            "benchmark": "lowering",
            "machine": machine(),
            "auto": auto,
            "xla_flags": os.environ.get("XLA_FLAGS"),
            "comparison": table,
            "records": records,
            "profile": profile,
        }
        print(f"wrote {write_json(args.json, doc)}")
    return 0 if records and not missing and all("error" not in r for r in records) else 1


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(worker_main(worker))
    sys.exit(main())
