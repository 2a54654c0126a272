"""The measurements of ``first_vs_second_order.py``: accuracy runs, cost, gradient gap.

Every unit of work (one training run, one cost row, the gradient gap of one task) writes
its record to a JSON file under ``--out`` as soon as it finishes and is skipped when that
file exists, so an interrupted benchmark resumes where it stopped. A training run cut in the
middle is an ordinary ``jaxmeta.train`` workdir and resumes from its last checkpoint: every
validation point in the seed-0 MAML run (the gradient gap reads them), only the final step
in the others (checkpoints cost time on a CPU), which therefore start over.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import REPO, compile_timed, program_memory_parts, time_state_calls, write_json

# Task -> setting of the Omniglot config files (configs/omniglot/<algorithm>_<setting>.yaml).
OMNIGLOT = {
    "omniglot_5w1s": "5w1s",
    "omniglot_5w5s": "5w5s",
    "omniglot_20w1s": "20w1s",
    "omniglot_20w5s": "20w5s",
}
# maml_5w1s.yaml (the README's first command) keeps jaxmeta's defaults; the reference code's
# protocol, which every other maml_/fomaml_ Omniglot config follows, is maml_5w1s_paper.yaml.
MAML_OMNIGLOT_CONFIG = {"5w1s": "maml_5w1s_paper.yaml"}
TASKS = ("sinusoid", *OMNIGLOT)
ALGORITHMS = ("maml", "fomaml", "reptile", "imaml")
SINUSOID_CONFIG = "configs/sinusoid/maml_k10.yaml"  # MAML paper Fig. 2: K=10, lr 0.01, 1 step
IMAML_SINUSOID_CONFIG = "configs/sinusoid/imaml_k10.yaml"  # 40 steps of 0.001, lam 0 at test
# Reptile on sinusoids has no shipped config: the MAML sinusoid config with Reptile's inner
# loop (SGD on support + query, 5 steps of 10 points; Nichol et al. 2018 regress with SGD).
# The outer optimizer stays the config's Adam (Reptile's pseudo-gradient is then rescaled).
REPTILE_SINUSOID = [
    "algorithm.name=reptile",
    "algorithm.inner_optimizer=sgd",
    "algorithm.inner_lr=0.02",
    "algorithm.inner_steps=5",
    "algorithm.inner_batch_size=10",
    "algorithm.train_on_query=true",
]
# The smallest runs that still exercise every code path (--smoke; numbers meaningless).
TINY = {
    "omniglot": ["model.filters=8", "train.meta_batch_size=4", "eval.queries=5"],
    "sinusoid": ["train.meta_batch_size=5", "eval.queries=20"],
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def config_for(task: str, algorithm: str, settings: dict[str, Any]) -> tuple[Path, list[str]] | str:
    """``(config file, overrides)`` of ``algorithm`` on ``task``, or why it is skipped."""
    data: list[str] = []
    if task == "sinusoid":
        path = REPO / SINUSOID_CONFIG
        algo = {
            "maml": [],
            "fomaml": ["algorithm.name=fomaml"],
            "reptile": REPTILE_SINUSOID,
            "imaml": [],
        }[algorithm]
        if algorithm == "imaml":
            # MAML's 1 step of 0.01 leaves iMAML's CG system indefinite (a flat curve at the
            # zero predictor's MSE); its own config: 40 steps of 0.001, the reference's
            # protocol, adapting with lam 0 at test.
            path = REPO / IMAML_SINUSOID_CONFIG
    else:
        path = omniglot_config(task, algorithm)
        if not path.is_file():
            return f"no config {path.relative_to(REPO)}: skipped"
        algo = ["algorithm.name=fomaml"] if algorithm == "fomaml" else []
        data = [f"data.manual_dir={settings['manual_dir']}", "data.download=false"]
        if settings.get("data_dir"):
            data.append(f"data.data_dir={settings['data_dir']}")
    tiny = TINY["sinusoid" if task == "sinusoid" else "omniglot"] if settings["tiny"] else []
    return path, [*algo, *data, *tiny, *settings["set"]]


def omniglot_config(task: str, algorithm: str) -> Path:
    """The config file ``algorithm`` trains on an Omniglot ``task``. MAML and FOMAML share
    MAML's paper-protocol config (FOMAML switches ``algorithm.name`` only), so the pair
    differs in the order of the meta-gradient and nothing else; the other algorithms train
    their own ``configs/omniglot/<algorithm>_<setting>.yaml``."""
    setting = OMNIGLOT[task]
    folder = REPO / "configs" / "omniglot"
    if algorithm in ("maml", "fomaml"):
        return folder / MAML_OMNIGLOT_CONFIG.get(setting, f"maml_{setting}.yaml")
    return folder / f"{algorithm}_{setting}.yaml"


BUDGET_NOTE = "time budget (--budget-min) spent: not started; rerun to continue"


def out_of_time(settings: dict[str, Any]) -> bool:
    """Whether the run's time budget is spent (no new unit of work starts then)."""
    return time.perf_counter() > settings.get("deadline", float("inf"))


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):  # absent, or torn by a kill: redo
        return None


# ------------------------------------------------------------------------------ accuracy


def run_overrides(task: str, steps: int, settings: dict[str, Any], *, keep_all: bool) -> list[str]:
    """Length, evaluation points and checkpoints of an accuracy run: a checkpoint at every
    validation point, so a run cut in the middle resumes from there; only ``keep_all`` runs
    (those the gradient gap reads) keep every one, the others their latest."""
    evals = settings["evals"]
    spc = max(1, min(settings["steps_per_call"], steps // evals))
    episodes, val_episodes = settings["episodes"][task]
    every = max(spc, steps // evals // spc * spc)
    out = [
        f"train.steps={steps}",
        f"train.steps_per_call={spc}",
        f"train.log_every={spc}",
        f"train.eval_every={every}",
        f"train.checkpoint_every={every}",
        f"train.keep_checkpoints={steps // every + 2 if keep_all else 1}",
        f"eval.episodes={episodes}",
        f"eval.val_episodes={val_episodes}",
    ]
    return out


def _number(v) -> float | None:
    """A metrics value as a float; non-finite ones (logged as "inf"/"nan") as None."""
    v = float(v)
    return v if math.isfinite(v) else None


def training_curve(rows: list[dict], metric: str) -> list[dict[str, Any]]:
    """Validation points with two clocks: ``wall_s``, the engine's ``wall_time`` (training
    plus validation and checkpoints since the start), and ``train_s``, training alone: the
    sum of the logged chunks' times, where a chunk logged right after a validation or a
    checkpoint (whose time it includes) counts at the median time per step of the others.
    """
    train = sorted((r for r in rows if r["split"] == "train"), key=lambda r: r["step"])
    val = sorted((r for r in rows if r["split"] == "val"), key=lambda r: r["step"])
    breaks = {r["step"] for r in val}
    chunks, prev = [], 0
    for r in train:
        n = r["step"] - prev
        chunks.append((r["step"], n, n / r["steps_per_sec"], prev in breaks))
        prev = r["step"]
    clean = [dt / n for _, n, dt, after in chunks if not after and n > 0]
    per_step = float(np.median(clean)) if clean else None
    t, at = 0.0, {}
    for step, n, dt, after in chunks:
        t += n * per_step if after and per_step is not None else dt
        at[step] = t
    wall = {r["step"]: r["wall_time"] for r in train}
    return [
        {
            "step": r["step"],
            "train_s": at.get(r["step"]),
            "wall_s": wall.get(r["step"]),
            metric: _number(r[metric]),
            "ci95": _number(r["ci95"]),
        }
        for r in val
    ]


def train_one(task: str, algorithm: str, seed: int, settings: dict[str, Any], out: Path):
    """One training run through the public API (``jaxmeta.train.train_and_evaluate``) in
    its own workdir; its record (test score, validation curve with wall-clock times)."""
    from jaxmeta.train import TrainingInterrupted, load_config, read_metrics, train_and_evaluate

    workdir = out / "runs" / task / algorithm / f"seed{seed}"
    record_path = workdir / "record.json"
    done = _load(record_path)
    if done is not None:
        return done
    found = config_for(task, algorithm, settings)
    if isinstance(found, str) or out_of_time(settings):
        why = found if isinstance(found, str) else BUDGET_NOTE
        return {"task": task, "algorithm": algorithm, "seed": seed, "skipped": why}
    path, overrides = found
    steps = settings["steps"][task]
    keep_all = algorithm == "maml" and seed == settings["gap_seed"]
    overrides = [*overrides, *run_overrides(task, steps, settings, keep_all=keep_all)]
    overrides.append(f"train.seed={seed}")
    log(f"{task} / {algorithm} / seed {seed}: {steps} steps")
    try:
        cfg = load_config(path, overrides)
        t = time.perf_counter()
        result = train_and_evaluate(cfg, workdir, progress=False, log=lambda s: None)
        elapsed = time.perf_counter() - t
    except TrainingInterrupted:  # Ctrl-C or SIGTERM: stop the whole benchmark, resumable
        raise
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the others
        log(f"  FAILED: {type(err).__name__}: {err}")
        return {"task": task, "algorithm": algorithm, "seed": seed, "error": f"{err}"[:500]}
    rows = read_metrics(workdir / "metrics.jsonl")
    metric = "accuracy" if task != "sinusoid" else "mse"
    curve = training_curve(rows, metric)
    test = result.get("test", {})
    one_step = None
    # Also examples/first_vs_second_order.py's test (1 inner step); --smoke: seed 0 only.
    if task == "sinusoid" and (seed == 0 or not settings["tiny"]):
        from jaxmeta.train import evaluate_run, restore_run

        one_step = evaluate_run(restore_run(workdir, "best"), split="test", inner_steps=1)
    record = {
        "task": task,
        "algorithm": algorithm,
        "seed": seed,
        "config": str(path.relative_to(REPO)),
        "overrides": overrides,
        "steps": steps,
        "metric": metric,
        "test": {
            metric: test.get(metric),
            "ci95": test.get("ci95"),
            "step": test.get("step"),
            "episodes": test.get("episodes"),
        },  # fmt: skip
        "test_1_inner_step": None
        if one_step is None
        else {metric: one_step.get(metric), "ci95": one_step.get("ci95")},  # fmt: skip
        "inner_steps": cfg.algorithm.kwargs.get("inner_steps"),
        "eval_inner_steps": cfg.algorithm.kwargs.get("eval_inner_steps"),
        "curve": curve,
        "train_wall_s": curve[-1]["train_s"] if curve else None,
        "call_s": elapsed,  # this call only (a resumed run: the rest)
        "workdir": str(workdir),
    }
    write_json(record_path, record)
    score = test.get(metric)
    log(f"  test {metric} {score:.4f} ± {test.get('ci95', 0):.4f}" if score is not None else "")
    return record


def train_seeds(task: str, algorithm: str, seeds: list[int], settings, out: Path) -> list[dict]:
    """One run per seed, one after the other. With populations (issue 15) this becomes one
    program: ``train.seeds=[...]`` in the overrides of a single ``train_one`` call.

    The runs of one (task, algorithm) compile the same programs: JAX's persistent
    compilation cache (``<out>/jax_cache``) compiles them once; the cost part turns it off.
    """
    with compilation_cache(out / "jax_cache"):
        return [train_one(task, algorithm, s, settings, out) for s in seeds]


@contextlib.contextmanager
def compilation_cache(directory: Path | None):
    """JAX's persistent compilation cache in ``directory`` (``None``: off) inside the block."""
    import jax

    before = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
    if directory is not None:
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_enable_compilation_cache", directory is not None)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", before[0])


# ------------------------------------------------------------------------------ cost


def cost_one(task: str, algorithm: str, inner_steps: int, settings, out: Path) -> dict[str, Any]:
    """ms per meta-step, compile time and XLA's memory analysis of the engine's fused
    training step (on-device sampling + meta-update) at ``inner_steps``."""
    import jax
    import jax.numpy as jnp

    from jaxmeta.step import make_train_chunk
    from jaxmeta.train import build_experiment, initial_state, load_config

    path_json = out / "cost" / f"{task}_{algorithm}_k{inner_steps}.json"
    done = _load(path_json)
    if done is not None:
        return done
    base = {"task": task, "algorithm": algorithm, "inner_steps": inner_steps}
    found = config_for(task, algorithm, settings)
    if isinstance(found, str) or out_of_time(settings):
        return {**base, "skipped": found if isinstance(found, str) else BUDGET_NOTE}
    path, overrides = found
    log(f"cost: {task} / {algorithm} / {inner_steps} inner steps")
    try:
        cfg = load_config(path, [*overrides, f"algorithm.inner_steps={inner_steps}"])
        exp = build_experiment(cfg)
        spc = settings["cost_steps_per_call"]
        chunk = make_train_chunk(
            exp.learner,
            exp.optimizer,
            lambda k, d: exp.source.sample(k, d, tasks=cfg.train.meta_batch_size),
            length=spc,
            task_chunk=cfg.execution.task_chunk,
        )
        data = exp.source.train_data()
        state = initial_state(cfg, exp)
        n = jnp.asarray(spc, jnp.int32)
        with compilation_cache(None):  # a real compilation, never a cache hit
            compiled, compile_s = compile_timed(chunk, state, data, n)
        timing = time_state_calls(compiled, state, (data, n), settings["timing"])
        timing.pop("call")
    except Exception as err:  # noqa: BLE001
        log(f"  FAILED: {type(err).__name__}: {err}")
        return {**base, "error": f"{err}"[:500]}
    record = {
        **base,
        "meta_batch": cfg.train.meta_batch_size,
        "steps_per_call": spc,
        "ms_per_step": timing["ms_median"] / spc,
        "ms_per_step_min": timing["ms_min"] / spc,
        "compile_s": compile_s,
        "memory_mb": program_memory_parts(compiled),
        "timing": timing,
        "backend": jax.default_backend(),
    }
    write_json(path_json, record)
    return record


# ------------------------------------------------------------------------------ gradient gap


def gap_task(task: str, settings, out: Path) -> dict[str, Any]:
    """First- vs second-order meta-gradients at the checkpoints of the second-order run
    (seed of ``settings['gap_seed']``), on one fixed meta-batch, for each inner-step count."""
    import jax

    from jaxmeta.analysis import gap_by_name, meta_gradient_gap
    from jaxmeta.train import build_experiment, initial_state, load_config, restore_run

    path_json = out / "gap" / f"{task}.json"
    done = _load(path_json)
    if done is not None:
        return done
    workdir = out / "runs" / task / "maml" / f"seed{settings['gap_seed']}"
    if not (workdir / "record.json").is_file():
        return {"task": task, "skipped": "no finished second-order run to read checkpoints from"}
    if out_of_time(settings):
        return {"task": task, "skipped": BUDGET_NOTE}
    run_cfg = workdir / "config.yaml"  # the run's resolved config (data paths included)
    cfg0 = load_config(run_cfg)
    exp0 = build_experiment(cfg0)
    steps = sorted(
        int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()
    )  # fmt: skip
    params = {0: initial_state(cfg0, exp0).params}
    for s in steps:
        params[s] = restore_run(workdir, s).state.params
    data = exp0.source.train_data()
    # The same tasks for every checkpoint and inner-step count (a fixed key).
    episodes = exp0.source.sample(jax.random.key(12345), data, tasks=cfg0.train.meta_batch_size)
    rows = []
    log(f"gap: {task}, checkpoints {sorted(params)}, inner steps {settings['inner_steps']}")
    for k in settings["inner_steps"]:
        learners = []
        for name in ("fomaml", "maml"):
            cfg = load_config(run_cfg, [f"algorithm.name={name}", f"algorithm.inner_steps={k}"])
            learners.append(build_experiment(cfg).learner)
        fn = jax.jit(lambda p, e, key, a=learners[0], b=learners[1]: meta_gradient_gap(
            a, b, p, e, key, task_chunk=cfg0.execution.task_chunk))  # fmt: skip
        for step, p in sorted(params.items()):
            gap = jax.device_get(fn(p, episodes, jax.random.key(0)))
            rows.append(
                {
                    "step": step,
                    "inner_steps": k,
                    "cosine": float(gap.cosine),
                    "rel_diff": float(gap.rel_diff),
                    "norm_first": float(gap.norm_approx),
                    "norm_second": float(gap.norm_reference),
                    "per_leaf": gap_by_name(gap),
                }
            )
    record = {
        "task": task,
        "run": str(workdir),
        "inner_lr": cfg0.algorithm.kwargs.get("inner_lr"),
        "trained_inner_steps": cfg0.algorithm.kwargs.get("inner_steps"),
        "meta_batch": cfg0.train.meta_batch_size,
        "rows": rows,
    }
    write_json(path_json, record)
    return record
