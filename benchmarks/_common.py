"""Shared helpers of the benchmark scripts: timing, memory, machine description, JSON, tables.

Timing protocol (every script): compile ahead of time (``jit(...).lower(...).compile()``,
reported as ``compile_s``), run ``warmup`` calls, then time ``N`` calls and report the
**median** (plus min and max); ``N`` is set from a time budget and the last warm-up call,
clamped to ``[min_repeats, max_repeats]``. Every call is followed by
``jax.block_until_ready``.

Memory: on GPU/TPU the device allocator's ``peak_bytes_in_use``
(``jax.local_devices()[0].memory_stats()``); on CPU the process's peak resident set
size. Each configuration runs in its own subprocess so the peak is that
configuration's own. On Linux the peak (``VmHWM``) is reset right before the timed
section (``/proc/self/clear_refs``), so ``peak_rss_steps_mb`` excludes compilation and
data preparation; ``peak_rss_mb`` (``ru_maxrss``) covers the whole process, interpreter
and JAX included.

``cpu_util`` = process CPU seconds / wall seconds over the timed calls: 2.0 means both
cores of a 2-core machine were ours; a low value flags contention by other processes.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Where a benchmark writes unless --out/--json says otherwise: a git-ignored scratch folder.
# benchmarks/results/ holds the curated results the READMEs quote; update them on purpose
# (--out benchmarks/results/<benchmark>), never by default.
SCRATCH = REPO / "bench-out"


def scratch(name: str) -> Path:
    """Default output folder of benchmark ``name``: ``<repo>/bench-out/<name>`` (git-ignored)."""
    return SCRATCH / name


# ------------------------------------------------------------------------------ data


def default_manual_dir() -> Path:
    """Omniglot zips folder: ``$JAXMETA_OMNIGLOT_DIR`` or ``<repo>/../shared/data/omniglot``."""
    env = os.environ.get("JAXMETA_OMNIGLOT_DIR")
    return Path(env) if env else REPO.parent / "shared" / "data" / "omniglot"


# ------------------------------------------------------------------------------ timing


def time_calls(
    fn: Callable[[], Any],
    *,
    warmup: int = 2,
    budget_s: float = 5.0,
    min_repeats: int = 3,
    max_repeats: int = 30,
    repeats: int | None = None,
) -> dict[str, Any]:
    """Time a blocking no-argument callable: warm-up, then the median of repeats.

    Args:
      fn: runs one step and blocks until its result is ready.
      warmup: untimed calls first (at least one).
      budget_s: timed seconds to aim for (sets the number of repeats).
      min_repeats, max_repeats: bounds on the number of timed calls.
      repeats: fixed number of timed calls (overrides the budget).

    Returns:
      ``ms_median, ms_min, ms_max, n, warmup_ms, cpu_util``.
    """
    warm = []
    for _ in range(max(1, warmup)):
        t = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t)
    if repeats is None:
        repeats = int(budget_s / max(warm[-1], 1e-6))
        repeats = max(min_repeats, min(max_repeats, repeats))
    times = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    cpu_util = (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
    return {
        "ms_median": 1e3 * statistics.median(times),
        "ms_min": 1e3 * min(times),
        "ms_max": 1e3 * max(times),
        "n": repeats,
        "warmup_ms": [round(1e3 * w, 2) for w in warm],
        "cpu_util": round(cpu_util, 2),
    }


def time_state_calls(compiled, state, args: tuple, cfg: dict[str, Any]) -> dict[str, Any]:
    """:func:`time_calls` of ``state = compiled(state, *args)`` (the state is donated and
    replaced by each call's new state); ``cfg`` holds ``warmup``, ``budget_s``,
    ``min_repeats``, ``max_repeats`` and optionally ``repeats``."""
    import jax

    box = {"state": state}

    def one():
        box["state"], metrics = compiled(box["state"], *args)
        jax.block_until_ready((box["state"], metrics))

    one()
    timing = time_calls(
        one,
        warmup=cfg["warmup"],
        budget_s=cfg["budget_s"],
        repeats=cfg.get("repeats"),
        min_repeats=cfg["min_repeats"],
        max_repeats=cfg["max_repeats"],
    )
    timing["call"] = one  # for a profile of the same calls
    return timing


def compile_timed(jitted, *args, **kwargs):
    """``(compiled, seconds)``: ahead-of-time lowering + compilation of a jitted function."""
    t = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - t


# ------------------------------------------------------------------------------ memory


def peak_rss_mb() -> float:
    """Peak resident set size of this process since start (``ru_maxrss``), MiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    """Current resident set size, MiB (Linux; ``None`` elsewhere)."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``) of this process; ``False`` if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset_mb() -> float | None:
    """``VmHWM`` (peak RSS since the last :func:`reset_peak_rss`), MiB; ``None`` off Linux."""
    kb = _status_kb("VmHWM")
    return None if kb is None else kb / 1024


def device_memory_mb() -> dict[str, float] | None:
    """``{"device_peak_mb", "device_in_use_mb"}`` from the first local device, or ``None``.

    XLA:CPU reports no allocator statistics, so this is ``None`` on CPU.
    """
    import jax

    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without allocator stats
        return None
    if not stats:
        return None
    return {
        "device_peak_mb": stats.get("peak_bytes_in_use", 0) / 2**20,
        "device_in_use_mb": stats.get("bytes_in_use", 0) / 2**20,
    }


def memory_record(peak_steps_mb: float | None = None) -> dict[str, Any]:
    """Memory fields of a result record; ``peak_mb`` is the one to compare.

    ``peak_mb`` = device peak on an accelerator, else the peak RSS of the timed section
    (``peak_steps_mb``, when measured) or of the whole process.
    """
    dev = device_memory_mb()
    rec: dict[str, Any] = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    if peak_steps_mb is not None:
        rec["peak_rss_steps_mb"] = round(peak_steps_mb, 1)
    if dev is not None:
        rec.update({k: round(v, 1) for k, v in dev.items()})
        rec["peak_mb"], rec["memory_kind"] = rec["device_peak_mb"], "device"
    else:
        rec["peak_mb"] = rec.get("peak_rss_steps_mb", rec["peak_rss_mb"])
        rec["memory_kind"] = "rss_steps" if peak_steps_mb is not None else "rss"
    return rec


def program_memory_parts(compiled) -> dict[str, float] | None:
    """XLA's memory analysis of a compiled program, MiB: ``argument``, ``output``, ``alias``
    (donated), ``temp`` (the program's own scratch: activations kept for the backward
    pass etc.) and ``peak`` (XLA's peak when it reports one, else arguments + outputs -
    aliases + temporaries); ``None`` on backends without the analysis."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - backends without the analysis
        return None
    if m is None:
        return None
    mib = lambda b: round(b / 2**20, 3)
    parts = {
        "argument": m.argument_size_in_bytes,
        "output": m.output_size_in_bytes,
        "alias": m.alias_size_in_bytes,
        "temp": m.temp_size_in_bytes,
    }
    peak = getattr(m, "peak_memory_in_bytes", 0) or (
        parts["argument"] + parts["output"] - parts["alias"] + parts["temp"]
    )
    return {**{k: mib(v) for k, v in parts.items()}, "peak": mib(peak)}


def program_memory_mb(compiled) -> float | None:
    """Device memory the compiled program needs (XLA's memory analysis), MiB.

    Arguments + outputs - donated aliases + temporaries: what one step holds at its peak,
    independent of the allocator's history, so rows timed in one process stay separate.
    """
    parts = program_memory_parts(compiled)
    return None if parts is None else round(parts["peak"], 1)


# ------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Date, CPU, load, Python, package versions and JAX devices (engine's ``environment()``)."""
    from jaxmeta.train.run import environment

    env = environment()
    env.pop("command", None)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    env.update(
        date_utc=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        cpu_model=cpu_model(),
        loadavg=load,
        xla_flags=os.environ.get("XLA_FLAGS"),
    )
    return env


# ------------------------------------------------------------------------------ JSON, processes


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (``path.tmp`` then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def run_worker(
    script: str | os.PathLike,
    cfg: dict[str, Any],
    *,
    timeout: float | None = None,
    python: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``python script --worker '<cfg JSON>'`` in a fresh process; its last JSON line.

    The worker prints exactly one JSON object on its last ``{``-line. A failure (exit
    code, timeout, no JSON) is returned as ``{**cfg, "error": ...}`` rather than raised,
    so one broken configuration does not lose a whole sweep.
    """
    cmd = [python or sys.executable, os.fspath(script), "--worker", json.dumps(cfg)]
    try:
        p = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        return {**cfg, "error": f"timeout after {timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {**cfg, "error": f"rc={p.returncode}: " + " | ".join(tail)[-600:]}
    return json.loads(lines[-1])


def worker_main(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    """Entry point of a worker process: ``--worker '<cfg JSON>'`` -> one JSON line."""
    cfg = json.loads(sys.argv[sys.argv.index("--worker") + 1])
    out = fn(cfg)
    print(json.dumps(out, default=_json_default), flush=True)
    return 0


# ------------------------------------------------------------------------------ tables


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table; ``columns`` are ``(key, header)``; floats get sensible precision."""

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, bool):
            return str(v)
        if isinstance(v, float):
            if abs(v) >= 100:
                return f"{v:.0f}"
            if abs(v) >= 10:
                return f"{v:.1f}"
            return f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.2f}"
        return str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def csv_list(text: str, cast=str) -> list:
    """``"1,5,10"`` -> ``[1, 5, 10]`` (argparse type helper)."""
    return [cast(x) for x in text.split(",") if x.strip()]
