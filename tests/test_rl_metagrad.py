"""The MAML-RL meta-gradient estimator against the exact meta-gradient.

A linear-Gaussian system with known dynamics: state ``s`` in R, ``s' = s + a``, reward
``-(s' - g)^2``, horizon 3, start at 0; policy ``a ~ N(w s + b, exp(log_std)^2)``. The
expected return ``V(theta)`` has a closed form (propagate the state's mean and variance),
so the meta-objective of MAML with one exact inner policy-gradient step,
``J(theta) = V(theta + lr grad V(theta) / H) / H`` (the library averages its
surrogates over the ``H`` time steps), and its gradient are exact (float64 autodiff of the
closed form). The library's score-function estimate of the meta-gradient, averaged over
many trajectories, must converge to it with ``estimator="dice"``; the plain REINFORCE
surrogate (``"naive"``, biased Hessian) and the first-order variant must not.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jit_run_once

from jaxmeta.rl import maml_rl
from jaxmeta.rl.envs import Environment

# One worker runs this module: its module fixture (the exact meta-gradient) is built once.
pytestmark = pytest.mark.xdist_group("test_rl_metagrad")

H = 3
LR = 0.5
GOAL = 0.7
TASKS, REPEATS = 2, 16  # 1M trajectories per estimator: standard errors ~0.015
PARAMS = {"w": [[-0.3]], "b": [0.2], "log_std": [-0.5]}


class State(NamedTuple):
    s: jax.Array
    goal: jax.Array


def linear_system() -> Environment:
    def sample_tasks(key, n):
        return jax.random.uniform(key, (n, 1), jnp.float64, -1.0, 1.0)

    def reset(key, goal):
        s = jnp.zeros((1,), jnp.float64)
        return State(s, goal), s

    def step(state, action):
        s = state.s + action
        return State(s, state.goal), s, -jnp.sum((s - state.goal) ** 2), jnp.zeros((), bool)

    return Environment("linear1d", 1, 1, H, sample_tasks, reset, step)


def linear_gaussian(params, obs):
    b = params["b"]
    mean = obs @ params["w"] + b.reshape((1,) * (obs.ndim - 1) + b.shape)
    return mean, jnp.broadcast_to(params["log_std"], mean.shape)


def expected_return(params, goal):
    """Closed-form ``E[sum_t r_t]`` of the linear-Gaussian system."""
    w, b, var_a = params["w"][0, 0], params["b"][0], jnp.exp(2.0 * params["log_std"][0])
    mean = var = total = 0.0
    for _ in range(H):
        mean, var = (1.0 + w) * mean + b, (1.0 + w) ** 2 * var + var_a
        total = total - ((mean - goal) ** 2 + var)
    return total


def inner(params, goal):
    g = jax.grad(expected_return)(params, goal)
    return jax.tree_util.tree_map(lambda p, d: p + LR * d / H, params, g)


def exact_meta_gradient(params, goal):
    return jax.grad(lambda p: expected_return(inner(p, goal), goal) / H)(params)


def exact_first_order(params, goal):
    return jax.tree_util.tree_map(
        lambda x: x / H, jax.grad(expected_return)(inner(params, goal), goal)
    )


def flat(tree) -> np.ndarray:
    return np.asarray(jax.flatten_util.ravel_pytree(tree)[0])


@functools.partial(jit_run_once, static_argnums=0)
def ascent(learner, params, tasks, keys):
    """Minus the outer-loss gradient (the ascent direction), flat, one row per key."""
    grad = lambda k: learner.meta_grad(params, tasks, k)[0]
    return -jax.vmap(lambda k: jax.flatten_util.ravel_pytree(grad(k))[0])(keys)


@pytest.fixture(scope="module")
def estimates():
    """Mean and standard error of each estimator's meta-gradient (ascent direction)."""
    out = {}
    with jax.enable_x64(True):
        params = {k: jnp.asarray(v, jnp.float64) for k, v in PARAMS.items()}
        tasks = jnp.full((TASKS, 1), GOAL, jnp.float64)
        repeats = REPEATS
        for estimator in ("dice", "naive", "first_order"):
            learner = maml_rl(
                linear_gaussian,
                linear_system(),
                inner_lr=LR,
                num_trajectories=32_000,  # the inner step's bias shrinks as 1/N
                gamma=1.0,
                baseline=None,
                normalize_advantages=False,
                estimator=estimator,
                outer="adam",
                task_chunk=None,
            )
            keys = jax.random.split(jax.random.key(0), repeats)
            samples = np.asarray(ascent(learner, params, tasks, keys))
            out[estimator] = (samples.mean(0), samples.std(0, ddof=1) / np.sqrt(repeats))
        out["exact"] = flat(exact_meta_gradient(params, GOAL))
        out["exact_first_order"] = flat(exact_first_order(params, GOAL))
    return out


def test_dice_converges_to_exact_meta_gradient(estimates):
    mean, se = estimates["dice"]
    exact = estimates["exact"]
    z = np.abs(mean - exact) / se
    assert np.all(z < 4.0), (mean, exact, se)
    np.testing.assert_allclose(mean, exact, atol=0.06)  # |exact| up to 2.5


@pytest.mark.parametrize("estimator", ["naive", "first_order"])
def test_biased_estimators_do_not_match(estimates, estimator):
    """The test can fail: the plain surrogate's Hessian and the first-order variant give
    meta-gradients far (>20 standard errors) from the exact one."""
    mean, se = estimates[estimator]
    z = np.abs(mean - estimates["exact"]) / se
    assert np.max(z) > 20.0, (estimator, mean, estimates["exact"], se)


def test_first_order_matches_its_own_target(estimates):
    """Sanity check of the harness: the first-order estimate converges to the gradient of
    V at the adapted parameters (the inner step's Jacobian taken as the identity)."""
    mean, se = estimates["first_order"]
    target = estimates["exact_first_order"]
    assert np.all(np.abs(mean - target) / se < 4.0), (mean, target, se)
