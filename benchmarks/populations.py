"""Populations: milliseconds per run-step against the number of runs vmapped together.

For each population size S (``--runs``), the experiment's fused train chunk with ``S``
runs on a leading run axis (:func:`jaxmeta.step.make_population_chunk`, what
``jaxmeta train --seeds S`` runs) is compiled ahead of time and timed with the shared
protocol (``_common.time_state_calls``: warm-up, median of repeats within a time budget).
Reported per S: ms per call, ms per meta-step (call / steps per call) and ms per
**run-step** (meta-step / S): independent runs batched into one program cost less than
the same runs one after another when a single run leaves the device idle.

::

    python benchmarks/populations.py                          # CPU: sinusoid MAML, S=1..64
    python benchmarks/populations.py --config configs/omniglot/maml_5w1s.yaml \\
        --set data.queries=1 --set execution.task_chunk=null   # the MAML training step (GPU)

``--budget-s`` bounds the whole sweep: sizes left when it runs out are listed as not
measured. Writes ``populations.json``, ``populations.md`` and ``populations.png`` to
``--out`` (default: the git-ignored bench-out/populations).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

DEFAULT_CONFIG = "configs/sinusoid/maml_k5.yaml"


def measure(cfg, runs: int, timing: dict) -> dict:
    """One population size: compile, then time the chunk."""
    import dataclasses

    import jax.numpy as jnp

    from jaxmeta.step import make_population_chunk
    from jaxmeta.train import build_experiment
    from jaxmeta.train.population import population_builder, population_hparams, population_state

    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seeds=runs))
    exp = build_experiment(cfg)
    t = cfg.train
    sample = lambda k, d: exp.source.sample(k, d, tasks=t.meta_batch_size)
    chunk = make_population_chunk(
        population_builder(cfg, exp),
        sample,
        length=t.steps_per_call,
        task_chunk=cfg.execution.task_chunk,
    )
    state, hp, data = population_state(cfg, exp), population_hparams(cfg), exp.source.train_data()
    n = jnp.asarray(t.steps_per_call, jnp.int32)
    compiled, compile_s = _common.compile_timed(chunk, state, hp, data, n)
    res = _common.time_state_calls(compiled, state, (hp, data, n), timing)
    res.pop("call")
    ms_step = res["ms_median"] / t.steps_per_call
    return {
        "runs": runs,
        "compile_s": round(compile_s, 2),
        "ms_per_call": res["ms_median"],
        "ms_per_step": ms_step,
        "ms_per_run_step": ms_step / runs,
        # CPU time (process seconds) per run-step: less sensitive than wall time to other
        # processes on a shared machine (cpu_util is over all timed calls: approximate).
        "cpu_ms_per_run_step": ms_step / runs * res["cpu_util"],
        **{k: res[k] for k in ("ms_min", "ms_max", "n", "cpu_util")},
    }


def plot(rows: list[dict], png: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    done = [r for r in rows if "ms_per_run_step" in r]
    if not done:
        return False
    xs = [r["runs"] for r in done]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    ax[0].plot(xs, [r["ms_per_step"] for r in done], "o-")
    ax[0].set_ylabel("ms per meta-step (all runs)")
    ax[1].plot(xs, [r["ms_per_run_step"] for r in done], "o-", label="population")
    ax[1].axhline(done[0]["ms_per_run_step"] if xs[0] == 1 else float("nan"), color="gray",
                  ls="--", label="one run alone")  # fmt: skip
    ax[1].set_ylabel("ms per run-step")
    ax[1].legend()
    for a in ax:
        a.set_xscale("log", base=2)
        a.set_yscale("log")
        a.set_xlabel("runs vmapped (S)")
        a.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help="experiment YAML (a single run's)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable), as in jaxmeta train",
    )
    p.add_argument(
        "--runs",
        type=lambda s: _common.csv_list(s, int),
        default=[1, 2, 4, 8, 16, 32, 64],
        help="population sizes S, comma-separated (default 1,2,4,...,64)",
    )
    p.add_argument("--budget-s", type=float, default=240.0, help="seconds for the whole sweep")
    p.add_argument("--per-size-s", type=float, default=3.0, help="timed seconds per size")
    p.add_argument(
        "--out",
        type=Path,
        default=_common.scratch("populations"),
        help="folder for populations.json/.md/.png (default: bench-out/populations)",
    )
    args = p.parse_args(argv)

    from jaxmeta.train import load_config

    cfg = load_config(args.config, args.overrides)
    timing = {"warmup": 1, "budget_s": args.per_size_s, "min_repeats": 3, "max_repeats": 30}
    t0 = time.perf_counter()
    rows = []
    for runs in args.runs:
        if time.perf_counter() - t0 > args.budget_s:
            rows.append({"runs": runs, "not_measured": "time budget spent"})
            continue
        row = measure(cfg, runs, timing)
        rows.append(row)
        print(
            f"S={runs:3d}: {row['ms_per_step']:9.2f} ms/step  {row['ms_per_run_step']:8.3f} "
            f"ms/run-step  (compile {row['compile_s']} s, cpu_util {row['cpu_util']})",
            flush=True,
        )
    one = next((r for r in rows if r.get("runs") == 1 and "ms_per_run_step" in r), None)
    for r in rows:
        if one and "ms_per_run_step" in r:
            r["speedup_per_run"] = one["ms_per_run_step"] / r["ms_per_run_step"]
    machine = _common.machine()
    out = {
        "benchmark": "populations",
        "config": args.config,
        "overrides": args.overrides,
        "steps_per_call": cfg.train.steps_per_call,
        "meta_batch_size": cfg.train.meta_batch_size,
        "rows": rows,
        "machine": machine,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    _common.write_json(args.out / "populations.json", out)
    table = _common.markdown_table(
        rows,
        [
            ("runs", "runs S"),
            ("ms_per_step", "ms per step"),
            ("ms_per_run_step", "ms per run-step"),
            ("speedup_per_run", "x vs one run"),
            ("cpu_ms_per_run_step", "CPU ms per run-step"),
            ("compile_s", "compile s"),
            ("cpu_util", "cpu_util"),
            ("not_measured", "not measured"),
        ],
    )
    (args.out / "populations.md").write_text(table + "\n")
    print(table)
    title = f"{cfg.name} ({machine['jax_backend']}, {machine['date_utc']})"
    plot(rows, args.out / "populations.png", title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
