"""First- vs second-order MAML where it matters: accuracy over seeds, cost, equal wall time,
and the gap between the two meta-gradients.

Four measurements, per task (sinusoid regression with the MAML paper's Fig. 2 settings;
Omniglot 5w1s, 5w5s, 20w1s, 20w5s with the paper protocol of ``configs/omniglot/``):

* **Accuracy**: MAML (second order), FOMAML, Reptile and iMAML (on sinusoid with its own
  ``configs/sinusoid/imaml_k10.yaml``) trained from the shipped configs through the public API
  (``jaxmeta.train.train_and_evaluate``), one workdir per seed, tested on the fixed test
  episodes (600 by default) from the best-validation checkpoint: mean ± std over seeds,
  next to the published numbers.
* **Equal wall time**: the validation curve of each run with the engine's wall-clock time
  stamps (``metrics.jsonl``), and each algorithm's validation score after the training time
  of the faster of MAML and FOMAML.
* **Cost**: ms per meta-step (median of timed calls of the engine's fused step), compile
  time and XLA's memory analysis of the compiled step, for inner steps 1, 5 and 10.
* **Gradient gap**: at every checkpoint of the second-order run (seed 0) and on one fixed
  meta-batch, the cosine and the relative norm difference between the FOMAML and MAML
  meta-gradients (``jaxmeta.analysis.meta_gradient_gap``), overall and per parameter leaf,
  for inner steps 1, 5 and 10.

The verdict (terminal, Markdown, plots): per task, which order wins at equal meta-steps (test
score) and at equal training wall time (validation score within the faster order's training
time), by how much, whether the difference exceeds the seed spread (paired t-test over seeds,
sign test as a check), the second- over first-order cost per meta-step, and whether the
validation curves have flattened (last change within the validation CI).

Resumable: every run, cost row and gap record is written under ``--out`` when it finishes
and skipped on a rerun; Ctrl-C or SIGTERM stops the whole benchmark between training steps
(exit status 130 or 143), and a run cut in the middle resumes from its last checkpoint
(written at every validation point).

Outputs in ``--out`` (default ``bench-out/first_vs_second_order``): ``first_vs_second_order.json``
(every number), ``first_vs_second_order.md`` (the verdict, then tables), ``score_vs_steps.png``,
``score_vs_time.png`` (validation accuracy, or MSE for sinusoid, with the verdict in each
panel's title), ``gradient_cosine.png``, ``memory_vs_inner_steps.png``, and
``runs/``, ``cost/``, ``gap/`` (the per-unit records and workdirs).

Examples::

    python benchmarks/first_vs_second_order.py --quick     # + short Omniglot 5w1s: ~10 min
    python benchmarks/first_vs_second_order.py             # + the four Omniglot settings (GPU)
    python benchmarks/first_vs_second_order.py --smoke     # seconds; numbers meaningless (tests)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import csv_list, default_manual_dir, machine, scratch, write_json  # noqa: E402
from _fvso import ALGORITHMS, TASKS, cost_one, gap_task, log, train_seeds  # noqa: E402
from _fvso_report import (  # noqa: E402
    cost_ratios,
    gap_summary,
    markdown,
    plot,
    summarize,
    verdict,
    verdict_lines,
)

# Full-mode run lengths (meta-steps): sized for about 10 minutes of a GPU in all, not the
# paper's 60,000 (70,000 for sinusoid); --steps changes them and a rerun resumes.
FULL_STEPS = {"sinusoid": 10000, "omniglot": 1500}
# --quick (10.4 min on 2 cores, 2026-12-07): sinusoid as long as the
# full mode and examples/first_vs_second_order.py (10000 steps, seconds per run), Omniglot
# 5w1s short (200 of the paper's 60,000 steps; MAML and FOMAML only, accuracy only, 200 test
# and 100 validation episodes): its curves have not flattened, and the report says so.
QUICK_STEPS = {"sinusoid": 10000, "omniglot": 200}
QUICK_TASKS = ("sinusoid", "omniglot_5w1s")
QUICK_OMNIGLOT = {
    "algorithms": ("maml", "fomaml"),
    "sections": ("accuracy",),
    "episodes": (200, 100),
}
# --quick trains these with seed 0 only: an iMAML sinusoid run (40 inner steps + CG) takes
# ~17x a MAML one; with three seeds the quick mode took 12.6 minutes instead of 10.4.
QUICK_ONE_SEED = ("imaml",)
# The order tasks run in: the cheap one first, then where first and second order differ most.
PRIORITY = ("sinusoid", "omniglot_20w1s", "omniglot_5w1s", "omniglot_20w5s", "omniglot_5w5s")
SECTIONS = ("accuracy", "gap", "cost")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tasks",
        type=csv_list,
        default=None,
        help=f"comma-separated, from {', '.join(TASKS)} (default all; --quick: sinusoid, "
        "omniglot_5w1s; --smoke: sinusoid)",
    )
    ap.add_argument(
        "--algorithms",
        type=csv_list,
        default=list(ALGORITHMS),
        help="comma-separated, from maml, fomaml, reptile, imaml",
    )
    ap.add_argument(
        "--sections",
        type=csv_list,
        default=list(SECTIONS),
        help="comma-separated, from accuracy, gap, cost (gap reads the "
        "second-order run's checkpoints)",
    )
    ap.add_argument(
        "--seeds", type=int, default=None, help="seeds 0..N-1 per run (default 3; --smoke 2)"
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="meta-steps per run (default: sinusoid 10000, Omniglot 1500; "
        "--quick sinusoid 10000, Omniglot 200; --smoke 20)",
    )
    ap.add_argument(
        "--evals",
        type=int,
        default=None,
        help="validation points (= checkpoints) per run (default 8; --quick 4; --smoke 2)",
    )
    ap.add_argument(
        "--eval-episodes",
        type=int,
        default=None,
        help="fixed test episodes (default 600; --quick Omniglot 200; --smoke 10)",
    )
    ap.add_argument(
        "--val-episodes",
        type=int,
        default=None,
        help="validation episodes (default 200; --quick Omniglot 100; --smoke 10)",
    )
    ap.add_argument(
        "--inner-steps",
        type=lambda s: csv_list(s, int),
        default=None,
        help="inner-step counts of the cost and gap parts (default 1,5,10; --smoke 1,2)",
    )
    ap.add_argument(
        "--steps-per-call",
        type=int,
        default=100,
        help="meta-steps fused per jitted call in the training runs",
    )
    ap.add_argument(
        "--cost-steps-per-call",
        type=int,
        default=None,
        help="meta-steps fused per timed call in the cost part (default 10; --smoke 2)",
    )
    ap.add_argument(
        "--timing-budget-s",
        type=float,
        default=None,
        help="timed seconds per cost row (default 5; --quick 1; --smoke 0)",
    )
    ap.add_argument(
        "--budget-min",
        type=float,
        default=None,
        help="start no new run, cost row or gap after this many minutes (the report covers "
        "what finished; a rerun continues); default 10 in full mode, none with --quick/--smoke",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for every run (repeatable)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="sinusoid (10000 steps) and a short Omniglot 5w1s (200 steps, MAML and FOMAML): "
        "about 10 minutes on a 2-core CPU",
    )
    ap.add_argument(
        "--smoke", action="store_true", help="tiny runs of every part (tests; numbers meaningless)"
    )
    ap.add_argument("--data-dir", default=None, help="TFDS data dir (default TFDS's)")
    ap.add_argument(
        "--manual-dir", default=str(default_manual_dir()), help="folder with the Omniglot zips"
    )
    ap.add_argument(
        "--out",
        default=str(scratch("first_vs_second_order")),
        help="output folder (default bench-out/first_vs_second_order, git-ignored)",
    )
    ap.add_argument("--no-plots", action="store_true", help="JSON and Markdown only")
    args = ap.parse_args(argv)  # fmt: skip
    args.tasks = args.tasks or (
        ["sinusoid"] if args.smoke else list(QUICK_TASKS) if args.quick else list(PRIORITY)
    )
    bad = [t for t in args.tasks if t not in TASKS]
    bad += [a for a in args.algorithms if a not in ALGORITHMS]
    bad += [s for s in args.sections if s not in SECTIONS]
    if bad:
        ap.error(
            f"unknown task/algorithm/section {bad}; tasks: {', '.join(TASKS)}; "
            f"algorithms: {', '.join(ALGORITHMS)}; sections: {', '.join(SECTIONS)}"
        )
    for name in ("seeds", "steps", "evals", "eval_episodes", "val_episodes"):
        v = getattr(args, name)
        if v is not None and v < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    args.seeds = args.seeds or (2 if args.smoke else 3)
    args.evals = args.evals or (2 if args.smoke else 4 if args.quick else 8)
    # --smoke: as many test as validation episodes, so both run one evaluation program.
    args.episodes = {
        t: (args.eval_episodes or (10 if args.smoke else 200 if quick_short(args, t) else 600),
            args.val_episodes or (10 if args.smoke else 100 if quick_short(args, t) else 200))
        for t in args.tasks
    }  # fmt: skip
    args.inner_steps = args.inner_steps or ([1, 2] if args.smoke else [1, 5, 10])
    args.cost_steps_per_call = args.cost_steps_per_call or (2 if args.smoke else 10)
    if args.timing_budget_s is None:
        args.timing_budget_s = 0.0 if args.smoke else 1.0 if args.quick else 5.0
    if args.evals > (args.steps or 10**9):
        ap.error(f"--evals {args.evals} is more than --steps {args.steps}")
    return args  # fmt: skip


def quick_short(args, task: str) -> bool:
    """Whether ``task`` runs --quick's short Omniglot protocol (QUICK_OMNIGLOT)."""
    return bool(args.quick and not args.smoke and task != "sinusoid")


def settings_of(args) -> dict:
    steps = {}
    for t in args.tasks:
        family = t.split("_")[0]
        default = 20 if args.smoke else (QUICK_STEPS if args.quick else FULL_STEPS)[family]
        steps[t] = args.steps or default
    return {
        "steps": steps,
        "evals": args.evals,
        "episodes": args.episodes,
        "steps_per_call": args.steps_per_call,
        "cost_steps_per_call": args.cost_steps_per_call,
        "inner_steps": args.inner_steps,
        "tiny": args.smoke,
        "set": args.set,
        "data_dir": args.data_dir,
        "manual_dir": args.manual_dir,
        "gap_seed": 0,
        "timing": {
            "warmup": 1,
            "budget_s": args.timing_budget_s,
            "min_repeats": 1 if args.smoke else 3,
            "max_repeats": 20,
        },
    }


def example_comparison(runs: list[dict]) -> str | None:
    """How the sinusoid numbers relate to examples/first_vs_second_order.py's."""
    one: dict[str, list[float]] = {}
    ten: dict[str, list[float]] = {}
    for r in runs:
        if r.get("task") == "sinusoid" and (r.get("test_1_inner_step") or {}).get("mse"):
            one.setdefault(r["algorithm"], []).append(r["test_1_inner_step"]["mse"])
            ten.setdefault(r["algorithm"], []).append(r["test"]["mse"])
    if "maml" not in one or "fomaml" not in one:
        return None
    import numpy as np

    so1, fo1, so10, fo10 = (float(np.mean(d[a])) for d in (one, ten) for a in ("maml", "fomaml"))
    return (
        "Reconciling with examples/first_vs_second_order.py (one seed, 10000 steps, the final "
        "parameters tested with 1 inner step): this benchmark tests the best-validation "
        "checkpoint with the config's eval_inner_steps (10) over several seeds. The same runs "
        f"tested like the example (1 inner step): MAML {so1:.3f} vs FOMAML {fo1:.3f} MSE "
        f"(SO - FO = {so1 - fo1:+.3f}); with 10 inner steps: {so10:.3f} vs {fo10:.3f} "
        f"({so10 - fo10:+.3f}). The run length matters too: the example's and this benchmark's "
        "numbers agree only at the same --steps."
    )


def main(argv=None) -> int:
    from jaxmeta.train import TrainingInterrupted

    try:
        return compare(parse_args(argv))
    except TrainingInterrupted as err:
        print(f"first_vs_second_order: {err}", file=sys.stderr)
        return err.exit_code


def compare(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings_of(args)
    budget = args.budget_min if args.budget_min is not None else (
        None if args.quick or args.smoke else 10.0)  # fmt: skip
    if budget is not None:
        settings["deadline"] = time.perf_counter() + 60 * budget
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    runs, costs, gaps = [], [], []
    t0 = time.perf_counter()
    notes = []
    for task in args.tasks:
        algorithms, sections = args.algorithms, args.sections
        if quick_short(args, task):
            algorithms = [a for a in algorithms if a in QUICK_OMNIGLOT["algorithms"]]
            sections = [s for s in sections if s in QUICK_OMNIGLOT["sections"]]
            notes.append(
                f"{task} in --quick: {settings['steps'][task]} meta-steps (short), "
                f"{', '.join(algorithms)} only, sections {', '.join(sections)}; "
                f"{settings['episodes'][task][0]} test / {settings['episodes'][task][1]} "
                "validation episodes"
            )
        if "accuracy" in sections:
            for alg in algorithms:
                seeds = list(range(args.seeds))
                if args.quick and alg in QUICK_ONE_SEED and len(seeds) > 1:
                    seeds = seeds[:1]
                    notes.append(f"{task} / {alg} in --quick: seed 0 only (its runs are slow)")
                runs += train_seeds(task, alg, seeds, settings, out)
        if "gap" in sections:
            gaps.append(gap_task(task, settings, out))
        if "cost" in sections:
            for alg in algorithms:
                for k in args.inner_steps:
                    costs.append(cost_one(task, alg, k, settings, out))
    notes += sorted({f"{r['task']} / {r['algorithm']}: {r['skipped']}" if "algorithm" in r
                     else f"{r['task']} gap: {r['skipped']}"
                     for r in [*runs, *costs, *gaps] if "skipped" in r})  # fmt: skip
    verdicts = verdict(runs, costs)
    caveats = []
    if mode != "full":
        caveats.append(
            f"Mode {mode}: short runs "
            f"({', '.join(f'{t} {n} steps' for t, n in settings['steps'].items())}; the "
            "papers train 60,000-70,000): the verdict is about these lengths"
            + (", and smoke numbers mean nothing." if mode == "smoke" else ".")
        )
    reconcile = example_comparison(runs)
    if reconcile:
        notes.append(reconcile)
    mach = machine()
    if mach.get("jax_backend") == "cpu":
        notes.append("CPU backend: GPU figures not measured in this run.")
    results = {
        "benchmark": "first_vs_second_order",
        "mode": mode,
        "machine": mach,
        "settings": {**vars(args), **settings},
        "elapsed_s": time.perf_counter() - t0,
        "runs": runs,
        "cost": costs,
        "gap": gaps,
        "summary": {
            "accuracy": summarize(runs),
            "cost_ratios": cost_ratios(costs),
            "gap": gap_summary(gaps),
            "verdict": verdicts,
        },
        "caveats": caveats,
        "notes": notes,
    }
    if not args.no_plots:
        results["plots"] = plot(results, out)
    path = write_json(out / "first_vs_second_order.json", results)
    md = out / "first_vs_second_order.md"
    md.write_text(markdown(results))
    print(md.read_text())
    print("wrote:")
    for written in [str(path), str(md), *results.get("plots", [])]:
        print(f"  {written}")
    if verdicts:  # the conclusion last, where a terminal shows it
        print("\nVERDICT (first vs second order):")
        for line in [*caveats, *verdict_lines(verdicts)]:
            print("  " + line.replace("**", ""))
    errors = [r for r in [*runs, *costs, *gaps] if "error" in r]
    for r in errors:
        log(f"error: {r}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
