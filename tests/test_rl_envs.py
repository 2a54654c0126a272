"""Meta-RL environments against hand-written NumPy references; rollouts, returns, baseline."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmeta import rl
from jaxmeta.rl.rollout import advantages, discounted_returns, linear_baseline


class NumpyNavigation:
    """The 2D navigation task as cbfinn/maml_rl and pytorch-maml-rl write it, in NumPy."""

    def __init__(self, goal, sparse=False, radius=0.2):
        self.goal, self.sparse, self.radius = np.asarray(goal, np.float64), sparse, radius

    def reset(self):
        self.state = np.zeros(2)
        return self.state.copy()

    def step(self, action):
        self.state = self.state + np.clip(action, -0.1, 0.1)
        x, y = self.state - self.goal
        distance = np.sqrt(x**2 + y**2)
        if self.sparse:
            return self.state.copy(), float(distance <= self.radius), False
        return self.state.copy(), -distance, bool(abs(x) < 0.01 and abs(y) < 0.01)


@pytest.mark.parametrize("sparse", [False, True])
def test_navigation_matches_numpy_reference(sparse):
    env = rl.make_env("navigation2d_sparse" if sparse else "navigation2d", dtype=jnp.float64)
    rng = np.random.default_rng(0)
    goals = rng.uniform(-0.5, 0.5, (5, 2))
    goals[0] = [0.05, 0.0]  # reachable in one step: exercises `done`
    with jax.enable_x64(True):
        step = jax.jit(env.step)
        for goal in goals:
            ref = NumpyNavigation(goal, sparse)
            obs_ref = ref.reset()
            state, obs = env.reset(jax.random.key(0), rl.envs.navigation.NavTask(jnp.asarray(goal)))
            np.testing.assert_array_equal(np.asarray(obs), obs_ref)
            # Large actions too, so that clipping matters.
            actions = rng.normal(0.0, 0.2, (env.horizon, 2))
            actions[0] = [0.05, 0.0] if goal[0] == 0.05 else actions[0]
            for a in actions:
                obs_ref, r_ref, d_ref = ref.step(a)
                state, obs, r, d = step(state, jnp.asarray(a))
                np.testing.assert_allclose(np.asarray(obs), obs_ref, rtol=0, atol=1e-12)
                np.testing.assert_allclose(float(r), r_ref, rtol=0, atol=1e-12)
                assert bool(d) == d_ref


def test_navigation_task_distribution():
    env = rl.make_env("navigation2d")
    goals = np.asarray(env.sample_tasks(jax.random.key(0), 4000).goal)
    assert goals.shape == (4000, 2) and goals.dtype == np.float32
    assert goals.min() >= -0.5 and goals.max() <= 0.5
    np.testing.assert_allclose(goals.mean(0), 0.0, atol=0.02)
    assert (env.obs_size, env.action_size, env.horizon) == (2, 2, 100)


def test_registry():
    assert {"navigation2d", "navigation2d_sparse", "halfcheetah_dir", "halfcheetah_vel"} <= set(
        rl.ENVIRONMENTS
    )
    with pytest.raises(ValueError, match="unknown environment 'nope'"):
        rl.make_env("nope")
    assert rl.make_env("navigation2d", horizon=7).horizon == 7


def linear_policy(params, obs):
    b = params["b"]
    mean = obs @ params["w"] + b.reshape((1,) * (obs.ndim - 1) + b.shape)
    return mean, jnp.broadcast_to(params["log_std"], mean.shape)


def test_rollout_matches_stepping_by_hand():
    """The scan over the horizon, batched over trajectories, replays exactly with the
    environment stepped by hand on the recorded actions; the mask stops at `done`."""
    env = rl.make_env("navigation2d", horizon=30)
    params = {"w": jnp.zeros((2, 2)), "b": jnp.array([0.1, 0.0]), "log_std": jnp.full((2,), -8.0)}
    task = rl.envs.navigation.NavTask(jnp.array([0.5, 0.0]))  # reached at step 5
    traj = rl.rollout(linear_policy, env, params, task, jax.random.key(1), num_trajectories=3)
    assert traj.obs.shape == (30, 3, 2) and traj.rewards.shape == (30, 3)
    ref = NumpyNavigation(np.array([0.5, 0.0]))
    for n in range(3):
        obs = ref.reset()
        alive = True
        for t in range(30):
            np.testing.assert_allclose(np.asarray(traj.obs[t, n]), obs, atol=1e-6)
            assert float(traj.mask[t, n]) == float(alive)
            obs, r, d = ref.step(np.asarray(traj.actions[t, n], np.float64))
            np.testing.assert_allclose(float(traj.rewards[t, n]), r if alive else 0.0, atol=1e-5)
            alive = alive and not d
    # Almost deterministic: 5 clipped steps of 0.1 reach the goal, the rest is masked.
    np.testing.assert_array_equal(np.asarray(traj.mask.sum(0)), [5, 5, 5])


def test_returns_baseline_and_advantages():
    rng = np.random.default_rng(0)
    rewards = jnp.asarray(rng.normal(size=(6, 4)))
    ret = np.asarray(discounted_returns(rewards, 0.9))
    ref = np.zeros((6, 4))
    acc = np.zeros(4)
    for t in reversed(range(6)):
        acc = np.asarray(rewards[t]) + 0.9 * acc
        ref[t] = acc
    np.testing.assert_allclose(ret, ref, rtol=1e-5)

    # The baseline recovers returns that are exactly linear in its features.
    obs = jnp.asarray(rng.normal(size=(6, 4, 2)), jnp.float32)
    t = (jnp.arange(6, dtype=jnp.float32) / 100.0)[:, None]
    target = 1.0 + 2.0 * obs[..., 0] - obs[..., 1] ** 2 + 30.0 * t
    mask = jnp.ones((6, 4), jnp.float32)
    np.testing.assert_allclose(linear_baseline(obs, target, mask), target, atol=2e-3)

    traj = rl.Trajectories(obs, jnp.zeros((6, 4, 2)), rewards.astype(jnp.float32), mask)
    adv = advantages(traj, gamma=0.9, baseline=None, normalize=False)
    np.testing.assert_allclose(adv, ref, rtol=1e-5)  # no baseline, GAE(1) = returns
    adv = advantages(traj, gamma=0.9, gae_lambda=0.5)  # normalised: mean 0, std 1
    np.testing.assert_allclose([float(adv.mean()), float(adv.std())], [0.0, 1.0], atol=1e-5)


@pytest.mark.skipif(
    importlib.util.find_spec("brax") is None,
    reason="the half-cheetah tasks need the optional extra jaxmeta[rl] (brax); "
    "CI installs .[test] only",
)
@pytest.mark.parametrize("name", ["halfcheetah_dir", "halfcheetah_vel"])
def test_halfcheetah_smoke(name):
    """A few brax steps with the paper's task reward, all in one compiled program (its
    compilation is the cost: ~10-20 s per environment on the 2-core CPU)."""
    env = rl.make_env(name, horizon=5)
    assert (env.obs_size, env.action_size) == (17, 6)
    policy = rl.GaussianMLPPolicy(action_size=6, hidden=(8,))
    params = policy.init(jax.random.key(1), jnp.zeros((1, 17)))
    goals = jnp.array([1.0, -1.0]) if name == "halfcheetah_dir" else jnp.array([1.0, 0.0])

    @jax.jit
    def check(key):
        tasks = env.sample_tasks(key, 2)
        fn = lambda t, k: rl.rollout(policy.apply, env, params, t, k, num_trajectories=2)
        traj = jax.vmap(fn)(tasks, jax.random.split(key, 2))
        state, _ = env.reset(key, goals[0])
        states = jax.vmap(lambda g: state._replace(goal=g))(goals)
        nxt, _, rewards, _ = jax.vmap(env.step, in_axes=(0, None))(states, jnp.full((6,), 0.5))
        return tasks, traj, rewards, nxt.brax.metrics["x_velocity"][0]

    tasks, traj, (r1, r2), velocity = check(jax.random.key(0))
    if name == "halfcheetah_dir":
        assert set(np.asarray(tasks).tolist()) <= {-1.0, 1.0}
    else:
        assert 0.0 <= float(tasks.min()) and float(tasks.max()) <= 2.0
    assert traj.obs.shape == (2, 5, 2, 17) and traj.rewards.shape == (2, 5, 2)
    assert bool(jnp.all(jnp.isfinite(traj.rewards))) and bool(jnp.all(traj.mask == 1))
    # Same physics, different goal: the task reward (control cost 0.05 * 6 * 0.5^2).
    cost = 0.05 * 6 * 0.25
    if name == "halfcheetah_dir":
        expected = [velocity - cost, -velocity - cost]
    else:
        expected = [-abs(velocity - 1.0) - cost, -abs(velocity) - cost]
    np.testing.assert_allclose([r1, r2], expected, rtol=1e-5, atol=1e-6)
