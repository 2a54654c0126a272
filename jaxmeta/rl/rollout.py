"""Rollouts as one ``lax.scan`` over the horizon, returns, the linear feature baseline and
advantages.

Layout is time-major, as in pytorch-maml-rl: ``[T, N, ...]`` for ``T`` steps of ``N``
trajectories of ONE task (``vmap`` adds a leading task axis). ``mask[t, n]`` is 1 while the
episode runs (up to and including the step that reports ``done``) and 0 after; every
quantity after the end of an episode is masked out, so shapes stay static.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxmeta.rl.envs import Environment, Task
from jaxmeta.rl.policy import gaussian_sample
from jaxmeta.types import Array, Params, PRNGKey

PolicyApply = Callable[[Params, Array], tuple[Array, Array]]


class Trajectories(NamedTuple):
    """``N`` trajectories of one task, time-major.

    Attributes:
      obs: ``[T, N, obs_size]`` observation before each action.
      actions: ``[T, N, action_size]`` sampled actions (before the environment clips them).
      rewards: ``[T, N]`` rewards, 0 after the end of an episode.
      mask: ``[T, N]`` 1.0 while the episode runs, 0.0 after (dtype of the rewards).
    """

    obs: Array
    actions: Array
    rewards: Array
    mask: Array


class Batch(NamedTuple):
    """What a policy-gradient loss needs from :class:`Trajectories`: ``obs [T, N, O]``,
    ``actions [T, N, A]``, ``mask [T, N]`` and ``advantages [T, N]`` (constants)."""

    obs: Array
    actions: Array
    mask: Array
    advantages: Array


def rollout(
    policy_apply: PolicyApply,
    env: Environment,
    params: Params,
    task: Task,
    key: PRNGKey,
    *,
    num_trajectories: int,
    horizon: int | None = None,
) -> Trajectories:
    """Sample ``num_trajectories`` episodes of ONE task with the Gaussian policy ``params``.

    One ``lax.scan`` over the ``horizon`` (default ``env.horizon``); the trajectories are
    a batch inside each step (one policy call for all of them). The actions are data: no
    gradient flows into them.

    Returns:
      :class:`Trajectories` with ``T = horizon``, ``N = num_trajectories``.
    """
    horizon = env.horizon if horizon is None else horizon
    k_reset, k_act = jax.random.split(key)
    state, obs = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(k_reset, num_trajectories), task
    )
    alive = jnp.ones((num_trajectories,), bool)
    step = jax.vmap(env.step)

    def body(carry, k):
        state, obs, alive = carry
        mean, log_std = policy_apply(params, obs)
        action = jax.lax.stop_gradient(gaussian_sample(k, mean, log_std))
        state, next_obs, reward, done = step(state, action)
        mask = alive.astype(reward.dtype)
        out = Trajectories(obs, action, reward * mask, mask)
        return (state, next_obs, alive & ~done), out

    _, traj = jax.lax.scan(body, (state, obs, alive), jax.random.split(k_act, horizon))
    return traj


def discount_matrix(horizon: int, factor: float | Array, dtype) -> Array:
    """``D[t, k] = factor**(k - t)`` for ``k >= t``, else 0: ``D @ x`` sums the discounted
    future of ``x [T, ...]`` (one small matmul instead of a reverse scan)."""
    t = jnp.arange(horizon)
    power = (t[None, :] - t[:, None]).astype(dtype)
    return jnp.where(power >= 0, jnp.asarray(factor, dtype) ** jnp.maximum(power, 0), 0)


def discounted_returns(rewards: Array, gamma: float) -> Array:
    """``R[t] = sum_{k >= t} gamma^(k-t) r[k]`` for ``rewards [T, N] -> [T, N]``."""
    return discount_matrix(rewards.shape[0], gamma, rewards.dtype) @ rewards


def baseline_features(obs: Array, mask: Array) -> Array:
    """rllab's linear-baseline features ``[obs, obs^2, t, t^2, t^3, 1]`` (``t = step/100``,
    observations clipped to ``[-10, 10]``), zero where ``mask`` is 0: ``[T, N, 2*O + 4]``."""
    horizon, n = mask.shape
    o = jnp.clip(obs, -10.0, 10.0).astype(mask.dtype)
    t = jnp.broadcast_to((jnp.arange(horizon, dtype=mask.dtype) / 100.0)[:, None], (horizon, n))
    feats = [o, o * o, t[..., None], (t * t)[..., None], (t**3)[..., None]]
    feats.append(jnp.ones((horizon, n, 1), mask.dtype))
    return jnp.concatenate(feats, axis=-1) * mask[..., None]


def linear_baseline(obs: Array, returns: Array, mask: Array, *, reg: float = 1e-5) -> Array:
    """Values ``[T, N]`` of the linear feature baseline fitted to ``returns`` of one task.

    Ridge regression in closed form, ``w = (X^T X + reg I)^-1 X^T y``; as in rllab and
    pytorch-maml-rl, ``reg`` grows tenfold (up to four times) if the solve is not finite.

    References:
      Duan et al., "Benchmarking Deep Reinforcement Learning for Continuous Control",
      ICML 2016 (supplementary, linear feature baseline).
    """
    x = baseline_features(obs, mask)
    f = x.shape[-1]
    x2 = x.reshape(-1, f)
    xtx = x2.T @ x2
    xty = x2.T @ (returns * mask).reshape(-1)
    eye = jnp.eye(f, dtype=xtx.dtype)
    coef = jnp.zeros((f,), xtx.dtype)
    found = jnp.zeros((), bool)
    for i in range(5):
        c = jnp.linalg.solve(xtx + reg * 10.0**i * eye, xty)
        ok = jnp.all(jnp.isfinite(c)) & ~found
        coef = jnp.where(ok, c, coef)
        found = found | ok
    return (x @ coef) * mask


def advantages(
    traj: Trajectories,
    *,
    gamma: float = 0.99,
    gae_lambda: float = 1.0,
    baseline: str | None = "linear",
    normalize: bool = True,
) -> Array:
    """Advantages ``[T, N]`` of one task's trajectories (constants for the estimators).

    ``baseline="linear"`` fits :func:`linear_baseline` to the discounted returns;
    ``None`` uses no baseline (values 0). GAE with ``gae_lambda`` (1.0: returns minus
    the baseline). ``normalize`` standardises over the valid steps (as rllab's
    ``center_adv`` and pytorch-maml-rl do), which also rescales the gradient step.

    References:
      Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage
      Estimation", ICLR 2016.
    """
    if baseline not in ("linear", None):
        raise ValueError(f"baseline must be 'linear' or None, got {baseline!r}")
    rewards, mask = traj.rewards, traj.mask
    if baseline is None:
        values = jnp.zeros_like(rewards)
    else:
        values = linear_baseline(traj.obs, discounted_returns(rewards, gamma), mask)
    next_values = jnp.concatenate([values[1:], jnp.zeros_like(values[:1])], axis=0)
    deltas = rewards + gamma * next_values - values
    adv = discount_matrix(rewards.shape[0], gamma * gae_lambda, rewards.dtype) @ deltas
    adv = adv * mask
    if normalize:
        count = jnp.maximum(jnp.sum(mask), 1.0)
        mean = jnp.sum(adv) / count
        std = jnp.sqrt(jnp.sum(((adv - mean) * mask) ** 2) / count)
        adv = (adv - mean) / (std + 1e-8) * mask
    return jax.lax.stop_gradient(adv)


def episode_returns(traj: Trajectories) -> Array:
    """Undiscounted return of each trajectory: ``[N]``."""
    return jnp.sum(traj.rewards, axis=0)
