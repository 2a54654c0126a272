"""Per-kernel breakdown of a ``jax.profiler`` trace (``*.trace.json.gz``).

Reads the Chrome-trace JSON that ``jax.profiler.trace`` writes next to its ``.xplane.pb``
(``<dir>/plugins/profile/<run>/<host>.trace.json.gz``) and prints, for the device
timelines (``/device:GPU:N`` streams; on a CPU-only trace the XLA op events of the host),
the busy time, the number of kernel launches, and the kernels (or ops) that take the most
time, grouped by name. ``--steps N`` divides by the number of meta-steps traced (e.g. 50
for ``benchmarks/lowering.py --profile``: 5 calls of 10 fused steps).

    python benchmarks/profile_summary.py RESULTS/profile/trace --steps 50 [--top 25] [--json F]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
from pathlib import Path
from typing import Any


def find_trace(path: Path) -> Path:
    """``path`` itself, or the newest ``*.trace.json.gz`` below it."""
    if path.is_file():
        return path
    found = sorted(path.rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no *.trace.json.gz under {path}")
    return found[-1]


def summarize(events: list[dict[str, Any]], *, steps: int = 1, top: int = 25) -> dict[str, Any]:
    """Busy time, launches and the top kernels of the device timelines of ``events``."""
    procs = {
        e["pid"]: e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    threads = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    device = {pid for pid, name in procs.items() if "GPU" in name or "TPU" in name}
    kind = "device"
    if not device:  # CPU-only trace: XLA ops run on the host
        device, kind = set(procs), "host"
    spans = [e for e in events if e.get("ph") == "X" and e.get("pid") in device and "dur" in e]
    # A device's timeline also has "XLA Modules" / "XLA Ops" / "Steps" lines that repeat
    # the kernels' time at coarser grain: count the streams' kernels only.
    thread = lambda e: threads.get((e["pid"], e["tid"]), "")
    modules = [e for e in spans if thread(e).startswith("XLA Modules")]
    if any(thread(e).startswith("Stream") for e in spans):
        spans = [e for e in spans if thread(e).startswith("Stream")]
    if kind == "host":  # XLA op events, not Python, runtime or control-flow containers
        container = re.compile(r"^(while|cond|conditional|call)(\.\d+)?$")
        spans = [
            e
            for e in spans
            if not e["name"].startswith(("$", "Thunk", "PjRt", "Pjit"))
            and "::" not in e["name"]
            and not container.match(e["name"])
        ]
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for e in spans:
        by_name[e["name"]].append(float(e["dur"]))
    total = sum(sum(v) for v in by_name.values())
    if spans:
        t0 = min(e["ts"] for e in spans)
        t1 = max(e["ts"] + e["dur"] for e in spans)
        window = t1 - t0
    else:
        window = 0.0
    rows = sorted(
        ({"name": k, "count": len(v), "us": sum(v)} for k, v in by_name.items()),
        key=lambda r: -r["us"],
    )
    for r in rows:
        r["us_per_step"] = r["us"] / steps
        r["share"] = r["us"] / total if total else 0.0
        r["calls_per_step"] = r["count"] / steps
    return {
        "timeline": kind,
        "timelines": sorted(procs[p] for p in device),
        "steps": steps,
        "busy_us_per_step": total / steps,
        "window_us_per_step": window / steps,
        "launches_per_step": len(spans) / steps,
        "module_us_per_step": sum(e["dur"] for e in modules) / steps if modules else None,
        "distinct_kernels": len(rows),
        "top": rows[:top],
    }


def render(summary: dict[str, Any]) -> str:
    lines = [
        f"timeline: {summary['timeline']} ({', '.join(summary['timelines'])})",
        f"per step (/{summary['steps']}): busy {summary['busy_us_per_step']:.1f} us, "
        f"first-to-last event {summary['window_us_per_step']:.1f} us, "
        f"{summary['launches_per_step']:.1f} kernels, "
        f"{summary['distinct_kernels']} distinct names"
        + (
            f", XLA module time {summary['module_us_per_step']:.1f} us"
            if summary.get("module_us_per_step")
            else ""
        ),
        "",
        "| kernel / op | calls per step | us per step | share of busy |",
        "|---|---|---|---|",
    ]
    for r in summary["top"]:
        name = r["name"] if len(r["name"]) <= 70 else r["name"][:67] + "..."
        name = name.replace("|", "\\|")
        lines.append(
            f"| `{name}` | {r['calls_per_step']:.1f} | {r['us_per_step']:.1f} | "
            f"{100 * r['share']:.1f}% |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", type=Path, help="a *.trace.json.gz or a folder holding one")
    ap.add_argument("--steps", type=int, default=1, help="meta-steps in the trace (divisor)")
    ap.add_argument("--top", type=int, default=25, help="kernels to list")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = ap.parse_args(argv)
    trace = find_trace(args.path)
    with gzip.open(trace, "rt") as f:
        events = json.load(f)["traceEvents"]
    summary = summarize(events, steps=args.steps, top=args.top)
    summary["trace"] = str(trace)
    print(render(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
