"""MAML-RL on 2D navigation: the paper's figure (return against gradient steps) and speed.

Trains, from the same initial parameters and the same seed,

* **MAML** (``jaxmeta.rl.maml_trpo``, 1 inner policy-gradient step, lr 0.1, 20 trajectories
  per task, meta-batch 20, TRPO outer step with max KL 0.01) for ``--iterations``
  meta-iterations (500, the paper's protocol);
* **pretrained**: the same TRPO machinery without inner step (``inner_steps=0``: one policy
  trained on tasks sampled from the whole distribution), for as many iterations;
* **random**: the initial parameters,

then adapts each on the same fixed test tasks (``--eval-tasks``, seeded) with 0, 1, 2 and
3 policy-gradient steps (step sizes ``--eval-lr``: 0.1 then 0.05, the paper's evaluation
schedule) and reports the mean return ± 95% CI over tasks after each step.

Speed: the wall time of the whole MAML meta-training (compilation reported apart), its
environment steps per second (every rollout of every task, pre- and post-update), and the
throughput of rollouts alone. ``cpu_util`` (process CPU seconds / wall seconds) and the
load average tell whether the 2-core machine was shared.

Outputs in ``--out`` (default ``bench-out/maml_rl``, git-ignored): ``maml_rl.json`` and
``maml_rl.png``.

Examples::

    python benchmarks/maml_rl.py             # the paper's protocol, exact TRPO metric
    python benchmarks/maml_rl.py --quick     # seconds: a smoke test of the pipeline
    python benchmarks/maml_rl.py --fisher adapted --fisher-subsample 0.2   # fast variant
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO, csv_list, machine, time_calls, write_json  # noqa: E402


def build(args):
    import jax
    import jax.numpy as jnp

    from jaxmeta import rl

    env = rl.make_env("navigation2d")
    policy = rl.GaussianMLPPolicy(action_size=env.action_size, hidden=(100, 100))
    params = policy.init(jax.random.key(args.seed), jnp.zeros((1, env.obs_size)))
    common = dict(
        inner_lr=0.1,
        num_trajectories=args.trajectories,
        meta_batch=args.meta_batch,
        estimator=args.estimator,
        fisher=args.fisher,
        fisher_subsample=args.fisher_subsample,
    )
    maml = rl.maml_trpo(policy.apply, env, inner_steps=1, **common)
    pretrained = rl.maml_trpo(policy.apply, env, inner_steps=0, **common)
    return env, policy, params, maml, pretrained


def train_timed(learner, params, *, key, iterations: int, chunk: int) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from jaxmeta import rl

    state = learner.init(key, params)
    run = rl.make_train_chunk(learner, length=chunk)
    t = time.perf_counter()
    jax.block_until_ready(run(state, jnp.asarray(0, jnp.int32)))  # compiles; runs nothing
    compile_s = time.perf_counter() - t
    cpu0, t = time.process_time(), time.perf_counter()
    state, metrics = rl.train(learner, state, iterations, chunk=chunk)
    jax.block_until_ready(state)
    train_s = time.perf_counter() - t
    cpu_util = (time.process_time() - cpu0) / max(train_s, 1e-9)
    return {
        "state": state,
        "compile_s": compile_s,
        "train_s": train_s,
        "cpu_util": round(cpu_util, 2),
        "curve": {k: [float(x) for x in v] for k, v in metrics.items()},
    }


def ci95(x) -> float:
    import numpy as np

    x = np.asarray(x, np.float64)
    return float(1.96 * x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def make_evaluate(learner, steps, lrs):
    """One compiled evaluation for every policy: ``(params, tasks, key) -> summary``."""
    import jax
    import numpy as np

    fn = jax.jit(lambda p, t, k: learner.evaluate(p, t, k, steps=tuple(steps), inner_lr=lrs))

    def evaluate(params, tasks, key) -> dict[str, Any]:
        rets = np.asarray(fn(params, tasks, key))
        return {
            "mean": [float(v) for v in rets.mean(axis=0)],
            "ci95": [ci95(rets[:, i]) for i in range(rets.shape[1])],
        }

    return evaluate


def rollout_throughput(env, policy, params, *, tasks: int, trajectories: int) -> dict[str, Any]:
    import jax

    from jaxmeta import rl

    ts = env.sample_tasks(jax.random.key(0), tasks)

    @jax.jit
    def roll(p, key):
        keys = jax.random.split(key, tasks)
        fn = lambda t, k: rl.rollout(policy.apply, env, p, t, k, num_trajectories=trajectories)
        return jax.vmap(fn)(ts, keys).rewards

    keys = iter(jax.random.split(jax.random.key(1), 1000))
    timing = time_calls(lambda: jax.block_until_ready(roll(params, next(keys))), budget_s=2.0)
    steps = tasks * trajectories * env.horizon
    return {**timing, "env_steps": steps, "env_steps_per_s": steps / (timing["ms_median"] / 1e3)}


def plot(results: dict[str, Any], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    steps = results["eval"]["steps"]
    for name, style in (("maml", "o-"), ("pretrained", "s--"), ("random", "^:")):
        r = results["eval"][name]
        ax.errorbar(steps, r["mean"], yerr=r["ci95"], fmt=style, capsize=3, label=name)
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return")
    ax.set_xticks(steps)
    ax.set_title("2D navigation")
    ax.legend()
    fig.tight_layout()
    path = out / "maml_rl.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run: a smoke test in seconds")
    ap.add_argument("--out", default=str(REPO / "bench-out" / "maml_rl"))
    ap.add_argument("--iterations", type=int, default=500, help="MAML meta-iterations")
    ap.add_argument("--pretrain-iterations", type=int, default=None, help="default: same")
    ap.add_argument("--meta-batch", type=int, default=20)
    ap.add_argument("--trajectories", type=int, default=20)
    ap.add_argument("--estimator", default="dice", choices=("dice", "naive", "first_order"))
    ap.add_argument(
        "--fisher",
        default="full",
        choices=("full", "adapted"),
        help="TRPO metric: through the inner step (the paper's) or of the adapted policies",
    )
    ap.add_argument("--fisher-subsample", type=float, default=1.0, help="fraction of tasks")
    ap.add_argument("--chunk", type=int, default=50, help="meta-iterations per compiled call")
    ap.add_argument("--eval-tasks", type=int, default=40)
    ap.add_argument("--eval-steps", type=lambda s: csv_list(s, int), default=[0, 1, 2, 3])
    ap.add_argument("--eval-lr", type=lambda s: csv_list(s, float), default=[0.1, 0.05])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.iterations = min(args.iterations, 5)
        args.pretrain_iterations = min(args.pretrain_iterations or 5, 5)
        args.meta_batch = min(args.meta_batch, 2)
        args.trajectories = min(args.trajectories, 4)
        args.eval_tasks = min(args.eval_tasks, 5)
        args.chunk = min(args.chunk, 5)
    pre_iters = args.iterations if args.pretrain_iterations is None else args.pretrain_iterations
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import jax

    env, policy, params, maml, pretrained = build(args)
    print(f"MAML-TRPO on {env.name}: {args.iterations} meta-iterations", flush=True)
    key = jax.random.key(args.seed + 1)
    m = train_timed(maml, params, key=key, iterations=args.iterations, chunk=args.chunk)
    print(f"  trained in {m['train_s']:.1f} s (+{m['compile_s']:.1f} s compile)", flush=True)
    print(f"pretrained (no inner step): {pre_iters} iterations", flush=True)
    p = train_timed(pretrained, params, key=key, iterations=pre_iters, chunk=args.chunk)
    print(f"  trained in {p['train_s']:.1f} s (+{p['compile_s']:.1f} s compile)", flush=True)

    test_tasks = env.sample_tasks(jax.random.key(10_000 + args.seed), args.eval_tasks)
    k_eval = jax.random.key(20_000 + args.seed)
    evals = {
        "steps": args.eval_steps,
        "inner_lr": args.eval_lr,
        "tasks": args.eval_tasks,
        "trajectories": args.trajectories,
    }
    evaluate = make_evaluate(maml, args.eval_steps, args.eval_lr)
    for name, prm in (
        ("maml", m["state"].params),
        ("pretrained", p["state"].params),
        ("random", params),
    ):
        # The same test tasks and the same key for all three: only the policy differs.
        evals[name] = evaluate(prm, test_tasks, k_eval)
        print(f"  {name:10s} " + "  ".join(f"{v:8.2f}" for v in evals[name]["mean"]), flush=True)

    steps_per_iter = args.meta_batch * args.trajectories * env.horizon * 2
    throughput = rollout_throughput(
        env, policy, params, tasks=args.meta_batch, trajectories=args.trajectories
    )
    results = {
        "benchmark": "maml_rl",
        "quick": args.quick,
        "machine": machine(),
        "config": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "protocol": {
            "env": env.name,
            "horizon": env.horizon,
            "policy": "MLP 100-100 ReLU, Gaussian head with learned log-std",
            "inner": "1 policy-gradient step, lr 0.1, linear feature baseline, 20 traj/task",
            "outer": "TRPO, max KL 0.01, CG 10 iterations, damping 1e-5, backtracking 0.8 x 15",
            "gamma": 0.99,
        },
        "maml": {k: v for k, v in m.items() if k != "state"},
        "pretrained": {k: v for k, v in p.items() if k != "state"},
        "eval": evals,
        "speed": {
            "maml_train_s": m["train_s"],
            "maml_compile_s": m["compile_s"],
            "maml_total_s": m["train_s"] + m["compile_s"],
            "ms_per_meta_iteration": 1e3 * m["train_s"] / max(args.iterations, 1),
            "env_steps_per_meta_iteration": steps_per_iter,
            "train_env_steps_per_s": steps_per_iter * args.iterations / max(m["train_s"], 1e-9),
            "rollout_only": throughput,
        },
    }
    if not args.no_plot:
        results["plots"] = [plot(results, out)]
    path = write_json(out / "maml_rl.json", results)
    s = results["speed"]
    print(
        f"MAML meta-training: {s['maml_train_s']:.1f} s + {s['maml_compile_s']:.1f} s compile "
        f"({s['ms_per_meta_iteration']:.0f} ms/iteration, cpu_util {m['cpu_util']}); "
        f"{s['train_env_steps_per_s']:.3g} env steps/s while training, "
        f"{throughput['env_steps_per_s']:.3g} in rollouts alone -> {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
