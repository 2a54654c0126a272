"""Before/after of two small tasks in flight (``jaxmeta.execution``) on the CPU, interleaved.

For each configuration, one process compiles the MAML step three ways and times them in
alternating rounds (medians of the per-round medians are compared, ratios against ``one``):

* ``vmap``: all tasks in one ``vmap`` (``task_chunk=None``; ``maml_step.py``'s Q=1 default
  until 2026-12-07),
* ``one``: ``task_chunk="auto"`` with ``execution.CPU_TASKS_IN_FLIGHT = 1`` (one task per
  ``lax.scan`` step: the library's CPU default before this change),
* ``two``: ``task_chunk="auto"`` as shipped (two small tasks per scan step).

Configurations: ``maml_step.py``'s canonical step (``--configs so-q1-k1,so-q1-k5,...``) and
``train``, the engine's fused training step (``lowering.py``'s ``build_train_step``: on-device
sampling, mean head, 5 steps per call). Not for GPUs (there ``"auto"`` vmaps all tasks).

    python benchmarks/cpu_in_flight.py --configs so-q1-k1,train --rounds 4 --json out.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import csv_list, machine, write_json  # noqa: E402

VARIANTS = {"vmap": (None, 2), "one": ("auto", 1), "two": ("auto", 2)}


def _parse(name: str) -> dict:
    if name == "train":
        return {"kind": "train"}
    order, q, k = name.split("-")  # e.g. so-q1-k1
    return {
        "order": {"so": "second", "fo": "first"}[order],
        "query_per_class": int(q[1:]),
        "inner_steps": int(k[1:]),
    }


def build(name: str, task_chunk, in_flight: int):
    """``(call, steps per call)``: a blocking call of the compiled step of ``name``."""
    import jax

    import jaxmeta.execution as execution

    spec = _parse(name)
    old = execution.CPU_TASKS_IN_FLIGHT
    execution.CPU_TASKS_IN_FLIGHT = in_flight  # read at trace time
    try:
        if spec.get("kind") == "train":
            from lowering import build_train_step

            cfg = dict(
                meta_batch=32, steps_per_call=5, query_per_class=1, filters=64,
                conv_impl="auto", inner_steps=1, order="second", task_chunk=task_chunk,
            )  # fmt: skip
            fn, args, length = build_train_step(cfg)
        else:
            from maml_step import build_meta_step

            cfg = dict(spec, meta_batch=32, filters=64, conv_impl="auto", task_chunk=task_chunk)
            fn, args, _ = build_meta_step(cfg)
            length = 1
        compiled = fn.lower(*args).compile()
    finally:
        execution.CPU_TASKS_IN_FLIGHT = old
    box = {"state": args[0]}

    def call():
        box["state"], metrics = compiled(box["state"], *args[1:])
        jax.block_until_ready((box["state"], metrics))

    call()
    return call, length


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--configs",
        type=csv_list,
        default=["so-q1-k1", "so-q1-k5", "train"],
        help="comma-separated: {so,fo}-q<queries per class>-k<inner steps>, or train",
    )
    ap.add_argument(
        "--variants", type=csv_list, default=list(VARIANTS), help="subset of vmap,one,two"
    )
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds (4)")
    ap.add_argument("--calls", type=int, default=3, help="timed calls per variant and round (3)")
    ap.add_argument("--json", default=None, help="write the records (and machine) here")
    args = ap.parse_args(argv)
    records = []
    for name in args.configs:
        calls = {v: build(name, *VARIANTS[v]) for v in args.variants}
        per_round = {v: [] for v in calls}
        for r in range(args.rounds):
            for v in calls if r % 2 == 0 else list(calls)[::-1]:
                call, length = calls[v]
                ts = []
                for _ in range(args.calls):
                    t = time.perf_counter()
                    call()
                    ts.append(1e3 * (time.perf_counter() - t) / length)
                per_round[v].append(statistics.median(ts))
        base = statistics.median(per_round["one"]) if "one" in per_round else None
        for v, ms in per_round.items():
            med = statistics.median(ms)
            rec = {"config": name, "variant": v, "ms_per_step": round(med, 1),
                   "per_round_ms": [round(m, 1) for m in ms],
                   "ratio_to_one": round(med / base, 3) if base else None}  # fmt: skip
            records.append(rec)
            print(f"{name:10s} {v:5s} {med:8.1f} ms/step  rounds {rec['per_round_ms']}  "
                  f"x{rec['ratio_to_one']}", flush=True)  # fmt: skip
    if args.json:
        write_json(args.json, {"machine": machine(), "records": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
