"""jaxmeta vs PyTorch on the canonical MAML workload, interleaved in one run, with ratios.

The workload (fixed; the one of ``../shared/peers/torch_maml.py``): Conv-4 strided
(4 x [conv 3x3 64 stride 2, batch-statistics BatchNorm, ReLU], flatten, linear), Omniglot
5-way 1-shot shapes, 15 (and 1) query images per class, meta-batch 32, 1 (and 5) inner
SGD steps at lr 0.4, Adam 1e-3, second and first order; random inputs made once.

Implementations, each configuration in its own fresh process:

* **jaxmeta**: ``benchmarks/maml_step.py`` (the jaxmeta side of this workload, one
  subprocess per configuration, ``--json PATH``); when that script is missing or fails,
  ``--jax-runner throughput`` uses ``benchmarks/throughput.py``'s worker with the same
  workload (``--jax-runner auto``, the default, tries maml_step first).
* **PyTorch**: the peers harness ``torch_maml.py`` is *invoked* from ``--peers-dir``
  (default ``../shared/peers`` next to the repository; never copied here) with
  ``--torch-python`` (a Python with torch 2.x and ``higher``; default
  ``$JAXMETA_TORCH_PYTHON`` or ``../venv-peers/bin/python``). Implementations
  (``--torch-impls``): ``higher`` and ``func`` (torch.func + vmap) by default; ``l2l``,
  ``func_loop`` and ``func_fusedbn`` when asked (see the peers README). Missing torch is
  not an error: the PyTorch columns are then empty.

Interleaving: ``--repeats`` rounds; in each round every configuration runs every
implementation back to back, the order of implementations alternating between rounds, so
slow drifts of the machine's load hit all implementations alike. Per configuration the
script reports the median over rounds of each implementation's ms per meta-step and peak
RSS, and ``speedup = fastest exact PyTorch / jaxmeta`` (target >= 3x; ``func_fusedbn`` is
excluded for second order, its meta-gradient is wrong) and ``memory ratio = jaxmeta peak
/ lowest peak of the looped PyTorch peers (higher, l2l, func_loop)`` (target <= 1), both
whole-process peak RSS (``memory_ratio_steps`` uses jaxmeta's peak during the timed steps,
i.e. without the XLA compiler's memory).

Examples::

    python benchmarks/compare_pytorch.py                    # full: 8 configs x impls, long
    python benchmarks/compare_pytorch.py --queries 1 --inner-steps 1 --repeats 2 --budget-s 4
    python benchmarks/compare_pytorch.py --quick --tiny --torch-python none   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    REPO,
    csv_list,
    machine,
    markdown_table,
    run_worker,
    scratch,
    write_json,
)

HERE = Path(__file__).resolve().parent
LOOPED = ("higher", "l2l", "func_loop")
TORCH_IMPLS = ("higher", "func", "l2l", "func_loop", "func_fusedbn")


def workload_args(cfg: dict[str, Any], args) -> list[str]:
    """Command-line options of one configuration, shared by the jaxmeta and torch runners."""
    return [
        "--orders",
        cfg["order"],
        "--inner-steps",
        str(cfg["inner_steps"]),
        "--queries",
        str(cfg["queries"]),
        "--meta-batch",
        str(cfg["meta_batch"]),
        "--budget-s",
        str(args.budget_s),
    ]


def default_torch_python() -> str:
    env = os.environ.get("JAXMETA_TORCH_PYTHON")
    return env or str(REPO.parent / "venv-peers" / "bin" / "python")


# ------------------------------------------------------------------------------ runners


def _records(path: Path) -> list[dict[str, Any]]:
    """Records from a JSON file (object, list, or {"results"/"records"/"runs": [...]}) or JSONL."""
    text = path.read_text().strip()
    if not text:
        return []
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(ln) for ln in text.splitlines() if ln.strip().startswith("{")]
    if isinstance(doc, list):
        return doc
    for key in ("results", "records", "runs"):
        if isinstance(doc.get(key), list):
            return doc[key]
    return [doc]


def run_jax_maml_step(cfg: dict[str, Any], args) -> dict[str, Any]:
    """One configuration through ``benchmarks/maml_step.py --json PATH``."""
    script = HERE / "maml_step.py"
    if not script.exists():
        return {"error": "benchmarks/maml_step.py not found"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "maml_step.json"
        cmd = [
            sys.executable,
            str(script),
            *workload_args(cfg, args),
            "--json",
            str(out),
        ]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"maml_step.py timeout after {args.timeout_s} s"}
        if p.returncode != 0 or not out.exists():
            tail = " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:])
            return {"error": f"maml_step.py rc={p.returncode}: {tail[-500:]}"}
        recs = [
            r
            for r in _records(out)
            if r.get("order") == cfg["order"]
            and r.get("inner_steps") == cfg["inner_steps"]
            and r.get("query_per_class", cfg["queries"]) == cfg["queries"]
        ]
        if not recs:
            return {"error": "maml_step.py wrote no matching record"}
        r = recs[-1]
        return {
            "ms": r["ms_per_step"],
            "peak_rss_mb": r.get("peak_rss_mb"),
            "steps_peak_mb": r.get("peak_rss_steps_mb"),
            "device_peak_mb": r.get("device_peak_mb"),
            "compile_s": r.get("compile_s"),
            "cpu_util": r.get("cpu_util"),
            "runner": "maml_step",
            "raw": r,
        }


def run_jax_throughput(cfg: dict[str, Any], args) -> dict[str, Any]:
    """One configuration through ``throughput.py``'s worker (same workload)."""
    wcfg = {
        "sweep": "compare_pytorch",
        "algorithm": "maml",
        "first_order": cfg["order"] == "first",
        "inner_steps": cfg["inner_steps"],
        "ways": 5,
        "shots": 1,
        "queries": cfg["queries"],
        "meta_batch": cfg["meta_batch"],
        "remat": False,
        "task_chunk": args.task_chunk,
        "filters": cfg["filters"],
        "head": "flatten",
        "inner_lr": 0.4,
        "outer_lr": 1e-3,
        "warmup": args.warmup,
        "budget_s": args.budget_s,
        "min_repeats": args.min_steps,
        "max_repeats": args.max_steps,
        "project_steps": None,
    }
    r = run_worker(HERE / "throughput.py", wcfg, timeout=args.timeout_s)
    if "error" in r:
        return {"error": r["error"]}
    return {
        "ms": r["ms_per_step"],
        "peak_rss_mb": r["peak_rss_mb"],
        "steps_peak_mb": r.get("peak_rss_steps_mb"),
        "compile_s": r["compile_s"],
        "cpu_util": r["cpu_util"],
        "runner": "throughput",
        "raw": r,
    }


def jax_from_file(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """The jaxmeta row of ``cfg`` from a ``lowering.py`` JSON measured earlier in the same
    call (its meta-step rows with the lowering ``auto`` picks), instead of measuring again."""
    doc = json.loads(path.read_text())
    auto = doc.get("auto") if isinstance(doc, dict) else None
    recs = [
        r
        for r in _records(path)
        if r.get("kind", "meta_step") == "meta_step"
        and r.get("order") == cfg["order"]
        and r.get("inner_steps") == cfg["inner_steps"]
        and r.get("query_per_class") == cfg["queries"]
        and r.get("meta_batch") == cfg["meta_batch"]
        and r.get("filters", 64) == cfg["filters"]
        and (auto is None or r.get("conv_impl_resolved") == auto)
        and "error" not in r
    ]
    if not recs:
        return {"error": f"no matching jaxmeta record in {path}"}
    r = recs[-1]
    return {
        "ms": r["ms_per_step"],
        "peak_rss_mb": r.get("peak_rss_mb"),
        "steps_peak_mb": r.get("peak_rss_steps_mb"),
        # lowering.py: the compiled program's own need (XLA memory analysis)
        "device_peak_mb": r.get("program_mb", r.get("device_peak_mb")),
        "compile_s": r.get("compile_s"),
        "cpu_util": r.get("cpu_util"),
        "runner": f"from {path.name}",
        "raw": r,
    }


def run_jax(cfg, args) -> dict[str, Any]:
    if args.jax_from:
        return jax_from_file(cfg, Path(args.jax_from))
    if args.jax_runner in ("auto", "maml_step"):
        r = run_jax_maml_step(cfg, args)
        if "error" not in r or args.jax_runner == "maml_step":
            return r
        print(f"  (maml_step: {r['error']}; using throughput.py's worker)", file=sys.stderr)
    return run_jax_throughput(cfg, args)


def torch_available(args) -> str | None:
    """``None`` if the torch Python and the peers harness work, else the reason."""
    if args.torch_python in ("", "none"):
        return "disabled (--torch-python none)"
    if not (Path(args.peers_dir) / "torch_maml.py").exists():
        return (
            f"the PyTorch harness {Path(args.peers_dir) / 'torch_maml.py'} is missing. It is not "
            "part of this repository: it lives in the project's shared folder, "
            "../shared/peers/ next to the checkout (torch_maml.py, with a README.md on how "
            "to set up its Python). Put that folder there, or pass --peers-dir DIR; "
            "../shared/gpu/offline-bundle.sh also packs it into .gpu/peers for a machine "
            "without the shared folder"
        )
    if not (Path(args.torch_python).exists() or shutil.which(args.torch_python)):
        return (
            f"no Python at {args.torch_python} (--torch-python; default "
            "$JAXMETA_TORCH_PYTHON or ../venv-peers/bin/python): make one with "
            "`python3 -m venv ../venv-peers && ../venv-peers/bin/pip install torch higher` "
            f"(details in {Path(args.peers_dir) / 'README.md'})"
        )
    p = subprocess.run(
        [args.torch_python, "-c", "import torch, higher; print(torch.__version__)"],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        return (
            f"torch/higher not importable with {args.torch_python} ("
            + (p.stderr.strip().splitlines() or ["?"])[-1]
            + f"): install them into it, `{args.torch_python} -m pip install torch higher`"
        )
    args.torch_version = p.stdout.strip()
    return None


def run_torch(impl: str, cfg: dict[str, Any], args) -> dict[str, Any]:
    """One implementation x configuration through the peers harness (its own subprocess)."""
    cmd = [
        args.torch_python,
        str(Path(args.peers_dir) / "torch_maml.py"),
        "--impls",
        impl,
        *workload_args(cfg, args),
        "--warmup",
        str(args.warmup),
        "--min-steps",
        str(args.min_steps),
        "--max-steps",
        str(args.max_steps),
        "--threads",
        str(args.threads),
        "--max-tries",
        "1",
        "--min-cpu-util",
        "0",
        "--device",
        args.device,
    ]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {args.timeout_s} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": f"rc={p.returncode}: " + " | ".join(p.stderr.strip().splitlines()[-2:])}
    r = json.loads(lines[-1])
    if "error" in r:
        return {"error": r["error"]}
    return {
        "ms": r["ms_per_meta_step"],
        "peak_rss_mb": r["peak_rss_mb"],
        "device_peak_mb": r.get("peak_gpu_mb"),
        "cpu_util": r.get("cpu_util"),
        "raw": r,
    }


# ------------------------------------------------------------------------------ analysis


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(
    cfg: dict[str, Any],
    by_impl: dict[str, list[dict]],
    args_min_util: float = 1.8,
    *,
    target: float = 3.0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Medians over rounds, speedup over the fastest exact PyTorch impl, memory ratio.

    ``target``: the speedup asked for (3x on the CPU, 20x on a GPU). On a GPU
    (``device="cuda"``) memory is compared as device peaks against ``torch.func``'s
    (``gpu_memory_ratio``, target <= 1) and CPU contention is not flagged.
    """
    row: dict[str, Any] = {k: cfg[k] for k in ("order", "inner_steps", "queries", "meta_batch")}
    med = {}
    for impl, runs in by_impl.items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            row[f"{impl}_error"] = runs[-1]["error"] if runs else "not run"
            continue
        med[impl] = {
            "ms": statistics.median(r["ms"] for r in ok),
            "peak_rss_mb": _median_of(ok, "peak_rss_mb"),
            "device_peak_mb": _median_of(ok, "device_peak_mb"),
            "cpu_util": _median_of(ok, "cpu_util"),
            "rounds": len(ok),
        }
        row[f"{impl}_ms"] = med[impl]["ms"]
        row[f"{impl}_peak_mb"] = med[impl]["peak_rss_mb"]
        row[f"{impl}_device_peak_mb"] = med[impl]["device_peak_mb"]
    wrong = {"func_fusedbn"} if cfg["order"] == "second" else set()
    exact = [i for i in med if i != "jaxmeta" and i not in wrong]
    if "jaxmeta" in med and exact:
        fastest = min(exact, key=lambda i: med[i]["ms"])
        # Per-round ratios too: the interleaving makes them robust to slow load drifts.
        rounds = []
        for j, jr in enumerate(by_impl["jaxmeta"]):
            ts = [
                by_impl[i][j]["ms"]
                for i in exact
                if j < len(by_impl[i]) and "error" not in by_impl[i][j]
            ]
            if "error" not in jr and ts:
                rounds.append(min(ts) / jr["ms"])
        row.update(
            fastest_torch=fastest,
            fastest_torch_ms=med[fastest]["ms"],
            speedup=med[fastest]["ms"] / med["jaxmeta"]["ms"],
            speedup_per_round=[round(x, 2) for x in rounds],
            speedup_target=target,
            speedup_ok=med[fastest]["ms"] / med["jaxmeta"]["ms"] >= target,
        )
        jax_dev, func_dev = (
            med[i].get("device_peak_mb") if i in med else None for i in ("jaxmeta", "func")
        )
        if jax_dev and func_dev:
            row["gpu_memory_ratio"] = jax_dev / func_dev
            row["gpu_memory_ok"] = row["gpu_memory_ratio"] <= 1.0
        looped = [med[i]["peak_rss_mb"] for i in LOOPED if i in med and med[i]["peak_rss_mb"]]
        if looped and med["jaxmeta"]["peak_rss_mb"]:
            # Whole-process peaks on both sides (interpreter, framework, and for jaxmeta
            # the XLA compiler); the steps-only ratio leaves compilation out.
            row["memory_ratio"] = med["jaxmeta"]["peak_rss_mb"] / min(looped)
            row["memory_ok"] = row["memory_ratio"] <= 1.0
            steps = [r["steps_peak_mb"] for r in by_impl["jaxmeta"] if r.get("steps_peak_mb")]
            if steps:
                row["jaxmeta_steps_peak_mb"] = statistics.median(steps)
                row["memory_ratio_steps"] = row["jaxmeta_steps_peak_mb"] / min(looped)
    utils = [m["cpu_util"] for m in med.values() if m.get("cpu_util") is not None]
    if utils and device == "cpu":
        row["min_cpu_util"] = min(utils)
        # torch's OpenMP pool degrades far more than XLA's when the cores are shared
        # (spinning threads descheduled): ratios measured under contention overstate
        # the speedup. Flag them.
        row["contended"] = min(utils) < args_min_util
    row["medians"] = med
    return row


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--orders",
        type=csv_list,
        default=["second", "first"],
        help="MAML orders to time, comma-separated (default second,first)",
    )
    ap.add_argument(
        "--inner-steps",
        type=lambda s: csv_list(s, int),
        default=None,
        help="default 1,5 (--quick 1)",
    )
    ap.add_argument(
        "--queries",
        type=lambda s: csv_list(s, int),
        default=None,
        help="query images per class, default 15,1 (--quick 1)",
    )
    ap.add_argument("--meta-batch", type=int, default=None, help="default 32")
    ap.add_argument(
        "--torch-impls",
        type=csv_list,
        default=["higher", "func"],
        help=f"comma-separated from {', '.join(TORCH_IMPLS)}",
    )
    ap.add_argument(
        "--torch-python",
        default=default_torch_python(),
        help="Python with torch + higher ('none' to skip PyTorch)",
    )
    ap.add_argument(
        "--peers-dir",
        default=str(REPO.parent / "shared" / "peers"),
        help="folder holding the PyTorch harness torch_maml.py (not in this repository; "
        "default ../shared/peers next to the checkout, the project's shared folder)",
    )
    ap.add_argument(
        "--jax-runner",
        choices=["auto", "maml_step", "throughput"],
        default="auto",
        help="which jaxmeta benchmark times the jaxmeta side (auto: maml_step for the "
        "full-size net, throughput with --tiny)",
    )
    ap.add_argument(
        "--jax-from",
        default=None,
        help="take the jaxmeta rows from this benchmarks/lowering.py JSON (measured in the "
        "same call, e.g. by benchmarks/gpu.sh) instead of measuring them again",
    )
    ap.add_argument(
        "--task-chunk",
        "--task-batch-size",
        type=int,
        default=None,
        help="jaxmeta task_chunk for the throughput runner",
    )
    ap.add_argument(
        "--repeats", type=int, default=None, help="interleaved rounds (default 3; --quick 1)"
    )
    ap.add_argument(
        "--budget-s", type=float, default=None, help="timed seconds per run (default 6; --quick 3)"
    )
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per run (3)")
    ap.add_argument("--min-steps", type=int, default=5, help="fewest timed steps per run (5)")
    ap.add_argument("--max-steps", type=int, default=40, help="most timed steps per run (40)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="torch device (jaxmeta uses JAX's default backend; run both on the same machine)",
    )
    ap.add_argument(
        "--target",
        type=float,
        default=None,
        help="speedup asked for over the fastest exact PyTorch impl (default 3 cpu, 20 cuda)",
    )
    ap.add_argument(
        "--contended-below",
        type=float,
        default=1.8,
        help="flag a configuration as contended when any implementation's "
        "cpu_util (CPU s / wall s) is below this (2 cores: 2.0 = all ours)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="one round of 1 query/class, 1 inner step (both orders)",
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="meta-batch 2, 8 filters (smoke tests; not the canonical workload)",
    )
    ap.add_argument("--timeout-s", type=float, default=None, help="per-run timeout (none)")
    ap.add_argument(
        "--json",
        default=None,
        help="output (default bench-out/compare_pytorch/compare_pytorch.json, git-ignored; "
        "benchmarks/results/compare_pytorch holds the curated results)",
    )
    args = ap.parse_args(argv)
    bad = [i for i in args.torch_impls if i not in TORCH_IMPLS]
    if bad:
        ap.error(f"unknown torch impls {bad}")
    q = args.quick or args.tiny
    args.inner_steps = args.inner_steps or ([1] if q else [1, 5])
    args.queries = args.queries or ([1] if q else [15, 1])
    args.meta_batch = args.meta_batch or (2 if args.tiny else 32)
    args.repeats = args.repeats or (1 if q else 3)
    args.budget_s = (
        args.budget_s
        if args.budget_s is not None
        else (0.2 if args.tiny else (3.0 if args.quick else 6.0))
    )
    if args.tiny:
        args.warmup, args.min_steps, args.max_steps = 1, 2, 3
        args.jax_runner = "throughput"  # maml_step runs the full-size net only
    if args.target is None:
        args.target = 20.0 if args.device == "cuda" else 3.0
    args.torch_version = None
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.json) if args.json else scratch("compare_pytorch") / "compare_pytorch.json"
    why_no_torch = torch_available(args)
    impls = ["jaxmeta"] + ([] if why_no_torch else list(args.torch_impls))
    if why_no_torch:
        print(f"PyTorch side skipped: {why_no_torch}", file=sys.stderr)
    cfgs = [
        {
            "order": o,
            "inner_steps": k,
            "queries": q,
            "meta_batch": args.meta_batch,
            "filters": 8 if args.tiny else 64,
        }
        for q in args.queries
        for k in args.inner_steps
        for o in args.orders
    ]
    raw: dict[int, dict[str, list[dict]]] = {i: {m: [] for m in impls} for i in range(len(cfgs))}

    def document(final: bool) -> dict[str, Any]:
        return {
            "benchmark": "compare_pytorch",
            # machine() starts a JAX backend: only once every worker has finished.
            "machine": machine() if final else None,
            "complete": final,
            "torch": args.torch_version,
            "torch_skipped": why_no_torch,
            "settings": vars(args),
            "summary": [
                summarize(
                    cfg, raw[ci], args.contended_below, target=args.target, device=args.device
                )
                for ci, cfg in enumerate(cfgs)
            ],
            "runs": [
                {**cfg, "impl": impl, **r}
                for ci, cfg in enumerate(cfgs)
                for impl, rs in raw[ci].items()
                for r in rs
            ],
        }

    for rnd in range(args.repeats):
        order = impls if rnd % 2 == 0 else impls[::-1]
        for ci, cfg in enumerate(cfgs):
            for impl in order:
                print(
                    f"[{time.strftime('%H:%M:%S')}] round {rnd + 1}/{args.repeats} "
                    f"{cfg['order']} K={cfg['inner_steps']} Q={cfg['queries']} {impl}",
                    file=sys.stderr,
                    flush=True,
                )
                r = run_jax(cfg, args) if impl == "jaxmeta" else run_torch(impl, cfg, args)
                r["round"] = rnd
                raw[ci][impl].append(r)
                write_json(out, document(final=False))  # a run cut short keeps its rows
                msg = (
                    r["error"]
                    if "error" in r
                    else (
                        f"{r['ms']:.1f} ms/step, peak {r.get('peak_rss_mb') or 0:.0f} MiB, "
                        f"cpu util {r.get('cpu_util')}"
                    )
                )
                print(f"  {msg}", file=sys.stderr, flush=True)
    doc = document(final=True)
    rows = doc["summary"]
    write_json(out, doc)
    cols = [
        ("order", "order"),
        ("inner_steps", "K"),
        ("queries", "Q"),
        ("jaxmeta_ms", "jaxmeta ms"),
    ]
    cols += [(f"{i}_ms", f"{i} ms") for i in impls[1:]]
    cols += [("speedup", "speedup vs fastest torch"), ("jaxmeta_peak_mb", "jaxmeta MiB")]
    if args.device == "cpu":
        cols += [(f"{i}_peak_mb", f"{i} MiB") for i in impls[1:] if i in LOOPED]
        cols += [("min_cpu_util", "min cpu util"), ("contended", "contended")]
        cols += [
            ("memory_ratio", "mem ratio vs looped"),
            ("memory_ratio_steps", "mem ratio (jaxmeta steps only)"),
        ]
    else:
        cols += [("jaxmeta_device_peak_mb", "jaxmeta GPU MiB")]
        cols += [(f"{i}_device_peak_mb", f"{i} GPU MiB") for i in impls[1:]]
        cols += [("gpu_memory_ratio", "GPU mem ratio vs func")]
    print(markdown_table(rows, cols))
    print(f"\nwrote {out}", file=sys.stderr)
    failed = any("error" in r for rs in raw.values() for r in rs["jaxmeta"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
