"""Summaries, Markdown tables and plots of ``first_vs_second_order.py``'s records."""

from __future__ import annotations

import math
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
    verdict_rows = results["summary"].get("verdict", [])
    parts = []
    if verdict_rows:
        parts += [
            "## Verdict: first vs second order",
            "",
            *verdict_lines(verdict_rows),
            "",
            "Paired over seeds (a seed gives both orders the same initialisation and training "
            f"tasks); the difference exceeds the seed spread when the paired t-test's p < {ALPHA}"
            " (with 3 seeds the sign test cannot go below p=0.25; it is shown as a check).",
            "",
        ]
    if results.get("caveats"):
        parts += [f"**{c}**" for c in results["caveats"]] + [""]
    parts += [
        "## Tables",
        "",
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
    short = {v["task"]: verdict_short(v) for v in results["summary"].get("verdict", [])}
    for xkey, name, xlabel in (
        ("step", "score_vs_steps.png", "meta-steps"),
        ("train_s", "score_vs_time.png", "training wall-clock s (validation excluded)"),
    ):
        if not tasks:
            break
        fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.0), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            for (t, alg), c in curves.items():
                if t != task:
                    continue
                ax.plot(c[xkey], c["mean"], marker="o", ms=3, label=alg, color=COLORS.get(alg))
                ax.fill_between(c[xkey], c["mean"] - c["std"], c["mean"] + c["std"],
                                alpha=0.2, color=COLORS.get(alg))  # fmt: skip
                metric = c["metric"]
            title = task if task not in short else f"{task}\n{short[task]}"
            ax.set_title(title.replace("; equal time", "\nequal time"), fontsize=7)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(
                "validation accuracy %"
                if metric == "accuracy"
                else "validation MSE (lower = better)",
                fontsize=8,
            )
            if metric == "mse":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(
            f"validation score, mean ± std over seeds ({device}); verdict: SO = second order, "
            "FO = first order, p = paired t-test over seeds, n.s. = within the seed spread",
            fontsize=8,
        )
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
                axes[0, j].plot(
                    x, [r["cosine"] for r in rs], marker="o", ms=3, label=f"{k} inner steps"
                )
                axes[1, j].plot(
                    x, [r["rel_diff"] for r in rs], marker="o", ms=3, label=f"{k} inner steps"
                )
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


# ------------------------------------------------------------------------------ verdict


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast on this side only
        return 1.0 - _betainc(b, a, 1.0 - x)
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-12:
            break
    return front * f


def paired_test(a: list[float], b: list[float]) -> dict[str, Any]:
    """Paired comparison over seeds of ``a`` and ``b`` (same seed = same initialisation and
    training tasks): mean difference ``a - b``, its std, the paired t-test's two-sided p-value
    (Student t with n-1 degrees of freedom) and the exact two-sided sign test."""
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    out: dict[str, Any] = {"n": n, "diff": float(d.mean()) if n else None}
    out["diff_std"] = float(d.std(ddof=1)) if n > 1 else None
    if n < 2:
        out.update(t=None, p_t=None)
    elif out["diff_std"] == 0:
        out.update(t=None, p_t=0.0 if out["diff"] != 0 else 1.0)
    else:
        t = out["diff"] / (out["diff_std"] / math.sqrt(n))
        df = n - 1
        out.update(t=float(t), p_t=_betainc(df / 2, 0.5, df / (df + t * t)))
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    m = pos + neg
    k = min(pos, neg)
    p_sign = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m) if m else 1.0
    out.update(positive=pos, negative=neg, p_sign=p_sign)
    return out


ALPHA = 0.05
ORDERS = ("maml", "fomaml")  # second order, first order
NAMES = {"maml": "second order (MAML)", "fomaml": "first order (FOMAML)"}


def _per_seed(runs: list[dict], task: str, alg: str) -> dict[int, dict]:
    return {
        r["seed"]: r
        for r in runs
        if r["task"] == task
        and r["algorithm"] == alg
        and r.get("test", {}).get(r.get("metric")) is not None
    }


def flattened(runs: list[dict], task: str, alg: str) -> dict[str, Any] | None:
    """Whether the mean validation curve has flattened: its change over the second half of
    training (from the middle validation point to the last) is within the validation
    estimate's mean 95% CI (noise), else it is still moving."""
    rs = [r for r in _per_seed(runs, task, alg).values() if len(r.get("curve", [])) >= 2]
    if not rs:
        return None
    m = rs[0]["metric"]
    n = min(len(r["curve"]) for r in rs)
    last = [r["curve"][n - 1] for r in rs]
    prev = [r["curve"][(n - 1) // 2] for r in rs]
    if any(p[m] is None for p in [*last, *prev]):
        return None
    change = float(np.mean([p[m] for p in last]) - np.mean([p[m] for p in prev])) * _scale(m)
    ci = float(np.mean([p["ci95"] or 0.0 for p in last])) * _scale(m)
    better = change > 0 if m == "accuracy" else change < 0
    return {
        "from_step": prev[0]["step"],
        "to_step": last[0]["step"],
        "change": change,
        "val_ci95": ci,
        "flat": abs(change) <= ci,
        "still_improving": better and abs(change) > ci,
    }


def _compare(so: list[float], fo: list[float], metric: str) -> dict[str, Any]:
    """Which order wins (by the mean), by how much, and whether a paired test over seeds
    says the difference exceeds the seed spread (p < ALPHA)."""
    test = paired_test(so, fo)
    diff = test["diff"]
    higher_better = metric == "accuracy"
    if diff is None or diff == 0:
        winner = None
    else:
        winner = "maml" if (diff > 0) == higher_better else "fomaml"
    significant = test["p_t"] is not None and test["p_t"] < ALPHA
    return {
        "so": float(np.mean(so)),
        "fo": float(np.mean(fo)),
        "winner": winner,
        "significant": significant,
        **test,
    }


def verdict(runs: list[dict], costs: list[dict]) -> list[dict[str, Any]]:
    """Per task with MAML and FOMAML runs: the winner at equal meta-steps (test score of the
    best-validation checkpoint, paired by seed), at equal training wall time (the last
    validation score reached within the shorter mean training time of the two, paired by
    seed), the cost ratio (training time per meta-step; and the timed fused step of the cost
    part at the trained inner steps when measured), and whether the curves have flattened."""
    out = []
    for task in dict.fromkeys(r["task"] for r in runs):
        so_runs, fo_runs = (_per_seed(runs, task, a) for a in ORDERS)
        seeds = sorted(set(so_runs) & set(fo_runs))
        if not seeds:
            continue
        m = so_runs[seeds[0]]["metric"]
        sc = _scale(m)
        steps = _compare(
            [so_runs[s]["test"][m] * sc for s in seeds],
            [fo_runs[s]["test"][m] * sc for s in seeds],
            m,
        )
        walls = {
            a: [r[s]["train_wall_s"] for s in seeds]
            for a, r in zip(ORDERS, (so_runs, fo_runs), strict=True)
        }
        budget = None
        time_cmp = None
        if all(all(w) for w in walls.values()):
            budget = min(float(np.mean(w)) for w in walls.values())
            so_t = [_value_at(so_runs[s]["curve"], m, budget) for s in seeds]
            fo_t = [_value_at(fo_runs[s]["curve"], m, budget) for s in seeds]
            pairs = [
                (a, b) for a, b in zip(so_t, fo_t, strict=True) if a is not None and b is not None
            ]
            if pairs:
                time_cmp = _compare([a * sc for a, _ in pairs], [b * sc for _, b in pairs], m)
                time_cmp["seconds"] = budget
            else:
                time_cmp = {"seconds": budget, "winner": None, "note": (
                    "no validation point of both orders within that time")}  # fmt: skip
        per_step = {
            a: float(np.mean([r[s]["train_wall_s"] / r[s]["steps"] for s in seeds]))
            for a, r in zip(ORDERS, (so_runs, fo_runs), strict=True)
            if all(walls[a])
        }
        ratio = per_step["maml"] / per_step["fomaml"] if len(per_step) == 2 else None
        k = so_runs[seeds[0]].get("inner_steps")
        bench = [
            c["so_over_fo_ms"]
            for c in cost_ratios(costs)
            if c["task"] == task and (k is None or c["inner_steps"] == k)
        ]
        out.append(
            {
                "task": task,
                "metric": m,
                "steps": so_runs[seeds[0]]["steps"],
                "seeds": seeds,
                "equal_steps": steps,
                "equal_time": time_cmp,
                "cost_ratio_train": ratio,
                "cost_ratio_bench": bench[0] if bench else None,
                "ms_per_step": {a: 1e3 * v for a, v in per_step.items()},
                "flattened": {a: flattened(runs, task, a) for a in ORDERS},
            }
        )
    return out


def _fmt(v: float, metric: str) -> str:
    return f"{v:.2f}%" if metric == "accuracy" else f"{v:.3f}"


def _sentence(c: dict[str, Any] | None, metric: str, what: str) -> str:
    if c is None:
        return f"{what}: not measured"
    if c.get("winner") is None:
        return f"{what}: " + (c.get("note") or "a tie")
    loser = "fomaml" if c["winner"] == "maml" else "maml"
    name = "accuracy" if metric == "accuracy" else "MSE"
    unit = " points" if metric == "accuracy" else ""
    win, lose = (c["so"], c["fo"]) if c["winner"] == "maml" else (c["fo"], c["so"])
    p = f"paired t-test p={c['p_t']:.3f}" if c["p_t"] is not None else "no t-test (1 seed)"
    sign = (
        f"sign test p={c['p_sign']:.2f}, {max(c['positive'], c['negative'])}/{c['n']} seeds agree"
    )
    spread = (
        "exceeds the seed spread" if c["significant"] else f"within the seed spread (p >= {ALPHA})"
    )
    return (
        f"{what}: {NAMES[c['winner']]} wins, {name} {_fmt(win, metric)} vs "
        f"{_fmt(lose, metric)} ({NAMES[loser].split(' (')[0]}), by {abs(c['diff']):.3g}{unit}; "
        f"{p}, {sign}: {spread}"
    )


def verdict_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The verdict as sentences a researcher can quote, one block per task."""
    lines = []
    for v in rows:
        if lines:
            lines.append("")  # one block per task
        m = v["metric"]
        score = "test accuracy" if m == "accuracy" else "test MSE (lower is better)"
        lines.append(
            f"**{v['task']}** ({v['steps']} meta-steps, seeds {v['seeds'][0]}-{v['seeds'][-1]}, "
            f"{score}):"
        )
        lines.append("- " + _sentence(v["equal_steps"], m, "at equal meta-steps"))
        t = v["equal_time"]
        what = (
            f"at equal training wall time ({t['seconds']:.1f} s, the faster order's whole "
            "run; validation score)"
            if t
            else "at equal training wall time"
        )
        lines.append("- " + _sentence(t, m, what))
        if v["cost_ratio_train"] is not None:
            ms = v["ms_per_step"]
            extra = (
                f"; the timed fused step alone: {v['cost_ratio_bench']:.2f}x"
                if v["cost_ratio_bench"] is not None
                else ""
            )
            lines.append(
                f"- cost: second order {v['cost_ratio_train']:.2f}x first order's training "
                f"time per meta-step ({ms['maml']:.2f} vs {ms['fomaml']:.2f} ms){extra}"
            )
        for alg, f in v["flattened"].items():
            if f is None:
                continue
            state = (
                "flattened"
                if f["flat"]
                else "STILL IMPROVING: longer runs may change the verdict"
                if f["still_improving"]
                else "getting worse (overfitting or noise)"
            )
            lines.append(
                f"- {alg} curve {f['from_step']}->{f['to_step']}: change {f['change']:+.3g} "
                f"vs validation CI ±{f['val_ci95']:.3g}: {state}"
            )
    return lines


def verdict_short(v: dict[str, Any]) -> str:
    """One line per task for the plots."""

    def part(c, what):
        if not c or c.get("winner") is None:
            return f"{what}: -"
        who = "SO" if c["winner"] == "maml" else "FO"
        sig = f"p={c['p_t']:.2g}" if c["p_t"] is not None else "1 seed"
        return (
            f"{what}: {who} by {abs(c['diff']):.2g} ({sig}{'' if c['significant'] else ', n.s.'})"
        )

    cost = f"; SO/FO cost {v['cost_ratio_train']:.1f}x" if v["cost_ratio_train"] else ""
    return f"{part(v['equal_steps'], 'equal steps')}; {part(v['equal_time'], 'equal time')}{cost}"
