"""First- vs second-order MAML, side by side, with identical seeds, episodes and budgets.

For each task (Omniglot 5-way 1-shot, Omniglot 20-way 1-shot, sinusoid K=10) this trains
MAML twice from the same config file (``configs/omniglot/maml_5w1s.yaml``,
``maml_20w1s.yaml``, ``configs/sinusoid/maml_k10.yaml``), once as is and once with
``algorithm.first_order=true``, nothing else changed: same seed, hence the same
initial parameters and the same training episodes (the key of step ``s`` is
``fold_in(base_key, s)``), same number of meta-steps, and the same fixed test episodes
(``eval.seed``) evaluated at the same steps. Training uses the engine's own pieces
(``jaxmeta.train.build_experiment``, ``initial_state``, and the one fused train step
``jaxmeta.step.make_train_chunk`` for the on-device sampling + meta-update;
``make_evaluator`` + ``summarize`` for accuracy ± 95% CI), each
run in its own subprocess so that peak memory is the run's own.

Reported per run: ms per meta-step (median over fused chunks), compile time, peak memory
(device allocator peak on GPU; peak RSS during training on CPU), test accuracy (MSE for
sinusoid) ± 95% CI at every evaluation point against steps and against training wall
time, and the accuracy-per-second trade-off: how long each order takes to reach the final
score of the worse one.

Outputs in ``--out`` (default ``bench-out/first_vs_second_order``, git-ignored; the curated
results quoted in the READMEs are in ``benchmarks/results/first_vs_second_order``):
``first_vs_second_order.json``, ``curves_<task>.png`` (test accuracy, or MSE for sinusoid,
vs steps and vs seconds), ``cost.png`` (ms per meta-step and peak memory bars). The script
ends by printing the paths it wrote.

Examples::

    python benchmarks/first_vs_second_order.py --quick            # minutes on a laptop CPU
    python benchmarks/first_vs_second_order.py --tasks omniglot_20w1s --steps 5000 --evals 10
    python benchmarks/first_vs_second_order.py --quick --steps 3 --tiny   # smoke test
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
    REPO,
    compile_timed,
    csv_list,
    default_manual_dir,
    machine,
    markdown_table,
    memory_record,
    peak_rss_since_reset_mb,
    reset_peak_rss,
    run_worker,
    scratch,
    time_calls,
    worker_main,
    write_json,
)

TASKS = {
    "omniglot_5w1s": "configs/omniglot/maml_5w1s.yaml",
    "omniglot_20w1s": "configs/omniglot/maml_20w1s.yaml",
    "sinusoid": "configs/sinusoid/maml_k10.yaml",
}
ORDERS = ("second", "first")
# --tiny: the smallest run that still exercises every code path (smoke tests).
TINY = {
    "omniglot": [
        "model.filters=8",
        "train.meta_batch_size=4",
        "eval.queries=5",
        "eval.batch_size=10",
    ],
    "sinusoid": ["train.meta_batch_size=5", "eval.queries=20", "eval.batch_size=10"],
}


# ------------------------------------------------------------------------------ worker


def run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train one (task, order) run and evaluate it at ``cfg['eval_steps']``; a JSON record."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxmeta.step import make_train_chunk
    from jaxmeta.train import build_experiment, initial_state, load_config
    from jaxmeta.train.build import eval_episode_shape
    from jaxmeta.train.evaluate import make_evaluator, summarize

    task, order = cfg["task"], cfg["order"]
    overrides = [
        f"algorithm.first_order={'true' if order == 'first' else 'false'}",
        f"train.seed={cfg['seed']}",
    ]
    if cfg.get("meta_batch"):
        overrides.append(f"train.meta_batch_size={cfg['meta_batch']}")
    omniglot = task.startswith("omniglot")
    if omniglot:
        overrides += [f"data.manual_dir={cfg['manual_dir']}", "data.download=false"]
        if cfg.get("data_dir"):
            overrides.append(f"data.data_dir={cfg['data_dir']}")
    if cfg.get("tiny"):
        overrides += TINY["omniglot" if omniglot else "sinusoid"]
    overrides += cfg.get("set", [])
    exp_cfg = load_config(REPO / TASKS[task], overrides)
    exp = build_experiment(exp_cfg)
    classification = exp.source.classification
    metric = "accuracy" if classification else "mse"
    spc = int(cfg["steps_per_call"])
    mb = exp_cfg.train.meta_batch_size

    t = time.perf_counter()
    data = exp.source.train_data()
    test_eps = jax.device_put(
        exp.source.eval_episodes(
            "test",
            episodes=cfg["eval_episodes"],
            seed=exp_cfg.eval.seed,
            **eval_episode_shape(exp_cfg, exp.source),
        )
    )
    data_s = time.perf_counter() - t
    state = initial_state(exp_cfg, exp)
    chunk = make_train_chunk(
        exp.learner,
        exp.optimizer,
        lambda k, d: exp.source.sample(k, d, tasks=mb),
        length=spc,
        task_chunk=exp_cfg.execution.task_chunk,
    )
    full = jnp.asarray(spc, jnp.int32)
    train_chunk, compile_s = compile_timed(chunk, state, data, full)
    evaluator = make_evaluator(
        exp.learner,
        classification=classification,
        batch_size=exp_cfg.eval.batch_size,
        inner_steps=exp_cfg.eval.inner_steps,
    )
    eval_key = jax.random.key(exp_cfg.eval.seed)
    eval_fn, eval_compile_s = compile_timed(evaluator, state.params, test_eps, eval_key)

    curve = []
    chunk_ms: list[float] = []
    peak_train = 0.0
    train_s = eval_s = 0.0
    step = 0
    losses: list[float] = []

    def evaluate():
        nonlocal eval_s
        t = time.perf_counter()
        per = jax.device_get(eval_fn(state.params, test_eps, eval_key))
        eval_s += time.perf_counter() - t
        res = summarize(per, classification=classification)
        curve.append(
            {
                "step": step,
                "train_s": train_s,
                metric: res[metric],
                "ci95": res["ci95"],
                "train_loss": float(np.mean(losses[-spc:])) if losses else None,
            }
        )

    for target in cfg["eval_steps"]:
        if target == 0:
            evaluate()
            continue
        reset_peak_rss()
        while step < target:
            n = min(spc, target - step)
            t = time.perf_counter()
            state, metrics = train_chunk(state, data, jnp.asarray(n, jnp.int32))
            loss = np.asarray(jax.device_get(metrics["loss"]))[:n]
            dt = time.perf_counter() - t
            train_s += dt
            if n == spc:
                chunk_ms.append(1e3 * dt / spc)
            losses.extend(float(x) for x in loss)
            step += n
            if not np.all(np.isfinite(loss)):
                raise FloatingPointError(f"{task}/{order}: non-finite loss at step {step}")
        peak = peak_rss_since_reset_mb()
        peak_train = max(peak_train, peak or 0.0)
        evaluate()

    # A steady-state timing of the same compiled chunk (median of repeats), as in the
    # other benchmarks; the run above is the learning curve.
    holder = [state]  # the chunk donates its input state: thread it through

    def one_chunk():
        holder[0], m = train_chunk(holder[0], data, full)
        jax.block_until_ready(m)

    timing = (
        time_calls(
            one_chunk,
            warmup=1,
            budget_s=cfg["timing_budget_s"],
            min_repeats=2,
            max_repeats=10,
        )
        if cfg["timing_budget_s"] > 0
        else None
    )
    ms_per_step = (
        (timing["ms_median"] / spc)
        if timing
        else (float(np.median(chunk_ms)) if chunk_ms else 1e3 * train_s / max(step, 1))
    )

    final = curve[-1]
    return {
        "task": task,
        "order": order,
        "config": TASKS[task],
        "steps": step,
        "meta_batch": mb,
        "inner_steps": exp_cfg.algorithm.kwargs.get("inner_steps"),
        "inner_lr": exp_cfg.algorithm.kwargs.get("inner_lr"),
        "ways": exp_cfg.data.ways if classification else None,
        "shots": exp_cfg.data.shots,
        "train_queries": exp_cfg.data.queries,
        "eval_queries": exp_cfg.eval.queries,
        "eval_episodes": cfg["eval_episodes"],
        "eval_inner_steps": exp_cfg.eval.inner_steps
        or exp_cfg.algorithm.kwargs.get("eval_inner_steps"),
        "filters": exp_cfg.model.kwargs.get("filters"),
        "seed": cfg["seed"],
        "metric": metric,
        "higher_is_better": classification,
        "steps_per_call": spc,
        "ms_per_step": ms_per_step,
        "ms_per_step_during_run": float(np.median(chunk_ms)) if chunk_ms else None,
        "steps_per_s": 1e3 / ms_per_step if ms_per_step else None,
        "tasks_per_s": mb * 1e3 / ms_per_step if ms_per_step else None,
        "timing": timing,
        "compile_s": compile_s,
        "eval_compile_s": eval_compile_s,
        "train_s": train_s,
        "eval_s": eval_s,
        "data_s": data_s,
        "final": {metric: final[metric], "ci95": final["ci95"]},
        "curve": curve,
        **memory_record(peak_train or None),
        "backend": jax.default_backend(),
    }


# ------------------------------------------------------------------------------ analysis


def time_to_reach(curve: list[dict], metric: str, target: float, higher: bool) -> float | None:
    """Training seconds at which ``curve`` first reaches ``target`` (linear interpolation)."""
    prev = None
    for p in curve:
        v = p[metric]
        ok = v >= target if higher else v <= target
        if ok:
            if prev is None or prev[metric] == v:
                return p["train_s"]
            frac = (target - prev[metric]) / (v - prev[metric])
            return prev["train_s"] + frac * (p["train_s"] - prev["train_s"])
        prev = p
    return None


def summarize_task(runs: dict[str, dict]) -> dict[str, Any]:
    """Side-by-side numbers of one task: cost ratios and the accuracy-per-second trade-off."""
    so, fo = runs.get("second"), runs.get("first")
    if not so or not fo or "error" in so or "error" in fo:
        return {}
    metric, higher = so["metric"], so["higher_is_better"]
    a, b = so["final"][metric], fo["final"][metric]
    worse = min(a, b) if higher else max(a, b)
    t_so = time_to_reach(so["curve"], metric, worse, higher)
    t_fo = time_to_reach(fo["curve"], metric, worse, higher)
    return {
        "task": so["task"],
        "metric": metric,
        "second_over_first_ms": so["ms_per_step"] / fo["ms_per_step"],
        "second_over_first_compile": so["compile_s"] / max(fo["compile_s"], 1e-9),
        "second_over_first_memory": so["peak_mb"] / max(fo["peak_mb"], 1e-9),
        "final_second": a,
        "final_first": b,
        "final_diff": a - b,
        "ci95_second": so["final"]["ci95"],
        "ci95_first": fo["final"]["ci95"],
        "target": worse,
        "seconds_to_target_second": t_so,
        "seconds_to_target_first": t_fo,
        "score_per_train_s_second": a / so["train_s"] if so["train_s"] else None,
        "score_per_train_s_first": b / fo["train_s"] if fo["train_s"] else None,
    }


def plot(results: dict[str, Any], out: Path) -> list[str]:
    """Learning curves per task and a cost bar chart; returns the written paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return []
    written = []
    runs = [r for r in results["runs"] if "error" not in r]
    colors = {"second": "tab:blue", "first": "tab:orange"}
    for task in dict.fromkeys(r["task"] for r in runs):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for r in (r for r in runs if r["task"] == task):
            m = r["metric"]
            y = [p[m] * (100 if m == "accuracy" else 1) for p in r["curve"]]
            e = [p["ci95"] * (100 if m == "accuracy" else 1) for p in r["curve"]]
            label = f"{r['order']} order ({_ms(r['ms_per_step'])} ms/step)"
            for ax, xkey in zip(axes, ("step", "train_s"), strict=True):
                x = [p[xkey] for p in r["curve"]]
                ax.errorbar(
                    x, y, yerr=e, marker="o", ms=3, capsize=2, label=label, color=colors[r["order"]]
                )
        m = next(r["metric"] for r in runs if r["task"] == task)
        ylabel = "test accuracy (%) ± 95% CI" if m == "accuracy" else "test MSE ± 95% CI"
        for ax, xl in zip(
            axes, ("meta-steps", "training wall time (s, excl. compile/eval)"), strict=True
        ):
            ax.set_xlabel(xl)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            if m == "mse":
                ax.set_yscale("log")
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{task}: first vs second order MAML ({results['machine']['device_kind']})")
        fig.tight_layout()
        path = out / f"curves_{task}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    if runs:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        tasks = list(dict.fromkeys(r["task"] for r in runs))
        width = 0.38
        for i, order in enumerate(ORDERS):
            rs = {r["task"]: r for r in runs if r["order"] == order}
            xs = [j + (i - 0.5) * width for j in range(len(tasks))]
            for ax, key in zip(axes, ("ms_per_step", "peak_mb"), strict=True):
                ax.bar(
                    xs,
                    [rs[t][key] if t in rs else 0 for t in tasks],
                    width,
                    label=f"{order} order",
                    color=colors[order],
                )
        mem_kind = runs[0]["memory_kind"]
        for ax, yl in zip(
            axes, ("ms per meta-step (median)", f"peak memory MiB ({mem_kind})"), strict=True
        ):
            ax.set_xticks(range(len(tasks)), tasks, fontsize=8)
            ax.set_ylabel(yl)
            ax.grid(axis="y", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        path = out / "cost.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def _ms(ms: float) -> str:
    """Milliseconds with 3 significant digits (sinusoid steps take well under 1 ms)."""
    return f"{ms:.3g}"


# ------------------------------------------------------------------------------ main


def eval_schedule(steps: int, evals: int, spc: int) -> list[int]:
    """``evals + 1`` evaluation steps from 0 to ``steps``, on chunk boundaries."""
    pts = {0, steps}
    for i in range(1, evals):
        s = round(steps * i / evals / spc) * spc
        if 0 < s < steps:
            pts.add(s)
    return sorted(pts)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tasks",
        type=csv_list,
        default=None,
        help=f"comma-separated, from {', '.join(TASKS)} (default: all; "
        "--quick: omniglot_5w1s,sinusoid)",
    )
    ap.add_argument(
        "--orders", type=csv_list, default=list(ORDERS), help="comma-separated: second,first"
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="meta-steps per run (default 2000 Omniglot / 5000 sinusoid; --quick: 300 / 1000)",
    )
    ap.add_argument(
        "--evals",
        type=int,
        default=None,
        help="evaluation points after step 0 (default 8; --quick 4)",
    )
    ap.add_argument(
        "--eval-episodes",
        type=int,
        default=None,
        help="fixed test episodes (default 600; --quick 200; --tiny 20)",
    )
    ap.add_argument("--meta-batch", type=int, default=None, help="override the config's")
    ap.add_argument(
        "--steps-per-call",
        type=int,
        default=10,
        help="meta-steps fused per jitted call (and per timing unit)",
    )
    ap.add_argument(
        "--timing-budget-s",
        type=float,
        default=None,
        help="seconds of steady-state timing after training (0: use the "
        "training chunks; default 5, --quick 3)",
    )
    ap.add_argument(
        "--seed", type=int, default=0, help="train.seed of every run (same for both orders)"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for every run (repeatable)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="5w1s + sinusoid, short runs: minutes on a laptop CPU"
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="tiny models/batches/episodes (smoke tests only; numbers meaningless)",
    )
    ap.add_argument("--data-dir", default=None, help="TFDS data dir (default TFDS's)")
    ap.add_argument(
        "--manual-dir", default=str(default_manual_dir()), help="folder with the Omniglot zips"
    )
    ap.add_argument(
        "--out",
        default=str(scratch("first_vs_second_order")),
        help="output folder (default bench-out/first_vs_second_order, git-ignored; "
        "benchmarks/results/first_vs_second_order holds the curated results)",
    )
    ap.add_argument("--no-plots", action="store_true", help="write the JSON only, no PNGs")
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="run every configuration in this process (faster start; memory "
        "numbers then cover all runs so far)",
    )
    ap.add_argument("--timeout-s", type=float, default=None, help="per-run subprocess timeout")
    args = ap.parse_args(argv)
    if args.tasks is None:
        args.tasks = ["omniglot_5w1s", "sinusoid"] if args.quick else list(TASKS)
    bad = [t for t in args.tasks if t not in TASKS] + [o for o in args.orders if o not in ORDERS]
    if bad:
        ap.error(f"unknown task/order {bad}; tasks: {', '.join(TASKS)}; orders: second, first")
    if args.evals is None:
        args.evals = 4 if args.quick else 8
    if args.eval_episodes is None:
        args.eval_episodes = 20 if args.tiny else (200 if args.quick else 600)
    if args.timing_budget_s is None:
        args.timing_budget_s = 0.0 if args.tiny else (3.0 if args.quick else 5.0)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for task in args.tasks:
        steps = args.steps or (
            (300 if args.quick else 2000)
            if task.startswith("omniglot")
            else (1000 if args.quick else 5000)
        )
        spc = max(1, min(args.steps_per_call, steps))
        for order in args.orders:
            cfg = {
                "task": task,
                "order": order,
                "steps_per_call": spc,
                "seed": args.seed,
                "eval_steps": eval_schedule(steps, args.evals, spc),
                "eval_episodes": args.eval_episodes,
                "meta_batch": args.meta_batch,
                "tiny": args.tiny,
                "set": args.set,
                "data_dir": args.data_dir,
                "manual_dir": args.manual_dir,
                "timing_budget_s": args.timing_budget_s,
            }
            print(
                f"[{time.strftime('%H:%M:%S')}] {task} / {order} order: {steps} steps ...",
                file=sys.stderr,
                flush=True,
            )
            if args.in_process:
                res = run_one(cfg)
            else:
                res = run_worker(__file__, cfg, timeout=args.timeout_s)
            if "error" in res:
                print(f"  FAILED: {res['error']}", file=sys.stderr)
            else:
                m = res["metric"]
                print(
                    f"  {res['ms_per_step']:.1f} ms/step, compile {res['compile_s']:.1f} s, "
                    f"peak {res['peak_mb']:.0f} MiB, final {m} {res['final'][m]:.4f} ± "
                    f"{res['final']['ci95']:.4f}",
                    file=sys.stderr,
                    flush=True,
                )
            runs.append(res)
            # Partial results survive an interrupted run.
            write_json(
                out / "first_vs_second_order.json",
                {
                    "benchmark": "first_vs_second_order",
                    "partial": True,
                    "settings": vars(args),
                    "runs": runs,
                },
            )
    by_task: dict[str, dict[str, dict]] = {}
    for r in runs:
        by_task.setdefault(r["task"], {})[r["order"]] = r
    summary = [s for s in (summarize_task(v) for v in by_task.values()) if s]
    results = {
        "benchmark": "first_vs_second_order",
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items()},
        "runs": runs,
        "summary": summary,
    }
    if not args.no_plots:
        results["plots"] = plot(results, out)
    path = write_json(out / "first_vs_second_order.json", results)

    ok = [r for r in runs if "error" not in r]
    for r in ok:
        m = r["metric"]
        r["_final"] = (
            f"{100 * r['final'][m]:.2f} ± {100 * r['final']['ci95']:.2f}%"
            if m == "accuracy"
            else f"{r['final'][m]:.3f} ± {r['final']['ci95']:.3f}"
        )
    print(
        markdown_table(
            ok,
            [
                ("task", "task"),
                ("order", "order"),
                ("steps", "steps"),
                ("meta_batch", "meta-batch"),
                ("inner_steps", "K"),
                ("ms_per_step", "ms/meta-step"),
                ("compile_s", "compile s"),
                ("peak_mb", "peak MiB"),
                ("train_s", "train s"),
                ("_final", "final test (±95% CI)"),
            ],
        )
    )
    if summary:
        print()
        print(
            markdown_table(
                summary,
                [
                    ("task", "task"),
                    ("second_over_first_ms", "SO/FO time"),
                    ("second_over_first_memory", "SO/FO memory"),
                    ("final_diff", "SO - FO final"),
                    ("target", "target (worse final)"),
                    ("seconds_to_target_second", "SO s to target"),
                    ("seconds_to_target_first", "FO s to target"),
                ],
            )
        )
    print("\nwrote:")
    for written in [str(path), *results.get("plots", [])]:
        print(f"  {written}")
    return 1 if len(ok) < len(runs) else 0


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(worker_main(run_one))
    sys.exit(main())
