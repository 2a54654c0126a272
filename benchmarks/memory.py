"""Peak memory of one meta-gradient against the number of inner steps: MAML, MAML with
``remat``, first-order MAML and iMAML (issue 17; learn2learn #393/#161/#284, pytorch-maml #21).

Each configuration is one jit-compiled meta-gradient (``learner.meta_grad``, no optimizer) of
a meta-batch of synthetic Omniglot-shaped episodes (Conv-4, 5-way 1-shot, 15 queries per class,
all tasks in one ``vmap``: ``task_chunk=None``), compiled in a fresh subprocess. Recorded:

* ``temp_mb``: the compiled program's temporary buffers (``compiled.memory_analysis()``),
  what grows with stored inner-loop residuals; ``args_mb`` / ``out_mb`` beside it.
* ``device_peak_mb`` (accelerators, with ``--execute``, default on a GPU): the allocator's
  ``peak_bytes_in_use`` after one call, in a process that ran nothing else.
* ``peak_rss_mb`` (CPU with ``--execute``): the process's peak RSS, which includes the
  Python/JAX baseline (a few hundred MiB).

Writes ``memory.json``, ``memory.md`` and ``memory.png`` (MiB against inner steps, one line
per learner) to ``--out`` (default ``bench-out/memory``).

Examples::

    python benchmarks/memory.py                         # 1,5,10,20,50 steps, compile only on CPU
    python benchmarks/memory.py --quick                 # 1 and 5 steps, 8 filters, 4 tasks
    python benchmarks/memory.py --execute --out DIR     # on a GPU: also the device peak
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    csv_list,
    machine,
    markdown_table,
    memory_record,
    run_worker,
    scratch,
    worker_main,
    write_json,
)

LEARNERS = ("maml", "maml_remat", "fomaml", "imaml")
MiB = 2**20


def build(cfg: dict[str, Any]):
    from jaxmeta.algorithms import get_algorithm
    from jaxmeta.models.conv4 import Conv4

    model = Conv4(num_classes=cfg["ways"], filters=cfg["filters"], head="mean")
    k, name = cfg["inner_steps"], cfg["learner"]
    if name == "imaml":
        learner = get_algorithm("imaml")(
            model.apply, inner_lr=0.1, inner_steps=k, lam=2.0, cg_steps=cfg["cg_steps"]
        )
    else:
        learner = get_algorithm("maml")(
            model.apply,
            inner_lr=0.4,
            inner_steps=k,
            first_order=name == "fomaml",
            remat=name == "maml_remat",
        )
    return learner, model


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    from throughput import synthetic_episodes

    learner, model = build(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1), jnp.float32))
    eps = synthetic_episodes(
        jax.random.key(1),
        tasks=cfg["tasks"],
        ways=cfg["ways"],
        shots=cfg["shots"],
        queries=cfg["queries"],
    )
    fn = jax.jit(lambda p, e, k: learner.meta_grad(p, e, k, task_chunk=None))
    compiled = fn.lower(params, eps, jax.random.key(2)).compile()
    mem = compiled.memory_analysis()
    rec = {
        **cfg,
        "backend": jax.default_backend(),
        "temp_mb": mem.temp_size_in_bytes / MiB,
        "args_mb": mem.argument_size_in_bytes / MiB,
        "out_mb": mem.output_size_in_bytes / MiB,
    }
    if cfg["execute"]:
        jax.block_until_ready(compiled(params, eps, jax.random.key(2)))
        rec.update(memory_record())
    return rec


def plot(rows: list[dict[str, Any]], path: Path, key: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in LEARNERS:
        pts = [(r["inner_steps"], r[key]) for r in rows if r["learner"] == name and key in r]
        if pts:
            ax.plot(*zip(*sorted(pts), strict=True), marker="o", label=name)
    ax.set_xlabel("inner steps")
    ax.set_ylabel(f"{key} (MiB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    if "--worker" in sys.argv:
        return worker_main(run_one)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--inner-steps", type=lambda s: csv_list(s, int), default=[1, 5, 10, 20, 50])
    ap.add_argument("--learners", type=csv_list, default=list(LEARNERS))
    ap.add_argument("--tasks", type=int, default=32, help="meta-batch (all tasks vmapped)")
    ap.add_argument("--filters", type=int, default=64)
    ap.add_argument("--queries", type=int, default=15)
    ap.add_argument("--cg-steps", type=int, default=5)
    ap.add_argument("--execute", action="store_true", help="run once (device peak on a GPU)")
    ap.add_argument("--quick", action="store_true", help="1 and 5 steps, 8 filters, 4 tasks")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", type=Path, default=scratch("memory"))
    ap.add_argument("--report", action="store_true", help="only redraw --out's table and plot")
    args = ap.parse_args()
    if args.report:
        saved = json.loads((args.out / "memory.json").read_text())
        report(saved["rows"], args)
        return 0
    if args.quick:
        args.inner_steps, args.filters, args.tasks = [1, 5], 8, 4
    unknown = sorted(set(args.learners) - set(LEARNERS))
    if unknown:
        raise SystemExit(f"--learners: unknown {unknown}; choose from {', '.join(LEARNERS)}")

    import jax

    execute = args.execute or jax.default_backend() != "cpu"
    rows = []
    for k in args.inner_steps:
        for name in args.learners:
            cfg = dict(
                learner=name,
                inner_steps=k,
                tasks=args.tasks,
                ways=5,
                shots=1,
                queries=args.queries,
                filters=args.filters,
                cg_steps=args.cg_steps,
                execute=execute,
            )
            rec = run_worker(__file__, cfg, timeout=args.timeout)
            if "error" in rec:
                line = rec["error"]
            else:
                line = f"temp {rec['temp_mb']:.1f} MiB"
                if "peak_mb" in rec:
                    line += f", peak {rec['peak_mb']:.1f} MiB ({rec['memory_kind']})"
            print(f"{name:11s} K={k:3d}  {line}", flush=True)
            rows.append(rec)
            write_json(args.out / "memory.json", {"machine": machine(), "rows": rows})

    report(rows, args)
    return 0


def report(rows: list[dict[str, Any]], args) -> None:
    """``memory.md`` and ``memory.png`` (and the device-peak plot) from result rows."""
    rows = [r for r in rows if "error" not in r]
    cols = [("learner", "learner"), ("inner_steps", "inner steps"), ("temp_mb", "temp MiB")]
    if any("device_peak_mb" in r for r in rows):
        cols.append(("device_peak_mb", "device peak MiB"))
    elif any("peak_rss_mb" in r for r in rows):
        cols.append(("peak_rss_mb", "peak RSS MiB"))
    table = markdown_table(rows, cols)
    (args.out / "memory.md").write_text(table + "\n")
    print(table)
    r0 = rows[0] if rows else {}
    title = (
        f"meta-gradient memory, Conv-4 {r0.get('filters')}f 5w1s Q{r0.get('queries')}, "
        f"{r0.get('tasks')} tasks vmapped ({r0.get('backend', '?')})"
    )
    plot(rows, args.out / "memory.png", "temp_mb", title)
    if any("device_peak_mb" in r for r in rows):
        plot(rows, args.out / "memory_device_peak.png", "device_peak_mb", title)
    print(f"wrote {args.out}/memory.json, memory.md, memory.png")


if __name__ == "__main__":
    raise SystemExit(main())
