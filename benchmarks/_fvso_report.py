"""Summaries, Markdown tables and plots of ``first_vs_second_order.py``'s records."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from _common import markdown_table

# Published Omniglot test accuracy (%), transductive. MAML: Finn et al. 2017, Table 1.
# First-order MAML on Omniglot: Nichol et al. 2018 ("Reptile"), Table 1 (runs of the MAML
# code; the MAML paper's first-order row is for MiniImagenet only). Reptile (+ transduction):
# Nichol et al. 2018, Table 1.
PAPER = {
    "omniglot_5w1s": {"maml": 98.7, "fomaml": 98.3, "reptile": 97.68},
    "omniglot_5w5s": {"maml": 99.9, "fomaml": 99.2, "reptile": 99.48},
    "omniglot_20w1s": {"maml": 95.8, "fomaml": 89.4, "reptile": 89.43},
    "omniglot_20w5s": {"maml": 98.9, "fomaml": 97.9, "reptile": 97.12},
}
COLORS = {"maml": "tab:blue", "fomaml": "tab:orange", "reptile": "tab:green", "imaml": "tab:red"}


def _scale(metric: str) -> float:
    return 100.0 if metric == "accuracy" else 1.0


def _value_at(curve: list[dict], metric: str, seconds: float) -> float | None:
    """The last validation score reached within ``seconds`` of training time."""
    got = [p[metric] for p in curve if p["train_s"] is not None and p["train_s"] <= seconds]
    return got[-1] if got else None


def summarize(runs: list[dict]) -> list[dict[str, Any]]:
    """Per (task, algorithm): test mean ± std over seeds, the paper's number, training wall
    time, and the score at equal wall time (the shortest mean run time of MAML and FOMAML
    of that task)."""
    ok = [r for r in runs if "test" in r and r["test"].get(r["metric"]) is not None]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in ok:
        groups.setdefault((r["task"], r["algorithm"]), []).append(r)
    rows = []
    for (task, alg), rs in groups.items():
        m = rs[0]["metric"]
        scores = np.array([r["test"][m] for r in rs]) * _scale(m)
        walls = [r["train_wall_s"] for r in rs if r["train_wall_s"]]
        rows.append(
            {
                "task": task,
                "algorithm": alg,
                "metric": m,
                "seeds": len(rs),
                "mean": float(scores.mean()),
                "std": float(scores.std(ddof=1)) if len(rs) > 1 else 0.0,
                "ci95_mean": float(np.mean([r["test"]["ci95"] for r in rs]) * _scale(m)),
                "per_seed": [float(s) for s in scores],
                "paper": PAPER.get(task, {}).get(alg),
                "steps": rs[0]["steps"],
                "train_wall_s": float(np.mean(walls)) if walls else None,
            }
        )
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        times = [r["train_wall_s"] for r in mine if r["algorithm"] in ("maml", "fomaml")]
        times = [t for t in times if t]
        if not times:
            continue
        budget = min(times)
        for r in mine:
            vals = [
                _value_at(x["curve"], r["metric"], budget) for x in groups[(task, r["algorithm"])]
            ]
            vals = [v for v in vals if v is not None]
            r["equal_time_s"] = budget
            r["val_at_equal_time"] = (
                float(np.mean(vals)) * _scale(r["metric"]) if vals else None
            )  # fmt: skip
    return rows


def mean_curves(runs: list[dict]) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """Validation curves averaged over seeds (points every seed has)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        if r.get("curve"):
            groups.setdefault((r["task"], r["algorithm"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        m = rs[0]["metric"]
        n = min(len(r["curve"]) for r in rs)
        nan = lambda v: np.nan if v is None else v  # non-finite scores were logged as None
        y = np.array([[nan(p[m]) for p in r["curve"][:n]] for r in rs], float) * _scale(m)
        t = np.array([[nan(p["train_s"]) for p in r["curve"][:n]] for r in rs], float)
        out[key] = {
            "step": np.array([p["step"] for p in rs[0]["curve"][:n]]),
            "train_s": np.nanmean(t, 0),
            "mean": np.nanmean(y, 0),
            "std": np.nanstd(y, 0),
            "metric": m,
        }
    return out


def cost_ratios(costs: list[dict]) -> list[dict[str, Any]]:
    """Second- over first-order time, compile time and temporary memory per task and K."""
    ok = {(c["task"], c["algorithm"], c["inner_steps"]): c for c in costs if "ms_per_step" in c}
    rows = []
    for (task, alg, k), so in ok.items():
        fo = ok.get((task, "fomaml", k))
        if alg != "maml" or fo is None:
            continue
        mem_so, mem_fo = (so["memory_mb"] or {}), (fo["memory_mb"] or {})
        rows.append(
            {
                "task": task,
                "inner_steps": k,
                "so_over_fo_ms": so["ms_per_step"] / fo["ms_per_step"],
                "so_over_fo_compile": so["compile_s"] / max(fo["compile_s"], 1e-9),
                "so_over_fo_temp": (
                    mem_so["temp"] / mem_fo["temp"]
                    if mem_so.get("temp") and mem_fo.get("temp")
                    else None
                ),  # fmt: skip
            }
        )
    return rows


def gap_summary(gaps: list[dict]) -> list[dict[str, Any]]:
    """Per task and inner-step count: cosine and relative difference at the first and last
    checkpoint, and the parameter leaf with the lowest cosine at the last one."""
    rows = []
    for g in gaps:
        for k in dict.fromkeys(r["inner_steps"] for r in g.get("rows", [])):
            rs = sorted((r for r in g["rows"] if r["inner_steps"] == k), key=lambda r: r["step"])
            first, last = rs[0], rs[-1]
            worst = min(last["per_leaf"].items(), key=lambda kv: kv[1]["cosine"])
            rows.append(
                {
                    "task": g["task"],
                    "inner_steps": k,
                    "cos_init": first["cosine"],
                    "cos_last": last["cosine"],
                    "cos_min": min(r["cosine"] for r in rs),
                    "rel_diff_init": first["rel_diff"],
                    "rel_diff_last": last["rel_diff"],
                    "last_step": last["step"],
                    "worst_leaf": f"{worst[0]} ({worst[1]['cosine']:.3f})",
                }
            )
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The Markdown report: accuracy, equal time, cost, gradient gap."""
    mach = results["machine"]
    acc = [dict(r) for r in results["summary"]["accuracy"]]
    for r in acc:
        unit = "%" if r["metric"] == "accuracy" else ""
        r["_score"] = f"{r['mean']:.2f} ± {r['std']:.2f}{unit} (n={r['seeds']})"
        r["_paper"] = f"{r['paper']}" if r["paper"] is not None else "-"
        r["_eq"] = (
            f"{r['val_at_equal_time']:.2f} @ {r['equal_time_s']:.0f} s"
            if r.get("val_at_equal_time") is not None
            else "-"
        )
    parts = [
        f"Machine: {mach.get('device_kind')} ({mach.get('cpu_model')}, load average "
        f"{[round(x, 1) for x in mach.get('loadavg') or ()]} at the end), "
        f"date {mach.get('date_utc')}; mode: {results['mode']}.",
        "",
        "Test score (accuracy %, or MSE for sinusoid): mean ± std over seeds of the "
        "best-validation checkpoint; paper = published number.",
        "",
        markdown_table(
            acc,
            [
                ("task", "task"),
                ("algorithm", "algorithm"),
                ("steps", "steps"),
                ("_score", "test mean ± std"),
                ("ci95_mean", "mean 95% CI"),
                ("_paper", "paper"),
                ("train_wall_s", "wall s"),
                ("_eq", "val at equal wall time"),
            ],
        ),
        "",
        "Cost of one meta-step (engine's fused step, on-device sampling included); memory = "
        "XLA memory analysis of the compiled program (temp = the program's own scratch; "
        "args+out+temp = arguments + outputs - donated + temp).",
        "",
    ]
    costs = [dict(c) for c in results["cost"] if "ms_per_step" in c]
    for c in costs:
        mem = c.get("memory_mb") or {}
        c["_temp"] = mem.get("temp")
        if mem:  # XLA:CPU's own peak figure can be below temp: report the sum instead
            c["_total"] = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"]
    parts.append(
        markdown_table(
            costs,
            [
                ("task", "task"),
                ("algorithm", "algorithm"),
                ("inner_steps", "inner steps"),
                ("meta_batch", "meta-batch"),
                ("ms_per_step", "ms/meta-step (median)"),
                ("ms_per_step_min", "min"),
                ("compile_s", "compile s"),
                ("_temp", "temp MiB"),
                ("_total", "args+out+temp MiB"),
            ],
        )
    )
    ratios = results["summary"]["cost_ratios"]
    if ratios:
        parts += ["", markdown_table(ratios, [
            ("task", "task"), ("inner_steps", "inner steps"), ("so_over_fo_ms", "SO/FO time"),
            ("so_over_fo_compile", "SO/FO compile"), ("so_over_fo_temp", "SO/FO temp memory"),
        ])]  # fmt: skip
    gaps = results["summary"]["gap"]
    if gaps:
        parts += [
            "",
            "Gradient gap, first- vs second-order meta-gradient at the same parameters "
            "(checkpoints of the second-order run) and the same meta-batch:",
            "",
            markdown_table(gaps, [
                ("task", "task"), ("inner_steps", "inner steps"), ("cos_init", "cos @0"),
                ("cos_last", "cos @last"), ("cos_min", "min cos"),
                ("rel_diff_init", "rel diff @0"), ("rel_diff_last", "rel diff @last"),
                ("worst_leaf", "lowest-cosine leaf @last"),
            ]),
        ]  # fmt: skip
    if results.get("notes"):
        parts += ["", "Notes:", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(parts) + "\n"


def _save(plt, fig, axes, path: Path) -> str:
    """Grid and legend on every panel, then write the figure."""
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def plot(results: dict[str, Any], out: Path) -> list[str]:
    """The four figures; returns the written paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots", file=sys.stderr)
        return []
    written = []
    curves = mean_curves(results["runs"])
    tasks = list(dict.fromkeys(t for t, _ in curves))
    device = results["machine"].get("device_kind")
    for xkey, name, xlabel in (
        ("step", "accuracy_vs_steps.png", "meta-steps"),
        ("train_s", "accuracy_vs_time.png", "training wall-clock s (validation excluded)"),
    ):
        if not tasks:
            break
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            for (t, alg), c in curves.items():
                if t != task:
                    continue
                ax.plot(c[xkey], c["mean"], marker="o", ms=3, label=alg, color=COLORS.get(alg))
                ax.fill_between(c[xkey], c["mean"] - c["std"], c["mean"] + c["std"],
                                alpha=0.2, color=COLORS.get(alg))  # fmt: skip
                metric = c["metric"]
            ax.set_title(task, fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel("val accuracy %" if metric == "accuracy" else "val MSE", fontsize=8)
            if metric == "mse":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"mean ± std over seeds ({device})", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(str(out / name))
    gaps = [g for g in results["gap"] if g.get("rows")]
    if gaps:
        fig, axes = plt.subplots(2, len(gaps), figsize=(4.2 * len(gaps), 6), squeeze=False)
        for j, g in enumerate(gaps):
            for k in dict.fromkeys(r["inner_steps"] for r in g["rows"]):
                rs = sorted(
                    (r for r in g["rows"] if r["inner_steps"] == k), key=lambda r: r["step"]
                )
                x = [r["step"] for r in rs]
                axes[0, j].plot(x, [r["cosine"] for r in rs], marker="o", ms=3, label=f"K={k}")
                axes[1, j].plot(x, [r["rel_diff"] for r in rs], marker="o", ms=3, label=f"K={k}")
            axes[0, j].set_title(f"{g['task']} (inner lr {g['inner_lr']})", fontsize=9)
            axes[0, j].set_ylabel("cosine(FO, SO)", fontsize=8)
            axes[1, j].set_ylabel("|FO - SO| / |SO|", fontsize=8)
            axes[1, j].set_xlabel("checkpoint step of the SO run", fontsize=8)
        written.append(_save(plt, fig, axes, out / "gradient_cosine.png"))
    costs = [c for c in results["cost"] if "ms_per_step" in c]
    ctasks = list(dict.fromkeys(c["task"] for c in costs))
    if ctasks:
        fig, axes = plt.subplots(2, len(ctasks), figsize=(4.2 * len(ctasks), 6), squeeze=False)
        for j, task in enumerate(ctasks):
            for alg in dict.fromkeys(c["algorithm"] for c in costs if c["task"] == task):
                cs = sorted((c for c in costs if c["task"] == task and c["algorithm"] == alg),
                            key=lambda c: c["inner_steps"])  # fmt: skip
                ks = [c["inner_steps"] for c in cs]
                temp = [(c["memory_mb"] or {}).get("temp", np.nan) for c in cs]
                axes[0, j].plot(ks, temp, marker="o", label=alg, color=COLORS.get(alg))
                axes[1, j].plot(ks, [c["ms_per_step"] for c in cs], marker="o", label=alg,
                                color=COLORS.get(alg))  # fmt: skip
            axes[0, j].set_title(task, fontsize=9)
            axes[0, j].set_ylabel("temp memory MiB (XLA analysis)", fontsize=8)
            axes[1, j].set_ylabel("ms per meta-step (median)", fontsize=8)
            axes[1, j].set_xlabel("inner steps", fontsize=8)
        fig.suptitle(f"cost vs inner steps ({device})", fontsize=9)
        written.append(_save(plt, fig, axes, out / "memory_vs_inner_steps.png"))
    return written
