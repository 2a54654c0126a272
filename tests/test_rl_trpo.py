"""TRPO's pieces: conjugate gradient, Fisher-vector products against the explicit KL
Hessian (float64, through the inner policy-gradient step), the line search's KL bound."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import jit_run_once
from jax.flatten_util import ravel_pytree

from jaxmeta import rl
from jaxmeta.rl.trpo import (
    conjugate_gradient,
    gauss_newton_fvp,
    hessian_vector_product,
    line_search,
    natural_step,
)


def test_conjugate_gradient_solves_spd_system():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        m = rng.normal(size=(12, 12))
        a = jnp.asarray(m @ m.T + 0.5 * np.eye(12))
        b = jnp.asarray(rng.normal(size=12))
        x = conjugate_gradient(lambda v: a @ v, b, iters=12)  # n iterations: exact
        np.testing.assert_allclose(np.asarray(x), np.linalg.solve(a, b), rtol=1e-6, atol=1e-9)
        x3 = conjugate_gradient(lambda v: a @ v, b, iters=3)  # fewer: a worse residual
        assert float(jnp.linalg.norm(a @ x3 - b)) > float(jnp.linalg.norm(a @ x - b))
        # The early stop: an exact solution in one step stays put (no 0/0).
        x1 = conjugate_gradient(lambda v: 2.0 * v, b, iters=10)
        np.testing.assert_allclose(np.asarray(x1), np.asarray(b) / 2.0, rtol=1e-12)


def test_gauss_newton_fvp_is_the_kl_hessian_through_an_inner_step():
    """On a tiny Gaussian policy adapted by one policy-gradient step (the structure of the
    MAML-TRPO metric), the linearised ``J^T H_d J`` product equals the explicit Hessian of
    the KL at the old parameters, and so does forward-over-reverse."""
    with jax.enable_x64(True):
        policy = rl.GaussianMLPPolicy(action_size=2, hidden=(3,), dtype=jnp.float64)
        params = policy.init(jax.random.key(0), jnp.zeros((1, 2), jnp.float64))
        flat, unravel = ravel_pytree(params)
        k1, k2, k3, k4 = jax.random.split(jax.random.key(1), 4)
        obs_in = jax.random.normal(k1, (7, 2), jnp.float64)
        act_in = jax.random.normal(k2, (7, 2), jnp.float64)
        adv_in = jax.random.normal(k3, (7,), jnp.float64)
        obs_out = jax.random.normal(k4, (5, 2), jnp.float64)

        def inner_objective(p):
            mean, log_std = policy.apply(p, obs_in)
            return jnp.mean(rl.policy.gaussian_log_prob(mean, log_std, act_in) * adv_in)

        def dist_fn(f):
            p = unravel(f)
            p = jax.tree_util.tree_map(lambda w, g: w + 0.3 * g, p, jax.grad(inner_objective)(p))
            return policy.apply(p, obs_out)

        def kl_of_dist(d0, d1):
            return jnp.mean(rl.policy.gaussian_kl(*d0, *d1))

        dist0 = jit_run_once(dist_fn)(flat)
        hessian = jit_run_once(jax.hessian(lambda f: kl_of_dist(dist0, dist_fn(f))))(flat)

        @jit_run_once
        def products(vs):
            _, fvp, _ = gauss_newton_fvp(dist_fn, flat, kl_of_dist)
            hvp = hessian_vector_product(lambda f: kl_of_dist(dist0, dist_fn(f)), flat)
            return jax.vmap(fvp)(vs), jax.vmap(hvp)(vs)

        vs = jax.random.normal(jax.random.key(10), (3, *flat.shape), jnp.float64)
        fv, hv = products(vs)
        np.testing.assert_allclose(fv, vs @ hessian.T, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(hv, vs @ hessian.T, rtol=1e-9, atol=1e-12)


def tiny_learner(dtype=jnp.float64, **kw):
    env = rl.make_env("navigation2d", horizon=6, dtype=dtype)
    policy = rl.GaussianMLPPolicy(action_size=2, hidden=(4,), dtype=dtype)
    params = policy.init(jax.random.key(0), jnp.zeros((1, 2), dtype))
    # Nonzero biases: with the zero-initialised ones every episode's first observation
    # (the origin) sits exactly on the ReLU kink, where no Hessian exists.
    flat, unravel = ravel_pytree(params)
    params = unravel(flat + 0.1 * jax.random.normal(jax.random.key(5), flat.shape, flat.dtype))
    kw = {"num_trajectories": 3, "meta_batch": 2, **kw}
    return env, params, rl.maml_trpo(policy.apply, env, **kw)


def test_learner_fisher_is_the_hessian_of_its_kl():
    """The meta-learner's own metric (``fisher="full"``, through the DiCE inner step) is
    the Hessian, at the current parameters, of the KL its line search checks (explicit
    Hessian, float64)."""
    with jax.enable_x64(True):
        env, params, learner = tiny_learner()
        tasks = env.sample_tasks(jax.random.key(1), 2)
        mb = jit_run_once(learner.sample)(params, tasks, jax.random.key(2))
        flat, unravel = ravel_pytree(params)
        kl = lambda f: learner.surrogate_and_kl(unravel(f), mb)[1]
        assert abs(float(jit_run_once(kl)(flat))) < 1e-12  # KL of the policies to themselves
        hessian = jit_run_once(jax.hessian(kl))(flat)
        v = jax.random.normal(jax.random.key(3), flat.shape, jnp.float64)
        fv = jit_run_once(lambda p, m, v: learner.fisher_vector_product(p, m)(v))(params, mb, v)
        np.testing.assert_allclose(fv, hessian @ v, rtol=1e-8, atol=1e-12)


def test_line_search_respects_the_kl_bound():
    """Objective ``c^T x`` (maximised), KL ``|x - x0|^2``: the full step's KL is 9x the
    bound, so the search backtracks (ratio 0.5) to the first point within it."""
    c = jnp.array([1.0, 2.0])
    x0 = jnp.zeros(2)
    full = jnp.array([0.3, 0.0])  # KL 0.09, then 0.0225, then 0.005625
    fn = lambda x: (jnp.vdot(c, x), jnp.sum((x - x0) ** 2))
    ls = line_search(fn, x0, full, jnp.asarray(0.0), max_kl=0.01, ratio=0.5, max_steps=15)
    assert bool(ls.accepted) and int(ls.steps) == 3 and float(ls.fraction) == 0.25
    assert float(ls.kl) <= 0.01 and float(ls.objective) > 0.0
    np.testing.assert_allclose(ls.x, [0.075, 0.0], rtol=1e-6)
    # A direction that never improves the objective is rejected: the point stays.
    ls = line_search(fn, x0, -full, jnp.asarray(0.0), max_kl=0.01, ratio=0.5, max_steps=15)
    assert not bool(ls.accepted) and int(ls.steps) == 15
    np.testing.assert_array_equal(ls.x, x0)


def test_natural_step_has_the_kl_of_its_quadratic_model():
    a = jnp.diag(jnp.array([4.0, 1.0]))
    step, xhx = natural_step(
        jnp.array([1.0, 1.0]), lambda v: a @ v, max_kl=0.01, damping=0.0, cg_iters=10
    )
    np.testing.assert_allclose(0.5 * step @ a @ step, 0.01, rtol=1e-5)
    np.testing.assert_allclose(
        step / jnp.linalg.norm(step), jnp.array([0.25, 1.0]) / jnp.sqrt(1.0625), rtol=1e-5
    )


def test_meta_step_stays_in_the_trust_region():
    env, params, learner = tiny_learner(jnp.float32, max_kl=0.005)
    state = learner.init(jax.random.key(0), params)
    step = jit_run_once(learner.meta_step)
    for _ in range(3):
        state, metrics = step(state)
        assert float(metrics["kl"]) <= 0.005 + 1e-7
        assert 1 <= int(metrics["ls_steps"]) <= 15
    assert int(state.step) == 3
