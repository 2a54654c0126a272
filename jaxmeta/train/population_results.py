"""What a population's runs add up to: statistics across seeds (:func:`across_runs`), their
line (:func:`format_population`) and plot (:func:`plot_population_curves`), the vmapped
evaluator of every member (:func:`make_population_evaluator`) and ``jaxmeta evaluate`` of a
population workdir (:func:`evaluate_population`, :func:`population_report`). Used by the
population's training session (:mod:`jaxmeta.train.population_loop`, which re-exports them)
and by the commands; it imports neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxmeta.train.build import build_experiment, eval_episode_shape
from jaxmeta.train.config import load_config, replace
from jaxmeta.train.evaluate import compared_bn_modes, main_metric, make_evaluator, summarize
from jaxmeta.train.metrics import read_metrics
from jaxmeta.train.population import (
    check_sizes,
    members,
    population_builder,
    population_hparams,
    restore_population,
)
from jaxmeta.train.workdir import atomic_write, eval_result_name

__all__ = [
    "across_runs",
    "evaluate_population",
    "format_population",
    "make_population_evaluator",
    "plot_population_curves",
    "population_report",
]

# Two-sided 95% Student-t quantiles by degrees of freedom (the interval of a mean over few
# seeds); above 30 the normal 1.96.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
        16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042}  # fmt: skip


def _t95(df: int) -> float:
    if df in _T95:
        return _T95[df]
    return 1.96 if df > 30 else _T95[min(k for k in _T95 if k >= df)]


def across_runs(runs: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per sweep point (runs that differ only by seed): mean, std (ddof=1) and the 95%
    interval of the mean across seeds (Student t) of ``metric``."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        point = tuple((k, v) for k, v in r.items() if "." in k)  # the swept keys
        groups.setdefault(point, []).append(r)
    out = []
    for point, rs in groups.items():
        values = np.asarray([r[metric] for r in rs], np.float64)
        std = float(values.std(ddof=1)) if values.size > 1 else 0.0
        half = _t95(values.size - 1) * std / np.sqrt(values.size) if values.size > 1 else None
        out.append(
            {
                **dict(point),
                "runs": [r["run"] for r in rs],
                "seeds": [r["seed"] for r in rs],
                metric: float(values.mean()),
                "std": std,
                "ci95_across_seeds": None if half is None else float(half),
            }
        )
    return out


def make_population_evaluator(
    build, *, classification: bool, batch_size: int, inner_steps, bn_mode: str | None = None
):
    """``(params[runs], hparams[runs], episodes, key, learner_state[runs]=None) -> per-episode
    metrics [runs, episodes]``: :func:`~jaxmeta.train.evaluate.make_evaluator` of each
    member's learner, ``vmap``-ed."""

    def one(params, hparams, episodes, key, learner_state=None):
        learner, _ = build(hparams)
        fn = make_evaluator(
            learner,
            classification=classification,
            batch_size=batch_size,
            inner_steps=inner_steps,
            bn_mode=bn_mode,
        )
        return fn(params, episodes, key, learner_state)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None, 0)))


def format_population(group: dict[str, Any], metric: str, episodes: int) -> str:
    """``test accuracy over 3 seeds: 97.10% ± 0.30% (std; 95% interval of the mean ±
    0.75%; 600 episodes per run)``."""
    point = ", ".join(f"{k}={v}" for k, v in group.items() if "." in k)
    if metric == "accuracy":
        fmt = lambda x: f"{100 * x:.2f}%"
    else:
        fmt = lambda x: f"{x:.4f}"
    half = group["ci95_across_seeds"]
    interval = "" if half is None else f"; 95% interval of the mean ± {fmt(half)}"
    return (
        f"test {metric} over {len(group['runs'])} seeds{f' ({point})' if point else ''}: "
        f"{fmt(group[metric])} ± {fmt(group['std'])} (std{interval}; {episodes} episodes "
        "per run)"
    )


def plot_population_curves(
    metrics_path: str | Path,
    png_path: str | Path,
    *,
    title: str = "",
    groups: dict[int, str] | None = None,
):
    """PNG: per metric, one thin line per run and the band mean ± std across runs; with
    ``groups`` (run -> sweep point) one band per sweep point, across its seeds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in read_metrics(metrics_path) if "run" in r]
    panels = [
        (split, key)
        for split in ("train", "val")
        for key in ("loss", "accuracy", "mse")
        if any(r.get("split") == split and key in r for r in rows)
    ]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (split, key) in zip(axes[0], panels, strict=True):
        part = [r for r in rows if r.get("split") == split and isinstance(r.get(key), float)]
        steps = sorted({r["step"] for r in part})
        runs = sorted({r["run"] for r in part})
        table = np.full((len(runs), len(steps)), np.nan)
        for r in part:
            table[runs.index(r["run"]), steps.index(r["step"])] = r[key]
        names = groups or {}
        points = list(dict.fromkeys(names.get(run, "") for run in runs))
        for g, point in enumerate(points):
            rows_g = [i for i, run in enumerate(runs) if names.get(run, "") == point]
            color = f"C{g % 10}" if len(points) > 1 else None
            for i in rows_g:
                label = f"run {runs[i]}" if len(runs) <= 8 and len(points) == 1 else None
                ax.plot(steps, table[i], lw=0.8, alpha=0.6, color=color, label=label)
            mean, std = np.nanmean(table[rows_g], 0), np.nanstd(table[rows_g], 0)
            band = color or "gray"
            ax.plot(steps, mean, color=color or "black", lw=1.6, label=point or "mean")
            ax.fill_between(steps, mean - std, mean + std, color=band, alpha=0.25)
        ax.set_xlabel("meta-step")
        ax.set_title(f"{split} {key}")
        if key == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(f"{title}: {len(runs)} runs, mean ± std band")
    fig.tight_layout()
    try:
        atomic_write(png_path, lambda f: fig.savefig(f, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return True


def evaluate_population(
    workdir,
    checkpoint="best",
    *,
    overrides=(),
    episodes: int | None = None,
    split: str = "test",
    inner_steps: int | None = None,
    bn_mode: str = "both",
    trust_plugins: bool | tuple[str, ...] | list[str] = False,
) -> dict[str, Any]:
    """``jaxmeta evaluate`` of every member in one vmapped program (the same fixed episodes
    for all), and the statistics across seeds. ``bn_mode="both"`` adds each run's inductive
    numbers as ``<metric>_inductive`` (models with batch statistics)."""
    cfg = load_config(Path(workdir) / "config.yaml", overrides, trust_plugins=trust_plugins)
    if episodes is not None:
        cfg = replace(cfg, eval={"episodes": episodes})
    exp = build_experiment(cfg)
    check_sizes(cfg, exp.source, train=False)
    source, ev = exp.source, cfg.eval
    if split not in source.splits:
        raise ValueError(
            f"split {split!r} does not exist for {cfg.data.name} "
            f"(available: {', '.join(source.splits)})"
        )
    state, which = restore_population(workdir, cfg, exp, checkpoint)
    modes: list[str | None] = compared_bn_modes(exp.learner) if bn_mode == "both" else [bn_mode]
    if not getattr(exp.model, "uses_batch_statistics", False):
        modes = [None]
    eps = jax.device_put(
        source.eval_episodes(
            split, episodes=ev.episodes, seed=ev.seed, **eval_episode_shape(cfg, source)
        )
    )
    inner = inner_steps if inner_steps is not None else ev.inner_steps
    classification = source.classification
    metric, _ = main_metric(exp.learner, classification=classification)
    steps = np.asarray(state.step)
    runs = [{**m, "step": int(s)} for m, s in zip(members(cfg), steps, strict=True)]
    for i, mode in enumerate(modes):
        fn = make_population_evaluator(
            population_builder(cfg, exp),
            classification=classification,
            batch_size=ev.batch_size,
            inner_steps=inner,
            bn_mode=mode,
        )
        per = jax.device_get(
            fn(
                state.params,
                population_hparams(cfg),
                eps,
                jax.random.key(ev.seed),
                state.learner_state,
            )
        )
        for r, row in enumerate(runs):
            res = summarize(
                {k: v[r] for k, v in per.items()},
                classification=classification,
                metric=exp.learner.eval_metric,
            )
            res.pop("per_episode")
            row.update(res if i == 0 else {f"{k}_{mode}": res[k] for k in (metric, "ci95")})
    out = {
        "split": split,
        "checkpoint": which,
        "metric": metric,
        "episodes": ev.episodes,
        "algorithm": cfg.algorithm.name,
        "dataset": cfg.data.name,
        "runs": runs,
        "across_seeds": across_runs(runs, metric),
    }
    if modes != [None]:
        out["bn_mode"] = modes[0]
    return out


def population_report(res: dict[str, Any], checkpoint, inner_steps, bn_mode: str):
    """``(lines to print, result file name)`` of :func:`evaluate_population`'s result."""
    metric, split = res["metric"], res["split"]
    lines = [
        f"run {r['run']} (seed {r['seed']}): {split} {metric} {r[metric]:.4f} ± {r['ci95']:.4f}"
        for r in res["runs"]
    ]
    lines += [format_population(g, metric, res["episodes"]) for g in res["across_seeds"]]
    label = str(checkpoint)
    name = eval_result_name(
        split=split,
        checkpoint=label if label in ("best", "latest") else f"step{label}",
        episodes=res["episodes"],
        inner_steps=inner_steps,
        bn_mode=None if bn_mode == "both" else bn_mode,
    )
    return lines, name
