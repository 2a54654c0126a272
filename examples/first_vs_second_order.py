"""First- vs second-order MAML on sinusoid regression: same seed, same tasks, same budget.

A minimal version of ``benchmarks/first_vs_second_order.py`` (which also runs Omniglot,
measures memory and plots curves). Settings (MAML paper, Section 5.1): MLP 40-40 ReLU,
K = 10 support points, inner SGD lr 0.01 with 1 step, meta-batch 25, Adam 1e-3; both runs
start from the same initialisation and see the same tasks. Printed: the time per meta-step
(after compilation) and the post-adaptation test MSE ± 95% CI on 600 fixed tasks
(1 inner step), next to the MSE before adaptation.

    python examples/first_vs_second_order.py              # 10000 meta-steps each
    JAXMETA_EXAMPLE_TINY=1 python examples/first_vs_second_order.py   # a smoke test
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import optax

import jaxmeta
from jaxmeta.data.sinusoid import eval_sinusoid_tasks, sample_sinusoid_tasks
from jaxmeta.models.mlp import MLP
from jaxmeta.train import evaluate


def run(first_order: bool, steps: int, episodes: int):
    model = MLP(hidden=(40, 40), out=1)
    params = model.init(jax.random.key(0), jnp.zeros((1, 1)))  # same start for both orders
    learner = jaxmeta.maml(
        model.apply, inner_lr=0.01, inner_steps=1, first_order=first_order, loss_fn=jaxmeta.mse_loss
    )
    optimizer = optax.adam(1e-3)
    state = jaxmeta.init_train_state(learner, optimizer, params, key=jax.random.key(1))

    def body(state, key):  # one meta-step; tasks drawn on the device from the step's key
        k_data, k_step = jax.random.split(key)
        tasks = sample_sinusoid_tasks(k_data, tasks=25, shots=10, queries=10)
        state, metrics = jaxmeta.meta_update(learner, optimizer, state, tasks, k_step)
        return state, metrics["loss"]

    keys = jax.random.split(jax.random.key(1), steps)  # the same tasks for both orders
    train = jax.jit(lambda s, k: jax.lax.scan(body, s, k))
    t0 = time.perf_counter()
    train = train.lower(state, keys).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, _ = jax.block_until_ready(train(state, keys))
    ms_per_step = 1e3 * (time.perf_counter() - t0) / steps

    test = eval_sinusoid_tasks(episodes=episodes, shots=10, queries=100, seed=1234)
    after = evaluate(learner, state.params, test, classification=False, batch_size=100)
    before = evaluate(learner, state.params, test, classification=False, inner_steps=0)
    return ms_per_step, compile_s, after, before


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="meta-steps (default 10000; tiny 20)")
    p.add_argument("--tiny", action="store_true", help="smoke test (also JAXMETA_EXAMPLE_TINY=1)")
    args = p.parse_args()
    tiny = args.tiny or os.environ.get("JAXMETA_EXAMPLE_TINY") == "1"
    steps = args.steps or (20 if tiny else 10000)
    episodes = 50 if tiny else 600
    print(f"sinusoid K=10, {steps} meta-steps, {episodes} test tasks ({jax.devices()[0]})")
    for name, first_order in (("second order", False), ("first order ", True)):
        ms, compile_s, after, before = run(first_order, steps, episodes)
        print(
            f"{name}: {ms:6.2f} ms/meta-step (compile {compile_s:.1f} s)  "
            f"test MSE after 1 step {after['mse']:.3f} ± {after['ci95']:.3f}  "
            f"(before adaptation {before['mse']:.3f})"
        )


if __name__ == "__main__":
    main()
